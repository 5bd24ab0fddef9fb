"""C4 consolidation: MLPerf's merged files from C4 en 3.0.1's shards, verified, atomic and resumable.

MLPerf's ``utils/consolidate_data.sh`` turns ``c4-train.NNNNN-of-01024.json.gz`` into ``c4-train.en_{0..7}.json.gz``
(128 consecutive shards each, by ``cat``), the validation shards into ``c4-validation.en.json.gz``, and the first
``N_VALIDATION_SAMPLES`` validation documents into ``c4-validation-<N>-samples.en.json.gz``. This module writes the
same files, with what that script lacks:

- Planning by name first: a missing shard, a gap, or a count that does not split into ``--train-outputs`` equal
  groups is an error naming the shards, before any output is written. Any contiguous run of train shards from
  00000 is accepted (tests and demos use a few), split in order into equal groups.
- One unit of work per output (unit ``i`` is Slurm array task ``i``; ``--list`` prints them): units
  ``0..TRAIN_OUTPUTS-1`` are the train files, unit ``TRAIN_OUTPUTS`` the validation file training reads (the
  subset, or the whole validation set when ``N_VALIDATION_SAMPLES=0``), the whole validation set last. gzip members are
  concatenated as bytes, never recompressed; while copying, every member of every input is decompressed to check
  its CRC and length and to count documents, so a corrupt or truncated shard fails its output, by name.
- Each output is written under a temporary name and renamed when complete; then a manifest (inputs with sizes,
  modification times, CRC-32s and document counts; the output's size, CRC-32 and document count) is written to
  ``<merged>/.consolidate/<output>.json``. A rerun skips outputs whose manifest still matches their inputs and
  redoes the rest, so an interrupted run resumes with only the partial output.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orchestrator
from orchestrator.atomic import atomic_output, atomic_write_json, locked, remove_stale_siblings
from orchestrator.data.progress import RateProgress
from orchestrator.data.stream import CorruptInput, gunzip_blocks, parse_record

SHARD = re.compile(r"^c4-(train|validation)\.(\d{5})-of-(\d{5})\.json\.gz$")
#: C4 en 3.0.1's shard counts per split (``c4-train.00000-of-01024.json.gz`` ...).
C4_SHARDS = {"train": 1024, "validation": 8}
MANIFEST_DIR = ".consolidate"
MANIFEST_KIND = "orchestrator.consolidate"
MANIFEST_VERSION = 1
DEFAULT_TRAIN_OUTPUTS = 8
DEFAULT_VALIDATION_SAMPLES = 91205
SUBSET_GZIP_LEVEL = 6  # gzip's default, as MLPerf's `| gzip` uses
NAMES_SHOWN = 10


#: The program that runs a consolidation (``python -m``).
MODULE = "orchestrator.data.consolidate"


def train_file(k: int) -> str:
    """MLPerf's name of merged train file ``k`` (of ``TRAIN_OUTPUTS``)."""
    return f"c4-train.en_{k}.json.gz"


def validation_file(n_samples: int | None) -> str:
    """The validation file training reads: the first ``n_samples`` documents, or the whole set (None or 0)."""
    return f"c4-validation-{n_samples}-samples.en.json.gz" if n_samples else "c4-validation.en.json.gz"


def stem(name: str) -> str:
    """A merged file's name without ``.json.gz``: its tokenized dataset's prefix (Megatron adds ``_text_document``)."""
    return name.removesuffix(".json.gz")


class ConsolidationError(ValueError):
    """The shards cannot be consolidated as asked; the message names the shards and the fix."""


@dataclass(frozen=True)
class Unit:
    """One output file and the shards it is made of (array task ``index`` makes it)."""

    index: int
    output: str
    inputs: tuple[str, ...]
    head_lines: int | None = None  # None: concatenate whole shards; N: the first N lines, recompressed

    def describe(self) -> str:
        first, last = self.inputs[0], self.inputs[-1]
        span = first if len(self.inputs) == 1 else f"{first} .. {last}"
        what = f"first {self.head_lines} documents of " if self.head_lines is not None else ""
        return f"{self.index}\t{self.output}\t{what}{len(self.inputs)} shards ({span})"


