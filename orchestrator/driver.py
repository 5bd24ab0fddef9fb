"""The in-job driver: what every job runs on its batch host (through submitit), around the stage's step.

The rendered batch script ``exec``s submitit's runner, which unpickles a :class:`StageDriver` and calls it, with
submitit's signal handling installed: the USR2 that Slurm sends ``signal_grace_s`` before the time limit calls
:meth:`StageDriver.checkpoint`. The driver

1. records the attempt in the ledger (job id, restart, host, the checkpoint step it starts from);
2. for training, decides first: run already DONE -> exit and cancel the queued rest; chain STOPPED or too many
   strikes -> stop, cancel, say why; otherwise
3. runs the same script again with ``ORCHESTRATOR_PHASE=step`` (the ``srun`` over all nodes), passing the
   deadline by which the trainer must have saved;
4. on USR2 forwards the signal to the step, waits for its checkpoint, records how the job ended and either
   leaves the next job of the chain to continue or, when no successor is queued, requeues itself (submitit);
5. after the step, records the outcome and applies the crash-loop guard and ``max_retries``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator import chain, slurm
from orchestrator.contract import CHAIN_INDEX_ENV, DEADLINE_ENV, PHASE_ENV, STEP_PHASE, TASK_INDEX_ENV, JobEnvironment
from orchestrator.ledger import Ledger
from orchestrator.plan import RunPlan
from orchestrator.rundir import RunDir
from orchestrator.stages import stage_spec



class StageDriver:
    """The callable submitit pickles for every job; ``stage`` picks what it drives."""

    def __init__(self, run_dir: str, stage: str, task_index: int | None = None) -> None:
        self.run_dir = str(run_dir)
        self.stage = stage
        self.task_index = task_index
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._attempt: int | None = None
        self._signalled: str | None = None  # why we asked the step to stop
        self._slurm_term = False  # Slurm itself sent SIGTERM (requeue, preemption, scancel)
        self._start_step: int | None = None
        self._end_at_start: float | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "stage": self.stage, "task_index": self.task_index}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime()

    # ------------------------------------------------------------------------------------------- entry

    def __call__(self) -> dict[str, Any]:
        self.rd = RunDir.of(self.run_dir)
        self.plan = RunPlan.load(self.rd.path)
        self.ledger = Ledger(self.rd.ledger)
        ctx = JobEnvironment.current()
        self.ctx = ctx if self.task_index is None else dataclasses.replace(ctx, array_task=self.task_index)
        self.spec = stage_spec(self.plan, self.stage)
        if self.ctx.scheduler == "slurm":
            signal.signal(signal.SIGTERM, self._on_sigterm)
        if self.spec.chain:
            return self._train()
        return self._simple_stage()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._slurm_term = True
        print(f"[orchestrator] driver: SIGTERM from Slurm (requeue, preemption or cancel) at {_stamp()}", flush=True)

    # ------------------------------------------------------------------------------------------ training

    def _train(self) -> dict[str, Any]:
        progress = chain.progress_step(self.plan)
        chain.reconcile(self.ledger, self.ctx.job_id, self.ctx.restart, progress)
        self._start_step = progress
        self._end_at_start = self._end_time()
        self._attempt = self.ledger.start_attempt(
            self.ctx.job_id, self.stage, restart=self.ctx.restart, host=self.ctx.host, start_step=progress,
            log_path=self._log_path(),
        )  # fmt: skip
        say = self._say
        say(f"job {self.ctx.job_id} (restart {self.ctx.restart}) on {self.ctx.host}; latest checkpoint: {_step(progress)}")

        if self.rd.done():
            return self._finish_early("stopped", f"run already done at step {self.rd.done().get('final_step')}")  # type: ignore[union-attr]
        if stopped := self.rd.stopped():
            return self._finish_early("stopped", f"chain stopped earlier: {stopped.get('reason')}")
        if reason := chain.crash_loop(self.plan, self.ledger.attempts()):
            return self._stop_chain(reason)

        rc = self._run_step(deadline=self._deadline())
        outcome = self._classify(rc)
        end_step = chain.progress_step(self.plan)
        self.ledger.end_attempt(self._attempt, outcome, end_step=end_step, exit_code=rc)
        say(f"step ended: exit {rc}, outcome {outcome}, checkpoint {_step(self._start_step)} -> {_step(end_step)}")
        if outcome == "done":
            chain.cancel_successors(self.ledger, self.ctx.job_id, "run done")
        elif outcome == "failed":
            if reason := chain.crash_loop(self.plan, self.ledger.attempts()):
                return self._stop_chain(reason, ended=True)
            if self.ctx.scheduler == "slurm" and self.ctx.restart < self.plan.chain.max_retries:
                say(f"requeueing after failure (retry {self.ctx.restart + 1} of {self.plan.chain.max_retries})")
                slurm.requeue(self.ctx.job_id)
            raise SystemExit(rc or 1)  # the job itself ends FAILED in sacct; afterany successors still start
        return {"stage": self.stage, "outcome": outcome, "exit_code": rc, "end_step": end_step}

    def _finish_early(self, outcome: str, why: str) -> dict[str, Any]:
        assert self._attempt is not None
        self._say(why)
        self.ledger.end_attempt(self._attempt, outcome, end_step=self._start_step, note=why)
        if self.ctx.scheduler == "slurm":
            chain.cancel_successors(self.ledger, self.ctx.job_id, why)
        return {"stage": self.stage, "outcome": outcome, "note": why}

    def _stop_chain(self, reason: chain.StopReason, ended: bool = False) -> dict[str, Any]:
        tail = _tail(reason.last_failure_log)
        self.rd.mark_stopped(reason.reason, failing_log=reason.last_failure_log, log_tail=tail)
        self.ledger.event("stop", reason.reason)
        self._say(f"STOPPING THE CHAIN: {reason.reason}")
        if tail:
            self._say("last lines of the failing log:\n" + tail)
        if not ended:
            assert self._attempt is not None
            self.ledger.end_attempt(self._attempt, "stopped", end_step=self._start_step, note=reason.reason)
        if self.ctx.scheduler == "slurm":
            chain.cancel_successors(self.ledger, self.ctx.job_id, "chain stopped")
        return {"stage": self.stage, "outcome": "stopped", "note": reason.reason}

    def _classify(self, rc: int) -> str:
        """How the step ended. Trainers exit 0 both at the end (DONE written) and after a requested stop that
        saved a checkpoint; anything else is a failure (srun --kill-on-bad-exit makes that the step's code)."""
        if self.rd.done():
            return "done"
        if self._signalled:
            return self._signalled
        if self._slurm_term:
            return "preempted"
        if rc == 0:
            steps = self.plan.chain.steps_per_job
            end = chain.progress_step(self.plan) or 0
            if steps and end - (self._start_step or 0) >= steps:
                return "partition"
            return "time_limit"
        return "failed"

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
        return self._end_at_start - self.plan.cluster.signal_grace_s if self._end_at_start else None

    # ------------------------------------------------------------------------------ the signal (USR2)

    def checkpoint(self) -> Any:
        """submitit calls this on USR2: stop the step at a checkpoint, then requeue or leave it to the chain."""
        import submitit

        grace = self.plan.cluster.signal_grace_s
        end = self._end_time()
        preempted = bool(self._end_at_start and end and end < self._end_at_start - 5)
        reason = "preempted" if preempted else "time_limit"
        self._signalled = reason
        # Slurm may send the signal up to a minute early; before the deadline the trainer is left alone (it
        # stops itself at ORCHESTRATOR_DEADLINE = end - grace), a preemption is acted on at once.
        early = 0.0 if preempted or end is None else max(0.0, end - grace - time.time())
        self._say(f"USR2 ({reason}, {end - time.time():.0f}s left)" if end else f"USR2 ({reason})")
        rc = self._stop_step(first_wait=early, timeout=max(grace - 8.0, 5.0))
        if not self.spec.chain or self._attempt is None:
            if self._attempt is not None:
                self.ledger.end_attempt(self._attempt, reason, exit_code=rc)
            raise SystemExit(0)
        outcome = "done" if self.rd.done() else reason
        end_step = chain.progress_step(self.plan)
        self.ledger.end_attempt(self._attempt, outcome, end_step=end_step, exit_code=rc)
        progressed = end_step is not None and end_step > (self._start_step or 0)
        self._say(f"step ended: exit {rc}, outcome {outcome}, checkpoint {_step(self._start_step)} -> {_step(end_step)}")
        if outcome == "done":
            chain.cancel_successors(self.ledger, self.ctx.job_id, "run done")
            raise SystemExit(0)
        if chain.pending_successors(self.ledger, self.ctx.job_id):
            self._say(f"saved at {_step(end_step)}; the next job of the chain continues")
            raise SystemExit(0)
        if not progressed or preempted:
            # A preempted job is requeued by Slurm itself; one without progress must not loop.
            self._say("not requeueing: " + ("Slurm requeues preempted jobs" if preempted else "no progress in this job"))
            raise SystemExit(0)
        self._say(f"saved at {_step(end_step)}; no successor queued: requeueing this job")
        return submitit.helpers.DelayedSubmission(StageDriver(self.run_dir, self.stage, self.task_index))

    # ------------------------------------------------------------------------------------------ the step

    def _run_step(self, deadline: float | None = None) -> int:
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
        self._proc = subprocess.Popen(["bash", str(script)], env=env, start_new_session=True)
        # Poll rather than wait(): a blocking wait() holds Popen's lock, and the USR2 handler, which runs in
        # this same thread, could then never reap the step it stopped.
        while (rc := self._proc.poll()) is None:
            time.sleep(0.5)
        return rc

    def _stop_step(self, first_wait: float, timeout: float) -> int | None:
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

    # ------------------------------------------------------------------------------------- other stages

    def _simple_stage(self) -> dict[str, Any]:
        self._attempt = self.ledger.start_attempt(
            self.ctx.job_id, self.stage, restart=self.ctx.restart, host=self.ctx.host, log_path=self._log_path()
        )
        rc = self._run_step()
        outcome = "completed" if rc == 0 else ("preempted" if self._slurm_term else "failed")
        self.ledger.end_attempt(self._attempt, outcome, exit_code=rc)
        self._say(f"{self.stage}{_task(self.ctx.array_task)} ended: exit {rc}")
        if rc != 0:
            raise SystemExit(rc)
        return {"stage": self.stage, "outcome": outcome, "exit_code": rc}

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
