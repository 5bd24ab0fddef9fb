"""The MLPerf rules in a NeMo run: evaluation on the rules' schedule, the compliance log, the stop at the target, the
step-time limit. What the reference backend's trainer does in its own loop, as one Lightning callback.

:class:`MlperfControl` (in the recipe of every MLPerf plan, before :class:`~orchestrator.train.nemo_stop.StopControl`):

* **Schedule.** The first evaluation once ``schedule.first_eval_step`` optimizer steps are done, then every
  ``schedule.eval_interval_steps``, over ``schedule.eval_batches`` global batches (the recipe's
  ``limit_val_batches``); never at a grid point the rules skip. Lightning decides by its batch index,
  ``(batch_idx + 1) % val_check_batch == 0``, which cannot say "after 240, then every 16", and which lags the
  optimizer step by one after a resume from a checkpoint written inside ``on_train_batch_end`` (NeMo's step-interval
  saves). The MLPerf reference starts with ``val_check_interval`` = the first evaluation and resets it in
  ``on_validation_start``, which a resumed job loses. So :class:`ScheduledValidationLoop` replaces Lightning's
  training epoch loop (as NeMo's own ``NoValOnRestartTrainingLoop`` does) and decides by ``global_step``, in every
  job of a chain. It also drops Lightning's other validations: at a restart before any step (the job that wrote the
  checkpoint evaluated that step: ``StopControl`` evaluates before it stops in MLPerf plans), on ``should_stop``,
  and at the end of the data.
* **Log.** The job's compliance log (:func:`orchestrator.mlperf.mllog.open_job_log`, opened by the entry point at
  process start) gets ``init_stop``/``run_start`` with the submission and the run's hyper-parameters at
  ``on_train_start`` (``init_checkpoint_step`` = the step this job starts at), ``block_stop``/``eval_start`` and
  ``eval_accuracy``/``eval_stop`` around each evaluation (NeMo's epoch-reduced ``val_loss``: the mean token
  cross-entropy over the evaluation, i.e. log-perplexity), and ``run_stop`` at the end, for any reason, also an
  exception. Global rank 0 writes.
* **Target.** An evaluation at or below ``target_log_ppl`` (global rank 0's value, broadcast so all ranks agree)
  sets ``trainer.should_stop``; the job saves its final checkpoint as on any stop and :attr:`reached` tells the
  entry point to write ``DONE`` with the reason.
* **Step time.** A step slower than ``step_time_atol_s`` (NeMo's ``TimingCallback`` metric
  ``train_step_timing in s``) fails the job, as the reference's assertion: a straggler or a hang.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loops import _TrainingEpochLoop
from lightning.pytorch.loops.fetchers import _DataFetcher
from lightning.pytorch.trainer.states import TrainerFn

from orchestrator.mlperf.mllog import MlperfLogger, Submission
from orchestrator.mlperf.schedule import Schedule

#: The step time NeMo's TimingCallback logs (it comes first among the recipe's callbacks, so it is current here).
STEP_TIME_METRIC = "train_step_timing in s"
VAL_LOSS_METRIC = "val_loss"
SUBMITTER = "orchestrator NeMo backend"


class ScheduledValidation:
    """Validation after exactly the steps ``schedule.is_eval_step`` names, over whatever epoch loop the trainer runs.

    Mixed in front of the installed loop's class (Lightning's ``_TrainingEpochLoop``, or NeMo's
    ``NoValOnRestartTrainingLoop`` that ``llm.pretrain`` installs before ``fit``), so that loop keeps its own
    restore and state handling and only the decision "validate now?" is the schedule's. Never at a job's first step:
    the job that completed that step evaluated it (NeMo's loop skips that validation too).
    """

    schedule: Schedule
    start_step: int

    def on_run_start(self, data_fetcher: _DataFetcher) -> None:
        super().on_run_start(data_fetcher)  # type: ignore[misc]
        self.start_step = self.global_step  # type: ignore[attr-defined]  # restored by now

    def _should_check_val_fx(self, data_fetcher: _DataFetcher) -> bool:
        step = self.global_step  # type: ignore[attr-defined]
        return step != self.start_step and self.schedule.is_eval_step(step) and self._should_check_val_epoch()  # type: ignore[attr-defined]


#: What :func:`schedule_loop` relies on in the installed loop: Lightning's hooks, whatever subclass NeMo installs.
LOOP_HOOKS = ("on_run_start", "_should_check_val_fx", "_should_check_val_epoch", "global_step")


@functools.cache
def _scheduled(loop_class: type) -> type:
    return type(f"Scheduled{loop_class.__name__}", (ScheduledValidation, loop_class), {})


def schedule_loop(loop: _TrainingEpochLoop, schedule: Schedule) -> None:
    """Make the trainer's epoch loop validate on ``schedule``, keeping its class's other behaviour and its state.

    The instance's class becomes a subclass of its own class with :class:`ScheduledValidation` in front, so nothing
    that ``fit`` attached to the loop (its validation loop, its progress) is lost. Refused, naming the class, when
    the loop is not Lightning's epoch loop or lacks a hook the schedule overrides (a NeMo or Lightning release that
    changed it): the rules' evaluations would silently run on another cadence.
    """
    missing = [name for name in LOOP_HOOKS if not hasattr(type(loop), name)]
    if not isinstance(loop, _TrainingEpochLoop) or missing:
        raise RuntimeError(
            f"MLPerf evaluation schedule: the trainer's epoch loop is a {type(loop).__module__}.{type(loop).__name__}, "
            f"not a Lightning _TrainingEpochLoop with {', '.join(LOOP_HOOKS)}"
            + (f" (missing: {', '.join(missing)})" if missing else "")
            + "; the schedule cannot decide when it validates (a NeMo or Lightning version this backend was not built for)"
        )
    if isinstance(loop, ScheduledValidation):
        return
    loop.__class__ = _scheduled(type(loop))
    loop.schedule = schedule  # type: ignore[attr-defined]
    loop.start_step = loop.global_step  # type: ignore[attr-defined]


class MlperfControl(Callback):
    """Evaluate on the rules' schedule, write the compliance log, stop at the target, fail a too-slow step."""

    def __init__(
        self,
        schedule: Schedule,
        hyperparameters: dict[str, Any],
        step_time_atol_s: float,
        submitter: str = SUBMITTER,
    ):
        self.schedule = schedule
        self.hyperparameters = dict(hyperparameters)
        self.step_time_atol_s = step_time_atol_s
        self.submitter = submitter
        #: This job's compliance log; the entry point hands over the one it opened at process start.
        self.mllog: MlperfLogger | None = None
        #: An evaluation met the target: training is complete.
        self.reached = False
        self._running = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Install the scheduled loop before the checkpoint is restored into it and before the strategy's setup
        gives it NeMo's optimization step (NeMo's ``configure_no_restart_validation_training_loop`` does this before
        ``fit``; here ``fit`` has attached the validation data to Lightning's loop, so its validation loop stays)."""
        if stage != TrainerFn.FITTING:
            return
        loop = trainer.fit_loop.epoch_loop
        installed = type(loop).__name__
        schedule_loop(loop, self.schedule)
        if trainer.is_global_zero:
            s = self.schedule
            print(
                f"MLPerf evaluation schedule on the trainer's {installed}: after {s.first_eval_step} steps, then "
                f"every {s.eval_interval_steps}, over {s.eval_batches} batches",
                flush=True,
            )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._running = True
        if self.mllog is None:
            return
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
        platform = f"{trainer.num_nodes}x{trainer.num_devices}x{device}".replace(" ", "_")
        params = {**self.hyperparameters, "init_checkpoint_step": trainer.global_step}
        submission = Submission(org=self.submitter, platform=platform, benchmark=self.schedule.benchmark)
        self.mllog.on_train_start(trainer.global_step, params, submission)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        seconds = trainer.callback_metrics.get(STEP_TIME_METRIC)
        if seconds is not None and float(seconds) > self.step_time_atol_s:
            raise RuntimeError(
                f"step {trainer.global_step - 1} took {float(seconds):.0f} s > mlperf.step_time_atol_s="
                f"{self.step_time_atol_s}: a straggler or a hang; failing the job (the MLPerf reference asserts this)"
            )

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.mllog is not None and not trainer.sanity_checking:
            self.mllog.on_eval_start(trainer.global_step)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(VAL_LOSS_METRIC)
        if value is None:
            raise RuntimeError(
                f"no {VAL_LOSS_METRIC!r} after the evaluation at step {trainer.global_step}: the MLPerf target cannot "
                f"be judged (metrics: {', '.join(sorted(trainer.callback_metrics)) or 'none'})"
            )
        val_loss = float(value)
        if self.mllog is not None:
            reached = self.mllog.on_eval_end(trainer.global_step, val_loss)
        else:
            reached = self.schedule.reached(val_loss)
        if trainer.strategy.broadcast(reached, src=0):  # rank 0 logs the verdict; every rank follows it
            self.reached = True
            trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._end(trainer)  # run_stop with status aborted: the log says the run ended, and where

    def _end(self, trainer: Trainer) -> None:
        if self.mllog is None:
            return
        if self._running:
            self.mllog.on_train_end(trainer.global_step)
            self._running = False
        self.mllog.close()
