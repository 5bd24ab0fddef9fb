"""Chain decisions: is the run done, has it stopped making progress, which queued jobs must go.

Pure functions over the ledger and the checkpoint directory, so that the in-job driver, ``status`` and
``nightly`` decide the same way.

- Progress is the newest *complete* checkpoint step (each backend publishes checkpoints atomically).
- A strike is a training attempt that ended ``failed`` or at its time limit without a newer checkpoint than it
  started from. Preemption, node failure and cancellation are not the job's fault and do not count. Any attempt
  that made progress resets the count. ``max_strikes`` consecutive strikes stop the chain.
- A person continues a stopped chain by removing ``STOPPED`` (what the stop message says): the next ``nightly`` or
  job then records a strike reset in the ledger, and strikes count only the attempts after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator import slurm
from orchestrator.ledger import Attempt, Job, Ledger
from orchestrator.plan import RunPlan
from orchestrator.rundir import RunDir
from orchestrator.stages import TRAIN

STRIKE_OUTCOMES = ("failed", "time_limit")

#: sacct state of a job whose driver could not record its end -> our outcome.
SACCT_OUTCOMES = {
    "NODE_FAIL": "node_failure",
    "CANCELLED": "cancelled",
    "PREEMPTED": "preempted",
    "REQUEUED": "preempted",
    "TIMEOUT": "time_limit",
    "FAILED": "failed",
    "OUT_OF_MEMORY": "failed",
    "BOOT_FAIL": "node_failure",
    "DEADLINE": "time_limit",
    "COMPLETED": "failed",  # the driver always records a clean end; silence means it died
}


def progress_step(plan: RunPlan) -> int | None:
    """The newest complete checkpoint's step count for this run's backend (None: no checkpoint yet)."""
    return plan.backend.latest_step(Path(plan.train.ckpt_dir))


def strikes(attempts: list[Attempt]) -> int:
    """Consecutive recent training attempts that ended without progress through their own fault."""
    count = 0
    for attempt in reversed([a for a in attempts if a.stage == TRAIN and a.outcome != "running"]):
        if attempt.outcome == "done" or attempt.progressed:
            break
        if attempt.outcome in STRIKE_OUTCOMES:
            count += 1
    return count


def counted(ledger: Ledger) -> list[Attempt]:
    """The attempts strikes are counted over: every one after the ledger's last strike reset."""
    resets = ledger.strike_resets()
    after = resets[-1].after_attempt if resets else 0
    return [a for a in ledger.attempts() if a.id > after]


def continue_after_stop(rd: RunDir, ledger: Ledger) -> str | None:
    """Once a person has removed ``STOPPED`` after the chain stopped, count strikes afresh: recorded once in the
    ledger (a strike reset with its event); returns its reason, or None when there is nothing to continue."""
    if rd.stopped() is not None:
        return None
    stops = [e for e in ledger.events() if e.kind == "stop"]
    resets = ledger.strike_resets()
    if not stops or (resets and resets[-1].event > stops[-1].id):
        return None
    reason = f"{rd.stopped_marker} was removed after the chain stopped ({stops[-1].message}): strikes count afresh"
    ledger.reset_strikes(reason)
    return reason


@dataclass(frozen=True)
class StopReason:
    reason: str
    last_failure_log: str | None


def crash_loop(plan: RunPlan, attempts: list[Attempt]) -> StopReason | None:
    """A reason to stop the chain, or None to go on."""
    count = strikes(attempts)
    if count < plan.chain.max_strikes:
        return None
    failing = [a for a in attempts if a.stage == TRAIN and a.outcome in STRIKE_OUTCOMES]
    last = failing[-1] if failing else None
    reason = (
        f"{count} consecutive training jobs ended without a new checkpoint "
        f"(max_strikes={plan.chain.max_strikes}); last: job {last.job_id if last else '?'} "
        f"{last.outcome if last else ''}{' exit ' + str(last.exit_code) if last and last.exit_code is not None else ''}"
    )
    return StopReason(reason=reason, last_failure_log=last.log_path if last else None)


