"""One seed's chain of jobs: step ranges, restores and checkpoint directories, as the reference names them."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.mlperf.checkpoints import (
    checkpoint_dir_name,
    latest_checkpoint,
    nemo_checkpoint_problem,
    plan_partitions,
)


def test_reference_example_chain() -> None:
    """USE_CKPT=1 FROM_HF=1 SAVE_CKPT=1 START_STEPS=0 MAX_STEPS=100 NPAR=3 SEEDS=1234 (the reference's flow)."""
    parts = plan_partitions(
        seed=1234, num_partitions=3, start_step=0, steps_per_partition=100,
        continual_dir="/continual", model_ckpt="/checkpoint", from_hf=True,
    )  # fmt: skip
    assert [(p.start_step, p.end_step, p.restore) for p in parts] == [
        (0, 100, "weights"),
        (100, 200, "full"),
        (200, 300, "full"),
    ]
    assert [p.restore_from for p in parts] == [
        Path("/checkpoint"),
        Path("/continual/checkpoint-seed-1234-par-0-100-steps/checkpoint"),
        Path("/continual/checkpoint-seed-1234-par-1-200-steps/checkpoint"),
    ]
    assert parts[2].checkpoint == Path("/continual/checkpoint-seed-1234-par-2-300-steps/checkpoint")
    assert all(p.steps == 100 for p in parts)


def test_continuing_a_chain_in_a_later_invocation() -> None:
    parts = plan_partitions(
        seed=1234, num_partitions=2, start_step=300, steps_per_partition=50, continual_dir="/c",
        model_ckpt="/c/checkpoint-seed-1234-par-2-300-steps/checkpoint", from_hf=False,
    )  # fmt: skip
    assert [(p.index, p.start_step, p.end_step, p.restore) for p in parts] == [
        (0, 300, 350, "full"),
        (1, 350, 400, "full"),
    ]
    assert parts[1].save_dir == Path("/c") / checkpoint_dir_name(1234, 1, 400)


def test_single_job_without_saving_and_without_a_checkpoint() -> None:
    (only,) = plan_partitions(
        seed=7, num_partitions=1, start_step=0, steps_per_partition=10, continual_dir=None, save=False
    )
    assert only.restore == "none" and only.restore_from is None and only.checkpoint is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_partitions=2, save=False), "NPAR=2 chains jobs through checkpoints"),
        (dict(continual_dir=None), "SAVE_CKPT=1 needs CONTINUAL_CKPT"),
        (dict(start_step=100), "FROM_HF=1 restores weights only"),
        (dict(start_step=100, model_ckpt=None), "START_STEPS=100 resumes a run"),
        (dict(steps_per_partition=0), "MAX_STEPS >= 1"),
    ],
)
def test_inconsistent_settings_are_refused(kwargs: dict, message: str) -> None:
    settings = dict(
        seed=1, num_partitions=1, start_step=0, steps_per_partition=10, continual_dir="/c",
        model_ckpt="/ckpt", from_hf=True, save=True,
    ) | kwargs  # fmt: skip
    with pytest.raises(ValueError, match=message):
        plan_partitions(**settings)


def fake_nemo_checkpoint(path: Path, finished: bool = True) -> Path:
    (path / "weights").mkdir(parents=True)
    (path / "context").mkdir()
    if finished:
        (path / "weights" / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    else:
        Path(f"{path}-unfinished").touch()
    return path


def test_checkpoint_completeness(tmp_path: Path) -> None:
    done = fake_nemo_checkpoint(tmp_path / "a" / "checkpoint")
    assert nemo_checkpoint_problem(done) is None
    saving = fake_nemo_checkpoint(tmp_path / "b" / "checkpoint", finished=False)
    assert "unfinished" in nemo_checkpoint_problem(saving)
    (saving / "weights" / "metadata.json").write_text("{}")  # metadata written, marker not yet removed
    assert "unfinished" in nemo_checkpoint_problem(saving)
    Path(f"{saving}-unfinished").unlink()
    assert nemo_checkpoint_problem(saving) is None
    assert "no checkpoint directory" in nemo_checkpoint_problem(tmp_path / "absent")


def test_latest_complete_checkpoint_of_a_seed(tmp_path: Path) -> None:
    fake_nemo_checkpoint(tmp_path / checkpoint_dir_name(1234, 0, 100) / "checkpoint")
    fake_nemo_checkpoint(tmp_path / checkpoint_dir_name(1234, 1, 200) / "checkpoint")
    fake_nemo_checkpoint(tmp_path / checkpoint_dir_name(1234, 2, 300) / "checkpoint", finished=False)
    fake_nemo_checkpoint(tmp_path / checkpoint_dir_name(99, 5, 600) / "checkpoint")
    assert latest_checkpoint(tmp_path, 1234) == (200, tmp_path / checkpoint_dir_name(1234, 1, 200) / "checkpoint")
    assert latest_checkpoint(tmp_path, 5) is None
    assert latest_checkpoint(tmp_path / "absent", 1234) is None
