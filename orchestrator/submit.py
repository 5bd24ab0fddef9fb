"""Submission: create the run directory and queue its stages (Slurm) or run them (local).

Order of work, so that a bad plan writes nothing: validate (done by ``build_plan``) -> render every script in
memory -> only then create the run directory, write ``plan.json``, the scripts and the ledger -> submit.

On Slurm the stages are chained: consolidate -> preprocess (``afterok``, with ``--kill-on-invalid-dep`` so a
failed stage never leaves dependents pending forever) -> training job 0 -> training job i (``afterany`` on job
i-1: a job that hit its time limit or failed still lets the next continue from the latest checkpoint; the
driver at each job's start decides whether to train). Stages whose outputs are already complete are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator import executor as executors
from orchestrator.atomic import atomic_write_text
from orchestrator.driver import StageDriver
from orchestrator.ledger import Ledger
from orchestrator.plan import RunPlan
from orchestrator.profiles import parse_time_limit
from orchestrator.render import StageScript, job_name, write_scripts
from orchestrator.rundir import RunDir
from orchestrator.stages import render_all


class SubmitError(RuntimeError):
    pass


@dataclass
class Submission:
    run_dir: Path
    jobs: list[tuple[str, str]] = field(default_factory=list)  # (stage, job id) in submission order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (stage, why)


def create_run(plan: RunPlan, scripts: list[StageScript]) -> RunDir:
    """Write the run directory; refuses to overwrite another run's plan."""
    rd = RunDir.of(plan.run_dir)
    if rd.is_run():
        raise SubmitError(f"{rd.path} already holds a run; resume it with `orchestrator nightly --run {rd.path}` "
                          "or choose another --run-dir / run id")  # fmt: skip
    for sub in (rd.path, rd.scripts, rd.logs, rd.submitit):
        sub.mkdir(parents=True, exist_ok=True)
    atomic_write_text(rd.plan, plan.to_json())
    write_scripts(plan, scripts)
    Ledger(rd.ledger).event("create", f"run {plan.run_id} created with stages {', '.join(plan.stages)}")
    return rd


def sbatch_command(plan: RunPlan, script: StageScript, dependency: str | None) -> list[str]:
    """The sbatch call for a stage (what --dry-run prints)."""
    args = ["sbatch"]
    if dependency:
        args += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
    return [*args, str(RunDir.of(plan.run_dir).script(script.stage))]


def submit_run(plan: RunPlan, *, say: Callable[[str], None] = print) -> Submission:
    """Create the run and queue (Slurm) or run (local) every stage that still has work."""
    from orchestrator.pipeline import complete_reason, prepare_inputs

    scripts = render_all(plan)
    rd = create_run(plan, scripts)
    prepare_inputs(plan, say)
    skip = complete_reason
    if plan.cluster.scheduler == "local":
        return _run_local(plan, rd, scripts, skip, say)
    return queue_stages(plan, rd, scripts, skip, say)


def queue_stages(plan: RunPlan, rd: RunDir, scripts: list[StageScript],
                 skip: Callable[[RunPlan, str], str | None] | None, say: Callable[[str], None],
                 chain_start: int = 0) -> Submission:  # fmt: skip
    ledger = Ledger(rd.ledger)
    sub = Submission(rd.path)
    previous: str | None = ",".join(plan.chain.dependencies) or None
    previous_type = "afterok"
    for script in _to_run(plan, scripts, skip, sub, say):
        count = plan.chain.jobs if script.stage == "train" else 1
        for i in range(count):
            dependency = f"{previous_type}:{previous}" if previous else None
            job_id = _sbatch(plan, rd, script, dependency)
            chain_index = chain_start + i if script.stage == "train" else None
            ledger.add_job(job_id, script.stage, chain_index=chain_index, array_size=len(script.array or ()) or None,
                           dependency=dependency, script=str(rd.script(script.stage)))  # fmt: skip
            sub.jobs.append((script.stage, job_id))
            say(f"queued {script.stage}{f' #{chain_index}' if chain_index is not None else ''}: job {job_id}"
                + (f" ({dependency})" if dependency else ""))
            previous = job_id
            previous_type = "afterany" if script.stage == "train" else "afterok"
    return sub


def _to_run(plan: RunPlan, scripts: list[StageScript], skip: Callable[[RunPlan, str], str | None] | None,
            sub: Submission, say: Callable[[str], None]) -> list[StageScript]:  # fmt: skip
    """The stages that still have work; the others are recorded as skipped, with why."""
    todo = []
    for script in scripts:
        why = skip(plan, script.stage) if skip else None
        if why:
            sub.skipped.append((script.stage, why))
            say(f"skip {script.stage}: {why}")
        else:
            todo.append(script)
    return todo


def _sbatch(plan: RunPlan, rd: RunDir, script: StageScript, dependency: str | None) -> str:
    args = sbatch_command(plan, script, dependency)[1:-1]
    ex = executors.ScriptExecutor(
        rd.submitit, script.text, time_minutes=parse_time_limit(plan.chain.time_limit if script.stage == "train" else plan.cluster.time_limit),
        sbatch_args=args, array=script.array,
    )  # fmt: skip
    try:
        job = ex.submit(StageDriver(str(rd.path), script.stage))
    except Exception as exc:  # submitit wraps sbatch's failure; say which stage and why
        raise SubmitError(f"sbatch of stage {script.stage!r} ({job_name(plan, script.stage)}) failed: {exc}") from exc
    return str(job.job_id)


def _run_local(plan: RunPlan, rd: RunDir, scripts: list[StageScript],
               skip: Callable[[RunPlan, str], str | None] | None, say: Callable[[str], None]) -> Submission:  # fmt: skip
    """No scheduler: run the stages one after the other as local processes, each through the same driver."""
    ledger = Ledger(rd.ledger)
    sub = Submission(rd.path)
    ex = executors.local_executor(rd.submitit)
    for script in _to_run(plan, scripts, skip, sub, say):
        tasks: list[int | None] = list(script.array) if script.array else [None]
        for task in tasks:
            job = ex.submit(StageDriver(str(rd.path), script.stage, task))
            ledger.add_job(str(job.job_id), script.stage, chain_index=0 if script.stage == "train" else None,
                           script=str(rd.script(script.stage)))  # fmt: skip
            sub.jobs.append((script.stage, str(job.job_id)))
            label = f"{script.stage}" + (f" task {task}" if task is not None else "")
            say(f"running {label} (local job {job.job_id}); log: {job.paths.stdout}")
            try:
                result: Any = job.result()
            except Exception:
                raise SubmitError(f"{label} failed; its log: {job.paths.stdout}\n{_last_lines(job.paths.stderr)}") from None
            say(f"{label}: {result.get('outcome') if isinstance(result, dict) else result}")
    return sub


def _last_lines(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