def reconcile(ledger: Ledger, current_job: str | None, current_restart: int, progress: int | None) -> None:
    """Close attempts whose driver died (killed by Slurm, node lost) once Slurm says their job ended, using sacct
    and today's progress, and name the cause of a requeue of this job that its driver could only see as a SIGTERM.
    An attempt stays open while its job is alive, or while Slurm cannot be asked."""
    if current_job and current_restart > 0 and slurm.available():
        _label_requeues(ledger, current_job)
    dangling = [
        a
        for a in ledger.attempts()
        if a.outcome == "running" and not (a.job_id == current_job and a.restart == current_restart)
    ]
    if not dangling:
        return
    others = sorted({a.job_id for a in dangling if a.job_id != current_job})
    try:
        live: slurm.Liveness | None = slurm.liveness(others) if others and slurm.available() else slurm.Liveness({})
    except slurm.SlurmError:
        live = None
    for attempt in dangling:
        if attempt.job_id == current_job:
            outcome = "preempted"  # the same job runs again: it was requeued
        elif live is None:
            continue
        else:
            state = live.jobs.get(attempt.job_id)
            if state is not None and state.alive:
                continue
            record = state.records[-1] if state is not None and state.records else None
            outcome = SACCT_OUTCOMES.get(record.base_state, "failed") if record else "failed"
        ledger.end_attempt(attempt.id, outcome, end_step=progress, note="end reconciled from sacct")


def _label_requeues(ledger: Ledger, job_id: str) -> None:
    """A requeued job's earlier runs, as sacct -D reports them (NODE_FAIL, PREEMPTED, REQUEUED ...)."""
    try:
        runs = slurm.history(job_id)
    except slurm.SlurmError:
        return
    mine = [a for a in ledger.attempts(TRAIN) if a.job_id == job_id]
    for attempt in mine:
        if attempt.restart < len(runs) - 1 and attempt.outcome in ("preempted", "running"):
            outcome = SACCT_OUTCOMES.get(runs[attempt.restart].base_state)
            if outcome and outcome != attempt.outcome and outcome in ("node_failure", "preempted", "cancelled"):
                ledger.end_attempt(
                    attempt.id,
                    outcome,
                    end_step=attempt.end_step,
                    exit_code=attempt.exit_code,
                    note=f"sacct: {runs[attempt.restart].state}",
                )


def pending_successors(ledger: Ledger, current_job: str | None) -> list[Job]:
    """Training jobs queued after this one that Slurm still holds; SlurmError when Slurm cannot say."""
    jobs = [j for j in ledger.jobs(TRAIN) if j.cancelled_at is None and j.job_id != current_job]
    current = ledger.job(current_job) if current_job else None
    if current is not None and current.chain_index is not None:
        jobs = [j for j in jobs if (j.chain_index or 0) > current.chain_index]
    if not jobs or not slurm.available():
        return []
    alive = set(slurm.liveness(j.job_id for j in jobs).alive())
    return [j for j in jobs if j.job_id in alive]


def cancel_successors(ledger: Ledger, current_job: str | None, why: str) -> list[str]:
    """Cancel the queued rest of the chain (by job id from the ledger, never by name). When Slurm cannot be
    asked, each of them ends by itself at its start, finding the run done or stopped; the ledger says so."""
    try:
        ids = [j.job_id for j in pending_successors(ledger, current_job)]
        if ids:
            slurm.cancel(ids)
    except slurm.SlurmError as exc:
        ledger.event(
            "cancel",
            f"could not cancel the queued rest of the chain ({why}): {exc}; each of its jobs ends at its start",
        )
        return []
    if ids:
        ledger.mark_cancelled(ids)
        ledger.event("cancel", f"cancelled {', '.join(ids)}: {why}")
    return ids
