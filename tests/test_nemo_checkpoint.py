"""Progress from NeMo's checkpoint directory, read without NeMo (the driver's view)."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.plan import build_plan
from orchestrator.train.nemo_checkpoint import checkpoint_step, init_checkpoint, is_nemo_checkpoint, latest_step

PREFIX = "model_name=0--val_loss=0.00"


def save(
    root: Path, step: int, gbs: int = 512, kind: str = "last", finished: bool = True, mtime: float | None = None
) -> Path:
    """A directory as NeMo's ModelCheckpoint leaves it: ``step=`` is the logged step index, one below completed."""
    path = root / f"{PREFIX}-step={step}-consumed_samples={(step + 1) * gbs}.0-{kind}"
    (path / "weights").mkdir(parents=True)
    (path / "context").mkdir()
    if not finished:
        (root / f"{path.name}-unfinished").touch()
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_name_step_is_one_below_completed_steps() -> None:
    # NeMo logs "Async checkpoint save for step 19" for ...-step=18-consumed_samples=9728.0-last (GBS 512).
    assert checkpoint_step(f"{PREFIX}-step=18-consumed_samples=9728.0-last") == 19
    assert checkpoint_step("model_name=0--val_loss=2.31-step=0-consumed_samples=0.0-last") == 1
    assert checkpoint_step("no-step-here-last") is None
    assert checkpoint_step("model_name=0--val_loss=0.00-global_step=5-last") is None


def test_no_directory_or_no_checkpoint_is_no_progress(tmp_path: Path) -> None:
    assert latest_step(tmp_path / "missing") is None
    assert latest_step(tmp_path) is None
    (tmp_path / "tb_logs").mkdir()
    assert latest_step(tmp_path) is None


def test_newest_finished_checkpoint_counts(tmp_path: Path) -> None:
    save(tmp_path, 18)
    save(tmp_path, 41)
    assert latest_step(tmp_path) == 42


def test_unfinished_checkpoint_is_ignored(tmp_path: Path) -> None:
    save(tmp_path, 41)
    save(tmp_path, 59, finished=False)  # killed mid-save: its marker is still there
    assert latest_step(tmp_path) == 42


def test_only_unfinished_checkpoints_mean_no_usable_progress(tmp_path: Path) -> None:
    save(tmp_path, 59, finished=False)
    assert latest_step(tmp_path) is None


def test_end_checkpoint_counts_and_other_directories_do_not(tmp_path: Path) -> None:
    save(tmp_path, 99, kind="end")
    (tmp_path / f"{PREFIX}-step=500-consumed_samples=256512.0").mkdir()  # a top-k copy: AutoResume never reads it
    assert latest_step(tmp_path) == 100


def test_imported_checkpoint_lives_in_the_run_unless_init_from_is_given(tmp_path: Path) -> None:
    base = {"data.source": "preprocessed", "data.train_prefixes": ["/d/a"]}
    plan = build_plan(
        "llama31_8b", "h100-pyxis", {**base, "train.hf_model_id": "meta-llama/Llama-3.1-8B"}, run_dir=tmp_path
    )
    assert init_checkpoint(plan) == str(tmp_path / "imported" / "meta-llama--Llama-3.1-8B")
    plan = build_plan("llama31_8b", "h100-pyxis", {**base, "train.init_from": "/ckpt/llama"}, run_dir=tmp_path)
    assert init_checkpoint(plan) == "/ckpt/llama"
    assert init_checkpoint(build_plan("llama31_8b", "h100-pyxis", base, run_dir=tmp_path)) is None
    assert is_nemo_checkpoint(save(tmp_path, 1)) and not is_nemo_checkpoint(tmp_path)