@dataclass(frozen=True)
class Consolidation:
    """The units one consolidation makes: which shards go into which output, resolved from the shards on disk."""

    c4_path: Path
    merged_path: Path
    units: tuple[Unit, ...]
    notes: tuple[str, ...] = ()

    def manifest_path(self, unit: Unit) -> Path:
        return self.merged_path / MANIFEST_DIR / f"{unit.output}.json"


def shard_name(split: str, index: int, total: int | None = None) -> str:
    """C4's name of shard ``index`` of ``split``, out of ``total`` (default: C4 en 3.0.1's count, :data:`C4_SHARDS`)."""
    return f"c4-{split}.{index:05d}-of-{total or C4_SHARDS[split]:05d}.json.gz"


def found_shards(c4_path: Path) -> dict[str, dict[int, int]]:
    """The C4 shards in ``c4_path``: split -> shard index -> the total its name gives."""
    found: dict[str, dict[int, int]] = {split: {} for split in C4_SHARDS}
    dangling = []
    for entry in os.scandir(c4_path):
        match = SHARD.match(entry.name)
        if match and not entry.is_file():  # a link to nothing (or a folder of that name)
            dangling.append(entry.name)
        elif match:
            found[match[1]][int(match[2])] = int(match[3])
    if dangling:
        first = c4_path / sorted(dangling)[0]
        target = f" points to {os.readlink(first)}, which does not exist" if first.is_symlink() else " is not a file"
        more = f" (and {len(dangling) - 1} more)" if len(dangling) > 1 else ""
        raise ConsolidationError(f"C4_PATH {c4_path}: {first.name}{target}{more}; fix the link or re-fetch the shard")
    return found


def _names(split: str, indices: list[int], total: int) -> str:
    shown = ", ".join(shard_name(split, i, total) for i in indices[:NAMES_SHOWN])
    more = f" and {len(indices) - NAMES_SHOWN} more" if len(indices) > NAMES_SHOWN else ""
    return shown + more


def _contiguous(c4_path: Path, split: str, found: dict[int, int]) -> tuple[int, int]:
    """(count, total) of a split's shards, which must be 00000..count-1 of one total; else an error naming gaps."""
    totals = sorted(set(found.values()))
    if len(totals) > 1:
        raise ConsolidationError(
            f"{c4_path}: c4-{split} shards of different totals ({', '.join(f'-of-{t:05d}' for t in totals)})"
        )
    total = totals[0]
    count = max(found) + 1
    beyond = sorted(i for i in found if i >= total)
    if beyond:
        raise ConsolidationError(f"{c4_path}: shard index past its total: {_names(split, beyond, total)}")
    missing = [i for i in range(count) if i not in found]
    if missing:
        raise ConsolidationError(
            f"{c4_path}: missing {len(missing)} c4-{split} shard(s) inside 00000..{count - 1:05d}: "
            f"{_names(split, missing, total)}. Fetch them (C4 en 3.0.1) and rerun"
        )
    return count, total


