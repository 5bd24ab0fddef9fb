"""Stopping, saving and exit codes of the NeMo trainer, exercised on a CPU around NeMo's real ModelCheckpoint."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from nemo_stack import fdl

from orchestrator.plan import build_plan
from orchestrator.train import nemo as entry
from orchestrator.train import stopping
from orchestrator.train.nemo_checkpoint import latest_step
from orchestrator.train.nemo_recipe import build_recipe
from orchestrator.train.nemo_stop import StopControl

pytestmark = [pytest.mark.nemo, pytest.mark.usefixtures("fresh_signals")]
GBS = 128


def make_plan(tmp_path: Path, **overrides: Any):
    base = {
        "data.source": "preprocessed",
        "data.train_prefixes": ["/d/a"],
        "train.global_batch_size": GBS,
        "train.max_steps": 100,
    }
    return build_plan("llama3_8b", "h100-pyxis", {**base, **overrides}, run_dir=tmp_path / "run")


class Strategy:
    root_device = torch.device("cpu")
    checkpoint_io = None

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj


class FakeTrainer:
    """The few Lightning ``Trainer`` members NeMo's ModelCheckpoint and StopControl use; saving makes the directory."""

    def __init__(self, ckpt: Any, step: int, max_steps: int = 100):
        from types import SimpleNamespace

        from lightning.pytorch.loops.progress import _BatchProgress
        from lightning.pytorch.trainer.states import TrainerFn, TrainerState

        self.checkpoint_callback, self.callbacks = ckpt, [ckpt]
        self.global_step, self.max_steps, self.current_epoch = step, max_steps, 0
        self.strategy, self.loggers, self.is_global_zero = Strategy(), [], True
        self.fast_dev_run, self.sanity_checking = False, False
        self.state = TrainerState(fn=TrainerFn.FITTING)
        self.should_stop, self.limit_val_batches, self.val_check_interval = False, 5, 16
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.saved: list[tuple[str, bool]] = []
        self.progress = _BatchProgress()
        self.fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=self.progress))
        self.progress_at_save: list[tuple[int, int]] = []

    def step(self) -> None:
        """One optimizer step as Lightning's loop and the strategy see it: the batch is ready, started and
        processed, the ``step`` metric is the index being run, the step counter moves; then on_train_batch_end."""
        for event in (
            self.progress.increment_ready,
            self.progress.increment_started,
            self.progress.increment_processed,
        ):
            event()
        self.callback_metrics = {
            "step": torch.tensor(float(self.global_step)),
            "consumed_samples": torch.tensor(float((self.global_step + 1) * GBS)),
        }
        self.global_step += 1

    def batch_end(self, stop: StopControl) -> None:
        stop.on_train_batch_end(self, None, None, None, 0)
        self.progress.increment_completed()  # Lightning counts the batch completed only after the hook

    def save_checkpoint(self, filepath: str, weights_only: bool = False, storage_options: Any = None) -> None:
        path = Path(filepath.removesuffix(".ckpt"))
        (path / "weights").mkdir(parents=True)
        (path / "context").mkdir()
        self.saved.append((path.name, weights_only))
        self.progress_at_save.append((self.progress.current.ready, self.progress.current.completed))


def nemo_checkpoint(plan) -> Any:
    """NeMo's ModelCheckpoint exactly as the recipe configures it, set up as NeMoLogger does."""
    ckpt = fdl.build(build_recipe(plan).log.ckpt)
    ckpt.CHECKPOINT_NAME_LAST = ckpt.filename + "-last"  # NeMoLogger._setup_trainer_model_checkpoint
    ckpt.async_save = False
    return ckpt


