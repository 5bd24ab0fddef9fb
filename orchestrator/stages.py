"""The stages of a run as values: what each job runs, on how much of the cluster, which paths it touches, and when
its work is already done.

:func:`stage_specs` turns a plan into its :class:`StageSpec` values, in order. Each spec is built from the typed
config of its job (:class:`~orchestrator.data.consolidate.ConsolidateConfig`,
:class:`~orchestrator.data.preprocess_job.PreprocessConfig`, the plan itself for training), and both the job's
command and its "already complete?" check come from that config. Rendering renders any spec, submission queues
specs, and the in-job driver finds its own spec by name: stage names live here (and in the plan's list of stages).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orchestrator
from orchestrator import container
from orchestrator.data import consolidate, preprocess_job
from orchestrator.data.tokenizer import TokenizerSpec
from orchestrator.mlperf.checkpoints import nemo_checkpoint_problem
from orchestrator.plan import Problem, RunPlan
from orchestrator.rundir import RunDir
from orchestrator.train import nemo_index
from orchestrator.train.nemo_checkpoint import init_checkpoint, is_local_model

#: The chained training stage: its jobs follow each other with ``afterany`` and decide at start whether to train.
TRAIN = "train"


@dataclass(frozen=True)
class StagePaths:
    """Host paths a stage's step touches: mounted into its container, created or checked before it is queued."""

    reads: tuple[str, ...] = ()
    #: Folders the step writes into; created before the step starts.
    writes: tuple[str, ...] = ()
    #: Inputs that must exist before the job is queued (not only after the queue wait).
    required: tuple[str, ...] = ()
    #: Megatron datasets (prefixes of a ``.bin`` and an ``.idx``) that must exist before the job is queued.
    datasets: tuple[str, ...] = ()


def _never_complete() -> str | None:
    return None


@dataclass(frozen=True)
class StageSpec:
    """One stage: a Python program run by ``srun`` on ``nodes`` x ``tasks_per_node`` tasks, as one job, a Slurm
    array (``tasks``: each array index with its extra arguments) or a chain of ``jobs`` jobs."""

    name: str
    #: One line for the script's header and the dry run.
    summary: str
    #: The program's arguments after the interpreter: ``("-m", module, flags...)``.
    command: tuple[Any, ...]
    time_limit: str
    nodes: int = 1
    tasks_per_node: int = 1
    gpus: bool = False
    #: Tasks get torch's rank variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) from Slurm's.
    ranks: bool = False
    cpus_per_task: int | None = None
    #: ``--requeue``: Slurm requeues a preempted job or one whose node failed.
    requeue: bool = False
    #: The chained stage (training): ``jobs`` jobs with ``afterany`` between them; the next stage waits ``afterany``.
    chain: bool = False
    jobs: int = 1
    tasks: tuple[tuple[int, tuple[Any, ...]], ...] = ()
    paths: StagePaths = StagePaths()
    #: Why the stage need not run (its outputs are complete), or None; asked at submission.
    complete: Callable[[], str | None] = field(default=_never_complete, compare=False, repr=False)
    #: Runs submitted together (the seeds of one MLPerf submission) whose specs share this key share one job.
    shared: str | None = None

    @property
    def array(self) -> tuple[int, ...] | None:
        return tuple(index for index, _ in self.tasks) or None

    @property
    def then(self) -> Literal["afterok", "afterany"]:
        """How the next stage's first job depends on this stage's last one."""
        return "afterany" if self.chain else "afterok"


def step_mounts(plan: RunPlan, spec: StageSpec) -> list[container.Mount]:
    """What the step's container mounts: the site's, then every path the stage touches, the run directory and the
    package, each at its own path. Raises :class:`~orchestrator.container.MountError` naming a path no mount can serve."""
    package = str(Path(orchestrator.__file__).resolve().parent)
    reads = [*spec.paths.reads, package]
    writes = [*spec.paths.writes, plan.run_dir]
    try:
        return container.mounts(plan.cluster.container.mounts, reads, writes)
    except container.MountError as exc:
        path = exc.path or ""
        fields = [f for f, v in plan.text_values() if path and v.startswith(path)]
        if not fields:
            raise
        raise container.MountError(f"{', '.join(fields)}: {exc}", path) from None


