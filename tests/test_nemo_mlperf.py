"""The MLPerf rules in the NeMo backend, on a CPU, with a stand-in trainer: the recipe of an MLPerf plan, and its
callbacks inside plain Lightning's ``Trainer`` (not NeMo's, no ``MegatronStrategy``) around a one-parameter module
whose validation loss each test dictates, so that evaluation cadences and targets can be set exactly. NeMo's own
trainer, strategy and loop run these callbacks in tests/test_nemo_mlperf_trainer.py (and on a GPU in
benchmarks/nemo_mlperf_run.py); what is tested here is when evaluations run, what the compliance log says, and how a
job stops, for schedules the real model's losses cannot dictate."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from mlperf_helpers import SCALE_KEYS, failing_keys
from nemo_stack import fdl
from torch.utils.data import DataLoader

from orchestrator.contract import JobEnvironment
from orchestrator.mlperf.compliance import check_compliance
from orchestrator.mlperf.hyperparameters import run_hyperparameters
from orchestrator.mlperf.mllog import RUN_EVENTS, chain_result, open_job_log, read_mllog
from orchestrator.plan import RunPlan, build_plan
from orchestrator.train import nemo as entry
from orchestrator.train import stopping
from orchestrator.train.nemo_mlperf import MlperfControl, ScheduledValidation
from orchestrator.train.nemo_recipe import build_recipe, summarize
from orchestrator.train.nemo_stop import StopControl

pytestmark = [pytest.mark.nemo, pytest.mark.usefixtures("fresh_signals")]
DATA = {"data.source": "preprocessed", "data.train_prefixes": ["/d/a"]}
# GBS 16 (outside [1152, 9216], hence allow_new_rcp): the rules' formulas at this batch, but an evaluation every 32
# sequences over 32, the first after 64, so the schedule is first after 4 steps, then every 2, on 2 batches.
SMALL = {
    **DATA,
    "train.global_batch_size": 16,
    "train.seq_length": 64,
    "mlperf.allow_new_rcp": True,
    "mlperf.eval_every_samples": 32,
    "mlperf.eval_samples": 32,
    "mlperf.start_eval_at_samples": 64,
}
HIGH = 9.0  # a validation loss far from the target


def small_plan(tmp_path: Path, check: bool = True, **overrides: Any) -> RunPlan:
    return build_plan(
        "llama3_8b", "h100-pyxis", {**SMALL, **overrides}, run_id="mlperf-small", run_dir=tmp_path / "run", check=check
    )


# ------------------------------------------------------------------------------------------------ the harness


class Toy(pl.LightningModule):
    """One parameter; the validation loss after ``n`` completed steps is ``val_loss[n]`` (default HIGH), logged as
    NeMo's strategy logs it (``on_epoch=True``) with per-batch values spread around it, so only the epoch mean is
    the dictated number."""

    def __init__(self, val_loss: dict[int, float] | None = None, batches: int = 8):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.val_loss = val_loss or {}
        self.batches = batches

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return (self.w * batch).sum()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        center = self.val_loss.get(self.trainer.global_step, HIGH)
        spread = batch_idx - (self.trainer.limit_val_batches - 1) / 2
        self.log("val_loss", center + spread, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.ones(1000, 1), batch_size=1)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(torch.ones(self.batches, 1), batch_size=1)


class Probe(pl.Callback):
    """Records the steps after which validation started; optionally sends itself SIGUSR2 after step ``signal_at``
    (it runs before StopControl, as the driver's signal arrives during a step)."""

    def __init__(self, signal_at: int | None = None):
        self.validated: list[int] = []
        self.signal_at = signal_at

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.signal_at:
            os.kill(os.getpid(), signal.SIGUSR2)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.validated.append(trainer.global_step)


class SaveInsideStep(pl.Callback):
    """Writes a checkpoint inside ``on_train_batch_end`` after step ``step``, as NeMo's step-interval saves do: its
    loop state counts that batch as not completed yet."""

    def __init__(self, path: Path, step: int):
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


class Job:
    """One training job of ``plan`` with the recipe's callbacks (NeMo's TimingCallback, MlperfControl, StopControl)
    and the recipe's validation settings, in plain Lightning's Trainer on the CPU (the stand-in for NeMo's)."""

    def __init__(
        self,
        plan: RunPlan,
        *,
        mlperf: bool = True,
        signal_at: int | None = None,
        extra: Iterable[pl.Callback] = (),
        env: dict[str, str] | None = None,
    ):
        recipe = build_recipe(plan)
        configs = {fdl.get_callable(c).__name__: c for c in recipe.trainer.callbacks}
        configs["TimingCallback"].log_tokens_per_sec = False  # tokens/s needs Megatron's micro-batch calculator
        self.timing = fdl.build(configs["TimingCallback"])
        self.stop: StopControl = fdl.build(configs["StopControl"])
        self.mlperf: MlperfControl | None = fdl.build(configs["MlperfControl"]) if mlperf else None
        if self.mlperf is not None:
            self.mlperf.mllog = open_job_log(plan, JobEnvironment.current(env or {"SLURM_JOB_ID": "100"}))
        else:
            self.stop.eval_schedule = None  # Lightning's own validation cadence, for comparison
        self.probe = Probe(signal_at)
        self.ckpt = ModelCheckpoint(
            dirpath=plan.train.ckpt_dir, save_last=True, save_top_k=0, save_on_train_epoch_end=True
        )
        ours = [self.timing, *extra, self.probe, *([self.mlperf] if self.mlperf else []), self.stop]
        self.trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=recipe.trainer.max_steps,
            val_check_interval=recipe.trainer.val_check_interval,
            limit_val_batches=recipe.trainer.limit_val_batches,
            num_sanity_val_steps=0,
            callbacks=[*ours, self.ckpt],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        self.plan = plan

    def fit(self, module: Toy | None = None, *, max_steps: int, resume: Path | None = None) -> Job:
        self.trainer.fit_loop.epoch_loop.max_steps = max_steps
        if resume is not None:  # the stand-in saves Lightning's last.ckpt, which the recipe's start_step cannot see
            self.stop.expected_start = saved_step(resume)
        self.trainer.fit(module or Toy(), ckpt_path=resume)
        return self

    @property
    def last(self) -> Path:
        return Path(self.plan.train.ckpt_dir) / "last.ckpt"

    def exit_status(self) -> int:
        reached = self.mlperf is not None and self.mlperf.reached
        return entry.finish(self.plan, self.trainer.global_step, 0, self.stop.reason, self.stop.saved_step, reached)


def saved_step(path: Path) -> int:
    return int(torch.load(path, weights_only=False)["global_step"])


# ------------------------------------------------------------------------------------------------ the recipe


def test_the_405b_recipe_evaluates_on_the_rules_schedule(tmp_path: Path) -> None:
    plan = build_plan("llama31_405b", "h100-pyxis", DATA, run_dir=tmp_path / "run")
    summary = summarize(build_recipe(plan))
    mlperf = summary["mlperf"]
    assert (mlperf["first_eval_step"], mlperf["eval_interval_steps"], mlperf["eval_batches"]) == (240, 16, 5)
    assert (summary["trainer"]["val_check_interval"], summary["trainer"]["limit_val_batches"]) == (16, 5)
    assert mlperf["target_log_ppl"] == 5.6 and mlperf["step_time_atol_s"] == 7200
    assert mlperf["hyperparameters"] == run_hyperparameters(plan, start_step=0)
    callbacks = summary["trainer"]["callbacks"]
    # the step-time limit reads TimingCallback's metric of the same step; run_stop is logged before the last save
    assert callbacks[0] == "TimingCallback" and callbacks[-2:] == ["MlperfControl", "StopControl"]


def test_gbs_1152_evaluates_after_240_steps_then_every_16_in_the_stand_in_trainer(tmp_path: Path) -> None:
    plan = build_plan("llama31_405b", "h100-pyxis", DATA, run_dir=tmp_path / "run")
    job = Job(plan).fit(Toy(batches=5), max_steps=290)
    assert job.probe.validated == [240, 256, 272, 288]  # not 16, 32, ..., 224: the rules skip those
    assert isinstance(job.trainer.fit_loop.epoch_loop, ScheduledValidation)


def test_a_plan_that_is_not_mlperf_keeps_its_own_validation(tmp_path: Path) -> None:
    plan = build_plan(
        "llama3_8b", "h100-pyxis", {**DATA, "train.val_interval": 50, "train.val_batches": 2}, run_dir=tmp_path / "run"
    )
    summary = summarize(build_recipe(plan))
    assert summary["mlperf"] is None and "MlperfControl" not in summary["trainer"]["callbacks"]
    assert (summary["trainer"]["val_check_interval"], summary["trainer"]["limit_val_batches"]) == (50, 2)
    stop = next(c for c in build_recipe(plan).trainer.callbacks if fdl.get_callable(c) is StopControl)
    assert stop.eval_schedule is None


def test_an_mlperf_plan_refuses_a_validation_cadence_of_its_own(tmp_path: Path) -> None:
    """Refused at plan time, and by the recipe again for a plan that skipped the check (``check=False``)."""
    with pytest.raises(ValueError, match="train.val_interval=5.*mlperf.eval_every_samples"):
        small_plan(tmp_path, **{"train.val_interval": 5})
    plan = small_plan(tmp_path, **{"train.val_interval": 5}, check=False)
    with pytest.raises(ValueError, match="train.val_interval=5.*mlperf.eval_every_samples"):
        build_recipe(plan)


# ------------------------------------------------------------------------------------ schedule across resumes


def test_the_small_schedule_and_a_job_stopped_on_an_evaluation_step_that_resumes(tmp_path: Path) -> None:
    plan = small_plan(tmp_path, **{"chain.steps_per_job": 6})
    first = Job(plan).fit(max_steps=13)
    assert first.probe.validated == [4, 6]  # steps 2 is a grid point the rules skip
    assert (first.stop.reason, first.stop.saved_step, saved_step(first.last)) == ("steps_per_job", 6, 6)
    assert first.exit_status() == entry.EXIT_STOPPED and not (Path(plan.run_dir) / "DONE").exists()

    second = Job(plan, env={"SLURM_JOB_ID": "101", "ORCHESTRATOR_CHAIN_INDEX": "1"}).fit(
        max_steps=13, resume=first.last
    )
    assert second.probe.validated == [8, 10, 12]  # step 6 was evaluated by the first job: no repeat
    logs = sorted((Path(plan.run_dir) / "mlperf").glob("*.log"), key=lambda p: "par1" in p.name)
    chain = chain_result([read_mllog(log) for log in logs])  # refuses an evaluation logged twice
    assert [samples // 16 for samples, _ in chain.evals] == [4, 6, 8, 10, 12]
    assert read_mllog(logs[1]).params["init_checkpoint_step"] == 6


def test_a_stop_on_a_grid_point_the_rules_skip_does_not_evaluate(tmp_path: Path) -> None:
    job = Job(small_plan(tmp_path, **{"chain.steps_per_job": 2})).fit(max_steps=13)
    assert job.probe.validated == [] and job.stop.saved_step == 2


def test_a_signal_after_an_evaluation_step_evaluates_before_the_job_stops(tmp_path: Path) -> None:
    """As the reference trainer: the rules' evaluation is not skipped, and the next job repeats none."""
    plan = small_plan(tmp_path)
    first = Job(plan, signal_at=8).fit(max_steps=13)
    assert first.probe.validated == [4, 6, 8] and (first.stop.reason, first.stop.saved_step) == ("signal", 8)
    stopping._received.clear()
    second = Job(plan).fit(max_steps=13, resume=first.last)
    assert second.probe.validated == [10, 12]


def test_resuming_from_a_checkpoint_written_inside_the_step_keeps_the_schedule(tmp_path: Path) -> None:
    """NeMo's step-interval checkpoints count their batch as not completed, so Lightning's own cadence (by batch
    index) is one step late after a resume from one; the scheduled loop goes by optimizer steps."""
    inside = tmp_path / "inside-step-3.ckpt"
    plan = small_plan(tmp_path)
    Job(plan, extra=[SaveInsideStep(inside, 3)]).fit(max_steps=4)
    assert saved_step(inside) == 3

    lightning_cadence = Job(plan, mlperf=False).fit(max_steps=13, resume=inside)
    # what this harness reproduces: a validation at the restart, then every one a step late
    assert lightning_cadence.probe.validated == [3, 5, 7, 9, 11, 13]
    scheduled = Job(plan).fit(max_steps=13, resume=inside)
    assert scheduled.probe.validated == [4, 6, 8, 10, 12]


# ------------------------------------------------------------------------------------- log, target, step time


def run_to_target(tmp_path: Path) -> Job:
    """The small plan's run whose evaluations give 7.5, 6.2, then 5.5 <= 5.6: it stops after step 8."""
    plan = small_plan(tmp_path)
    env = {"SLURM_JOB_ID": "777", "ORCHESTRATOR_CHAIN_INDEX": "0"}
    return Job(plan, env=env).fit(Toy({4: 7.5, 6: 6.2, 8: 5.5}), max_steps=13)


def test_reaching_the_target_stops_saves_and_writes_done_with_the_reason(tmp_path: Path) -> None:
    job = run_to_target(tmp_path)
    assert job.trainer.global_step == 8 and job.probe.validated == [4, 6, 8]
    assert job.mlperf is not None and job.mlperf.reached and job.stop.reason is None
    assert job.stop.saved_step == 8 and saved_step(job.last) == 8  # the final checkpoint, as on any stop
    assert job.exit_status() == entry.EXIT_DONE
    done = json.loads((Path(job.plan.run_dir) / "DONE").read_text())
    assert (done["final_step"], done["consumed_samples"]) == (8, 128)
    assert done["reason"] == "MLPerf target log-perplexity 5.6 reached"


def test_the_log_records_the_run_as_the_reference_does(tmp_path: Path) -> None:
    job = run_to_target(tmp_path)
    (path,) = (Path(job.plan.run_dir) / "mlperf").iterdir()
    assert path.name == "mlperf_mlperf-small_seed1234_par0_777.log"
    run = read_mllog(path)
    assert run.complete and run.status == "success" and run.train_samples == 8 * 16
    assert run.evals == [(64, pytest.approx(7.5)), (96, pytest.approx(6.2)), (128, pytest.approx(5.5))]
    expected = run_hyperparameters(job.plan, start_step=0)
    assert {k: run.params[k] for k in expected} == expected
    assert (run.params["max_sequence_length"], run.params["opt_base_learning_rate"]) == (64, job.plan.train.optim.lr)
    assert (run.params["submission_org"], run.params["submission_platform"]) == ("orchestrator NeMo backend", "1x1xCPU")
    records = [json.loads(line.removeprefix(":::MLLOG ")) for line in path.read_text().splitlines()]
    events = [r["key"] for r in records if r["key"] in RUN_EVENTS]
    evaluation = ["block_stop", "eval_start", "eval_accuracy", "eval_stop"]
    assert events == [
        "cache_clear",
        "init_start",
        "init_stop",
        "run_start",
        "epoch_start",
        "block_start",
        *evaluation,
        "block_start",
        *evaluation,
        "block_start",
        *evaluation,
        "epoch_stop",
        "run_stop",
        "train_samples",
    ]


def test_the_checker_accepts_the_log_but_for_the_benchmark_scale(tmp_path: Path) -> None:
    """mlperf-logging's checker on the callback's log: event order, every hyper-parameter and its formula at GBS 16,
    samples counts and the target pass; only the sequence length and evaluation size this CPU run honestly logs
    (64 and 32, not 8192 and 5760) fail, as for the reference backend's log."""
    job = run_to_target(tmp_path)
    (path,) = (Path(job.plan.run_dir) / "mlperf").iterdir()
    ok, output = check_compliance(path)
    assert not ok
    assert failing_keys(output) == set(SCALE_KEYS), output[-3000:]


def test_a_step_slower_than_the_limit_fails_the_job_and_ends_the_log(tmp_path: Path) -> None:
    plan = small_plan(tmp_path, **{"mlperf.step_time_atol_s": 0})  # every real step is slower than 0 s
    job = Job(plan)
    with pytest.raises(RuntimeError, match=r"step 0 took .* mlperf.step_time_atol_s=0"):
        job.fit(max_steps=13)
    (path,) = (Path(plan.run_dir) / "mlperf").iterdir()
    run = read_mllog(path)
    assert run.complete and run.status == "aborted" and run.train_samples == 16


def test_the_trainer_context_of_nemo_checkpoints_carries_the_callback(tmp_path: Path) -> None:
    """Every NeMo checkpoint holds ``context/io.json``: the Trainer's constructor arguments, callbacks included, deep-
    copied when it is built. MlperfControl (its log attached after that, as the entry point does) dumps and loads."""
    from nemo import lightning as nl
    from nemo.lightning.io import load_context
    from nemo.lightning.io.pl import TrainerContext
    from nemo_stack import llm

    plan = small_plan(tmp_path)
    configs = {fdl.get_callable(c).__name__: c for c in build_recipe(plan).trainer.callbacks}
    mlperf, stop = fdl.build(configs["MlperfControl"]), fdl.build(configs["StopControl"])
    trainer = nl.Trainer(accelerator="cpu", devices=1, callbacks=[mlperf, stop], logger=False)
    mlperf.mllog = open_job_log(plan, JobEnvironment.current({"SLURM_JOB_ID": "1"}))
    model = llm.LlamaModel(llm.Llama3Config8B(num_layers=2, apply_rope_fusion=False))  # no Transformer Engine here
    TrainerContext(model=model, trainer=trainer, extra={}).io_dump(tmp_path / "context", yaml_attrs=["model"])
    restored = load_context(tmp_path / "context", subpath="trainer")
    (again,) = [cb for cb in restored.callbacks if isinstance(cb, MlperfControl)]
    assert again.schedule == mlperf.schedule and again.hyperparameters == mlperf.hyperparameters
    assert again.mllog is None  # the open log stays with the live callback