def consolidation(
    c4_path: str | os.PathLike[str],
    merged_path: str | os.PathLike[str],
    train_outputs: int = DEFAULT_TRAIN_OUTPUTS,
    n_validation_samples: int = DEFAULT_VALIDATION_SAMPLES,
) -> Consolidation:
    """The units for the shards in ``c4_path``; raises :class:`ConsolidationError` before anything is written."""
    c4, merged = Path(c4_path), Path(merged_path)
    if not c4.is_dir():
        raise ConsolidationError(f"C4_PATH {c4}: not a directory")
    if train_outputs < 1:
        raise ConsolidationError(f"TRAIN_OUTPUTS={train_outputs}: give at least 1")
    if n_validation_samples < 0:
        raise ConsolidationError(f"N_VALIDATION_SAMPLES={n_validation_samples}: give 0 (no subset) or more")
    found = found_shards(c4)
    for split in found:
        if not found[split]:
            raise ConsolidationError(f"C4_PATH {c4}: no c4-{split}.NNNNN-of-NNNNN.json.gz shards (C4 en 3.0.1 layout)")
    train_count, train_total = _contiguous(c4, "train", found["train"])
    valid_count, valid_total = _contiguous(c4, "validation", found["validation"])
    if train_count % train_outputs:
        complete = -(-train_count // train_outputs) * train_outputs
        needed = list(range(train_count, complete))
        hint = (
            f"missing {_names('train', needed, train_total)}"
            if complete <= train_total
            else "use another TRAIN_OUTPUTS"
        )
        raise ConsolidationError(
            f"{c4}: {train_count} train shards (00000..{train_count - 1:05d}) do not split into TRAIN_OUTPUTS="
            f"{train_outputs} equal groups; {hint}"
        )
    per_output = train_count // train_outputs
    units = [
        Unit(
            k,
            train_file(k),
            tuple(shard_name("train", i, train_total) for i in range(k * per_output, (k + 1) * per_output)),
        )
        for k in range(train_outputs)
    ]
    validation = tuple(shard_name("validation", i, valid_total) for i in range(valid_count))
    # Unit train_outputs is the validation file training reads: the subset when there is one, else the whole set.
    if n_validation_samples:
        units.append(Unit(len(units), validation_file(n_validation_samples), validation, n_validation_samples))
    units.append(Unit(len(units), validation_file(None), validation))
    notes = []
    if train_count < train_total:
        notes.append(f"using train shards 00000..{train_count - 1:05d}, {train_count} of {train_total}")
    if valid_count < valid_total:
        notes.append(f"using validation shards 00000..{valid_count - 1:05d}, {valid_count} of {valid_total}")
    return Consolidation(c4, merged, tuple(units), tuple(notes))


# --- doing one unit ------------------------------------------------------------------------------------------


def _identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("kind") == MANIFEST_KIND and manifest.get("version") == MANIFEST_VERSION else None


def unit_complete(work: Consolidation, unit: Unit) -> bool:
    """The unit's output is on disk as its manifest describes, and its inputs are the ones it was made from."""
    manifest = _read_manifest(work.manifest_path(unit))
    if manifest is None or manifest["output"]["name"] != unit.output or manifest.get("head_lines") != unit.head_lines:
        return False
    try:
        now = [_identity(work.c4_path / name) for name in unit.inputs]
        size = (work.merged_path / unit.output).stat().st_size
    except OSError:
        return False
    then = [{k: i[k] for k in ("name", "size", "mtime_ns")} for i in manifest["inputs"]]
    return then == now and size == manifest["output"]["size"]


def is_complete(work: Consolidation, indices: list[int] | None = None) -> bool:
    """The plan's outputs (or those of ``indices``) are complete: what a pipeline checks to skip consolidation."""
    return all(unit_complete(work, work.units[i]) for i in (range(len(work.units)) if indices is None else indices))


class _CountingWriter:
    """Writes through to a file while keeping the CRC-32 and size of what went by."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.crc = 0
        self.size = 0

    def write(self, data: bytes) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        return self.sink.write(data)

    def flush(self) -> None:
        self.sink.flush()


BAD_EXAMPLES_KEPT = 5


class _Records:
    """Counts one shard's documents line by line; a line that is not a JSON object with a string ``text`` is not a
    document: it is counted apart, and the first few are kept as ``shard:line: reason``."""

    def __init__(self, shard: str, examples: list[str]) -> None:
        self.shard, self.examples = shard, examples
        self.documents = self.bad = self.line = 0
        self._carry = b""

    def feed(self, data: bytes) -> int:
        """Counts the complete lines of ``data``; returns the documents among them."""
        lines = (self._carry + data).split(b"\n")
        self._carry = lines.pop()
        before = self.documents
        for line in lines:
            self._one(line.removesuffix(b"\r"), "")
        return self.documents - before

    def close(self) -> int:
        """The shard's last line, when it lacks a newline (``cat`` would join it to the next shard's first line)."""
        if not self._carry:
            return 0
        before = self.documents
        self._one(self._carry, "no newline at the end of the shard (it would run into the next shard's first line)")
        self._carry = b""
        return self.documents - before

    def _one(self, line: bytes, problem: str) -> None:
        self.line += 1
        values, reason = parse_record(line, ("text",))
        reason = problem or reason
        if values is not None and not problem:
            self.documents += 1
            return
        self.bad += 1
        if len(self.examples) < BAD_EXAMPLES_KEPT:
            self.examples.append(f"{self.shard}:{self.line}: {reason}")


def _concatenate(
    work: Consolidation, unit: Unit, out: _CountingWriter, advance: Callable[[int, int], None], examples: list[str]
) -> list[dict[str, Any]]:
    """Copy each shard's bytes to ``out`` while inflating them to check integrity and count documents (bad records
    apart, the first few into ``examples``)."""
    records = []
    for name in unit.inputs:
        path = work.c4_path / name
        identity = _identity(path)
        crc = 0

        def on_raw(raw: bytes) -> None:
            nonlocal crc
            crc = zlib.crc32(raw, crc)
            out.write(raw)
            advance(len(raw), 0)

        counted = _Records(name, examples)
        for data in gunzip_blocks(path, on_raw):
            advance(0, counted.feed(data))
        advance(0, counted.close())
        records.append(identity | {"crc32": f"{crc:08x}", "documents": counted.documents, "bad_records": counted.bad})
    return records


def _head(
    work: Consolidation, unit: Unit, out: _CountingWriter, advance: Callable[[int, int], None], examples: list[str]
) -> tuple[list[dict[str, Any]], int]:
    """The first ``unit.head_lines`` lines of the shards, recompressed (MLPerf: ``zcat | head -n N | gzip``); each
    input's record says how many of its lines were taken and how many of those are not documents."""
    assert unit.head_lines is not None
    wanted = unit.head_lines
    records = []
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=SUBSET_GZIP_LEVEL, mtime=0) as gz:  # type: ignore[arg-type]
        for name in unit.inputs:
            if wanted == 0:
                break
            path = work.c4_path / name
            counted = _Records(name, examples)
            for data in gunzip_blocks(path, lambda raw: advance(len(raw), 0)):
                lines = data.count(b"\n")
                if lines >= wanted:
                    cut = 0
                    for _ in range(wanted):
                        cut = data.index(b"\n", cut) + 1
                    data, wanted = data[:cut], 0
                else:
                    wanted -= lines
                gz.write(data)
                advance(0, counted.feed(data))
                if wanted == 0:
                    break
            advance(0, counted.close())
            records.append(_identity(path) | {"documents": counted.documents, "bad_records": counted.bad})
    return records, unit.head_lines - wanted


