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
import os
import re
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, NamedTuple, Sequence, overload

MARKER = b"Training epoch "
HEADER = re.compile(rb"Training epoch \d+, iteration \d+/(\d+)")
ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]")
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_ ./()\-]*")
CHUNK_BYTES = 4 << 20
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


def iter_records(
    stream: BinaryIO,
    stats: SourceStats,
    *,
    source: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Iterator[StepRecord]:
    """Yield the metric records of one log stream in file order; count and sample what was skipped into ``stats``."""
    fields = _Fields()
    carry = b""
    lines_before = 0
    while True:
        chunk = stream.read(CHUNK_BYTES)
        if progress is not None and chunk:
            progress(len(chunk))
        stats.bytes += len(chunk)
        buf = carry + chunk if carry else chunk
        if not chunk:
            break
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r")) + 1
        if cut == 0:
            # No line break yet: keep only what could still begin a metric line.
            carry = buf[-MAX_LINE_BYTES:] if len(buf) > 2 * MAX_LINE_BYTES else buf
            continue
        buf, carry = buf[:cut], buf[cut:]
        yield from _scan(buf, fields, source, stats, lines_before)
        lines_before += buf.count(b"\n")
    if MARKER in ANSI.sub(b"", buf):
        stats.partial_last_line = True


def _scan(buf: bytes, fields: _Fields, source: int, stats: SourceStats, lines_before: int) -> Iterator[StepRecord]:
    """The records in ``buf``, which ends with a line break."""
    if b"\x1b" in buf:
        buf = ANSI.sub(b"", buf)
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
        step = record.global_step
        if self._steps and self._steps[-1] >= step:
            self._rewind(record)
        shape = self._shape_ids.get(record.fields)
        if shape is None:
            shape = self._shape_ids[record.fields] = len(self._shapes)
            self._shapes.append(record.fields)
        self._steps.append(step)
        self._shape.append(shape)
        self._start.append(len(self._values))
        self._last_iteration.append(record.last_iteration)
        self._source.append(record.source)
        self._values.extend(record.values)

    def _rewind(self, record: StepRecord) -> None:
        """Drop every row from ``record.global_step`` on: the later record wins, and what followed it is void."""
        first = bisect.bisect_left(self._steps, record.global_step)
        self.rewind_count += 1
        if len(self.rewinds) < MAX_REWINDS_KEPT:
            self.rewinds.append(Rewind(record.source, record.global_step, self._steps[-1]))
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
        """(global_step, value of ``name`` or None) for ``rows`` (default: all), without building records."""
        positions = [fields.index(name) if name in fields else -1 for fields in self._shapes]
        steps, shape, start, values = self._steps, self._shape, self._start, self._values
        for i in range(len(self)) if rows is None else rows:
            at = positions[shape[i]]
            yield steps[i], (values[start[i] + at] if at >= 0 else None)

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
        with open(path, "rb") as stream:
            for record in iter_records(stream, source, source=index, progress=progress):
                source.records += 1
                if source.first_step is None:
                    source.first_step = record.global_step
                source.last_step = record.global_step
                series.add(record)
    return series, stats


def total_bytes(paths: Iterable[str | os.PathLike[str]]) -> int:
    return sum(Path(p).stat().st_size for p in paths)
