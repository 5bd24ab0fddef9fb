"""Megatron's indexed dataset: the bytes of the layout megatron-core documents, and its own reader accepts them."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import nemo_python

from orchestrator.data import indexed

DOCS = [[5, 6, 7], [8], [], [9, 10, 11, 12], [65535, 0]]


def write(prefix: Path, docs: list[list[int]], dtype: type[np.number] = np.uint16) -> None:
    with indexed.IndexedDatasetWriter(prefix, dtype) as writer:
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        flat = np.array([t for d in docs for t in d], dtype=dtype)
        writer.add_documents(flat, lengths)


def test_idx_layout_is_megatrons_byte_for_byte(tmp_path: Path) -> None:
    """Header, version, dtype code, counts, int32 lengths, int64 byte pointers, int64 document indices."""
    write(tmp_path / "d", DOCS)
    idx = indexed.idx_path(tmp_path / "d").read_bytes()
    sequences = [d for d in DOCS if d]  # a document without tokens has a boundary but no sequence
    expected = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8)
    expected += struct.pack("<Q", len(sequences)) + struct.pack("<Q", len(DOCS) + 1)
    expected += np.array([len(s) for s in sequences], np.int32).tobytes()
    expected += np.array([0, 6, 8, 16], np.int64).tobytes()  # cumulative bytes of uint16 tokens
    expected += np.array([0, 1, 2, 2, 3, 4], np.int64).tobytes()
    assert idx == expected
    assert len(idx) == 34 + 12 * len(sequences) + 8 * (len(DOCS) + 1)
    assert indexed.bin_path(tmp_path / "d").read_bytes() == np.array([t for d in DOCS for t in d], np.uint16).tobytes()


def test_dtype_follows_megatrons_vocabulary_threshold(tmp_path: Path) -> None:
    assert indexed.optimal_dtype(32000) is np.uint16 and indexed.optimal_dtype(65499) is np.uint16
    assert indexed.optimal_dtype(65500) is np.int32 and indexed.optimal_dtype(128256) is np.int32
    write(tmp_path / "wide", [[128000, 1, 128001]], np.int32)
    assert indexed.idx_path(tmp_path / "wide").read_bytes()[17] == 4
    assert indexed.IndexedDataset(tmp_path / "wide")[0].tolist() == [128000, 1, 128001]


def test_appending_datasets_equals_writing_them_in_one_go(tmp_path: Path) -> None:
    write(tmp_path / "a", DOCS[:2])
    write(tmp_path / "b", DOCS[2:])
    with indexed.IndexedDatasetWriter(tmp_path / "ab", np.uint16) as writer:
        writer.append_dataset(tmp_path / "a")
        writer.append_dataset(tmp_path / "b")
    write(tmp_path / "whole", DOCS)
    for path in (indexed.bin_path, indexed.idx_path):
        assert path(tmp_path / "ab").read_bytes() == path(tmp_path / "whole").read_bytes()


def test_reader_refuses_a_bin_that_does_not_match_its_index(tmp_path: Path) -> None:
    write(tmp_path / "d", DOCS)
    with open(indexed.bin_path(tmp_path / "d"), "ab") as handle:
        handle.write(b"\x00\x00")
    with pytest.raises(ValueError, match="the index describes"):
        indexed.IndexedDataset(tmp_path / "d")


def test_an_aborted_writer_publishes_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with indexed.IndexedDatasetWriter(tmp_path / "d", np.uint16) as writer:
            writer.add_document([1, 2, 3])
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


MCORE_READ = r"""
import json, sys
from megatron.core.datasets.indexed_dataset import IndexedDataset
dataset = IndexedDataset(sys.argv[1])
print(json.dumps({
    "sequences": [dataset[i].tolist() for i in range(len(dataset))],
    "document_indices": dataset.document_indices.tolist(),
    "dtype": str(dataset.index.dtype.__name__),
}))
"""


@pytest.mark.nemo
def test_megatron_cores_indexed_dataset_reads_what_we_write(tmp_path: Path) -> None:
    """megatron-core's own reader (the NeMo stack's), in a subprocess; a configured but broken stack fails."""
    python = nemo_python()
    if python is None:
        pytest.skip("needs megatron-core (ORCHESTRATOR_NEMO_PYTHON)")
    write(tmp_path / "d", DOCS)
    done = subprocess.run([python, "-c", MCORE_READ, str(tmp_path / "d")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["sequences"] == [d for d in DOCS if d]
    assert result["document_indices"] == [0, 1, 2, 2, 3, 4]
    assert result["dtype"] == "uint16"


def test_an_index_whose_header_counts_disagree_with_its_size_is_refused_by_name(tmp_path: Path) -> None:
    write(tmp_path / "d", DOCS)
    idx = indexed.idx_path(tmp_path / "d")
    data = bytearray(idx.read_bytes())
    data[18:26] = (len(DOCS) + 1).to_bytes(8, "little")  # one sequence more than the file holds
    idx.write_bytes(bytes(data))
    with pytest.raises(indexed.CorruptDataset, match=f"{idx}: {len(data)} bytes, but its header counts"):
        indexed.IndexedDataset(tmp_path / "d")
