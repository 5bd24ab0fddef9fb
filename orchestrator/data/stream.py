"""Streaming reads of plain and gzip inputs: bounded memory, whole lines, damage reported by file name.

C4 shards and the consolidated files are gzip with one or many members (``cat a.gz b.gz`` is a valid gzip
file). Every member's CRC-32 and length trailer is checked as it is decompressed, so a corrupt or truncated file is
an error here, never a silently short input. ISA-L (``pip install isal``) decompresses about three times faster
than zlib and is used when installed; the bytes are the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

try:  # optional accelerator with zlib's interface
    from isal import isal_zlib as _inflate
except ImportError:  # pragma: no cover - depends on the environment
    _inflate = zlib  # type: ignore[assignment]

READ_BLOCK = 8 << 20
GZIP_MAGIC = b"\x1f\x8b"
GZIP_SUFFIXES = (".gz",)
JSONL_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


class CorruptInput(ValueError):
    """An input file is damaged: not gzip, a bad CRC, a truncated member, trailing garbage."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def is_gzip(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).endswith(GZIP_SUFFIXES)


def gunzip_blocks(
    path: str | os.PathLike[str],
    on_raw: Callable[[bytes], None] | None = None,
    read_block: int = READ_BLOCK,
) -> Iterator[bytes]:
    """Decompressed bytes of a gzip file, member after member; ``on_raw`` sees every compressed block read.

    Raises :class:`CorruptInput` for anything but a clean sequence of complete members.
    """
    members = 0
    inflater = None
    consumed = 0  # compressed bytes fed to the current member
    with open(path, "rb") as handle:
        while True:
            raw = handle.read(read_block)
            if not raw:
                break
            if on_raw is not None:
                on_raw(raw)
            while raw:
                if inflater is None:
                    if consumed == 0 and len(raw) >= 2 and raw[:2] != GZIP_MAGIC:
                        where = "is not gzip" if members == 0 else f"has trailing bytes after gzip member {members}"
                        raise CorruptInput(path, where)
                    inflater = _inflate.decompressobj(wbits=31)
                try:
                    out = inflater.decompress(raw)
                except _inflate.error as exc:
                    raise CorruptInput(path, f"corrupt gzip data in member {members + 1}: {exc}") from None
                if out:
                    yield out
                if inflater.eof:
                    members += 1
                    raw = inflater.unused_data
                    inflater = None
                    consumed = 0
                else:
                    consumed += len(raw)
                    raw = b""
    if inflater is not None:
        raise CorruptInput(path, f"truncated: gzip member {members + 1} ends before its trailer")
    if members == 0:
        raise CorruptInput(path, "is empty (not even one gzip member)")


def plain_blocks(
    path: str | os.PathLike[str],
    on_raw: Callable[[bytes], None] | None = None,
    read_block: int = READ_BLOCK,
) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        for raw in iter(lambda: handle.read(read_block), b""):
            if on_raw is not None:
                on_raw(raw)
            yield raw


def content_blocks(path: str | os.PathLike[str], on_raw: Callable[[bytes], None] | None = None) -> Iterator[bytes]:
    """The file's content, decompressed when its name ends in ``.gz``."""
    return gunzip_blocks(path, on_raw) if is_gzip(path) else plain_blocks(path, on_raw)


def line_blocks(blocks: Iterator[bytes], target: int) -> Iterator[tuple[int, bytes]]:
    """Regroup a byte stream into blocks of whole lines of about ``target`` bytes: ``(first line number, bytes)``.

    Line numbers start at 1. Every block but possibly the last ends with ``\\n``; a line longer than ``target``
    makes a block of its own.
    """
    line = 1
    pending = bytearray()
    for data in blocks:
        pending += data
        while len(pending) >= target:
            cut = pending.rfind(b"\n", 0, target) + 1 or pending.find(b"\n", target) + 1
            if cut == 0:
                break  # one long line, not ended yet
            block = bytes(pending[:cut])
            del pending[:cut]
            yield line, block
            line += block.count(b"\n")
    while pending:
        cut = pending.rfind(b"\n", 0, target) + 1 or pending.find(b"\n", target) + 1 or len(pending)
        block = bytes(pending[:cut])
        del pending[:cut]
        yield line, block
        line += block.count(b"\n")


def file_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def parse_record(line: bytes, keys: tuple[str, ...]) -> tuple[list[str] | None, str]:
    """The values of ``keys`` in one JSON line, or None and why not (what tokenization and consolidation call a
    bad record)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as fast_error:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, f"invalid UTF-8 at byte {exc.start + 1} of the line"
        try:  # the stdlib parser (Megatron's) also takes NaN/Infinity and lone surrogates
            record = json.loads(text)
        except ValueError:
            reason = "empty line" if not line.strip() else f"invalid JSON: {fast_error}"
            return None, reason
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    values = []
    for key in keys:
        if key not in record:
            return None, f"missing key {key!r} (keys: {', '.join(sorted(record)) or 'none'})"
        value = record[key]
        if not isinstance(value, str):
            return None, f"{key!r} is a {type(value).__name__}, expected a string"
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                return (
                    None,
                    f"{key!r} holds a lone surrogate (\\u{ord(value[exc.start]):04x}), which is not valid Unicode",
                )
        values.append(value)
    return values, ""
