"""Submission: create the run directory and queue its stages (Slurm) or run them (local).

Order of work, so that a bad plan writes nothing: validate (done by ``build_plan``) -> render every script in
memory -> only then create the run directory, write ``plan.json``, the scripts and the ledger -> submit.

On Slurm the stages are chained in the plan's order, each stage's first job after the previous stage's last
(``afterok``, with ``--kill-on-invalid-dep`` so a failed stage never leaves dependents pending forever); inside the
training chain job i waits ``afterany`` on job i-1 (a job that hit its time limit or failed still lets the next
continue from the latest checkpoint; the driver at each job's start decides whether to train). Every training job
also waits ``singleton``: Slurm runs no two jobs of one name and user at once, so two chains of one run (queued by
two login nodes at the same moment) take turns instead of writing one checkpoint directory together. Stages whose
outputs are already complete are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import executor as executors
from orchestrator.atomic import atomic_write_text
from orchestrator.driver import StageDriver
from orchestrator.ledger import Ledger
from orchestrator.plan import PlanError, RunPlan
from orchestrator.profiles import parse_time_limit
from orchestrator.render import StageScript, job_name, render_all, write_scripts
from orchestrator.rundir import RunDir
from orchestrator.stages import StageSpec, check_inputs, stage_specs


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
        raise SubmitError(
            f"{rd.path} already holds a run; resume it with `orchestrator nightly --run {rd.path}` "
            "or choose another --run-dir / run id"
        )
    for sub in (rd.path, rd.scripts, rd.logs, rd.submitit):
        sub.mkdir(parents=True, exist_ok=True)
    atomic_write_text(rd.plan, plan.to_json())
    write_scripts(plan, scripts)
    Ledger(rd.ledger).event("create", f"run {plan.run_id} created with stages {', '.join(plan.stages)}")
    return rd


def sbatch_command(plan: RunPlan, spec: StageSpec, dependency: str | None) -> list[str]:
    """The sbatch call for a stage (what --dry-run prints)."""
    args = ["sbatch"]
    if dependency:
        args += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
    return [*args, str(RunDir.of(plan.run_dir).script(spec.name))]


def submit_run(
    plan: RunPlan, *, say: Callable[[str], None] = print, shared: dict[str, str] | None = None
) -> Submission:
    """Create the run and queue (Slurm) or run (local) every stage that still has work.

    ``shared`` maps the :attr:`StageSpec.shared` keys of jobs already queued by runs submitted together (the seeds of
    one MLPerf submission) to their job ids: such a stage is not queued again, the run's next stage waits for that job.
    """
    errors = [p for p in check_inputs(plan) if p.severity == "error"]
    if errors:
        raise PlanError(errors)  # before anything is written or queued
    specs = stage_specs(plan)
    rd = create_run(plan, render_all(plan, specs))
    prepare_inputs(plan, say)
    if plan.cluster.scheduler == "local":
        return _run_local(plan, rd, specs, say)
    return queue_stages(plan, rd, specs, say, shared=shared)


def queue_stages(
    plan: RunPlan,
    rd: RunDir,
    specs: list[StageSpec],
    say: Callable[[str], None],
    chain_start: int = 0,
    shared: dict[str, str] | None = None,
) -> Submission:
    """Queue each spec that still has work after the previous one: ``afterok`` after a stage, ``afterany`` inside
    and after a chain (a job that hit its limit still lets the next continue from the latest checkpoint)."""
    ledger = Ledger(rd.ledger)
    sub = Submission(rd.path)
    previous: str | None = ",".join(plan.chain.dependencies) or None
    waits = "afterok"
    shared = {} if shared is None else shared
    for spec in _to_run(specs, sub, say):
        if spec.shared and spec.shared in shared:
            previous, waits = shared[spec.shared], spec.then
            ledger.add_job(previous, spec.name)
            sub.jobs.append((spec.name, previous))
            say(f"{spec.name}: job {previous}, queued for an earlier run of this submission, serves this one too")
            continue
        for i in range(spec.jobs):
            conditions = [f"{waits}:{previous}"] if previous else []
            if spec.chain:
                conditions.append("singleton")
            dependency = ",".join(conditions) or None
            job_id = _sbatch(plan, rd, spec, dependency)
            chain_index = chain_start + i if spec.chain else None
            ledger.add_job(
                job_id,
                spec.name,
                chain_index=chain_index,
                array_size=len(spec.tasks) or None,
                dependency=dependency,
                script=str(rd.script(spec.name)),
            )
            sub.jobs.append((spec.name, job_id))
            say(
                f"queued {spec.name}{f' #{chain_index}' if chain_index is not None else ''}: job {job_id}"
                + (f" ({dependency})" if dependency else "")
            )
            previous, waits = job_id, spec.then
        if spec.shared:
            shared[spec.shared] = previous
    return sub


def _to_run(specs: list[StageSpec], sub: Submission, say: Callable[[str], None]) -> list[StageSpec]:
    """The stages that still have work; the others are recorded as skipped, with why."""
    todo = []
    for spec in specs:
        why = spec.complete()
        if why:
            sub.skipped.append((spec.name, why))
            say(f"skip {spec.name}: {why}")
        else:
            todo.append(spec)
    return todo


def _sbatch(plan: RunPlan, rd: RunDir, spec: StageSpec, dependency: str | None) -> str:
    args = sbatch_command(plan, spec, dependency)[1:-1]
    ex = executors.ScriptExecutor(
        rd.submitit,
        rd.script(spec.name).read_text(),
        time_minutes=parse_time_limit(spec.time_limit),
        sbatch_args=args,
        array=spec.array,
    )
    try:
        job = ex.submit(StageDriver(str(rd.path), spec.name))
    except Exception as exc:  # submitit wraps sbatch's failure; say which stage and why
        raise SubmitError(f"sbatch of stage {spec.name!r} ({job_name(plan, spec.name)}) failed: {exc}") from exc
    return str(job.job_id)


def _run_local(plan: RunPlan, rd: RunDir, specs: list[StageSpec], say: Callable[[str], None]) -> Submission:
    """No scheduler: run the stages one after the other as local processes, each through the same driver."""
    ledger = Ledger(rd.ledger)
    sub = Submission(rd.path)
    ex = executors.local_executor(rd.submitit)
    for spec in _to_run(specs, sub, say):
        tasks: list[int | None] = list(spec.array or ()) or [None]
        for task in tasks:
            job = ex.submit(StageDriver(str(rd.path), spec.name, task))
            ledger.add_job(
                str(job.job_id), spec.name, chain_index=0 if spec.chain else None, script=str(rd.script(spec.name))
            )
            sub.jobs.append((spec.name, str(job.job_id)))
            label = f"{spec.name}" + (f" task {task}" if task is not None else "")
            say(f"running {label} (local job {job.job_id}); log: {job.paths.stdout}")
            try:
                result: Any = job.result()
            except Exception:
                raise SubmitError(
                    f"{label} failed; its log: {job.paths.stdout}\n{_last_lines(job.paths.stderr)}"
                ) from None
            say(f"{label}: {result.get('outcome') if isinstance(result, dict) else result}")
    return sub


def prepare_inputs(plan: RunPlan, say: Callable[[str], None]) -> None:
    """What the login node puts in place before jobs start: a packaged tokenizer written where jobs read it (no
    container has the package), and the sample corpus of a ``data.source=sample`` plan (small, deterministic)."""
    if plan.stages == ("smoke",):  # a smoke job reads neither tokenizer nor data
        return
    tok = plan.model.tokenizer
    if tok.path and not Path(tok.path).exists():
        from orchestrator.data.packaged_tokenizers import PackagedTokenizerError, materialise

        try:
            materialise(tok.model, Path(tok.path).parent)
        except PackagedTokenizerError as exc:
            raise SubmitError(f"{exc}; or put the tokenizer at {tok.path} yourself") from None
        say(f"wrote the tokenizer {tok.model} to {tok.path}")
    if plan.data.source != "sample" or plan.data.c4_path is None:
        return
    from orchestrator.data import sample
    from orchestrator.data.consolidate import C4_SHARDS, found_shards

    c4 = Path(plan.data.c4_path)
    if c4.is_dir() and C4_SHARDS["train"] in found_shards(c4)["train"].values():
        return
    # Two shards per merged output, so that consolidation really merges (as the 4-shard example).
    sample.build_corpus(c4, 2 * plan.data.train_outputs, 1, plan.data.sample_docs_per_shard, plan.train.seed)
    say(f"built the sample corpus (real text, see orchestrator/data/sample.py) in {c4}")


def _last_lines(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