def run_unit(
    work: Consolidation, index: int, force: bool = False, advance: Callable[[int, int], None] | None = None
) -> str:
    """Make output ``index`` unless it is complete; return ``"skipped"`` or ``"done"``.

    Raises :class:`ConsolidationError` naming the shard when an input is damaged; the output is then not written.
    Makers of one output take turns (a lock file next to its manifest), so none deletes another's temporary file.
    """
    unit = work.units[index]
    lock = work.manifest_path(unit).with_suffix(".lock")
    with locked(lock, lambda: print(f"{lock}: {unit.output} is being made by another job; waiting", file=sys.stderr)):
        return _run_unit(work, unit, force, advance)


def _run_unit(work: Consolidation, unit: Unit, force: bool, advance: Callable[[int, int], None] | None) -> str:
    if not force and unit_complete(work, unit):
        return "skipped"
    advance = advance or (lambda raw, docs: None)
    final = work.merged_path / unit.output
    manifest_path = work.manifest_path(unit)
    manifest_path.unlink(missing_ok=True)
    remove_stale_siblings(final)  # left by a killed run of this unit
    try:
        with atomic_output(final) as handle:
            out = _CountingWriter(handle)
            examples: list[str] = []
            if unit.head_lines is None:
                inputs = _concatenate(work, unit, out, advance, examples)
                if out.size != sum(i["size"] for i in inputs):
                    raise ConsolidationError(
                        f"{final}: wrote {out.size} bytes, the shards hold {sum(i['size'] for i in inputs)}"
                    )
            else:
                inputs, lines = _head(work, unit, out, advance, examples)
    except CorruptInput as exc:
        raise ConsolidationError(f"{exc}; {unit.output} was not written. Re-fetch that shard and rerun") from None
    documents, bad = sum(i["documents"] for i in inputs), sum(i["bad_records"] for i in inputs)
    if unit.head_lines is not None and lines < unit.head_lines:
        print(
            f"warning: {unit.output} has {lines} documents: the validation shards hold fewer than "
            f"N_VALIDATION_SAMPLES={unit.head_lines}",
            file=sys.stderr,
        )
    if bad:
        print(
            f"warning: {unit.output}: {bad} line(s) of its shards are not documents (invalid JSON, or no string "
            f"'text'), not counted as documents; first: {'; '.join(examples)}. Tokenizing stops at the first one "
            "unless told to skip them (--on-bad-record skip); re-fetching those shards fixes them",
            file=sys.stderr,
        )
    atomic_write_json(
        manifest_path,
        {
            "kind": MANIFEST_KIND,
            "version": MANIFEST_VERSION,
            "orchestrator_version": orchestrator.__version__,
            "unit": unit.index,
            "head_lines": unit.head_lines,
            "inputs": inputs,
            "output": {"name": unit.output, "size": out.size, "crc32": f"{out.crc:08x}", "documents": documents},
            "bad_records": bad,
            "bad_examples": examples,
        },
    )
    return "done"


