"""Checkpoint directories: which one is complete, which one to resume from, how a new one is published.

Layout of a run's ``ckpt_dir`` (the reference trainer writes it; the in-job driver only reads it)::

    step-00000040/          one complete checkpoint: 40 optimizer steps done
        model.pt optimizer.pt rng.pt
        meta.json           written last; its presence is what makes the directory complete
    step-00000060/
    latest                  "step-00000060\\n", replaced atomically after each publication (advisory)
    .tmp-step-00000080/     a checkpoint being written (or left by a crash): never read, removed at start

A checkpoint is written under ``.tmp-step-<N>/``, its metadata file last, then everything is fsynced and the
directory renamed to ``step-<N>/`` (:func:`orchestrator.atomic.publish_dir`), so a crash at any moment leaves
either the old set of checkpoints or the old set plus one complete new one. Old checkpoints are pruned by renaming
them to ``.trash-...`` first, so a crash during deletion never leaves a half-deleted ``step-*`` directory.

Pruning keeps the newest :data:`KEEP_LAST` complete checkpoints plus every checkpoint that holds a file named
:data:`PIN_FILE` (``touch <ckpt_dir>/step-00000040/PINNED`` keeps it forever).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from orchestrator.atomic import atomic_write_text, publish_dir

META_FILE = "meta.json"
LATEST_FILE = "latest"
PIN_FILE = "PINNED"
KEEP_LAST = 2
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
#: Test/fault-injection knob: seconds to sleep in the middle of writing a temporary checkpoint, so a test can
#: kill -9 the trainer mid-write and check that the previous checkpoint is the one resumed from.
WRITE_DELAY_ENV = "ORCHESTRATOR_CKPT_WRITE_DELAY_S"

_STEP_RE = re.compile(r"^step-(\d{8})$")


class CheckpointError(RuntimeError):
    """The checkpoint directory is in a state that must not be resumed from silently."""


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def step_dir(ckpt_dir: str | os.PathLike[str], step: int) -> Path:
    return Path(ckpt_dir) / step_name(step)


def is_complete(path: Path) -> bool:
    return (path / META_FILE).is_file()


def _step_dirs(ckpt_dir: Path) -> dict[int, Path]:
    """Every final-named ``step-<N>`` directory, complete or not."""
    if not ckpt_dir.is_dir():
        return {}
    found = {}
    for child in ckpt_dir.iterdir():
        match = _STEP_RE.match(child.name)
        if match and child.is_dir():
            found[int(match.group(1))] = child
    return found


def complete_steps(ckpt_dir: str | os.PathLike[str]) -> list[int]:
    """Steps of the complete checkpoints, ascending; temporary and half-deleted directories are ignored."""
    return sorted(step for step, path in _step_dirs(Path(ckpt_dir)).items() if is_complete(path))


def latest_step(ckpt_dir: str | os.PathLike[str]) -> int | None:
    """The newest complete checkpoint's step (optimizer steps done), or None; the driver's progress measure."""
    steps = complete_steps(ckpt_dir)
    return steps[-1] if steps else None


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    meta = Path(path) / META_FILE
    try:
        return json.loads(meta.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {META_FILE}, so this is not a complete checkpoint") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta}: unreadable metadata ({exc}); move this checkpoint away") from None


def find_resume(ckpt_dir: str | os.PathLike[str]) -> int | None:
    """The step to resume from, or None for a fresh start; raises where a fresh start would lose progress.

    The failure NeMo PR #10228 fixed was a run that found only unfinished checkpoints and silently trained from
    step 0 again. Here that is an error: a final-named ``step-*`` directory without metadata newer than every
    complete one, or a ``latest`` pointer naming a checkpoint that is not complete, stops the job with the
    directory named. Temporary directories (an interrupted write) never count: they were never published.
    """
    root = Path(ckpt_dir)
    dirs = _step_dirs(root)
    complete = sorted(step for step, path in dirs.items() if is_complete(path))
    newest = complete[-1] if complete else None
    broken = sorted(step for step, path in dirs.items() if not is_complete(path) and (newest is None or step > newest))
    if broken:
        bad = dirs[broken[-1]]
        resume = f"resume from {step_name(newest)}" if newest is not None else "start from step 0"
        raise CheckpointError(
            f"{bad} has no {META_FILE}: it is not a complete checkpoint, and no complete checkpoint is newer. "
            f"Refusing to go back silently. Inspect it; to {resume}, move {bad.name} out of {root}."
        )
    pointer = root / LATEST_FILE
    if pointer.is_file():
        name = pointer.read_text().strip()
        match = _STEP_RE.match(name)
        if not match or not is_complete(root / name):
            resume = f"resume from {step_name(newest)}" if newest is not None else "start from step 0"
            raise CheckpointError(
                f"{pointer} names {name!r}, which is not a complete checkpoint in {root}. A checkpoint was lost "
                f"or moved; refusing to go back silently. Restore it, or to {resume}, delete {pointer}."
            )
    return newest


def resolve(path: str | os.PathLike[str]) -> Path:
    """A checkpoint given as its ``step-*`` directory or as a checkpoint directory (its newest complete one)."""
    path = Path(path)
    if is_complete(path):
        return path
    step = latest_step(path)
    if step is None:
        raise CheckpointError(f"{path}: neither a complete checkpoint (no {META_FILE}) nor a directory holding one")
    return step_dir(path, step)


def remove_stale(ckpt_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete leftovers of interrupted writes and prunes (``.tmp-*``, ``.trash-*``); call on one rank at start."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    stale = [c for c in root.iterdir() if c.is_dir() and c.name.startswith((TMP_PREFIX, TRASH_PREFIX))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def begin(ckpt_dir: str | os.PathLike[str], step: int) -> Path:
    """A fresh, empty temporary directory to write checkpoint ``step`` into."""
    tmp = Path(ckpt_dir) / f"{TMP_PREFIX}{step_name(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_file(path: Path, write: Callable[[Any], object]) -> None:
    """Write one file of a checkpoint through ``write(handle)`` (``torch.save(obj, handle)``). A failure names the
    file, and a full disk says so with the space left, where torch says only "unexpected pos 9344 vs 9236"."""
    handle: _Watched | None = None
    try:
        with open(path, "wb") as raw:
            handle = _Watched(raw)
            write(handle)
    except (OSError, RuntimeError) as exc:
        error = handle.error if handle is not None and handle.error is not None else exc
        if not isinstance(error, OSError):
            raise
        if error.errno == errno.ENOSPC:
            raise CheckpointError(
                f"disk full: no space left on device writing {path} ({_space(path.parent)}); "
                "free space there or point train.ckpt_dir elsewhere"
            ) from exc
        raise CheckpointError(f"writing {path} failed: {error.strerror or error}") from exc


class _Watched:
    """A file handle that remembers why a write failed: torch.save swallows the OSError and reports a position."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._raw.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self._raw.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise


def _space(folder: Path) -> str:
    try:
        usage = shutil.disk_usage(folder)
    except OSError as exc:
        return f"free space unknown: {exc.strerror or exc}"
    return f"{_size(usage.free)} free of {_size(usage.total)}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fault_injection_delay() -> None:
    """Sleep ``$ORCHESTRATOR_CKPT_WRITE_DELAY_S`` seconds (tests kill the writer during this sleep)."""
    delay = float(os.environ.get(WRITE_DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)


def publish(tmp: Path, ckpt_dir: str | os.PathLike[str], step: int, meta: dict[str, Any]) -> Path:
    """Write the metadata last, rename the directory into place, point ``latest`` at it, prune old ones."""
    root = Path(ckpt_dir)
    final = step_dir(root, step)
    if final.exists():
        raise CheckpointError(f"{final} already exists; a checkpoint is never overwritten")
    write_file(
        tmp / META_FILE, lambda handle: handle.write((json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    )
    publish_dir(tmp, final)
    atomic_write_text(root / LATEST_FILE, final.name + "\n")
    prune(root)
    return final


def prune(ckpt_dir: str | os.PathLike[str], keep: int = KEEP_LAST) -> list[Path]:
    """Delete complete checkpoints older than the newest ``keep``, except pinned ones; returns what went."""
    root = Path(ckpt_dir)
    steps = complete_steps(root)
    removed = []
    for step in steps[: max(len(steps) - keep, 0)]:
        path = step_dir(root, step)
        if (path / PIN_FILE).exists():
            continue
        trash = root / f"{TRASH_PREFIX}{path.name}"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)  # the final name disappears atomically; deleting the rest may be interrupted
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(path)
    return removed
