"""Atomic file publication: a reader sees the old file or the whole new one, never a half-written one.

Everything other processes read (plans, markers, manifests, checkpoints, data outputs) is written to a
temporary name in the same directory, flushed to disk, and renamed into place. Writers of one output take turns
under :func:`locked` (``flock`` on a lock file next to it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def temporary_sibling(path: Path) -> Path:
    """A unique temporary name next to ``path`` (same file system, so the rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def remove_stale_siblings(path: Path) -> None:
    """Delete the temporary siblings of ``path`` (files or folders) left by writers that were killed; call it only
    under :func:`locked` for ``path``, so that no live writer's files are among them."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_output(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def publish_dir(tmp_dir: str | os.PathLike[str], final_dir: str | os.PathLike[str]) -> None:
    """Rename a fully written directory into place (the final name appears only when complete)."""
    tmp, final = Path(tmp_dir), Path(final_dir)
    for child in tmp.rglob("*"):
        if child.is_file():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


@contextlib.contextmanager
def locked(path: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created); a second caller waits, then sees what the first one did.

    ``waiting`` is called once when another holder makes this one wait. ``flock`` serialises processes of one host;
    on a shared file system it holds across hosts only where the file system supports it (Lustre mounted with
    ``-o flock``, NFS with a lock manager); elsewhere two hosts can hold it at once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