def run_all(
    work: Consolidation, indices: list[int], force: bool = False, jobs: int = 1, live_progress: bool | None = None
) -> list[str]:
    """Make the given outputs, ``jobs`` at a time; return the error messages (empty when all succeeded)."""
    total = sum((work.c4_path / name).stat().st_size for i in indices for name in work.units[i].inputs)
    progress = RateProgress("consolidate", total, {"raw_bytes": "B/s gzip", "documents": "docs/s"}, live=live_progress)
    lock = threading.Lock()

    def advance(raw: int, documents: int) -> None:
        with lock:
            progress.update(raw, raw_bytes=raw, documents=documents)

    def one(index: int) -> str | None:
        unit = work.units[index]
        try:
            state = run_unit(work, index, force, advance)
        except ConsolidationError as exc:
            return str(exc)
        if state == "skipped":
            advance(sum((work.c4_path / n).stat().st_size for n in unit.inputs), 0)
        print(f"{unit.output}: {state}", file=sys.stderr)
        return None

    try:
        with ThreadPoolExecutor(max(1, jobs)) as pool:  # zlib and file I/O release the GIL
            errors = [e for e in pool.map(one, indices) if e]
    finally:
        progress.close()
    return errors


# --- command line --------------------------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags default to MLPerf's environment variables (C4_PATH, MERGED_C4_PATH, TRAIN_OUTPUTS, N_VALIDATION_SAMPLES)."""
    parser.add_argument("--c4-path", default=os.environ.get("C4_PATH"), help="C4 en 3.0.1 shards (default: $C4_PATH)")
    parser.add_argument(
        "--merged-c4-path",
        "--merged-path",
        dest="merged_c4_path",
        default=os.environ.get("MERGED_C4_PATH"),
        help="output folder (default: $MERGED_C4_PATH)",
    )
    parser.add_argument(
        "--train-outputs",
        type=int,
        default=_env_int("TRAIN_OUTPUTS", DEFAULT_TRAIN_OUTPUTS),
        help="train files (default 8)",
    )
    parser.add_argument(
        "--n-validation-samples",
        type=int,
        default=_env_int("N_VALIDATION_SAMPLES", DEFAULT_VALIDATION_SAMPLES),
        help="documents in the validation subset (default 91205; 0: no subset)",
    )
    parser.add_argument(
        "--task-index", type=int, default=None, help="make only this output (a Slurm array task); default all"
    )
    parser.add_argument("--list", action="store_true", help="print the units (index, output, shards) and exit")
    parser.add_argument("--count", action="store_true", help="print the number of units (the array size) and exit")
    parser.add_argument("--force", action="store_true", help="redo outputs even when complete")
    parser.add_argument(
        "--jobs", type=int, default=min(4, os.cpu_count() or 1), help="outputs made at once when making all"
    )


