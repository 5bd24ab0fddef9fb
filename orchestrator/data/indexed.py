"""Megatron's indexed dataset (``<prefix>.bin`` + ``<prefix>.idx``), byte for byte as megatron-core reads it.

Layout of ``.idx`` (megatron/core/datasets/indexed_dataset.py, ``_IndexWriter``)::

    b"MMIDIDX\\x00\\x00" | <Q version=1 | <B dtype code | <Q sequence count S | <Q document count D (= docs + 1)
    int32[S] sequence lengths | int64[S] byte offsets into .bin | int64[D] document indices

``.bin`` is every sequence's tokens back to back, no header. Without sentence splitting one document is one
sequence, so the document indices are ``0..S``.

Writers publish atomically: ``.bin`` first, ``.idx`` last, both by rename, so an ``.idx`` on disk always
describes a complete ``.bin``.
"""

from __future__ import annotations

import os
import shutil
import struct
from array import array
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from orchestrator.atomic import fsync_dir, temporary_sibling

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_SIZE = len(INDEX_HEADER) + 8 + 1 + 8 + 8  # 34 bytes, as megatron-core's reader hard-codes

#: megatron-core's DType codes.
DTYPE_CODES: dict[type[np.number], int] = {
    np.uint8: 1,
    np.int8: 2,
    np.int16: 3,
    np.int32: 4,
    np.int64: 5,
    np.float64: 6,
    np.float32: 7,
    np.uint16: 8,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


def optimal_dtype(vocab_size: int | None) -> type[np.number]:
    """megatron-core's ``DType.optimal_dtype``: uint16 below 65500 tokens of vocabulary, else int32."""
    if vocab_size is not None and vocab_size < 65500:
        return np.uint16
    return np.int32


def bin_path(prefix: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(prefix)}.bin")


def idx_path(prefix: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(prefix)}.idx")


class CorruptDataset(ValueError):
    """A dataset's ``.idx`` does not describe its ``.bin``; the message names the file and what disagrees."""


def remove(prefix: str | os.PathLike[str]) -> None:
    """Delete a dataset, its index first, so that no reader ever finds an index without its data."""
    idx_path(prefix).unlink(missing_ok=True)
    bin_path(prefix).unlink(missing_ok=True)


def exists(prefix: str | os.PathLike[str]) -> bool:
    """A dataset exists once its index is published (the index is renamed into place last)."""
    return idx_path(prefix).is_file() and bin_path(prefix).is_file()


class IndexedDatasetWriter:
    """Streams documents into ``<prefix>.bin`` and writes ``<prefix>.idx`` on :meth:`finalize`.

    Index arrays are kept as compact typed arrays (20 bytes per document), never as Python int lists.
    """

    def __init__(self, prefix: str | os.PathLike[str], dtype: type[np.number]) -> None:
        if dtype not in DTYPE_CODES:
            raise ValueError(f"unsupported token dtype {dtype}; use one of {sorted(d.__name__ for d in DTYPE_CODES)}")
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self._bin_final = bin_path(prefix)
        self._bin_final.parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = temporary_sibling(self._bin_final)
        self._bin = open(self._bin_tmp, "wb", buffering=16 * 1024 * 1024)
        self._lengths = array("i")  # int32 tokens per sequence
        self._doc_index = array("q", [0])  # int64 sequence index at each document end
        self._closed = False

    @property
    def num_sequences(self) -> int:
        return len(self._lengths)

    @property
    def num_tokens(self) -> int:
        return sum(self._lengths)

    def add_document(self, tokens: Sequence[int] | np.ndarray, sentence_lengths: Sequence[int] | None = None) -> None:
        """One document: its tokens and, when sentences were split, the length of each sentence."""
        data = np.asarray(tokens, dtype=self.dtype)
        self._bin.write(data.tobytes(order="C"))
        lengths = [len(data)] if sentence_lengths is None else list(sentence_lengths)
        self._lengths.extend(lengths)
        self._doc_index.append(len(self._lengths))

    def add_documents(self, flat_tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Many one-sequence documents at once: ``flat_tokens`` is their concatenation.

        A document of length 0 gets no sequence but still a document boundary, as ``preprocess_data.py`` records
        a document whose text has no tokens.
        """
        self._bin.write(np.ascontiguousarray(flat_tokens, dtype=self.dtype).tobytes())
        lengths = np.asarray(lengths)
        nonempty = lengths > 0
        start = len(self._lengths)
        self._lengths.frombytes(np.ascontiguousarray(lengths[nonempty], dtype=np.int32).tobytes())
        self._doc_index.frombytes((start + np.cumsum(nonempty, dtype=np.int64)).tobytes())

    def append_dataset(self, prefix: str | os.PathLike[str]) -> None:
        """Concatenate a finished dataset (a worker's shard) onto this one; offsets are re-based."""
        other = IndexedDataset(prefix)
        if other.dtype != self.dtype:
            raise ValueError(f"{prefix}: dtype {other.dtype} does not match {self.dtype}")
        base = len(self._lengths)
        self._lengths.frombytes(np.asarray(other.sequence_lengths, dtype=np.int32).tobytes())
        self._doc_index.frombytes((np.asarray(other.document_indices[1:], dtype=np.int64) + base).tobytes())
        self._bin.flush()
        with open(bin_path(prefix), "rb") as src:
            shutil.copyfileobj(src, self._bin, 64 * 1024 * 1024)

    def finalize(self) -> None:
        """Publish ``.bin`` then ``.idx``; until this returns, neither final name holds partial data."""
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        self._closed = True
        lengths = np.frombuffer(self._lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_index = np.frombuffer(self._doc_index, dtype=np.int64)
        final_idx = idx_path(self.prefix)
        tmp_idx = temporary_sibling(final_idx)
        with open(tmp_idx, "wb") as out:
            out.write(INDEX_HEADER)
            out.write(struct.pack("<Q", INDEX_VERSION))
            out.write(struct.pack("<B", DTYPE_CODES[self.dtype.type]))
            out.write(struct.pack("<Q", len(lengths)))
            out.write(struct.pack("<Q", len(doc_index)))
            out.write(lengths.tobytes(order="C"))
            out.write(pointers.tobytes(order="C"))
            out.write(doc_index.tobytes(order="C"))
            out.flush()
            os.fsync(out.fileno())
        idx_path(self.prefix).unlink(missing_ok=True)  # an old index must never describe the new .bin
        os.replace(self._bin_tmp, self._bin_final)
        os.replace(tmp_idx, final_idx)
        fsync_dir(final_idx.parent)

    def abort(self) -> None:
        """Drop everything written so far (nothing is published)."""
        if not self._closed:
            self._bin.close()
            self._closed = True
        self._bin_tmp.unlink(missing_ok=True)

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


class IndexedDataset:
    """Memory-mapped reader of a Megatron indexed dataset."""

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        """Opens and checks the index: counts against the file's size, offsets against the cumulative lengths,
        document indices in order, and the ``.bin`` size; raises :class:`CorruptDataset` naming the file."""
        self.prefix = Path(prefix)
        index = idx_path(prefix)
        with open(index, "rb") as handle:
            header = handle.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE or header[: len(INDEX_HEADER)] != INDEX_HEADER:
            raise CorruptDataset(f"{index}: not a Megatron indexed dataset (bad header)")
        (version,) = struct.unpack("<Q", header[9:17])
        if version != INDEX_VERSION:
            raise CorruptDataset(f"{index}: index version {version}, expected {INDEX_VERSION}")
        (code,) = struct.unpack("<B", header[17:18])
        if code not in CODE_DTYPES:
            raise CorruptDataset(f"{index}: unknown dtype code {code}")
        self.dtype = np.dtype(CODE_DTYPES[code])
        (count,) = struct.unpack("<Q", header[18:26])
        (doc_count,) = struct.unpack("<Q", header[26:34])
        index_size = index.stat().st_size
        if index_size != HEADER_SIZE + 12 * count + 8 * doc_count:
            raise CorruptDataset(
                f"{index}: {index_size} bytes, but its header counts {count} sequences and {doc_count} document "
                f"indices ({HEADER_SIZE + 12 * count + 8 * doc_count} bytes)"
            )
        self._index = np.memmap(index, mode="r", dtype=np.uint8)
        offset = HEADER_SIZE
        self.sequence_lengths = np.frombuffer(self._index, dtype=np.int32, count=count, offset=offset)
        offset += self.sequence_lengths.nbytes
        self.sequence_pointers = np.frombuffer(self._index, dtype=np.int64, count=count, offset=offset)
        offset += self.sequence_pointers.nbytes
        self.document_indices = np.frombuffer(self._index, dtype=np.int64, count=doc_count, offset=offset)
        self._check_arrays(index)
        size = bin_path(prefix).stat().st_size
        expected = int(self.sequence_lengths.sum(dtype=np.int64)) * self.dtype.itemsize
        if size != expected:
            raise CorruptDataset(f"{bin_path(prefix)}: {size} bytes, the index describes {expected} ({index})")
        self._bin = np.memmap(bin_path(prefix), mode="r", dtype=self.dtype) if size else np.zeros(0, self.dtype)

    def _check_arrays(self, index: Path) -> None:
        lengths, pointers, docs = self.sequence_lengths, self.sequence_pointers, self.document_indices
        if len(lengths) and int(lengths.min()) < 0:
            raise CorruptDataset(f"{index}: sequence {int(np.argmin(lengths))} has a negative length")
        expected = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=expected[1:])
        wrong = np.flatnonzero(pointers != expected)
        if len(wrong):
            i = int(wrong[0])
            raise CorruptDataset(
                f"{index}: sequence {i} starts at byte {int(pointers[i])}, but the lengths before it put it at "
                f"{int(expected[i])} ({len(wrong)} offsets disagree)"
            )
        if not len(docs) or docs[0] != 0 or docs[-1] != len(lengths) or (len(docs) > 1 and (np.diff(docs) < 0).any()):
            raise CorruptDataset(f"{index}: document indices must rise from 0 to the sequence count {len(lengths)}")

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``offset:offset+length`` of sequence ``i``."""
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize + offset
        stop = start + (int(self.sequence_lengths[i]) - offset if length is None else length)
        return np.asarray(self._bin[start:stop])
