"""The shipped-layout fix-up on a small synthetic copy of the MLCommons download."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from orchestrator.data.indexed import HEADER_SIZE, IndexedDataset, IndexedDatasetWriter
from orchestrator.mlperf import layout
from orchestrator.mlperf.layout import (
    MISSPELLED_PREFIX,
    MLPERF_405B,
    PUBLISHED_SIZES,
    STAGING_PREFIX,
    VALIDATION_PREFIX,
    apply,
    plan_fixup,
    verify,
)

VALIDATION_DOCS = 40
SMALL = dataclasses.replace(MLPERF_405B, sizes=None, validation_documents=VALIDATION_DOCS, validation_min_tokens=200)


def write_dataset(prefix: Path, documents: int, seed: int, dtype: type[np.number] = np.uint16) -> None:
    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(prefix, dtype) as writer:
        for _ in range(documents):
            writer.add_document(rng.integers(0, 32000, size=int(rng.integers(3, 12))))


def shipped_layout(root: Path) -> Path:
    """What the R2 download leaves (NVIDIA cleanup.sh's premises): eight shards, two other validation cuts, and
    the validation .bin/.idx as directories holding a misspelled file each."""
    root.mkdir(exist_ok=True)
    for k in range(8):
        write_dataset(root / f"c4-train.en_{k}_text_document", 30, seed=k)
    write_dataset(root / "c4-validation-small.en_text_document", 5, seed=10)
    write_dataset(root / "c4-validation.en_text_document", 60, seed=11)
    staging = root / "staging"
    write_dataset(staging / MISSPELLED_PREFIX, VALIDATION_DOCS, seed=12)
    for ext in ("bin", "idx"):
        holder = root / f"{VALIDATION_PREFIX}.{ext}"
        holder.mkdir()
        os.rename(staging / f"{MISSPELLED_PREFIX}.{ext}", holder / f"{MISSPELLED_PREFIX}.{ext}")
    staging.rmdir()
    (root / "tokenizer").mkdir()
    return root


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def cli(root: Path, *flags: str) -> int:
    parser = argparse.ArgumentParser()
    layout.add_arguments(parser)
    return layout.run(parser.parse_args([str(root), *flags]))


@pytest.fixture
def small_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI checks the real spec; a synthetic copy has 40 validation documents, not 91,205."""
    monkeypatch.setattr(layout, "MLPERF_405B", dataclasses.replace(SMALL, sizes=MLPERF_405B.sizes))


def test_dry_run_reports_and_changes_nothing(tmp_path: Path, small_spec: None, capsys: pytest.CaptureFixture) -> None:
    root = shipped_layout(tmp_path / "405b")
    before = snapshot(root)
    assert cli(root) == 2
    out = capsys.readouterr().out
    holder = root / f"{VALIDATION_PREFIX}.bin"
    assert f"would move {holder / (MISSPELLED_PREFIX + '.bin')} -> {root / (STAGING_PREFIX + '.bin')}" in out
    assert f"would rmdir {holder}" in out
    assert f"would move {root / (STAGING_PREFIX + '.bin')} -> {holder}" in out
    assert "16 files the benchmark does not read left in place" in out
    assert "other entries left alone: tokenizer" in out
    assert "run again with --apply" in out
    assert snapshot(root) == before and holder.is_dir()


def test_apply_fixes_the_layout_and_is_idempotent(
    tmp_path: Path, small_spec: None, capsys: pytest.CaptureFixture
) -> None:
    root = shipped_layout(tmp_path / "405b")
    expected = _read_pair(
        root / f"{VALIDATION_PREFIX}.bin" / f"{MISSPELLED_PREFIX}.bin",
        root / f"{VALIDATION_PREFIX}.idx" / f"{MISSPELLED_PREFIX}.idx",
    )
    assert cli(root, "--apply", "--no-size-check") == 0
    assert "ready:" in capsys.readouterr().out
    for ext in ("bin", "idx"):
        assert (root / f"{VALIDATION_PREFIX}.{ext}").is_file()
    validation = IndexedDataset(root / VALIDATION_PREFIX)
    assert [validation[i].tolist() for i in range(len(validation))] == [e.tolist() for e in expected]
    assert (root / "c4-train.en_0_text_document.bin").is_file()  # kept by default
    after = snapshot(root)
    assert cli(root, "--no-size-check") == 0  # nothing left to do, even without --apply
    out = capsys.readouterr().out
    assert "would" not in out and "ready:" in out
    assert cli(root) == 1  # by default the sizes must be the published ones: these are not
    assert "the published file has 94373710" in capsys.readouterr().out
    assert snapshot(root) == after


def _read_pair(bin_file: Path, idx_file: Path) -> list[np.ndarray]:
    """Sequences of a dataset whose .bin and .idx are not side by side (as shipped)."""
    scratch = bin_file.parent.parent / "read-pair"
    scratch.mkdir()
    os.link(bin_file, scratch / "x.bin")
    os.link(idx_file, scratch / "x.idx")
    dataset = IndexedDataset(scratch / "x")
    sequences = [dataset[i].copy() for i in range(len(dataset))]
    for name in ("x.bin", "x.idx"):
        (scratch / name).unlink()
    scratch.rmdir()
    return sequences


def test_unneeded_files_are_moved_or_deleted_only_when_asked(tmp_path: Path, small_spec: None) -> None:
    moved = shipped_layout(tmp_path / "a")
    assert cli(moved, "--apply", "--no-size-check", "--unneeded", "move") == 0
    assert sorted(p.name for p in (moved / "unused").iterdir()) == sorted(
        f"{prefix}.{ext}" for prefix in layout.UNNEEDED_PREFIXES for ext in ("bin", "idx")
    )
    deleted = shipped_layout(tmp_path / "b")
    assert cli(deleted, "--apply", "--no-size-check", "--unneeded", "delete") == 0
    assert sorted(p.name for p in deleted.iterdir()) == sorted(
        [f"{p}.{e}" for p in (*layout.TRAIN_PREFIXES, VALIDATION_PREFIX) for e in ("bin", "idx")] + ["tokenizer"]
    )


def test_an_interrupted_fixup_is_finished(tmp_path: Path) -> None:
    root = shipped_layout(tmp_path / "405b")
    plan = plan_fixup(root)
    apply(plan.changes[:2])  # moved the .bin out and removed its directory, then the process died
    assert (root / f"{STAGING_PREFIX}.bin").is_file()
    resumed = plan_fixup(root)
    assert resumed.problems == []
    assert resumed.changes[0].path == root / f"{STAGING_PREFIX}.bin"
    apply(resumed.changes)
    assert verify(root, SMALL) == []
    assert plan_fixup(root).changes == []


def test_half_run_cleanup_sh_and_loose_misspelled_file(tmp_path: Path) -> None:
    """cleanup.sh stopped after its 'rm -r' lines: staged files at the top; or someone moved without renaming."""
    root = shipped_layout(tmp_path / "405b")
    for ext in ("bin", "idx"):
        holder = root / f"{VALIDATION_PREFIX}.{ext}"
        target = root / (f"{STAGING_PREFIX}.{ext}" if ext == "bin" else f"{MISSPELLED_PREFIX}.{ext}")
        os.rename(holder / f"{MISSPELLED_PREFIX}.{ext}", target)
        holder.rmdir()
    plan = plan_fixup(root)
    assert [(c.action, c.path.name) for c in plan.changes] == [
        ("move", f"{STAGING_PREFIX}.bin"),
        ("move", f"{MISSPELLED_PREFIX}.idx"),
    ]
    apply(plan.changes)
    assert verify(root, SMALL) == []


def test_unexpected_content_is_left_untouched(tmp_path: Path, small_spec: None, capsys: pytest.CaptureFixture) -> None:
    root = shipped_layout(tmp_path / "405b")
    (root / f"{VALIDATION_PREFIX}.idx" / "notes.txt").write_text("mine")
    before = snapshot(root)
    assert cli(root, "--apply") == 1
    out = capsys.readouterr().out
    assert "holding unexpected entries ['notes.txt']" in out and "nothing changed" in out
    assert snapshot(root) == before


def test_never_overwrites(tmp_path: Path) -> None:
    root = shipped_layout(tmp_path / "405b")
    plan = plan_fixup(root, "move")
    (root / "unused").mkdir()
    (root / "unused" / "c4-train.en_0_text_document.bin").write_bytes(b"other")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        apply([c for c in plan.changes if c.path.name == "c4-train.en_0_text_document.bin"])
    assert (root / "c4-train.en_0_text_document.bin").is_file()


def test_verify_names_each_problem(tmp_path: Path) -> None:
    root = shipped_layout(tmp_path / "405b")
    apply(plan_fixup(root).changes)
    assert verify(root, SMALL) == []
    (root / "c4-train.en_7_text_document.idx").unlink()
    with open(root / f"{VALIDATION_PREFIX}.bin", "r+b") as handle:
        handle.truncate(10)
    problems = verify(root, SMALL)
    assert any("c4-train.en_7_text_document.idx: missing" in p for p in problems)
    assert any(f"{VALIDATION_PREFIX}.bin: 10 bytes, the index describes" in p for p in problems)
    sized = dataclasses.replace(SMALL, sizes={"c4-train.en_6_text_document.bin": 123})
    assert any("the published file has 123" in p for p in verify(root, sized))


def test_verify_checks_the_validation_set(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for prefix in layout.TRAIN_PREFIXES:
        write_dataset(root / prefix, 10, seed=1)
    write_dataset(root / VALIDATION_PREFIX, 39, seed=2, dtype=np.int32)
    problems = verify(root, dataclasses.replace(SMALL, validation_min_tokens=10**6))
    assert any("39 documents; the MLPerf validation set is the first 40" in p for p in problems)
    assert any("tokens; one evaluation pass over 5760 sequences of 8192 needs 1000000" in p for p in problems)
    assert any("tokens are int32, expected uint16" in p for p in problems)


def test_published_sizes_agree_with_the_format_and_the_readme() -> None:
    """Megatron .idx: 34-byte header, int32 length + int64 pointer per sequence, int64 per document + 1."""
    validation_idx = PUBLISHED_SIZES[f"{VALIDATION_PREFIX}.idx"]
    assert HEADER_SIZE + 91205 * (4 + 8) + (91205 + 1) * 8 == validation_idx
    assert PUBLISHED_SIZES[f"{VALIDATION_PREFIX}.bin"] == 2 * 47_186_855  # README: 47,186,855 tokens, uint16
    assert 47_186_855 >= MLPERF_405B.validation_min_tokens == 5760 * 8192 + 1
    for shard in ("c4-train.en_6_text_document", "c4-train.en_7_text_document"):
        assert (PUBLISHED_SIZES[f"{shard}.idx"] - HEADER_SIZE - 8) % 20 == 0  # whole documents
        assert PUBLISHED_SIZES[f"{shard}.bin"] % 2 == 0
