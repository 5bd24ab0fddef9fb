"""Streaming parser for the training log line both backends print (``orchestrator.logline``), and the chain merge.

Logs are srun stdout files: mostly noise (NCCL, NeMo and Lightning messages, tracebacks, progress bars), with one
``Training epoch E, iteration I/N | key: value | ...`` line per step, possibly behind a timestamp or an srun label.
The parser reads big binary chunks, looks only at text following the literal ``Training epoch``, and accepts a line
only if every field is ``key: number``. So memory stays flat in the size of the log, and anything else, such as a
line spliced by another rank's output or a look-alike message, is skipped, counted and shown as an example. An
unterminated last line is a write cut short (print() always ends its line), so it is never taken.

``iter_records`` (``_scan``, line by line) defines what is accepted. ``read_logs`` takes most chunks of a
metric-dense log by a fast path (``_FastPath``): when every metric line of a chunk is well-formed with the same
fields, one regex and one conversion take them all, with the same result; any other chunk goes line by line.

Steps are keyed by ``global_step``, never ``iteration``, which restarts every epoch. When a step comes again (a
resumed job re-trains from its checkpoint, or a requeued job appends to the same file), the later record wins, and
the steps after it from the earlier attempt go too: they belong to a trajectory the run abandoned. Only steps
compete for memory, never log bytes.
"""

from __future__ import annotations

import bisect
import operator
import os
import re
import struct
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from pathlib import Path
from typing import BinaryIO, NamedTuple, overload

MARKER = b"Training epoch "
HEADER = re.compile(rb"Training epoch \d+, iteration \d+/(\d+)")
ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]")
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_ ./()\-]*")
CHUNK_BYTES = 256 << 10
#: A metric line is a few hundred bytes; text longer than this without a line break cannot hold one.
MAX_LINE_BYTES = 64 << 10
MAX_EXAMPLES = 5
MAX_REWINDS_KEPT = 50
_MAX_KEY_SETS = 1024


class StepRecord(NamedTuple):
    """One parsed log line. ``last_iteration`` is the ``N`` of ``iteration I/N``: the run's max_steps - 1."""

    global_step: int
    fields: tuple[str, ...]
    values: tuple[float, ...]
    last_iteration: int
    source: int

    def get(self, name: str) -> float | None:
        try:
            return self.values[self.fields.index(name)]
        except ValueError:
            return None

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.fields, self.values, strict=True))


@dataclass
class SourceStats:
    """What one log file contributed; shown in the report so a reader can check the merge."""

    path: str
    bytes: int = 0
    records: int = 0
    first_step: int | None = None
    last_step: int | None = None
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    partial_last_line: bool = False

    def skip(self, line_no: Callable[[], int], text: bytes, why: str) -> None:
        """Count a skipped line; the first few become examples (``line_no`` is only computed for those)."""
        self.skipped += 1
        if len(self.skipped_examples) < MAX_EXAMPLES:
            shown = text[:160].decode("utf-8", "replace").rstrip()
            self.skipped_examples.append(f"{self.path}:{line_no()}: {why}: {shown}")


@dataclass(frozen=True)
class Rewind:
    """A step came again: the records from ``first_dropped`` to ``last_dropped`` were replaced."""

    source: int
    first_dropped: int
    last_dropped: int


class _Fields:
    """Decoded, validated key tuples, shared by every line that has the same fields (almost all of them)."""

    def __init__(self) -> None:
        self._known: dict[tuple[bytes, ...], tuple[tuple[str, ...], int]] = {}

    def lookup(self, keys: tuple[bytes, ...]) -> tuple[tuple[str, ...], int] | str:
        """(names, index of global_step), or why the keys are not a metric line's."""
        hit = self._known.get(keys)
        if hit is not None:
            return hit
        names = tuple(k.decode("utf-8", "replace") for k in keys)
        bad = next((n for n in names if not KEY.fullmatch(n)), None)
        if bad is not None:
            return f"field name {bad[:40]!r} is not a metric's"
        if len(set(names)) != len(names):
            return "a field appears twice"
        if "global_step" not in names:
            return "no global_step field"
        entry = (names, names.index("global_step"))
        if len(self._known) < _MAX_KEY_SETS:
            self._known[keys] = entry
        return entry


def _parse_line(line: bytes, fields: _Fields, source: int) -> StepRecord | str:
    """A record from text starting at ``Training epoch`` and ending before the line break, or why not."""
    header, sep, body = line.partition(b" | ")
    head = HEADER.fullmatch(header)
    if head is None or not sep:
        return "not a metric line"
    parts = body.replace(b": ", b" | ").split(b" | ")
    if len(parts) % 2:
        return "fields are not 'key: value'"
    known = fields.lookup(tuple(parts[0::2]))
    if isinstance(known, str):
        return known
    names, step_at = known
    try:
        values = tuple(map(float, parts[1::2]))
    except ValueError:
        return "a value is not a number"
    step = values[step_at]
    if not step.is_integer() or step < 0:
        return f"global_step {step} is not a step number"
    return StepRecord(int(step), names, values, int(head[1]), source)


