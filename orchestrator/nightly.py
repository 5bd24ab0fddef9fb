"""Nightly: make sure a run makes progress, idempotently, from cron or from a self-rescheduling Slurm job.

Under a lock on the run directory: nothing when the run is done, queued or running, or stopped by the crash-loop
guard (a human must look); otherwise queue a new chain of training jobs, which resumes from the latest complete
checkpoint. ``--fresh`` starts a new dated run from the latest one's plan (a nightly benchmark series). It always
prints what it decided and why.

It refuses (exit 1, nothing queued) whenever Slurm cannot establish that no job of the run is queued or running:
a job it cannot rule out counts as alive. Two chains are never run at once even where that cannot be ruled out
by the lock (two login nodes whose shared file system does not share ``flock``): every training job is queued with
``--dependency=singleton`` (see :func:`orchestrator.submit.queue_stages`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.atomic import locked
from orchestrator.ledger import Ledger
from orchestrator.plan import RunPlan
from orchestrator.rundir import RunDir


@dataclass(frozen=True)
class Decision:
    action: str  # "none" | "continue" | "fresh" | "refuse" (Slurm could not rule out a queued or running job)
    why: str
    run_dir: Path | None = None
    jobs: tuple[str, ...] = ()


def latest_run(runs_root: Path, model: str) -> Path | None:
    """The newest run directory of ``model`` under ``runs_root`` (by the plan's creation time)."""
    best: tuple[str, Path] | None = None
    for plan_path in runs_root.glob("*/plan.json"):
        try:
            body = json.loads(plan_path.read_text())
        except (OSError, ValueError):
            continue
        if body.get("model", {}).get("name") == model and (best is None or body["created"] > best[0]):
            best = (body["created"], plan_path.parent)
    return best[1] if best else None


def decide_and_act(run_dir: Path, fresh: bool = False) -> Decision:
    from orchestrator.chain import continue_after_stop
    from orchestrator.stages import TRAIN, stage_spec
    from orchestrator.status import run_status
    from orchestrator.submit import queue_stages, submit_run

    rd = RunDir.of(run_dir)
    with locked(rd.path / ".nightly.lock"):
        plan = RunPlan.load(rd.path)
        if fresh:
            new = fresh_plan(plan)
            sub = submit_run(new, say=_say)
            return Decision(
                "fresh",
                f"started a new run {new.run_id} from {plan.run_id}'s plan",
                sub.run_dir,
                tuple(j for _, j in sub.jobs),
            )
        status = run_status(rd.path)
        if status["done"]:
            return Decision("none", f"run done at step {status['done'].get('final_step')}", rd.path)
        if status["stopped"]:
            return Decision(
                "none",
                f"chain stopped: {status['stopped'].get('reason')} "
                f"(fix the cause, then delete {rd.stopped_marker} to allow continuing)",
                rd.path,
            )
        busy = [f"{j['stage']} {j['job_id']} {j['ended']}" for j in status["jobs"] if j["alive"]]
        if busy:
            return Decision("none", f"in progress: {', '.join(busy)}", rd.path)
        unsure = [j["job_id"] for j in status["jobs"] if j["alive"] is None]
        if unsure:
            return Decision(
                "refuse",
                f"cannot rule out that job(s) {', '.join(unsure)} are queued or running, so "
                f"nothing was queued ({status['warning']}); run nightly again once Slurm answers",
                rd.path,
            )
        if plan.cluster.scheduler != "slurm":
            return Decision("none", "nightly continues Slurm runs; run local runs again with submit", rd.path)
        if continued := continue_after_stop(rd, Ledger(rd.ledger)):
            _say(continued)
        trained = Ledger(rd.ledger).jobs(TRAIN)
        chain_start = 1 + max((j.chain_index or 0) for j in trained) if trained else 0
        sub = queue_stages(plan, rd, [stage_spec(plan, TRAIN)], _say, chain_start=chain_start)
        Ledger(rd.ledger).event(
            "nightly",
            f"continued from checkpoint {status['latest_checkpoint_step']}: {', '.join(j for _, j in sub.jobs)}",
        )
        return Decision(
            "continue",
            f"incomplete and idle at checkpoint {status['latest_checkpoint_step']}: "
            f"queued {len(sub.jobs)} training job(s)",
            rd.path,
            tuple(j for _, j in sub.jobs),
        )


def fresh_plan(previous: RunPlan) -> RunPlan:
    """The previous run's plan under a new dated run id and directory (its own checkpoints, logs, ledger)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id = f"{previous.model.name}-{stamp}"
    run_dir = Path(previous.run_dir).parent / run_id
    body = previous.model_dump(mode="json")
    old_ckpt = Path(previous.train.ckpt_dir)
    body.update(
        run_id=run_id, run_dir=str(run_dir), created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    )
    if old_ckpt == Path(previous.run_dir) / "checkpoints":
        body["train"]["ckpt_dir"] = str(run_dir / "checkpoints")
    else:
        body["train"]["ckpt_dir"] = str(old_ckpt.parent / run_id)
    return RunPlan.model_validate(body)


def cron_line(run_dir: Path, at: str) -> str:
    hour, minute = _hhmm(at)
    python = shlex.quote(sys.executable)
    log = shlex.quote(str(RunDir.of(run_dir).logs / "nightly.log"))
    return f"{minute} {hour} * * * cd {shlex.quote(os.getcwd())} && {python} -m orchestrator nightly --run {shlex.quote(str(run_dir))} >> {log} 2>&1"


def render_nightly(plan: RunPlan, run_dir: Path, at: str) -> str:
    """The daily check's batch script for the run in ``run_dir``, run at ``at`` (HH:MM)."""
    from orchestrator.render import environment, job_name

    hour, minute = _hhmm(at)
    rd = RunDir.of(run_dir)
    return (
        environment()
        .get_template("nightly.sbatch.j2")
        .render(
            plan=plan,
            cluster=plan.cluster,
            job_name=job_name(plan, "nightly"),
            run_dir=str(rd.path),
            script=str(rd.scripts / "nightly.sbatch"),
            python=sys.executable,
            at=f"{hour:02d}:{minute:02d}",
            log=str(rd.logs / "nightly-%j.out"),
        )
    )


def schedule(run_dir: Path, at: str) -> str:
    """Queue a small Slurm job that runs the nightly check at ``at`` every day, re-queueing itself first."""
    from orchestrator import slurm
    from orchestrator.render import quote

    plan = RunPlan.load(run_dir)
    hour, minute = _hhmm(at)
    rd = RunDir.of(run_dir)
    script = rd.scripts / "nightly.sbatch"
    text = render_nightly(plan, run_dir, at)
    from orchestrator.atomic import atomic_write_text

    atomic_write_text(script, text)
    script.chmod(0o755)
    out = slurm.run(["sbatch", "--parsable", f"--begin={_next_time(hour, minute)}", str(script)])
    job_id = out.strip().split(";")[0]
    Ledger(rd.ledger).event(
        "nightly", f"scheduled daily at {hour:02d}:{minute:02d} as job {job_id} ({quote(str(script))})"
    )
    return job_id


def _hhmm(text: str) -> tuple[int, int]:
    try:
        hour, minute = (int(x) for x in text.split(":"))
        if not (0 <= hour < 24 and 0 <= minute < 60):
            raise ValueError
    except ValueError:
        raise ValueError(f"--schedule/--at {text!r}: expected HH:MM, e.g. 02:30") from None
    return hour, minute


def _next_time(hour: int, minute: int) -> str:
    now = dt.datetime.now()
    when = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if when <= now:
        when += dt.timedelta(days=1)
    return when.strftime("%Y-%m-%dT%H:%M:%S")


def _say(message: str) -> None:
    """Progress goes to stderr, so that stdout carries only the decision (a line, or JSON with --json)."""
    print(message, file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=Path, help="the run directory to keep going")
    which.add_argument("--profile", help="the newest run of this model profile under --runs-root")
    parser.add_argument(
        "--runs-root", type=Path, default=Path("runs"), help="where to look with --profile (default: runs)"
    )
    parser.add_argument("--fresh", action="store_true", help="start a new dated run from the latest run's plan")
    parser.add_argument("--print-cron", action="store_true", help="print a crontab line that runs this nightly")
    parser.add_argument(
        "--schedule", metavar="HH:MM", help="queue a Slurm job that runs the nightly check daily at HH:MM"
    )
    parser.add_argument("--at", default="02:00", metavar="HH:MM", help="time of day for --print-cron (default 02:00)")
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")


def main(args: argparse.Namespace, console: Any) -> int:
    run_dir = args.run
    if run_dir is None:
        run_dir = latest_run(args.runs_root, _model_name(args.profile))
        if run_dir is None:
            console.print(f"no run of {args.profile!r} under {args.runs_root}; start one with `orchestrator submit`")
            return 2
    if not RunDir.of(run_dir).is_run():
        console.print(f"{run_dir} is not a run directory (no plan.json)")
        return 2
    if args.print_cron:
        console.print(cron_line(Path(run_dir).absolute(), args.at), markup=False, soft_wrap=True)
        return 0
    if args.schedule:
        job_id = schedule(Path(run_dir).absolute(), args.schedule)
        console.print(f"nightly check queued as job {job_id}, daily at {args.schedule}; it re-queues itself")
        return 0
    decision = decide_and_act(Path(run_dir), fresh=args.fresh)
    if args.json:
        console.print_json(
            json.dumps(
                {
                    "action": decision.action,
                    "why": decision.why,
                    "run_dir": str(decision.run_dir),
                    "jobs": list(decision.jobs),
                }
            )
        )
    else:
        console.print(f"nightly: {decision.action}: {decision.why}", markup=False)
    return 1 if decision.action == "refuse" else 0


def _model_name(profile: str) -> str:
    from orchestrator.profiles import get_model

    return get_model(profile).name
