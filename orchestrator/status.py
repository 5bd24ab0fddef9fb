"""Where a run stands: the ledger's jobs and attempts joined with sacct, as a table or JSON; wait; cancel."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator import chain, slurm
from orchestrator.ledger import Job, Ledger
from orchestrator.plan import RunPlan
from orchestrator.rundir import RunDir


def run_status(run_dir: str | Path) -> dict[str, Any]:
    """Everything ``status`` shows; ``jobs`` is one entry per submitted job, in submission order.

    Each job's ``alive`` is Slurm's answer (:func:`orchestrator.slurm.liveness`): True while Slurm holds it,
    False once it left the queue, None when Slurm could not be asked; then ``active`` is True, because a job that
    cannot be ruled out counts as alive."""
    rd = RunDir.of(run_dir)
    plan = RunPlan.load(rd.path)
    ledger = Ledger(rd.ledger)
    jobs = ledger.jobs()
    attempts = ledger.attempts()
    live: slurm.Liveness | None = None
    warning = None
    on_slurm = plan.cluster.scheduler == "slurm"
    if on_slurm and jobs:
        try:
            live = slurm.liveness(j.job_id for j in jobs)
            warning = live.accounting_error
        except slurm.SlurmError as exc:
            warning = f"Slurm did not answer, so queued or running jobs cannot be ruled out: {exc}"
    rows = []
    for job in jobs:
        mine = [a for a in attempts if a.job_id == job.job_id or a.job_id.startswith(f"{job.job_id}_")]
        last = mine[-1] if mine else None
        state = live.jobs[job.job_id] if live else None
        alive = _alive(state, job, on_slurm)
        records = state.records if state else ()
        starts = [r.start for r in records if r.start not in ("", "Unknown", "None")]
        ends = [r.end for r in records if r.end not in ("", "Unknown", "None")]
        rows.append(
            {
                "job_id": job.job_id,
                "stage": job.stage,
                "chain_index": job.chain_index,
                "state": _state_text(state, alive, on_slurm),
                "alive": alive,
                "start": min(starts) if starts else (mine[0].started_at if mine else None),
                "end": max(ends) if ends and alive is False else (last.ended_at if last else None),
                "steps_start": mine[0].start_step if mine else None,
                "steps_end": last.end_step if last else None,
                "attempts": len(mine),
                "ended": _how(last.outcome if last else None, state, alive, job.cancelled_at is not None),
                "exit_code": last.exit_code if last else None,
                "log": last.log_path if last else None,
                "dependency": job.dependency,
            }
        )
    try:
        progress = chain.progress_step(plan)
    except Exception as exc:  # a broken checkpoint dir must not hide the rest of the status
        progress = None
        warning = warning or f"checkpoint scan failed: {exc}"
    return {
        "run_id": plan.run_id,
        "run_dir": str(rd.path),
        "model": plan.model.name,
        "cluster": plan.cluster.name,
        "max_steps": plan.train.max_steps,
        "latest_checkpoint_step": progress,
        "done": rd.done(),
        "stopped": rd.stopped(),
        "strikes": chain.strikes(chain.counted(ledger)),
        "max_strikes": plan.chain.max_strikes,
        "active": any(j["alive"] is not False for j in rows),
        "jobs": rows,
        "events": [e.__dict__ for e in ledger.events()[-10:]],
        "warning": warning,
    }


def _alive(state: slurm.JobState | None, job: Job, on_slurm: bool) -> bool | None:
    """Slurm's word, else (Slurm not answering) False only for a job this run cancelled itself."""
    if not on_slurm:
        return False
    if state is not None:
        return state.alive
    return False if job.cancelled_at is not None else None


def _state_text(state: slurm.JobState | None, alive: bool | None, on_slurm: bool) -> str:
    if not on_slurm:
        return "LOCAL"
    if state is None:
        return "CANCELLED" if alive is False else "UNKNOWN"
    return ",".join(state.states) or "UNKNOWN"