class _LineCount:
    """Lines before each buffer of a stream, for the examples of skipped lines. Counting every buffer as it passed
    cost a third of parsing a noisy log (9% of a metric-only one), and most logs skip nothing: a seekable stream is
    counted only when a number is asked for, by reading it again (once in all, as the offsets asked for only grow)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lazy = stream.seekable()
        self._counted_to = self._origin = stream.tell() if self._lazy else 0
        self._lines = 0

    def before(self, buf: bytes, start: int) -> Callable[[], int]:
        """The number of lines before ``buf``, which begins ``start`` bytes after where reading began, as a
        callable. Called with each buffer in turn (bytes left out between them hold no line break)."""
        if self._lazy:
            return lambda: self._before(self._origin + start)
        lines = self._lines
        self._lines += buf.count(b"\n")
        return lambda: lines

    def _before(self, offset: int) -> int:
        if offset > self._counted_to:
            resume = self._stream.tell()
            self._stream.seek(self._counted_to)
            while self._counted_to < offset:
                piece = self._stream.read(min(offset - self._counted_to, CHUNK_BYTES))
                if not piece:
                    break
                self._lines += piece.count(b"\n")
                self._counted_to += len(piece)
            self._stream.seek(resume)
        return self._lines


def _line_buffers(
    stream: BinaryIO, stats: SourceStats, progress: Callable[[int], None] | None
) -> Iterator[tuple[bytes, Callable[[], int]]]:
    """The stream in big pieces that end with a line break, ANSI codes removed, each with the number of lines
    before it (a callable); the bytes read are counted into ``stats``, and an unterminated last metric line flagged
    there."""
    lines = _LineCount(stream)
    carry = b""
    read = 0
    while chunk := stream.read(CHUNK_BYTES):
        if progress is not None:
            progress(len(chunk))
        stats.bytes += len(chunk)
        read += len(chunk)
        cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r")) + 1
        if cut == 0:
            # No line break yet: keep only what could still begin a metric line.
            carry += chunk
            if len(carry) > 2 * MAX_LINE_BYTES:
                carry = carry[-MAX_LINE_BYTES:]
            continue
        buf = b"".join((carry, memoryview(chunk)[:cut])) if carry or cut < len(chunk) else chunk
        carry = chunk[cut:]
        lines_before = lines.before(buf, read - len(carry) - len(buf))
        yield ANSI.sub(b"", buf) if b"\x1b" in buf else buf, lines_before
    if MARKER in ANSI.sub(b"", carry):
        stats.partial_last_line = True


def iter_records(
    stream: BinaryIO,
    stats: SourceStats,
    *,
    source: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Iterator[StepRecord]:
    """Yield the metric records of one log stream in file order; count and sample what was skipped into ``stats``.

    This is the definition of what the parser accepts; ``read_logs`` takes a faster route to the same result."""
    fields = _Fields()
    for buf, lines_before in _line_buffers(stream, stats, progress):
        yield from _scan(buf, fields, source, stats, lines_before)


def _scan(
    buf: bytes, fields: _Fields, source: int, stats: SourceStats, lines_before: Callable[[], int]
) -> Iterator[StepRecord]:
    """The records in ``buf``, which ends with a line break and has no ANSI codes."""
    find = buf.find
    pos = find(MARKER)
    while pos >= 0:
        end = find(b"\n", pos)
        line = buf[pos:end] if end >= 0 else buf[pos:]
        if b"\r" in line:  # a progress bar redrawn with carriage returns shares the line
            line = line[: line.find(b"\r")]
        record = _parse_line(line, fields, source)
        if isinstance(record, str):
            stats.skip(lambda at=pos: lines_before() + buf.count(b"\n", 0, at) + 1, line, record)
        else:
            yield record
        pos = find(MARKER, pos + len(MARKER))


class _Block(NamedTuple):
    """Consecutive records of one shape in rising steps, as columns: what ``StepSeries.extend`` appends."""

    fields: tuple[str, ...]
    steps: array[float]  # whole numbers
    last_iteration: int
    values: array[float]  # row after row, len(fields) values each
    source: int


#: A value the fast path takes: printable ASCII, no space.
_VALUE = rb"([!-~]+)"
#: Where a chunk's first 64 KiB hold less than one marker per 16 KiB, it takes the slow path: there the fast path
#: costs more than it saves (its regex scan takes about 0.8 ms per MiB of noise, the slow path about 8 µs per line).
_SAMPLE_BYTES, _SPARSE_BYTES = 64 << 10, 16 << 10


class _FastPath:
    """An optimisation of ``_scan`` + ``StepSeries.add``: a chunk of well-formed metric lines of one shape, in bulk.

    Nearly every metric line of a run has the same fields in the same order, and the same N in "iteration I/N".
    For those of the chunk's first metric line, one regex matches a whole line and captures its values; ``findall``
    runs it over the chunk at C speed, and the values become machine doubles in one go. The chunk is taken only if
    that changes nothing, which holds when:

    - every marker starts a match. A match holds one marker, at its start (no value has a space), and ends at the
      next line break (no value has a control character, so neither ``\\r`` nor ``\\n``): it is the very line
      ``_scan`` cuts there, with exactly the first line's keys and N;
    - every value converts with ``float()``. With no space in a value, ``_parse_line`` splits the line into the
      same keys and values (a value with ':' or '|', which could split otherwise, never converts);
    - global_step rises strictly, in whole numbers. Then the first line, which ``_parse_line`` accepted, has the
      smallest step, non-negative, and only it can rewind the series.

    Otherwise ``block`` returns None and the chunk goes through ``_scan``, which defines the behaviour."""

    def __init__(self) -> None:
        self._patterns: dict[tuple[tuple[str, ...], int], re.Pattern[bytes]] = {}

    def block(self, buf: bytes, fields: _Fields, source: int) -> _Block | None:
        if buf.count(MARKER, 0, _SAMPLE_BYTES) * _SPARSE_BYTES < min(len(buf), _SAMPLE_BYTES):
            return None
        markers = buf.count(MARKER)
        start = buf.find(MARKER)
        first = _parse_line(buf[start : buf.find(b"\n", start)], fields, source)
        if isinstance(first, str):
            return None
        names, last_iteration = first.fields, first.last_iteration
        rows = self._pattern(names, last_iteration).findall(buf)
        if len(rows) != markers:
            return None
        try:  # struct packs floats into machine doubles faster than array() converts them one by one
            values = array("d", struct.pack(f"{markers * len(names)}d", *map(float, chain.from_iterable(rows))))
        except ValueError:
            return None
        steps = values[names.index("global_step") :: len(names)]
        if not (all(map(float.is_integer, steps)) and all(map(operator.lt, steps, steps[1:]))):
            return None
        return _Block(names, steps, last_iteration, values, source)

    def _pattern(self, names: tuple[str, ...], last_iteration: int) -> re.Pattern[bytes]:
        """A whole line of this shape and this N in "iteration I/N" (the same on every line of a run: max_steps - 1),
        capturing each value."""
        key = (names, last_iteration)
        pattern = self._patterns.get(key)
        if pattern is None:
            header = rb"Training epoch \d+, iteration \d+/" + str(last_iteration).encode()
            fields = b"".join(rb" \| " + re.escape(name.encode()) + b": " + _VALUE for name in names)
            pattern = re.compile(header + fields + b"\n")
            if len(self._patterns) < _MAX_KEY_SETS:
                self._patterns[key] = pattern
        return pattern


class _Run(NamedTuple):
    """Consecutive rows with the same fields, source and N of "iteration I/N": one entry for them all, and their
    values lie at a fixed stride in ``StepSeries._values``."""

    first_row: int
    first_value: int
    fields: tuple[str, ...]
    last_iteration: int
    source: int


class StepSeries(Sequence[StepRecord]):
    """The merged steps of a chain, ascending by global_step; a repeated step drops the records from it onward.

    Stored as machine numbers (8 bytes a value and 8 for the step, no Python object per step) and runs of rows
    that share their fields; records are built when asked for."""

    def __init__(self) -> None:
        self._steps = array("d")  # global_step of each row, ascending: whole numbers, parsed as floats
        self._values = array("d")  # each row's values, row after row
        self._runs: list[_Run] = []
        self._run_starts: list[int] = []  # first_row of each run, for bisect
        self._shapes: dict[tuple[str, ...], None] = {}  # every field tuple seen, in first-seen order
        self.rewinds: list[Rewind] = []
        self.rewind_count = 0

    def add(self, record: StepRecord) -> None:
        self._append(record.fields, record.last_iteration, record.source, (record.global_step,), record.values)

    def extend(self, block: _Block) -> None:
        """``add`` of each record of ``block``, in one go."""
        self._append(block.fields, block.last_iteration, block.source, block.steps, block.values)

    def _append(
        self, fields: tuple[str, ...], last_iteration: int, source: int, steps: Sequence[float], values: Sequence[float]
    ) -> None:
        """Rows of one shape whose ``steps`` rise, so that only the first may rewind."""
        self._rewind(steps[0], source)
        last = self._runs[-1] if self._runs else None
        if last is None or (last.fields, last.last_iteration, last.source) != (fields, last_iteration, source):
            self._runs.append(_Run(len(self._steps), len(self._values), fields, last_iteration, source))
            self._run_starts.append(len(self._steps))
            self._shapes.setdefault(fields)
        self._steps.extend(steps)
        self._values.extend(values)

    def _rewind(self, step: float, source: int) -> None:
        """Before ``step`` is appended: if it came before, drop every row from it on (the later record wins, and
        what followed it is void)."""
        if not self._steps or self._steps[-1] < step:
            return
        first = bisect.bisect_left(self._steps, step)
        self.rewind_count += 1
        if len(self.rewinds) < MAX_REWINDS_KEPT:
            self.rewinds.append(Rewind(source, int(step), int(self._steps[-1])))
        r = bisect.bisect_right(self._run_starts, first) - 1
        run = self._runs[r]
        del self._values[run.first_value + (first - run.first_row) * len(run.fields) :]
        del self._steps[first:]
        kept = r + 1 if run.first_row < first else r
        del self._runs[kept:], self._run_starts[kept:]

    def __len__(self) -> int:
        return len(self._steps)

    @overload
    def __getitem__(self, index: int) -> StepRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[StepRecord]: ...
    def __getitem__(self, index: int | slice) -> StepRecord | list[StepRecord]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        i = range(len(self))[index]  # negative indices, IndexError
        run = self._runs[bisect.bisect_right(self._run_starts, i) - 1]
        width = len(run.fields)
        start = run.first_value + (i - run.first_row) * width
        values = tuple(self._values[start : start + width])
        return StepRecord(int(self._steps[i]), run.fields, values, run.last_iteration, run.source)

    def column(self, name: str, rows: range | None = None) -> Iterator[tuple[int, float | None]]:
        """(global_step, value of ``name`` or None) for consecutive ``rows`` (default: all), without building
        records."""
        slices = self.slices(name, rows)
        pairs = (zip(map(int, steps), repeat(None) if values is None else values) for steps, values in slices)
        return chain.from_iterable(pairs)

    def values(self, name: str, rows: range | None = None) -> array[float]:
        """The values of ``name`` in consecutive ``rows`` (default: all), leaving out the rows without it."""
        out = array("d")
        for _, values in self.slices(name, rows):
            if values is not None:
                out.extend(values)
        return out

    def slices(self, name: str, rows: range | None = None) -> Iterator[tuple[array[float], array[float] | None]]:
        """For each run of rows with one shape within consecutive ``rows`` (default: all): their global_steps (as
        floats) and their values of ``name``, or None if their fields lack it. Each is one slice, no loop per row."""
        rows = range(len(self)) if rows is None else rows
        if rows.step != 1:
            raise ValueError(f"takes consecutive rows, not {rows}")
        if not rows:
            return
        r = bisect.bisect_right(self._run_starts, rows.start) - 1
        for run, run_stop in zip(self._runs[r:], [*self._run_starts[r + 1 :], len(self)]):
            first, stop = max(run.first_row, rows.start), min(run_stop, rows.stop)
            if first >= stop:
                break
            steps = self._steps[first:stop]
            if name not in run.fields:
                yield steps, None
                continue
            width = len(run.fields)
            at = run.first_value + (first - run.first_row) * width + run.fields.index(name)
            yield steps, self._values[at : at + (stop - first) * width : width]

    def field_names(self) -> list[str]:
        """Every field of the kept rows, ``global_step`` first, the rest in first-seen order (the log's order)."""
        names: dict[str, None] = {"global_step": None}
        used = {run.fields for run in self._runs}
        for fields in self._shapes:
            if fields in used:
                names.update(dict.fromkeys(fields))
        return list(names)


def read_logs(
    paths: Sequence[str | os.PathLike[str]],
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[StepSeries, list[SourceStats]]:
    """Merge the logs of one chain, given in chain order (first job first): later records win."""
    series = StepSeries()
    stats: list[SourceStats] = []
    for index, path in enumerate(paths):
        source = SourceStats(path=str(path))
        stats.append(source)
        fields, fast = _Fields(), _FastPath()
        with open(path, "rb") as stream:
            for buf, lines_before in _line_buffers(stream, source, progress):
                block = fast.block(buf, fields, index)
                if block is not None:
                    series.extend(block)
                    _count(source, len(block.steps), int(block.steps[0]), int(block.steps[-1]))
                    continue
                for record in _scan(buf, fields, index, source, lines_before):
                    series.add(record)
                    _count(source, 1, record.global_step, record.global_step)
    return series, stats


def _count(source: SourceStats, records: int, first_step: int, last_step: int) -> None:
    source.records += records
    if source.first_step is None:
        source.first_step = first_step
    source.last_step = last_step


def total_bytes(paths: Iterable[str | os.PathLike[str]]) -> int:
    return sum(Path(p).stat().st_size for p in paths)