@dataclass(frozen=True)
class ConsolidateConfig:
    """One consolidation job: MLPerf's C4_PATH, MERGED_C4_PATH, TRAIN_OUTPUTS and N_VALIDATION_SAMPLES."""

    c4_path: Path
    merged_path: Path
    train_outputs: int = DEFAULT_TRAIN_OUTPUTS
    n_validation_samples: int = DEFAULT_VALIDATION_SAMPLES

    def to_argv(self) -> list[str]:
        """The command-line flags of this job (``--task-index`` picks a unit)."""
        return [
            "--c4-path",
            str(self.c4_path),
            "--merged-path",
            str(self.merged_path),
            "--train-outputs",
            str(self.train_outputs),
            "--n-validation-samples",
            str(self.n_validation_samples),
        ]

    def resolve(self) -> Consolidation:
        """The units, from the shards on disk; raises :class:`ConsolidationError` naming what is missing."""
        return consolidation(self.c4_path, self.merged_path, self.train_outputs, self.n_validation_samples)

    def validation_unit(self) -> int:
        """The unit that writes the validation file training reads (it follows the train files)."""
        return self.train_outputs

    def complete_reason(self, units: list[int]) -> str | None:
        """Why these units need not run (their outputs and manifests match the shards), or None."""
        try:
            work = self.resolve()
        except ConsolidationError:
            return None  # the job reports the problem, by shard name
        if is_complete(work, units):
            return f"all {len(units)} merged files are complete (manifests match the shards)"
        return None


def config_from_args(args: argparse.Namespace) -> ConsolidateConfig:
    """The job a command line describes (the inverse of :meth:`ConsolidateConfig.to_argv`)."""
    if not args.c4_path or not args.merged_c4_path:
        raise ConsolidationError("set C4_PATH and MERGED_C4_PATH (or --c4-path and --merged-c4-path)")
    return ConsolidateConfig(
        Path(args.c4_path), Path(args.merged_c4_path), args.train_outputs, args.n_validation_samples
    )


def run(args: argparse.Namespace) -> int:
    if not args.c4_path or not args.merged_c4_path:
        print("error: set C4_PATH and MERGED_C4_PATH (or --c4-path and --merged-c4-path)", file=sys.stderr)
        return 2
    try:
        work = config_from_args(args).resolve()
    except ConsolidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.count:
        print(len(work.units))
        return 0
    if args.list:
        for unit in work.units:
            print(unit.describe())
        return 0
    for note in work.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.task_index is not None and not 0 <= args.task_index < len(work.units):
        print(f"error: --task-index {args.task_index}: the plan has units 0..{len(work.units) - 1}", file=sys.stderr)
        return 2
    work.merged_path.mkdir(parents=True, exist_ok=True)
    indices = [args.task_index] if args.task_index is not None else list(range(len(work.units)))
    errors = run_all(work, indices, args.force, args.jobs)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.data.consolidate", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