def _how(outcome: str | None, state: slurm.JobState | None, alive: bool | None, cancelled: bool) -> str:
    """How a job ended, in the vocabulary people use: done, time limit, preempted, node failure, failed, ...;
    or, while Slurm holds it, queued, running or held; or, when Slurm could not be asked, running or unknown."""
    if alive and state is not None:
        if set(state.held) & slurm.RUNNING_STATES:
            return "running"
        return "queued" if set(state.held) <= slurm.QUEUED_STATES else "held"
    if alive is None:
        return "running" if outcome == "running" else "unknown"  # the open attempt counts as alive
    if outcome and outcome != "running":
        return outcome.replace("_", " ")
    states = state.states if state else []
    if cancelled or "CANCELLED" in states:
        return "cancelled"
    for name in states:
        if name in chain.SACCT_OUTCOMES:
            return chain.SACCT_OUTCOMES[name].replace("_", " ")
    return "unknown"


def print_status(status: dict[str, Any], console: Console) -> None:
    head = (
        f"[bold]{status['run_id']}[/] ({status['model']} on {status['cluster']}) - checkpoint step "
        f"{status['latest_checkpoint_step'] if status['latest_checkpoint_step'] is not None else 'none'} of {status['max_steps']}"
    )
    if status["done"]:
        head += f" - [green]DONE[/] at step {status['done'].get('final_step')}"
    elif status["stopped"]:
        head += f" - [red]STOPPED[/]: {status['stopped'].get('reason')}"
    elif any(j["alive"] is None for j in status["jobs"]):
        head += " - [yellow]unknown[/]: Slurm did not answer (see the warning)"
    elif status["active"]:
        head += " - in progress"
    else:
        head += " - idle, incomplete (`orchestrator nightly --run DIR` continues it)"
    console.print(head)
    table = Table()
    for col in ("job", "stage", "#", "state", "start", "end", "steps", "tries", "ended", "exit"):
        table.add_column(col)
    for j in status["jobs"]:
        steps = (
            ""
            if j["steps_start"] is None and j["steps_end"] is None
            else f"{j['steps_start'] or 0} -> {j['steps_end'] if j['steps_end'] is not None else '?'}"
        )
        table.add_row(
            j["job_id"],
            j["stage"],
            "" if j["chain_index"] is None else str(j["chain_index"]),
            j["state"],
            _short(j["start"]),
            _short(j["end"]),
            steps,
            str(j["attempts"]),
            j["ended"],
            "" if j["exit_code"] is None else str(j["exit_code"]),
        )
    console.print(table)
    if status["strikes"]:
        console.print(f"strikes: {status['strikes']} of {status['max_strikes']}")
    if status["stopped"] and status["stopped"].get("log_tail"):
        console.print(f"last lines of {status['stopped'].get('failing_log')}:")
        console.print(status["stopped"]["log_tail"], markup=False)
    if status["warning"]:
        console.print(f"[yellow]warning: {status['warning']}[/]")


def _short(ts: str | None) -> str:
    return (ts or "").replace("T", " ")[:19]


def wait_for_run(run_dir: str | Path, console: Console, poll_s: float = 5.0) -> int:
    """Block with a live status line until no job of the run is queued or running; 0 if the run is done."""
    with Live(console=console, refresh_per_second=2, transient=True) as live:
        while True:
            status = run_status(run_dir)
            live.update(_status_line(status))
            if not status["active"] and status["jobs"]:
                break
            time.sleep(poll_s)
    console.print(_status_line(status))
    return 0 if status["done"] else 1


def _status_line(status: dict[str, Any]) -> str:
    running = [j for j in status["jobs"] if j["alive"] is not False]
    now = ", ".join(f"{j['stage']} {j['job_id']} {j['ended']}" for j in running) or "nothing queued"
    ckpt = status["latest_checkpoint_step"]
    return f"{status['run_id']}: {now}; checkpoint {ckpt if ckpt is not None else '-'}/{status['max_steps']}" + (
        " DONE" if status["done"] else ""
    )


def cancel_run(run_dir: str | Path) -> list[str]:
    """Cancel every job of the run that Slurm still holds (requeued and held ones included); raises SlurmError,
    cancelling nothing, when Slurm cannot say which those are."""
    rd = RunDir.of(run_dir)
    ledger = Ledger(rd.ledger)
    jobs = [j.job_id for j in ledger.jobs() if j.cancelled_at is None]
    active = slurm.liveness(jobs).alive() if jobs else []
    if active:
        slurm.cancel(active)
        ledger.mark_cancelled(active)
        ledger.event("cancel", f"cancelled by the user: {', '.join(active)}")
    return active
