"""Streaming parser for the training log line both backends print (``orchestrator.logline``), and the chain merge.

Logs are srun stdout files: mostly noise (NCCL, NeMo and Lightning messages, tracebacks, progress bars), with one
``Training epoch E, iteration I/N | key: value | ...`` line per step, possibly behind a timestamp or an srun label.
The parser reads big binary chunks, looks only at text following the literal ``Training epoch``, and accepts a line
only if every field is ``key: number``. So memory stays flat in the size of the log, and anything else, such as a
line spliced by another rank's output or a look-alike message, is skipped, counted and shown as an example. An
unterminated last line is a write cut short (print() always ends its line), so it is never taken.

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
from array import array
from dataclasses import dataclass, field
from itertools import chain, compress, count, repeat
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, NamedTuple, Sequence, overload

MARKER = b"Training epoch "
HEADER = re.compile(rb"Training epoch \d+, iteration \d+/(\d+)")
ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]")
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_ ./()\-]*")
CHUNK_BYTES = 1 << 20
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


def _line_buffers(
    stream: BinaryIO, stats: SourceStats, progress: Callable[[int], None] | None
) -> Iterator[tuple[bytes, int]]:
    """The stream in big pieces that end with a line break, ANSI codes removed, each with the number of lines
    before it; the bytes read are counted into ``stats``, and an unterminated last metric line flagged there."""
    carry = b""
    lines_before = 0
    while chunk := stream.read(CHUNK_BYTES):
        if progress is not None:
            progress(len(chunk))
        stats.bytes += len(chunk)
        cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r")) + 1
        if cut == 0:
            # No line break yet: keep only what could still begin a metric line.
            carry += chunk
            if len(carry) > 2 * MAX_LINE_BYTES:
                carry = carry[-MAX_LINE_BYTES:]
            continue
        buf = b"".join((carry, memoryview(chunk)[:cut])) if carry or cut < len(chunk) else chunk
        carry = chunk[cut:]
        yield ANSI.sub(b"", buf) if b"\x1b" in buf else buf, lines_before
        lines_before += buf.count(b"\n")
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


def _scan(buf: bytes, fields: _Fields, source: int, stats: SourceStats, lines_before: int) -> Iterator[StepRecord]:
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
            stats.skip(lambda at=pos: lines_before + buf.count(b"\n", 0, at) + 1, line, record)
        else:
            yield record
        pos = find(MARKER, pos + len(MARKER))


class _Block(NamedTuple):
    """Consecutive records of one shape in rising steps, as columns: what ``StepSeries.extend`` appends."""

    fields: tuple[str, ...]
    steps: array[int]
    last_iteration: array[int]
    values: array[float]  # row after row, len(fields) values each
    source: int


#: A value the fast path takes: printable ASCII but space, '/', ':' and '|'. Narrower than what ``_parse_line``
#: accepts, never wider: a line that falls outside it sends its chunk to the slow path.
_VALUE = rb"([!-.0-9;-{}~]+)"
#: Where a chunk's first 64 KiB hold less than one marker per 16 KiB, it takes the slow path: there the fast path
#: costs more than it saves (its regex scan takes about 0.8 ms per MiB of noise, the slow path about 8 µs per line).
_SAMPLE_BYTES, _SPARSE_BYTES = 64 << 10, 16 << 10


class _FastPath:
    """An optimisation of ``_scan`` + ``StepSeries.add`` for chunks made of well-formed metric lines of one shape.

    Nearly every metric line of a run has the same fields in the same order. For the shape of a chunk's first
    metric line, one regex matches a whole well-formed line of that shape and captures its numbers; ``findall``
    runs it over the chunk at C speed. The chunk is taken in bulk only if that changes nothing: every marker starts
    a match (a match holds exactly one marker, at its start, and ends at the line break, so each match is the line
    ``_scan`` would cut there, with exactly the keys of the shape), every value converts with ``float()`` as in
    ``_parse_line``, and ``global_step`` is a non-negative integer rising strictly within the chunk. Otherwise
    ``block`` returns None and the chunk goes through ``_scan``, which defines the behaviour."""

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
        try:
            values = array("d", map(float, chain.from_iterable(rows)))
        except ValueError:
            return None
        steps = values[names.index("global_step") :: len(names)]
        if not (all(map(float.is_integer, steps)) and steps[0] >= 0 and all(map(operator.lt, steps, steps[1:]))):
            return None
        return _Block(names, array("q", map(int, steps)), array("q", [last_iteration]) * markers, values, source)

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


class StepSeries(Sequence[StepRecord]):
    """The merged steps of a chain, ascending by global_step; a repeated step drops the records from it onward.

    Stored in columns of machine numbers (about 100 bytes a step, no Python object per step); records are built
    when asked for."""

    def __init__(self) -> None:
        self._steps = array("q")  # global_step of each row, ascending
        self._shape = array("I")  # index into _shapes: the row's field names
        self._start = array("q")  # the row's first value in _values
        self._last_iteration = array("q")
        self._source = array("I")
        self._values = array("d")
        self._shapes: list[tuple[str, ...]] = []
        self._shape_ids: dict[tuple[str, ...], int] = {}
        self.rewinds: list[Rewind] = []
        self.rewind_count = 0

    def add(self, record: StepRecord) -> None:
        self._rewind(record.global_step, record.source)
        self._steps.append(record.global_step)
        self._shape.append(self._shape_id(record.fields))
        self._start.append(len(self._values))
        self._last_iteration.append(record.last_iteration)
        self._source.append(record.source)
        self._values.extend(record.values)

    def extend(self, block: _Block) -> None:
        """``add`` of each record of ``block``, in one go: its steps rise, so only its first may rewind."""
        rows, width = len(block.steps), len(block.fields)
        self._rewind(block.steps[0], block.source)
        self._steps.extend(block.steps)
        self._shape.extend(array("I", [self._shape_id(block.fields)]) * rows)
        self._start.extend(range(len(self._values), len(self._values) + rows * width, width))
        self._last_iteration.extend(block.last_iteration)
        self._source.extend(array("I", [block.source]) * rows)
        self._values.extend(block.values)

    def _shape_id(self, fields: tuple[str, ...]) -> int:
        shape = self._shape_ids.get(fields)
        if shape is None:
            shape = self._shape_ids[fields] = len(self._shapes)
            self._shapes.append(fields)
        return shape

    def _rewind(self, step: int, source: int) -> None:
        """Before ``step`` is appended: if it came before, drop every row from it on (the later record wins, and
        what followed it is void)."""
        if not self._steps or self._steps[-1] < step:
            return
        first = bisect.bisect_left(self._steps, step)
        self.rewind_count += 1
        if len(self.rewinds) < MAX_REWINDS_KEPT:
            self.rewinds.append(Rewind(source, step, self._steps[-1]))
        del self._values[self._start[first] :]
        for column in (self._steps, self._shape, self._start, self._last_iteration, self._source):
            del column[first:]

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
        fields = self._shapes[self._shape[i]]
        start = self._start[i]
        values = tuple(self._values[start : start + len(fields)])
        return StepRecord(self._steps[i], fields, values, self._last_iteration[i], self._source[i])

    def column(self, name: str, rows: range | None = None) -> Iterator[tuple[int, float | None]]:
        """(global_step, value of ``name`` or None) for consecutive ``rows`` (default: all), without building
        records."""
        runs = self._runs(name, rows)
        return chain.from_iterable(zip(steps, repeat(None) if values is None else values) for steps, values in runs)

    def values(self, name: str, rows: range | None = None) -> array[float]:
        """The values of ``name`` in consecutive ``rows`` (default: all), leaving out the rows without it."""
        out = array("d")
        for _, values in self._runs(name, rows):
            if values is not None:
                out.extend(values)
        return out

    def _runs(self, name: str, rows: range | None) -> Iterator[tuple[array[int], array[float] | None]]:
        """(global_steps, values of ``name`` or None if they lack it) of each run of ``rows`` that have one shape:
        such rows lie at a fixed stride in ``_values``, so a run's values are one slice."""
        rows = range(len(self)) if rows is None else rows
        if rows.step != 1:
            raise ValueError(f"takes consecutive rows, not {rows}")
        shape = self._shape[rows.start : rows.stop]
        cuts = [0, *compress(count(1), map(operator.ne, shape, shape[1:])), len(shape)]
        for first, stop in zip(cuts, cuts[1:]):
            steps = self._steps[rows.start + first : rows.start + stop]
            fields = self._shapes[shape[first]]
            if name not in fields:
                yield steps, None
                continue
            at, width = self._start[rows.start + first] + fields.index(name), len(fields)
            yield steps, self._values[at : at + len(steps) * width : width]

    def field_names(self) -> list[str]:
        """Every field of the kept rows, ``global_step`` first, the rest in first-seen order (the log's order)."""
        names: dict[str, None] = {"global_step": None}
        used = set(self._shape)
        for shape_id, fields in enumerate(self._shapes):
            if shape_id in used:
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
                    _count(source, len(block.steps), block.steps[0], block.steps[-1])
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
