"""Checkpoint directories: completeness, the resume decision that never goes back silently, pruning."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.train import checkpoint as ckpt


def publish(root: Path, step: int) -> Path:
    tmp = ckpt.begin(root, step)
    (tmp / "model.pt").write_bytes(b"weights")
    return ckpt.publish(tmp, root, step, {"step": step})


def test_latest_step_counts_only_complete_checkpoints(tmp_path: Path) -> None:
    assert ckpt.latest_step(tmp_path / "missing") is None
    publish(tmp_path, 10)
    ckpt.begin(tmp_path, 30)  # a write in progress (or killed)
    (tmp_path / "step-00000020").mkdir()  # final name, no metadata
    assert ckpt.latest_step(tmp_path) == 10
    assert (tmp_path / "latest").read_text() == "step-00000010\n"


def test_publish_writes_metadata_last_and_never_overwrites(tmp_path: Path) -> None:
    final = publish(tmp_path, 5)
    assert ckpt.read_meta(final) == {"step": 5}
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    with pytest.raises(ckpt.CheckpointError, match="never overwritten"):
        publish(tmp_path, 5)


def test_prune_keeps_the_last_two_and_pinned_ones(tmp_path: Path) -> None:
    publish(tmp_path, 10)
    (tmp_path / "step-00000010" / ckpt.PIN_FILE).touch()
    for step in (20, 30, 40):
        publish(tmp_path, step)
    assert ckpt.complete_steps(tmp_path) == [10, 30, 40]
    assert not any(p.name.startswith(".trash-") for p in tmp_path.iterdir())


def test_resume_refuses_to_go_back_past_an_incomplete_checkpoint(tmp_path: Path) -> None:
    assert ckpt.find_resume(tmp_path) is None
    publish(tmp_path, 10)
    assert ckpt.find_resume(tmp_path) == 10
    (tmp_path / "step-00000020").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="step-00000020 has no meta.json.*resume from step-00000010"):
        ckpt.find_resume(tmp_path)


def test_resume_refuses_when_only_incomplete_checkpoints_exist(tmp_path: Path) -> None:
    (tmp_path / "step-00000040").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="start from step 0"):
        ckpt.find_resume(tmp_path)


def test_resume_refuses_a_pointer_to_a_lost_checkpoint(tmp_path: Path) -> None:
    publish(tmp_path, 10)
    publish(tmp_path, 20)
    (tmp_path / "step-00000020" / ckpt.META_FILE).unlink()  # e.g. a copy that lost files
    (tmp_path / "step-00000020").rename(tmp_path / "moved-away")
    with pytest.raises(ckpt.CheckpointError, match="latest names 'step-00000020'"):
        ckpt.find_resume(tmp_path)


def test_resume_takes_the_newest_complete_even_if_the_pointer_lags(tmp_path: Path) -> None:
    publish(tmp_path, 10)
    publish(tmp_path, 20)
    (tmp_path / "latest").write_text("step-00000010\n")  # crash between rename and pointer update
    assert ckpt.find_resume(tmp_path) == 20


def test_stale_temporaries_are_removed_and_resolve_finds_the_newest(tmp_path: Path) -> None:
    publish(tmp_path, 3)
    ckpt.begin(tmp_path, 4)
    assert [p.name for p in ckpt.remove_stale(tmp_path)] == [".tmp-step-00000004"]
    assert ckpt.resolve(tmp_path) == tmp_path / "step-00000003"
    assert ckpt.resolve(tmp_path / "step-00000003") == tmp_path / "step-00000003"
    with pytest.raises(ckpt.CheckpointError, match="neither"):
        ckpt.resolve(tmp_path / "empty")


def test_a_full_disk_is_named_with_the_file_and_the_space_left(tmp_path: Path) -> None:
    """torch.save given a path says only "unexpected pos 9344 vs 9236" on a full disk."""
    full = tmp_path / "model.pt"
    full.symlink_to("/dev/full")  # every write there fails with ENOSPC
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.write_file(full, lambda handle: handle.write(b"weights" * 1000))
    message = str(caught.value)
    assert message.startswith(f"disk full: no space left on device writing {full} (") and " free of " in message