def check_inputs(plan: RunPlan) -> list[Problem]:
    """What would fail only after the queue wait: an input that must exist and does not, and a path the cluster's
    container cannot show its step. Looks at the file system, so ``plan``, ``submit`` and the dry run ask it, not
    :func:`~orchestrator.plan.build_plan`."""
    problems: list[Problem] = []
    missing: dict[str, list[str]] = {}  # path -> the stages that need it
    for spec in stage_specs(plan):
        for path in spec.paths.required:
            if not Path(path).exists():
                missing.setdefault(path, []).append(spec.name)
        for prefix in spec.paths.datasets:
            if not (Path(f"{prefix}.bin").is_file() and Path(f"{prefix}.idx").is_file()):
                missing.setdefault(prefix, []).append(spec.name)
        if plan.cluster.container.runtime != "none":
            try:
                step_mounts(plan, spec)
            except container.MountError as exc:
                problems.append(
                    Problem(
                        field="cluster.container",
                        message=f"{spec.name} stage: {exc}".split("; fix: ")[0],
                        fix=str(exc).split("fix: ")[-1],
                    )
                )
    for path, stages in missing.items():
        what = "dataset (.bin/.idx)" if any(path in s.paths.datasets for s in stage_specs(plan)) else "path"
        problems.append(
            Problem(
                field=f"{' and '.join(stages)} stage{'s' if len(stages) > 1 else ''}",
                message=f"{what} {path} does not exist; the job would fail after its queue wait",
                fix=_required_fix(plan, path),
            )
        )
    start = init_checkpoint(plan)
    if start and plan.backend.nemo_recipe and "import" not in plan.stages and Path(start).exists():
        if problem := nemo_checkpoint_problem(start):
            problems.append(
                Problem(
                    field="train.init_from",
                    message=problem,
                    fix="MODEL_CKPT: a complete NeMo 2 checkpoint (context/, weights/)",
                )
            )
    return problems


def _required_fix(plan: RunPlan, path: str) -> str:
    if path == plan.train.init_from:
        return "MODEL_CKPT / --set train.init_from=: an existing checkpoint folder"
    if path == plan.tokenizer_path:
        return "TOKENIZER_PATH / --set model.tokenizer.model=: the tokenizer file or Hugging Face folder"
    if path in (*plan.data.train_prefixes, *plan.data.validation_prefixes):
        return "PREPROCESSED_PATH / data.train_prefixes: the tokenized datasets (or a plan with the preprocess stage)"
    return "create it, or point the plan elsewhere (--set ...)"


def stage_specs(plan: RunPlan) -> list[StageSpec]:
    """The plan's stages, in the order they run."""
    return [_BUILDERS[name](plan) for name in plan.stages]


def stage_spec(plan: RunPlan, name: str) -> StageSpec:
    if name not in plan.stages:
        raise ValueError(f"run {plan.run_id} has no stage {name!r} (its stages: {', '.join(plan.stages)})")
    return _BUILDERS[name](plan)


# ------------------------------------------------------------------------------------------------ the stages


def train_units(plan: RunPlan) -> list[int]:
    """The merged train files the run trains on (MLPerf's 405B: 6 and 7 of 8)."""
    return list(plan.data.train_shards or range(plan.data.train_outputs))


def consolidate_config(plan: RunPlan) -> consolidate.ConsolidateConfig:
    d = plan.data
    return consolidate.ConsolidateConfig(
        Path(d.c4_path or ""), Path(d.merged_path or ""), d.train_outputs, d.n_validation_samples or 0
    )


