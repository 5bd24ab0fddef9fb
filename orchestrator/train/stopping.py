"""When a training job stops before ``max_steps``, for both trainers: one record of stop signals, one decision.

A job stops at a step boundary for one of three reasons, looked at in this order:

* its step quota: ``chain.steps_per_job`` steps done in this job (MLPerf's ``MAX_STEPS`` partitions);
* a stop signal on any rank: SIGTERM (Slurm, a preemption) or SIGUSR2 (the driver, before the time limit);
* its deadline (:data:`~orchestrator.contract.DEADLINE_ENV`, when the job must have saved and exited): closer than the
  longest step so far, plus the last validation's time when the next step validates, plus one checkpoint save.

It then saves a checkpoint and exits 0; the next job resumes. A validation due after the last step still runs when
the stop is the step quota's (as MLPerf's ``PreemptiveStop``), and in an MLPerf plan always (the rules' evaluations
are never skipped); a signal or the deadline otherwise leaves no time for it (:func:`keeps_validation`).

The recorder of stop signals (:func:`install`) imports nothing but the standard library: each trainer's entry
point installs it first, before importing torch, so a signal in the seconds (for 405B, minutes) before training
starts is remembered, not fatal. It also ignores stop signals once the interpreter exits: Python puts the default
handlers back while it shuts down, and a USR2 then (the driver's, arriving just as the trainer stopped by itself)
would kill a task that saved cleanly, which srun reports as exit 140, "User defined signal 2".
"""

from __future__ import annotations

import atexit
import signal
from dataclasses import dataclass
from types import FrameType
from typing import Any

from orchestrator.contract import DEADLINE_ENV

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
#: Before this job has timed a save, a save is assumed to write each rank's weights and optimizer state at this rate.
ASSUMED_SAVE_BYTES_PER_S = 200e6
_received: list[int] = []


def _remember(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def install() -> None:
    """Turn SIGTERM and SIGUSR2 into a stop request that the next step boundary acts on (main thread only), and
    into nothing from the moment the interpreter starts to exit.

    Called again once a framework has put its own handlers in place (Lightning installs a SIGTERM handler when
    ``fit`` starts, which would raise at the next step without saving)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _remember)
    atexit.unregister(_ignore)
    atexit.register(_ignore)


def _ignore() -> None:
    """At exit the work is saved or lost already; a stop signal must not turn a clean exit into a death by signal."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def received() -> str | None:
    """The name of the first stop signal this process received (``SIGUSR2``), if any."""
    return signal.Signals(_received[0]).name if _received else None


def save_estimate_s(state_bytes_per_rank: float) -> float:
    """How long one checkpoint save may take before this job has timed one: a second plus the rank's state
    (weights and optimizer) at :data:`ASSUMED_SAVE_BYTES_PER_S`."""
    return round(1.0 + state_bytes_per_rank / ASSUMED_SAVE_BYTES_PER_S, 1)


@dataclass
class StopPolicy:
    """One job's stop decision: its bounds (step quota, deadline) and what it has measured so far."""

    steps_per_job: int | None = None
    deadline: float | None = None
    #: One save's duration: the estimate until this job has saved, then the measured one.
    save_s: float = 60.0
    longest_step_s: float = 0.0
    validation_s: float = 0.0

    def seconds_to_stop(self, validates_next: bool) -> float:
        """From now to a saved stop after one more step."""
        return self.longest_step_s + (self.validation_s if validates_next else 0.0) + self.save_s

    def late(self, now: float, validates_next: bool) -> bool:
        """One more step (and its validation) and one save would not finish before the deadline."""
        return self.deadline is not None and now + self.seconds_to_stop(validates_next) >= self.deadline

    def reason(self, steps_in_job: int, signalled: bool, late: bool) -> str | None:
        """Why this step boundary is the job's last (``signalled``/``late``: on any rank), or None."""
        if self.steps_per_job and steps_in_job >= self.steps_per_job:
            return "steps_per_job"
        if signalled:
            return "signal"
        if late:
            return "deadline"
        return None

    def describe(self, reason: str, validates_next: bool = False) -> str:
        """What a person reads in the log about a stop."""
        if reason == "steps_per_job":
            return f"chain.steps_per_job={self.steps_per_job} done"
        if reason == "signal":
            name = received()
            return f"{name} received" if name else "a stop signal received on another rank"
        step = self.longest_step_s + (self.validation_s if validates_next else 0.0)
        return f"{DEADLINE_ENV} is less than one step ({step:.1f} s) and one save ({self.save_s:.1f} s) away"


def keeps_validation(reason: str, validates_here: bool, mlperf: bool) -> bool:
    """Does a stop after this step still run the validation due here?"""
    return validates_here and (mlperf or reason == "steps_per_job")


def any_rank(flags: list[bool], device: Any) -> list[bool]:
    """Element-wise OR over all ranks (one tiny all-reduce per step), so that one rank seeing a signal stops all."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flags
    tensor = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]