def test_a_stop_signal_saves_a_finished_last_checkpoint_at_the_step_boundary(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    trainer = FakeTrainer(nemo_checkpoint(plan), step=10)
    stop = StopControl(save_estimate_s=60)
    stop.on_train_start(trainer, None)
    trainer.step()
    trainer.batch_end(stop)
    assert stop.reason is None and not trainer.should_stop and trainer.saved == []

    os.kill(os.getpid(), signal.SIGUSR2)  # what the driver forwards before the time limit
    trainer.step()
    trainer.batch_end(stop)
    assert (stop.reason, trainer.should_stop, trainer.limit_val_batches) == ("signal", True, 0)
    assert trainer.saved == [(f"model_name=0--val_loss=0.00-step=11-consumed_samples={12 * GBS}.0-last", False)]
    assert not list(Path(plan.train.ckpt_dir).glob("*-unfinished"))
    assert latest_step(plan.train.ckpt_dir) == trainer.global_step == stop.saved_step == 12
    # the checkpoint counts the batch it was saved in as completed, so a resumed loop keeps the validation cadence
    assert trainer.progress_at_save == [(2, 2)] and trainer.progress.current.completed == 2
    assert entry.finish(plan, trainer.global_step, 0, stop.reason, stop.saved_step) == entry.EXIT_STOPPED

    stop.on_train_end(trainer, None)  # the fit loop ends; nothing is saved twice
    assert len(trainer.saved) == 1


def test_sigterm_is_a_stop_request_too(tmp_path: Path) -> None:
    stopping.install()
    os.kill(os.getpid(), signal.SIGTERM)
    assert stopping.received() == "SIGTERM"


def test_validation_does_not_write_a_checkpoint(tmp_path: Path) -> None:
    """Only the step interval, stops and the end save: NeMo's default would save after every validation too."""
    plan = make_plan(tmp_path, **{"train.ckpt_interval": 10})
    ckpt = nemo_checkpoint(plan)
    trainer = FakeTrainer(ckpt, step=0)
    ckpt.setup(trainer, None, "fit")  # NeMo's setup removes unfinished leftovers; Lightning's reads the triggers
    ckpt.async_save = False
    for _ in range(3):
        trainer.step()
        ckpt.on_train_batch_end(trainer, None, None, None, 0)
        ckpt.on_validation_end(trainer, None)
    assert trainer.saved == []
    for _ in range(7):
        trainer.step()
        ckpt.on_train_batch_end(trainer, None, None, None, 0)
    assert [name for name, _ in trainer.saved] == [
        f"model_name=0--val_loss=0.00-step=9-consumed_samples={10 * GBS}.0-last"
    ]


def test_the_deadline_leaves_time_for_one_step_and_one_save(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    trainer = FakeTrainer(nemo_checkpoint(plan), step=0)
    stop = StopControl(deadline=time.time() + 3600, save_estimate_s=600)
    stop.on_train_start(trainer, None)
    trainer.step()
    trainer.batch_end(stop)
    assert stop.reason is None
    stop.policy.deadline = time.time() + 599  # one save (estimated 600 s) would end after it
    trainer.step()
    trainer.batch_end(stop)
    assert stop.reason == "deadline" and stop.saved_step == 2 and latest_step(plan.train.ckpt_dir) == 2
    assert stop.policy.save_s < 600  # the measured save replaces the estimate


def test_a_validation_due_after_the_next_step_counts_against_the_deadline(tmp_path: Path) -> None:
    trainer = FakeTrainer(nemo_checkpoint(make_plan(tmp_path)), step=14)  # validation every 16 steps
    stop = StopControl(save_estimate_s=10)
    stop.policy.longest_step_s, stop.policy.validation_s = 5.0, 100.0
    assert stop.time_to_next_stop(trainer) == 15.0  # step 15 does not validate
    trainer.global_step = 15
    assert stop.time_to_next_stop(trainer) == 115.0  # step 16 does
    trainer.limit_val_batches = 0
    assert stop.time_to_next_stop(trainer) == 15.0


def test_steps_per_job_ends_the_job_and_keeps_a_due_validation(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    trainer = FakeTrainer(nemo_checkpoint(plan), step=12)  # resumed at 12
    stop = StopControl(steps_per_job=4)
    stop.on_train_start(trainer, None)
    for _ in range(4):
        trainer.step()
        trainer.batch_end(stop)
    assert (stop.reason, trainer.global_step, stop.saved_step) == ("steps_per_job", 16, 16)
    assert trainer.limit_val_batches == 5  # step 16 is a validation step (every 16): MLPerf validates there
    assert latest_step(plan.train.ckpt_dir) == 16


def test_reaching_max_steps_saves_with_optimizer_and_writes_done(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    trainer = FakeTrainer(nemo_checkpoint(plan), step=98)
    stop = StopControl()
    stop.on_train_start(trainer, None)
    for _ in range(2):
        trainer.step()
        trainer.batch_end(stop)
    assert stop.reason is None and trainer.saved == []  # the last step is the normal end, not a stop
    stop.on_train_end(trainer, None)
    assert trainer.saved == [(f"model_name=0--val_loss=0.00-step=99-consumed_samples={100 * GBS}.0-last", False)]
    assert latest_step(plan.train.ckpt_dir) == 100
    assert entry.finish(plan, trainer.global_step, 0, stop.reason, stop.saved_step) == entry.EXIT_DONE
    done = json.loads((Path(plan.run_dir) / "DONE").read_text())
    assert (done["final_step"], done["consumed_samples"], done["backend"]) == (100, 100 * GBS, "nemo")


def test_exit_codes_when_fit_returns_early(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    assert entry.finish(plan, 40, 0, "signal", None) == entry.EXIT_FAILED != 0  # asked to stop, but nothing saved
    assert entry.finish(plan, 40, 0, None, None) == entry.EXIT_FAILED  # fit ended without a reason
    # a saved stop exits 0 like the end (srun --kill-on-bad-exit), and leaves no DONE: that is the difference
    assert entry.finish(plan, 40, 0, "deadline", 40) == entry.EXIT_STOPPED == 0
    assert not (Path(plan.run_dir) / "DONE").exists()
    assert entry.finish(plan, 100, 3, None, None) == entry.EXIT_DONE
    assert not (Path(plan.run_dir) / "DONE").exists()  # only global rank 0 writes it


def test_a_finished_run_does_not_start_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = make_plan(tmp_path)
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert not entry.already_done(plan)
    final = Path(plan.train.ckpt_dir) / f"model_name=0--val_loss=0.00-step=99-consumed_samples={100 * GBS}.0-last"
    (final / "weights").mkdir(parents=True)
    assert entry.already_done(plan)  # checkpoint at max_steps, DONE missing (the last job died before writing it)
    assert json.loads((Path(plan.run_dir) / "DONE").read_text())["final_step"] == 100
    assert entry.already_done(plan)
