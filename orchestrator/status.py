"""Where a run stands: the ledger's jobs and attempts joined with sacct, as a table or JSON; wait; cancel."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator import chain, slurm
from orchestrator.ledger import Ledger
from orchestrator.plan import RunPlan
from orchestrator.render import job_name
from orchestrator.rundir import RunDir


def run_status(run_dir: str | Path) -> dict[str, Any]:
    """Everything ``status`` shows; ``jobs`` is one entry per submitted job, in submission order."""
    rd = RunDir.of(run_dir)
    plan = RunPlan.load(rd.path)
    ledger = Ledger(rd.ledger)
    jobs = ledger.jobs()
    attempts = ledger.attempts()
    records: dict[str, slurm.JobRecord] = {}
    held: dict[str, str] = {}
    sacct_error = None
    if plan.cluster.scheduler == "slurm" and jobs:
        try:
            held = slurm.queued(job_name(plan, j.stage) for j in jobs)
            records = slurm.sacct([j.job_id for j in jobs])
        except slurm.SlurmError as exc:
            sacct_error = str(exc)
    rows = []
    recent = time.time() - 300
    for job in jobs:
        mine = [a for a in attempts if a.job_id == job.job_id or a.job_id.startswith(f"{job.job_id}_")]
        tasks = {k: v for k, v in records.items() if k == job.job_id or k.startswith(f"{job.job_id}_")}
        states = sorted({r.base_state for r in tasks.values()})
        starts = [r.start for r in tasks.values() if r.start not in ("", "Unknown", "None")]
        ends = [r.end for r in tasks.values() if r.end not in ("", "Unknown", "None")]
        last = mine[-1] if mine else None
        if job.job_id in held:
            states = [held[job.job_id]]  # squeue knows best while Slurm holds the job (a requeue included)
        elif not tasks and plan.cluster.scheduler == "slurm" and job.cancelled_at is None and _epoch(job.submitted_at) > recent:
            states = ["SUBMITTED"]  # accounting has not seen it yet; it is queued
        ended = _how(last.outcome if last else None, states, job.cancelled_at is not None)
        rows.append({
            "job_id": job.job_id,
            "stage": job.stage,
            "chain_index": job.chain_index,
            "state": ",".join(states) or ("LOCAL" if plan.cluster.scheduler == "local" else "UNKNOWN"),
            "start": min(starts) if starts else (mine[0].started_at if mine else None),
            "end": max(ends) if ends and not any(r.active for r in tasks.values()) else (last.ended_at if last else None),
            "steps_start": mine[0].start_step if mine else None,
            "steps_end": last.end_step if last else None,
            "attempts": len(mine),
            "ended": ended,
            "exit_code": last.exit_code if last else None,
            "log": last.log_path if last else None,
            "dependency": job.dependency,
        })  # fmt: skip
    try:
        progress = chain.progress_step(plan)
    except Exception as exc:  # a broken checkpoint dir must not hide the rest of the status
        progress = None
        sacct_error = sacct_error or f"checkpoint scan failed: {exc}"
    return {
        "run_id": plan.run_id,
        "run_dir": str(rd.path),
        "model": plan.model.name,
        "cluster": plan.cluster.name,
        "max_steps": plan.train.max_steps,
        "latest_checkpoint_step": progress,
        "done": rd.done(),
        "stopped": rd.stopped(),
        "strikes": chain.strikes(attempts),
        "max_strikes": plan.chain.max_strikes,
        "active": any(j["ended"] in ("running", "queued") for j in rows),
        "jobs": rows,
        "events": [e.__dict__ for e in ledger.events()[-10:]],
        "warning": sacct_error,
    }


def _how(outcome: str | None, states: list[str], cancelled: bool) -> str:
    """How a job ended, in the vocabulary people use: done, time limit, preempted, node failure, failed, ..."""
    active = [s for s in states if s in slurm.ACTIVE_STATES or s == "SUBMITTED"]
    if active:
        return "queued" if set(active) <= {"PENDING", "SUBMITTED"} else "running"
    if outcome and outcome != "running":
        return outcome.replace("_", " ")
    if cancelled or "CANCELLED" in states:
        return "cancelled"
    for state in states:
        if state in chain.SACCT_OUTCOMES:
            return chain.SACCT_OUTCOMES[state].replace("_", " ")
    return "unknown"


def print_status(status: dict[str, Any], console: Console) -> None:
    head = f"[bold]{status['run_id']}[/] ({status['model']} on {status['cluster']}) - checkpoint step " \
           f"{status['latest_checkpoint_step'] if status['latest_checkpoint_step'] is not None else 'none'} of {status['max_steps']}"  # fmt: skip
    if status["done"]:
        head += f" - [green]DONE[/] at step {status['done'].get('final_step')}"
    elif status["stopped"]:
        head += f" - [red]STOPPED[/]: {status['stopped'].get('reason')}"
    elif status["active"]:
        head += " - in progress"
    else:
        head += " - idle, incomplete (`orchestrator nightly --run DIR` continues it)"
    console.print(head)
    table = Table()
    for col in ("job", "stage", "#", "state", "start", "end", "steps", "tries", "ended", "exit"):
        table.add_column(col)
    for j in status["jobs"]:
        steps = "" if j["steps_start"] is None and j["steps_end"] is None else f"{j['steps_start'] or 0} -> {j['steps_end'] if j['steps_end'] is not None else '?'}"
        table.add_row(j["job_id"], j["stage"], "" if j["chain_index"] is None else str(j["chain_index"]), j["state"],
                      _short(j["start"]), _short(j["end"]), steps, str(j["attempts"]), j["ended"],
                      "" if j["exit_code"] is None else str(j["exit_code"]))  # fmt: skip
    console.print(table)
    if status["strikes"]:
        console.print(f"strikes: {status['strikes']} of {status['max_strikes']}")
    if status["stopped"] and status["stopped"].get("log_tail"):
        console.print(f"last lines of {status['stopped'].get('failing_log')}:")
        console.print(status["stopped"]["log_tail"], markup=False)
    if status["warning"]:
        console.print(f"[yellow]warning: {status['warning']}[/]")


def _epoch(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso).timestamp()


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
    running = [j for j in status["jobs"] if j["ended"] in ("running", "queued")]
    now = ", ".join(f"{j['stage']} {j['job_id']} {j['ended']}" for j in running) or "nothing queued"
    ckpt = status["latest_checkpoint_step"]
    return f"{status['run_id']}: {now}; checkpoint {ckpt if ckpt is not None else '-'}/{status['max_steps']}" + (
        " DONE" if status["done"] else ""
    )


def cancel_run(run_dir: str | Path) -> list[str]:
    rd = RunDir.of(run_dir)
    ledger = Ledger(rd.ledger)
    jobs = [j for j in ledger.jobs() if j.cancelled_at is None]
    records = slurm.sacct([j.job_id for j in jobs]) if jobs else {}
    active = [j.job_id for j in jobs if (r := records.get(j.job_id)) is None or r.active]
    if active:
        slurm.cancel(active)
        ledger.mark_cancelled(active)
        ledger.event("cancel", f"cancelled by the user: {', '.join(active)}")
    return active