def _consolidate(plan: RunPlan) -> StageSpec:
    config = consolidate_config(plan)
    units = [*train_units(plan), config.validation_unit()]  # only what training reads

    def complete() -> str | None:
        if _preprocess(plan).complete():
            return "its outputs are already tokenized"
        return config.complete_reason(units)

    return StageSpec(
        name="consolidate",
        summary="merge C4 shards into MLPerf's files: one array task per merged file, with a manifest",
        command=("-m", consolidate.MODULE, *config.to_argv()),
        time_limit=plan.cluster.time_limit,
        cpus_per_task=plan.cluster.cpus_per_task,
        tasks=tuple((unit, ("--task-index", unit)) for unit in units),
        paths=StagePaths(
            reads=(str(config.c4_path),),
            writes=(str(config.merged_path),),
            required=(str(config.c4_path),) if plan.data.source == "c4" else (),
        ),
        complete=complete,
    )


def preprocess_configs(plan: RunPlan) -> list[preprocess_job.PreprocessConfig]:
    """One tokenization job per file the trainer reads, with the tokenizer semantics NeMo's tool (the seeds',
    MLPerf's) has: no BOS, and Hugging Face's slow tokenizer where one exists."""
    tok = plan.model.tokenizer
    spec = TokenizerSpec(
        tokenizer_type="SentencePieceTokenizer" if tok.library == "sentencepiece" else "HuggingFaceTokenizer",
        tokenizer_model=plan.tokenizer_path,
        hf_use_fast=tok.library == "sentencepiece",
        hf_include_special_tokens=tok.library == "sentencepiece",
    )
    merged, out = Path(plan.data.merged_path or ""), Path(plan.data.preprocessed_path)
    files = [consolidate.train_file(k) for k in train_units(plan)]
    files.append(consolidate.validation_file(plan.data.n_validation_samples))
    workers = plan.data.workers or plan.cluster.cpus_per_task or plan.cluster.cpu_tasks_per_node
    return [
        preprocess_job.PreprocessConfig(
            input=merged / name,
            output_prefix=str(Path(out) / consolidate.stem(name)),
            tokenizer=spec,
            append_eod=plan.data.append_eod,
            workers=workers,
        )
        for name in files
    ]


def _preprocess(plan: RunPlan) -> StageSpec:
    configs = preprocess_configs(plan)

    def complete() -> str | None:
        if all(preprocess_job.is_complete(config) for config in configs):
            return f"all {len(configs)} datasets are tokenized (manifests match this plan)"
        return None

    return StageSpec(
        name="preprocess",
        summary="tokenize each merged file into a Megatron .bin/.idx: one array task per file, no GPUs",
        command=("-m", preprocess_job.MODULE),
        time_limit=plan.cluster.time_limit,
        cpus_per_task=plan.cluster.cpus_per_task,
        tasks=tuple((i, tuple(config.to_argv())) for i, config in enumerate(configs)),
        paths=StagePaths(
            reads=(plan.data.merged_path or "", *_tokenizer_reads(plan)),
            writes=(plan.data.preprocessed_path,),
            required=_tokenizer_required(plan),
        ),
        complete=complete,
    )


def _index(plan: RunPlan) -> StageSpec:
    seeds = nemo_index.seeds(plan)
    cache = str(nemo_index.cache_dir(plan))
    return StageSpec(
        name="index",
        summary=f"build Megatron's sample index for seed(s) {', '.join(map(str, seeds))} on one node with "
        f"{plan.cluster.cpus_per_task or 1} thread(s); training jobs only load it",
        command=("-m", nemo_index.MODULE, "--run-dir", plan.run_dir),
        time_limit=plan.cluster.time_limit,
        cpus_per_task=plan.cluster.cpus_per_task,
        paths=StagePaths(
            reads=_data_reads(plan),
            writes=(cache,),
            required=_tokenizer_required(plan),
            datasets=_datasets_required(plan),
        ),
        complete=lambda: nemo_index.complete_reason(plan),
        shared=f"index:{cache}:{','.join(map(str, seeds))}:{plan.data.train_prefixes}",
    )


