"""The in-job driver: what every job runs on its batch host (through submitit), around the stage's step.

The rendered batch script ``exec``s submitit's runner, which unpickles a :class:`StageDriver` and calls it, with
submitit's signal handling installed: the USR2 that Slurm sends ``signal_grace_s`` before the time limit calls
:meth:`StageDriver.checkpoint`. The driver

1. records the attempt in the ledger (job id, restart, host, the checkpoint step it starts from);
2. for training, decides first: run already DONE -> exit and cancel the queued rest; chain STOPPED or too many
   strikes -> stop, cancel, say why; otherwise
3. runs the same script again with ``ORCHESTRATOR_PHASE=step`` (the ``srun`` over all nodes) under a
   :class:`StepSupervisor`, passing the deadline by which the trainer must have saved;
4. on USR2 has the supervisor forward the signal to the step, waits for its checkpoint, records how the job ended
   and either leaves the next job of the chain to continue or, when no successor is queued, requeues itself
   (submitit);
5. after the step, records the outcome and applies the crash-loop guard and ``max_retries``.

How an attempt ended is decided by :func:`outcome`, a pure function of the attempt's :class:`Facts`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from orchestrator import chain, slurm
from orchestrator.contract import CHAIN_INDEX_ENV, DEADLINE_ENV, PHASE_ENV, STEP_PHASE, TASK_INDEX_ENV, JobEnvironment
from orchestrator.ledger import Ledger, Outcome
from orchestrator.plan import RunPlan
from orchestrator.rundir import RunDir
from orchestrator.stages import stage_spec

Stop = Literal["time_limit", "preempted"]


@dataclasses.dataclass(frozen=True)
class Facts:
    """What is known about an attempt once its step has ended: everything :func:`outcome` decides from."""

    #: The chained stage (training); the others are data stages.
    chain: bool
    #: The step's exit code; None when no step ran (the signal came first) or it could not be reaped.
    exit_code: int | None
    #: The trainer wrote ``DONE``.
    done: bool = False
    #: Why the driver asked the step to stop (Slurm's USR2): its time limit, or a preemption.
    stop: Stop | None = None
    #: Slurm sent SIGTERM to the job (a requeue, a preemption, a cancel).
    slurm_term: bool = False
    #: Slurm says the job was cancelled (``scancel``).
    cancelled: bool = False
    start_step: int | None = None
    end_step: int | None = None
    steps_per_job: int | None = None


def outcome(facts: Facts) -> Outcome:
    """How an attempt ended. Trainers exit 0 both at the end (DONE written) and after a requested stop that saved
    a checkpoint; any other exit is a failure, a save that failed on the way to a stop included (srun
    --kill-on-bad-exit makes that the step's code). What Slurm did to the job is not its fault: cancelled when
    Slurm says so, preempted otherwise. A data stage stopped at its limit keeps the stop's name."""
    if facts.done:
        return "done"
    if not facts.chain:
        if facts.stop:
            return facts.stop
        if facts.exit_code == 0:
            return "completed"
    if facts.cancelled:
        return "cancelled"
    if facts.slurm_term or facts.stop == "preempted":
        return "preempted"
    if facts.exit_code not in (0, None):
        return "failed"
    steps = facts.steps_per_job
    if facts.stop is None and steps and (facts.end_step or 0) - (facts.start_step or 0) >= steps:
        return "partition"
    return "time_limit"


class StepSupervisor:
    """The stage's step as a child process group: started, stopped on request (USR2, then TERM, then KILL), waited
    for. Knows nothing of chains or the ledger."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self._say = say
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, script: Path, env: Mapping[str, str]) -> None:
        self._proc = subprocess.Popen(["bash", str(script)], env=dict(env), start_new_session=True)

    def wait(self) -> int:
        """The step's exit code. Polls rather than wait(): a blocking wait() holds Popen's lock, and the USR2
        handler, which runs in this same thread, could then never reap the step it stopped."""
        assert self._proc is not None, "start() first"
        while (rc := self._proc.poll()) is None:
            time.sleep(0.5)
        return rc

    def stop(self, first_wait: float, timeout: float) -> int | None:
        """Let the step finish by itself for ``first_wait`` s, then USR2 (save and stop), then TERM, then KILL."""
        proc = self._proc
        if proc is None:
            return None
        try:
            return proc.wait(timeout=first_wait) if first_wait > 0 else proc.wait(timeout=0.01)
        except subprocess.TimeoutExpired:
            pass
        for sig, wait_s in ((signal.SIGUSR2, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                break
            try:
                return proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                self._say(f"step still running {wait_s:.0f}s after {sig.name}; escalating")
        return proc.poll()


class StageDriver:
    """The callable submitit pickles for every job; ``stage`` picks what it drives. Only the run directory, the
    stage and the array task travel in the pickle; the rest is read again in the job (``__setstate__``)."""

    def __init__(self, run_dir: str, stage: str, task_index: int | None = None) -> None:
        self.run_dir = str(run_dir)
        self.stage = stage
        self.task_index = task_index
        self.rd = RunDir.of(self.run_dir)
        self.plan = RunPlan.load(self.rd.path)
        self.ledger = Ledger(self.rd.ledger)
        ctx = JobEnvironment.current()
        self.ctx = ctx if task_index is None else dataclasses.replace(ctx, array_task=task_index)
        self.spec = stage_spec(self.plan, stage)
        self.step = StepSupervisor(self._say)
        self.attempt: int | None = None
        self.start_step: int | None = None
        self.end_at_start: float | None = None
        self.stop_requested: Stop | None = None  # why we asked the step to stop
        self.slurm_term = False  # Slurm itself sent SIGTERM (requeue, preemption, scancel)

    def __getstate__(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "stage": self.stage, "task_index": self.task_index}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # ------------------------------------------------------------------------------------------- entry

    def __call__(self) -> dict[str, Any]:
        if self.ctx.scheduler == "slurm":
            signal.signal(signal.SIGTERM, self._on_sigterm)
        if self.spec.chain:
            return self._train()
        return self._simple_stage()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.slurm_term = True
        print(f"[orchestrator] driver: SIGTERM from Slurm (requeue, preemption or cancel) at {_stamp()}", flush=True)

    def _facts(self, rc: int | None, end_step: int | None = None) -> Facts:
        """This attempt's facts; when Slurm sent SIGTERM, Slurm is asked whether that was a cancel."""
        return Facts(
            chain=self.spec.chain,
            exit_code=rc,
            done=self.spec.chain and self.rd.done() is not None,
            stop=self.stop_requested,
            slurm_term=self.slurm_term,
            cancelled=self.slurm_term and self._cancelled(),
            start_step=self.start_step,
            end_step=end_step,
            steps_per_job=self.plan.chain.steps_per_job,
        )

    def _cancelled(self) -> bool:
        """sacct says CANCELLED from the moment of an scancel (a requeue or preemption reads otherwise)."""
        try:
            return slurm.liveness([self.ctx.job_id]).jobs[self.ctx.job_id].cancelled
        except slurm.SlurmError:
            return False

    # ------------------------------------------------------------------------------------------ training

    def _train(self) -> dict[str, Any]:
        progress = chain.progress_step(self.plan)
        chain.reconcile(self.ledger, self.ctx.job_id, self.ctx.restart, progress)
        if continued := chain.continue_after_stop(self.rd, self.ledger):
            self._say(continued)
        self.start_step = progress
        self.end_at_start = self._end_time()
        self.attempt = self.ledger.start_attempt(
            self.ctx.job_id,
            self.stage,
            restart=self.ctx.restart,
            host=self.ctx.host,
            start_step=progress,
            log_path=self._log_path(),
        )
        say = self._say
        say(
            f"job {self.ctx.job_id} (restart {self.ctx.restart}) on {self.ctx.host}; latest checkpoint: {_step(progress)}"
        )

        if done := self.rd.done():
            return self._finish_early("stopped", f"run already done at step {done.get('final_step')}")
        if stopped := self.rd.stopped():
            return self._finish_early("stopped", f"chain stopped earlier: {stopped.get('reason')}")
        if reason := chain.crash_loop(self.plan, chain.counted(self.ledger)):
            return self._stop_chain(reason)

        self._start_step(deadline=self._deadline())
        rc = self.step.wait()
        end_step = chain.progress_step(self.plan)
        result = outcome(self._facts(rc, end_step))
        self.ledger.end_attempt(self.attempt, result, end_step=end_step, exit_code=rc)
        say(f"step ended: exit {rc}, outcome {result}, checkpoint {_step(self.start_step)} -> {_step(end_step)}")
        if result == "done":
            chain.cancel_successors(self.ledger, self.ctx.job_id, "run done")
        elif result == "failed":
            if reason := chain.crash_loop(self.plan, chain.counted(self.ledger)):
                return self._stop_chain(reason, ended=True)
            if self.ctx.scheduler == "slurm" and self.ctx.restart < self.plan.chain.max_retries:
                say(f"requeueing after failure (retry {self.ctx.restart + 1} of {self.plan.chain.max_retries})")
                slurm.requeue(self.ctx.job_id)
            raise SystemExit(rc or 1)  # the job itself ends FAILED in sacct; afterany successors still start
        return {"stage": self.stage, "outcome": result, "exit_code": rc, "end_step": end_step}

    def _finish_early(self, result: Outcome, why: str) -> dict[str, Any]:
        assert self.attempt is not None
        self._say(why)
        self.ledger.end_attempt(self.attempt, result, end_step=self.start_step, note=why)
        if self.ctx.scheduler == "slurm":
            chain.cancel_successors(self.ledger, self.ctx.job_id, why)
        return {"stage": self.stage, "outcome": result, "note": why}

    def _stop_chain(self, reason: chain.StopReason, ended: bool = False) -> dict[str, Any]:
        tail = _tail(reason.last_failure_log)
        self.rd.mark_stopped(reason.reason, failing_log=reason.last_failure_log, log_tail=tail)
        self.ledger.event("stop", reason.reason)
        self._say(f"STOPPING THE CHAIN: {reason.reason}")
        if tail:
            self._say("last lines of the failing log:\n" + tail)
        if not ended:
            assert self.attempt is not None
            self.ledger.end_attempt(self.attempt, "stopped", end_step=self.start_step, note=reason.reason)
        if self.ctx.scheduler == "slurm":
            chain.cancel_successors(self.ledger, self.ctx.job_id, "chain stopped")
        return {"stage": self.stage, "outcome": "stopped", "note": reason.reason}

    def _end_time(self) -> float | None:
        """When Slurm will end this job (epoch seconds), from squeue; None when unknown or not on Slurm."""
        if self.ctx.scheduler != "slurm":
            return None
        try:
            end = slurm.end_time(os.environ.get("SLURM_JOB_ID", self.ctx.job_id))
        except slurm.SlurmError:
            return None
        return end.timestamp() if end else None

    def _deadline(self) -> float | None:
        """When the trainer must have saved and exited: the job's end minus the signal grace."""
        return self.end_at_start - self.plan.cluster.signal_grace_s if self.end_at_start else None

    # ------------------------------------------------------------------------------ the signal (USR2)

    def checkpoint(self) -> Any:
        """submitit calls this on USR2: stop the step at a checkpoint, then requeue or leave it to the chain."""
        import submitit

        grace = self.plan.cluster.signal_grace_s
        end = self._end_time()
        preempted = bool(self.end_at_start and end and end < self.end_at_start - 5)
        reason: Stop = "preempted" if preempted else "time_limit"
        self.stop_requested = reason
        # Slurm may send the signal up to a minute early; before the deadline the trainer is left alone (it
        # stops itself at ORCHESTRATOR_DEADLINE = end - grace), a preemption is acted on at once.
        early = 0.0 if preempted or end is None else max(0.0, end - grace - time.time())
        self._say(f"USR2 ({reason}, {end - time.time():.0f}s left)" if end else f"USR2 ({reason})")
        rc = self.step.stop(first_wait=early, timeout=max(grace - 8.0, 5.0))
        if not self.spec.chain or self.attempt is None:
            if self.attempt is not None:
                self.ledger.end_attempt(self.attempt, outcome(self._facts(rc)), exit_code=rc)
            raise SystemExit(0)
        end_step = chain.progress_step(self.plan)
        result = outcome(self._facts(rc, end_step))
        self.ledger.end_attempt(self.attempt, result, end_step=end_step, exit_code=rc)
        progressed = end_step is not None and end_step > (self.start_step or 0)
        self._say(f"step ended: exit {rc}, outcome {result}, checkpoint {_step(self.start_step)} -> {_step(end_step)}")
        if result == "done":
            chain.cancel_successors(self.ledger, self.ctx.job_id, "run done")
            raise SystemExit(0)
        if result == "failed":
            # No time is left to retry; afterany successors (or nightly) continue from the latest checkpoint.
            if reason_to_stop := chain.crash_loop(self.plan, chain.counted(self.ledger)):
                self._stop_chain(reason_to_stop, ended=True)
            raise SystemExit(rc or 1)
        try:
            successor = bool(chain.pending_successors(self.ledger, self.ctx.job_id))
        except slurm.SlurmError as exc:
            self._say(
                f"not requeueing: Slurm cannot say whether a successor is queued ({exc}); a job that cannot be "
                "ruled out counts as queued, and nightly continues the run"
            )
            raise SystemExit(0) from None
        if successor:
            self._say(f"saved at {_step(end_step)}; the next job of the chain continues")
            raise SystemExit(0)
        if not progressed or preempted:
            # A preempted job is requeued by Slurm itself; one without progress must not loop.
            self._say(
                "not requeueing: " + ("Slurm requeues preempted jobs" if preempted else "no progress in this job")
            )
            raise SystemExit(0)
        self._say(f"saved at {_step(end_step)}; no successor queued: requeueing this job")
        return submitit.helpers.DelayedSubmission(StageDriver(self.run_dir, self.stage, self.task_index))

    # ------------------------------------------------------------------------------------------ the step

    def _start_step(self, deadline: float | None = None) -> None:
        env = dict(os.environ, **{PHASE_ENV: STEP_PHASE})
        if deadline:
            env[DEADLINE_ENV] = f"{deadline:.0f}"
        if self.ctx.array_task is not None:
            env[TASK_INDEX_ENV] = str(self.ctx.array_task)
        job = self.ledger.job(self.ctx.job_id)
        if job is not None and job.chain_index is not None:
            env[CHAIN_INDEX_ENV] = str(job.chain_index)
        for folder in self.spec.paths.writes:  # on the host: a container mounts only what exists
            Path(folder).mkdir(parents=True, exist_ok=True)
        script = self.rd.script(self.stage)
        self._say(f"step: bash {script}" + (f" (deadline {_stamp(deadline)})" if deadline else ""))
        self.step.start(script, env)

    # ------------------------------------------------------------------------------------- other stages

    def _simple_stage(self) -> dict[str, Any]:
        self.attempt = self.ledger.start_attempt(
            self.ctx.job_id, self.stage, restart=self.ctx.restart, host=self.ctx.host, log_path=self._log_path()
        )
        self._start_step()
        rc = self.step.wait()
        result = outcome(self._facts(rc))
        self.ledger.end_attempt(self.attempt, result, exit_code=rc)
        self._say(f"{self.stage}{_task(self.ctx.array_task)} ended: exit {rc}")
        if rc != 0:
            raise SystemExit(rc)
        return {"stage": self.stage, "outcome": result, "exit_code": rc}

    # --------------------------------------------------------------------------------------------- util

    def _log_path(self) -> str | None:
        return str(self.rd.log(self.stage, self.ctx.job_id)) if self.ctx.scheduler == "slurm" else None

    def _say(self, message: str) -> None:
        print(f"[orchestrator] {_stamp()} driver: {message}", flush=True)


def _stamp(ts: float | None = None) -> str:
    return dt.datetime.fromtimestamp(ts or time.time()).strftime("%Y-%m-%d %H:%M:%S")


def _task(index: int | None) -> str:
    return "" if index is None else f" task {index}"


def _step(step: int | None) -> str:
    return "none" if step is None else f"step {step}"


def _tail(path: str | None, lines: int = 20) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 64 * 1024, 0))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run through submitit: the batch script execs `python -m submitit.core._submit <run_dir>/submitit`")
