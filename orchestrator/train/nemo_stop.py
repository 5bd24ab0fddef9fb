"""Stop a NeMo training job at a step boundary, with a finished checkpoint, whatever the reason.

Why and when a job stops is :mod:`orchestrator.train.stopping`'s (the step quota, a signal, the deadline), shared
with the reference trainer. In every case :class:`StopControl` saves NeMo's ``*last`` checkpoint at the end of
the current step, waits for the asynchronous save to finish (so the ``-unfinished`` marker is gone before the
process exits), skips the validation Lightning would otherwise start on a stop, and lets ``trainer.fit`` return
normally. The caller reads :attr:`reason` and :attr:`saved_step` to choose the exit status.

In an MLPerf plan (``eval_schedule`` set) the rules' evaluations decide what "validation step" means, and a stop
right after one of them still evaluates, whatever the reason (as the reference trainer, which evaluates before it
looks at signals): the rules' evaluations are never skipped, the next job starts after that step and repeats none,
and a stop on a grid point the rules skip (step 32 of GBS 1152) never evaluates.

Why not NeMo's ``PreemptionCallback``: it listens to one signal, on rank 0 only, and ends with ``sys.exit(0)``,
so a preempted job looks finished. Why not Lightning's ``max_time``: its clock starts at ``on_train_start``, after
the model is built and the checkpoint loaded (minutes at 405B), so it cannot express an absolute deadline. Why the
handlers are installed again in ``on_train_start``: Lightning registers its own SIGTERM handler when ``fit`` starts,
and that one raises ``SIGTERMException`` at the next step without saving.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lightning.pytorch import Callback, LightningModule, Trainer

from orchestrator.mlperf.checkpoints import check_start
from orchestrator.train import stopping

if TYPE_CHECKING:
    from orchestrator.mlperf.schedule import Schedule


class StopControl(Callback):
    """Save and stop at a step boundary on a signal, near the deadline, or after ``steps_per_job`` steps."""

    def __init__(
        self,
        steps_per_job: int | None = None,
        deadline: float | None = None,
        save_estimate_s: float = 60.0,
        eval_schedule: Schedule | None = None,
        start_step: int | None = None,
    ):
        #: Where the plan says this job starts (a checkpoint of the run, a full resume's step, or 0); None: unchecked.
        self.expected_start = start_step
        self.steps_per_job = steps_per_job
        self.deadline = deadline
        self.save_estimate_s = save_estimate_s
        self.eval_schedule = eval_schedule
        self.policy = stopping.StopPolicy(steps_per_job, deadline, save_estimate_s)
        self.reason: str | None = None
        self.start_step: int | None = None
        self.saved_step: int | None = None
        self._last_boundary: float | None = None
        self._validation_start: float | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        stopping.install()  # again: Lightning's SIGTERM handler replaced ours when fit started
        self.start_step = trainer.global_step
        if self.expected_start is not None:
            check_start(self.expected_start, trainer.global_step, trainer.ckpt_path)
        self._last_boundary = time.monotonic()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        if self._last_boundary is not None:
            self.policy.longest_step_s = max(self.policy.longest_step_s, now - self._last_boundary)
        self._last_boundary = now
        if 0 < trainer.max_steps <= trainer.global_step:
            return  # the normal end; on_train_end saves
        reason = self.stop_reason(trainer)
        if reason is None:
            return
        self.reason = reason
        trainer.should_stop = True
        validates_here = bool(trainer.limit_val_batches) and self.validates_after(trainer, trainer.global_step)
        if not stopping.keeps_validation(reason, validates_here, self.eval_schedule is not None):
            trainer.limit_val_batches = 0  # Lightning validates when should_stop is set; a stop has no time for it
        if trainer.is_global_zero:
            print(f"stopping after step {trainer.global_step}: {self.policy.describe(reason)}", flush=True)
        self.save(trainer)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validation_start = time.monotonic()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._validation_start is not None:
            self.policy.validation_s = time.monotonic() - self._validation_start
        self._last_boundary = time.monotonic()  # the next step's time starts after the validation

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step > (self.start_step or 0):
            self.save(trainer)

    def stop_reason(self, trainer: Trainer) -> str | None:
        """Why this step is the last of the job: agreed by all ranks, so they stop at the same step."""
        late = (
            self.policy.deadline is not None and time.time() + self.time_to_next_stop(trainer) >= self.policy.deadline
        )
        signalled, late = stopping.any_rank([stopping.received() is not None, late], trainer.strategy.root_device)
        return self.policy.reason(trainer.global_step - (self.start_step or 0), signalled, late)

    def time_to_next_stop(self, trainer: Trainer) -> float:
        """Seconds from now to a saved stop after one more step (and its validation, if one is due)."""
        validates_next = bool(trainer.limit_val_batches) and self.validates_after(trainer, trainer.global_step + 1)
        return self.policy.seconds_to_stop(validates_next)

    def validates_after(self, trainer: Trainer, steps_done: int) -> bool:
        """Does validation follow the step that completes ``steps_done``? The rules' schedule in an MLPerf plan,
        else every ``val_check_interval`` steps."""
        if self.eval_schedule is not None:
            return self.eval_schedule.is_eval_step(steps_done)
        interval = trainer.val_check_interval
        return isinstance(interval, int) and interval > 0 and steps_done % interval == 0

    def save(self, trainer: Trainer) -> None:
        """Save ``*last`` for the current step unless it is saved already, and wait until it is complete (nothing
        where the plan saves no checkpoints: its callback keeps no ``*last``)."""
        ckpt = trainer.checkpoint_callback
        if ckpt is None or not ckpt.save_last:
            return
        start = time.monotonic()
        if getattr(ckpt, "_last_global_step_saved", None) != trainer.global_step:
            with _batch_completed(trainer):
                ckpt._save_last_checkpoint(trainer, ckpt._monitor_candidates(trainer))
        finalize = getattr(trainer.strategy.checkpoint_io, "maybe_finalize_save_checkpoint", None)
        if finalize is not None:
            finalize(blocking=True)
        self.policy.save_s = time.monotonic() - start
        self.saved_step = trainer.global_step


@contextlib.contextmanager
def _batch_completed(trainer: Trainer) -> Iterator[None]:
    """Count the finished batch as completed while its checkpoint is written.

    Lightning marks a batch completed only after ``on_train_batch_end``, and a restored loop drops a batch that was
    not completed. A checkpoint saved inside that hook (here, and NeMo's own step-interval saves) therefore resumes
    one batch behind: the optimizer step, learning rate and data position are right, but the batch index that
    schedules validation lags by one, so every resumed job validates one step later (seen on a GPU: validation at
    103, 153, ... after three resumes instead of 100, 150, ...).
    """
    progress = trainer.fit_loop.epoch_loop.batch_progress
    pending = progress.current.processed - progress.current.completed
    progress.current.completed += pending
    progress.total.completed += pending
    try:
        yield
    finally:
        progress.current.completed -= pending
        progress.total.completed -= pending