def _import(plan: RunPlan) -> StageSpec:
    model_id = plan.train.hf_model_id or ""
    target = init_checkpoint(plan) or ""

    def complete() -> str | None:
        return f"the imported checkpoint {target} exists" if (Path(target) / "weights").is_dir() else None

    return StageSpec(
        name="import",
        summary=f"convert the Hugging Face checkpoint {model_id} into NeMo's format (one GPU task)",
        command=("-m", "orchestrator.train.nemo_import", "--run-dir", plan.run_dir),
        time_limit=plan.cluster.time_limit,
        gpus=True,
        paths=StagePaths(
            reads=(model_id,) if is_local_model(model_id) else (),
            writes=(str(Path(target).parent),),
            required=(model_id,) if is_local_model(model_id) else (),
        ),
        complete=complete,
    )


def _tokenizer_required(plan: RunPlan) -> tuple[str, ...]:
    """The tokenizer, when it is a file or folder the user gave (a packaged one is written at submission; a hub id is
    looked up in the cluster's Hugging Face cache)."""
    tok = plan.model.tokenizer
    return () if tok.path or not tok.model.startswith("/") else (tok.model,)


def _datasets_required(plan: RunPlan) -> tuple[str, ...]:
    """The datasets a trainer reads, when no stage of the run makes them."""
    return () if "preprocess" in plan.stages else (*plan.data.train_prefixes, *plan.data.validation_prefixes)


def _data_reads(plan: RunPlan) -> tuple[str, ...]:
    """The folders of the datasets a NeMo or reference trainer reads, and its tokenizer."""
    prefixes = [*plan.data.train_prefixes, *plan.data.validation_prefixes]
    folders = dict.fromkeys(str(Path(p).parent) for p in prefixes)
    return (*folders, *_tokenizer_reads(plan))


def _tokenizer_reads(plan: RunPlan) -> tuple[str, ...]:
    """The tokenizer's file or folder; a Hugging Face hub id is found in the cluster's HF cache (a site mount)."""
    return (plan.tokenizer_path,) if plan.tokenizer_path.startswith("/") else ()


def _train_reads(plan: RunPlan) -> tuple[str, ...]:
    start = init_checkpoint(plan)
    return (
        *_data_reads(plan),
        *([start] if start else []),
        *([plan.data.index_cache_dir] if plan.data.index_cache_dir else []),
    )


def _train(plan: RunPlan) -> StageSpec:
    backend = plan.train.backend
    done = RunDir.of(plan.run_dir)

    def complete() -> str | None:
        record = done.done()
        return f"the run is done (step {record.get('final_step')})" if record else None

    return StageSpec(
        name=TRAIN,
        summary=f"train ({backend} backend): one srun step over all nodes, one task per "
        f"{'GPU' if plan.cluster.gpus_per_node else 'CPU worker'}, each with its rank from Slurm",
        command=("-m", plan.backend.module, "--run-dir", plan.run_dir),
        time_limit=plan.chain.time_limit,
        nodes=plan.layout.nodes,
        tasks_per_node=plan.layout.tasks_per_node,
        gpus=True,
        ranks=True,
        cpus_per_task=plan.cluster.cpus_per_task,
        requeue=True,
        chain=True,
        jobs=plan.chain.jobs,
        paths=StagePaths(
            reads=_train_reads(plan),
            writes=(plan.train.ckpt_dir,),
            datasets=_datasets_required(plan),
            required=(
                *_tokenizer_required(plan),
                *([plan.train.init_from] if plan.train.init_from and not plan.train.hf_model_id else []),
            ),
        ),
        complete=complete,
    )


def _smoke(plan: RunPlan) -> StageSpec:
    return StageSpec(
        name="smoke",
        summary="every task reports its host, rank and GPUs after an all-reduce",
        command=("-m", "orchestrator.smoke", "--report-dir", str(RunDir.of(plan.run_dir).path / "smoke")),
        time_limit=plan.chain.time_limit,
        nodes=plan.layout.nodes,
        tasks_per_node=plan.layout.tasks_per_node,
        gpus=True,
        ranks=True,
        cpus_per_task=plan.cluster.cpus_per_task,
        requeue=True,
    )


_BUILDERS: dict[str, Callable[[RunPlan], StageSpec]] = {
    "consolidate": _consolidate,
    "preprocess": _preprocess,
    "index": _index,
    "import": _import,
    TRAIN: _train,
    "smoke": _smoke,
}
