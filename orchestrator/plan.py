"""The run plan: a model profile, a cluster profile and overrides resolved into one validated, serialisable plan.

Everything downstream (rendering, submission, the in-job driver, both trainers, the collector) reads the plan and
nothing else, so a value's origin is always: profile default -> ``--set`` / config.sh override -> plan.json.
Validation happens here, before anything is written or queued, and every problem names the field, the numbers
and a fix.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from orchestrator import memory
from orchestrator.data.consolidate import train_file, validation_file
from orchestrator.data.packaged_tokenizers import is_packaged, location
from orchestrator.data.preprocess_job import dataset_prefix
from orchestrator.profiles import (
    Architecture,
    ClusterProfile,
    Identifier,
    Optimizer,
    Parallelism,
    Strict,
    Tokenizer,
    get_model,
    load_cluster,
    parse_time_limit,
)
from orchestrator.train.backends import BACKENDS, Backend

if TYPE_CHECKING:
    from orchestrator.mlperf.schedule import Schedule

Stage = Literal["consolidate", "preprocess", "index", "import", "train", "smoke"]


class ModelSpec(Strict):
    name: Identifier
    recipe: str | None
    arch: Architecture
    tokenizer: Tokenizer


class Layout(Parallelism):
    """Nodes and tasks per node, plus Megatron's parallel sizes."""

    nodes: int = Field(ge=1)
    tasks_per_node: int = Field(ge=1)


class TrainSpec(Strict):
    backend: Literal["nemo", "reference"]
    global_batch_size: int = Field(gt=0)
    seq_length: int = Field(gt=0)
    seed: int
    max_steps: int = Field(gt=0)
    optim: Optimizer
    val_interval: int | None = Field(None, ge=1)
    val_batches: int = Field(0, ge=0)
    ckpt_interval: int | None = Field(None, ge=1, description="also save every N steps; a stop always saves")
    ckpt_dir: str = Field(description="where this run's checkpoints live")
    save_checkpoints: bool = True
    precision: Literal["bf16-mixed", "fp32"] = "bf16-mixed"
    init_from: str | None = Field(None, description="start from this checkpoint (e.g. an imported HF model)")
    init_mode: Literal["weights", "full"] = Field(
        "weights", description="weights: its weights, a fresh optimizer, step 0; full: resume it (config.sh FROM_HF=0)"
    )
    init_step: int = Field(0, ge=0, description="completed steps of a checkpoint resumed in full (START_STEPS)")
    hf_model_id: str | None = Field(None, description="import this Hugging Face model first (continual pretraining)")


class DataSpec(Strict):
    """Where text comes from and which Megatron prefixes the trainer reads."""

    source: Literal["sample", "c4", "preprocessed"]
    c4_path: str | None = None
    merged_path: str | None = None
    preprocessed_path: str
    train_outputs: int = Field(8, ge=1)
    n_validation_samples: int | None = Field(None, ge=1)
    train_shards: tuple[int, ...] | None = Field(None, description="merged outputs to train on; None: all")
    train_prefixes: tuple[str, ...] = ()
    train_weights: tuple[float, ...] = ()
    validation_prefixes: tuple[str, ...] = ()
    split: str = "969,30,1"
    append_eod: bool = False
    workers: int | None = Field(None, ge=1)
    index_cache_dir: str | None = None
    sample_docs_per_shard: int = Field(400, ge=1)


class ChainSpec(Strict):
    jobs: int = Field(1, ge=1, description="training jobs queued with afterany (MLPerf's NPAR)")
    time_limit: str = Field(description="each job's Slurm time limit")
    max_strikes: int = Field(2, ge=1, description="jobs that end without progress before the chain stops")
    max_retries: int = Field(0, ge=0, description="requeues of a job that fails (MLPerf's MAX_RETRIES)")
    steps_per_job: int | None = Field(None, ge=1, description="stop each job after this many steps (MAX_STEPS)")
    dependencies: tuple[str, ...] = Field((), description="external Slurm jobs the first stage waits for")


class MlperfSpec(Strict):
    """An MLPerf run: which benchmark's rules, and the values a config.sh may move away from them (unset: the
    rules' own, written into the plan)."""

    benchmark: Literal["llama31_405b", "llama31_8b"] = "llama31_405b"
    target_log_ppl: float
    eval_every_samples: int
    eval_samples: int
    step_time_atol_s: int = 7200
    start_eval_at_samples: int | None = None
    allow_new_rcp: bool = Field(False, description="allow a GBS outside the rules' range (needs new RCPs)")
    seeds: tuple[int, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _rules_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        from orchestrator.mlperf.rules import BENCHMARKS

        rules = BENCHMARKS.get(data.get("benchmark", "llama31_405b"))
        if rules is None:  # the Literal above names the choices
            return data
        return {name: getattr(rules, name) for name in _RULE_DEFAULTS} | {
            k: v for k, v in data.items() if v is not None or k not in _RULE_DEFAULTS
        }


#: MlperfSpec fields whose unset value is the benchmark's rule.
_RULE_DEFAULTS = ("target_log_ppl", "eval_every_samples", "eval_samples")


class RunPlan(Strict):
    schema_version: Literal[1] = 1
    run_id: Identifier
    run_dir: str
    created: str
    model: ModelSpec
    cluster: ClusterProfile
    layout: Layout
    train: TrainSpec
    data: DataSpec
    chain: ChainSpec
    mlperf: MlperfSpec | None = None
    stages: tuple[Stage, ...]
    env: dict[str, str] = {}

    @property
    def world_size(self) -> int:
        return self.layout.nodes * self.layout.tasks_per_node

    @property
    def model_parallel(self) -> int:
        return self.layout.tp * self.layout.pp * self.layout.cp

    @property
    def data_parallel(self) -> int:
        return max(self.world_size // self.model_parallel, 1)

    @property
    def grad_accumulation(self) -> int:
        return max(self.train.global_batch_size // (self.layout.micro_batch_size * self.data_parallel), 1)

    @property
    def tokenizer_path(self) -> str:
        """The tokenizer jobs read: a packaged tokenizer's file in the site's data, else ``model.tokenizer.model``."""
        return self.model.tokenizer.path or self.model.tokenizer.model

    @property
    def lr_horizon_steps(self) -> int:
        """Where the cosine decay ends: the optimizer's own horizon (MLPerf's rules fix one), else ``max_steps``."""
        return self.train.optim.horizon_steps or self.train.max_steps

    @property
    def backend(self) -> Backend:
        """The trainer ``train.backend`` names: its program and what it needs of the plan."""
        return BACKENDS[self.train.backend]

    @property
    def tokens_per_step(self) -> int:
        return self.train.global_batch_size * self.train.seq_length

    def mlperf_schedule(self) -> Schedule | None:
        """The MLPerf rules' schedule for this GBS (None when the plan is not an MLPerf run)."""
        if self.mlperf is None:
            return None
        from orchestrator.mlperf.schedule import Schedule

        m = self.mlperf
        return Schedule(
            self.train.global_batch_size,
            target_log_ppl=m.target_log_ppl,
            eval_every_samples=m.eval_every_samples,
            eval_samples=m.eval_samples,
            start_eval_at_samples=m.start_eval_at_samples,
            allow_new_rcp=m.allow_new_rcp,
            benchmark=m.benchmark,
        )

    def memory_estimate(self) -> memory.MemoryEstimate:
        return memory.estimate(
            self.model.arch,
            self.layout,
            seq_length=self.train.seq_length,
            data_parallel=self.data_parallel,
            num_microbatches=self.grad_accumulation,
            bytes_per_param=2 if self.train.precision == "bf16-mixed" else 4,
            fixed_overhead=memory.GPU_OVERHEAD_BYTES if self.cluster.gpus_per_node else memory.CPU_OVERHEAD_BYTES,
        )

    def derived(self) -> dict[str, Any]:
        """Numbers people check first, for ``plan`` output and ``plan.json``."""
        return dict(
            world_size=self.world_size,
            data_parallel=self.data_parallel,
            gradient_accumulation=self.grad_accumulation,
            tokens_per_step=self.tokens_per_step,
            parameters=self.model.arch.num_params(),
            active_parameters=self.model.arch.num_params(active=True),
            memory_gib_per_gpu=self.memory_estimate().as_gib(),
        )

    def text_values(self) -> Iterator[tuple[str, str]]:
        """Every text value of the plan with its dotted field (``cluster.env.HF_HOME``, ``data.train_prefixes[0]``):
        what the secret and mount checks look through to name the field a value came from."""
        return _text_values(self.model_dump(mode="json"), "")

    def to_json(self) -> str:
        body = self.model_dump(mode="json")
        body["derived"] = self.derived()
        return json.dumps(body, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunPlan:
        body = json.loads(text)
        body.pop("derived", None)
        return cls.model_validate(body)

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> RunPlan:
        path = Path(run_dir) / "plan.json"
        try:
            return cls.from_json(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no plan here; is {run_dir} a run directory?") from None


class Problem(Strict):
    field: str
    message: str
    fix: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.severity}: {self.field}: {self.message}\n  fix: {self.fix}"


class PlanError(ValueError):
    """The plan cannot run; ``problems`` says why, each with a fix."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# ------------------------------------------------------------------------------------------------ building


def default_run_id(model: str, now: dt.datetime | None = None) -> str:
    return f"{model}-{(now or dt.datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def build_plan(
    profile: str,
    cluster: str | os.PathLike[str],
    overrides: Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    check: bool = True,
) -> RunPlan:
    """Resolve profile + cluster + dotted-path overrides (``{"layout.tp": 2}``) into a plan.

    With ``check`` (the default) a plan with errors raises :class:`PlanError`; warnings do not.
    """
    model = get_model(profile)
    site = load_cluster(cluster)
    run_id = run_id or default_run_id(model.name)
    if run_dir is None:
        run_dir = Path(os.path.expanduser(site.runs_root)) / run_id
    run_dir = Path(run_dir).absolute()
    tasks = site.tasks_per_node
    tree: dict[str, Any] = {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": dict(
            name=model.name, recipe=model.recipe, arch=model.arch.model_dump(), tokenizer=model.tokenizer.model_dump()
        ),
        "cluster": site.model_dump(),
        "layout": dict(
            nodes=max(math.ceil(model.bench.gpus / tasks), 1), tasks_per_node=tasks, **model.parallel.model_dump()
        ),
        "train": dict(
            backend=model.backend,
            global_batch_size=model.bench.global_batch_size,
            seq_length=model.bench.seq_length,
            seed=model.bench.seed,
            max_steps=model.bench.max_steps,
            optim=model.optim.model_dump(),
            val_interval=model.val_interval,
            val_batches=model.val_batches,
            ckpt_dir=str(run_dir / "checkpoints"),
        ),
        "data": dict(model.data),
        "chain": dict(time_limit=site.time_limit),
        "stages": [],
    }
    if model.mlperf:
        tree["mlperf"] = {"benchmark": model.mlperf}
    for key, value in (overrides or {}).items():
        set_dotted(tree, key, value)
    if tree.get("mlperf") is not None:
        _apply_mlperf_schedule(tree, overrides or {})
    _fill_data(tree, run_dir)
    _place_tokenizer(tree, run_dir)
    if not tree["stages"]:
        tree["stages"] = _stages(tree)
    try:
        plan = RunPlan.model_validate(tree)
    except ValidationError as exc:
        raise PlanError(
            [Problem(field=_loc(e["loc"]), message=e["msg"], fix=_fix_for(e)) for e in exc.errors()]
        ) from None
    if check:
        errors = [p for p in validate(plan) if p.severity == "error"]
        if errors:
            raise PlanError(errors)
    return plan


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(t, "layout.tp", 2)``; unknown top-level sections are refused with the valid ones listed."""
    parts = key.split(".")
    sections = sorted(RunPlan.model_fields)
    if parts[0] not in sections:
        raise PlanError(
            [Problem(field=key, message=f"unknown plan section {parts[0]!r}", fix=f"use one of: {', '.join(sections)}")]
        )
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise PlanError(
                [Problem(field=key, message=f"{part!r} is a value, not a section", fix="set the value itself")]
            )
        node = child
    node[parts[-1]] = value


#: Plan fields that say which run this is (and what it runs); ``--set`` refuses them, naming the option to use.
IDENTITY = {
    "run_id": "use --run-id NAME (config.sh RUN_ID=)",
    "run_dir": "use --run-dir PATH (config.sh JOB_DIR= for the folder of runs)",
    "created": "it is the time the plan was made; plan again for a new one",
    "stages": "use --stages, e.g. --stages consolidate,preprocess",
}


def parse_assignment(text: str) -> tuple[str, Any]:
    """``layout.tp=2`` -> ("layout.tp", 2); values are YAML scalars/lists (``true``, ``1e-4``, ``[6, 7]``)."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE, e.g. --set layout.tp=2")
    key, raw = text.split("=", 1)
    if key.strip().split(".")[0] in IDENTITY:
        name = key.strip().split(".")[0]
        raise PlanError(
            [
                Problem(
                    field=name,
                    message=f"--set {name}: the run's identity is not a plan value to override",
                    fix=IDENTITY[name],
                )
            ]
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and not raw.strip().startswith(("'", '"')):
        value = raw  # keep strings exactly as typed (no YAML date/time coercions of e.g. 04:00:00)
    if "env" in key.strip().split(".")[:-1] and not isinstance(value, str):
        value = raw  # an environment variable's value is text as typed: env.OMP_NUM_THREADS=15, env.UMASK=0022
    return key.strip(), value


def _fill_data(tree: dict[str, Any], run_dir: Path) -> None:
    """Derive the consolidated and preprocessed names from the data source, as MLPerf names them."""
    data = tree["data"]
    source = data.setdefault("source", "sample")
    named_folder = "preprocessed_path" in data  # a folder of datasets named as MLPerf names them (PREPROCESSED_PATH)
    if source == "sample":  # a small real-text corpus built into the run directory
        root = run_dir / "data"
        data.setdefault("c4_path", str(root / "c4"))
        data.setdefault("train_outputs", 2)
    else:  # real data lives in the cluster's shared data folder, reused by every run
        root = Path(os.path.expanduser(tree["cluster"].get("data_root") or "data")).absolute() / "c4"
        data.setdefault("c4_path", str(root / "en"))
    data.setdefault(
        "preprocessed_path",
        str(root / ("preprocessed" if source == "sample" else f"preprocessed-{_tokenizer_tag(tree)}")),
    )
    if source in ("sample", "c4"):
        data.setdefault("merged_path", str(root / "merged"))
    if not data.get("train_prefixes") and (source != "preprocessed" or named_folder):
        outputs = int(data.get("train_outputs", 8))
        shards = data.get("train_shards") or list(range(outputs))
        data["train_prefixes"] = [dataset_prefix(data["preprocessed_path"], train_file(k)) for k in shards]
        data.setdefault(
            "validation_prefixes",
            [dataset_prefix(data["preprocessed_path"], validation_file(data.get("n_validation_samples")))],
        )
    if _builds_index(tree) and not data.get("index_cache_dir"):
        # shared by every run (and seed) of the site that trains on the same data; TMP_NPY_INDEX overrides
        site_data = Path(os.path.expanduser(tree["cluster"].get("data_root") or "data")).absolute()
        data["index_cache_dir"] = str((run_dir / "data" if source == "sample" else site_data) / "megatron-index")
    if data.get("train_prefixes") and not data.get("train_weights"):
        n = len(data["train_prefixes"])
        data["train_weights"] = [round(100.0 / n, 6)] * n


def _place_tokenizer(tree: dict[str, Any], run_dir: Path) -> None:
    """A packaged tokenizer is read from the site's data (the run's, for the sample corpus), not from the login
    node's Python packages, which no container has: the plan names that file, submission writes it there."""
    tok = tree["model"]["tokenizer"]
    if tok.get("path") or not is_packaged(str(tok.get("model", ""))):
        return
    site_data = Path(os.path.expanduser(tree["cluster"].get("data_root") or "data")).absolute()
    root = run_dir / "data" if tree["data"].get("source") == "sample" else site_data
    tok["path"] = str(location(tok["model"], root / "tokenizers"))


def _apply_mlperf_schedule(tree: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """MLPerf runs take LR, warm-up, LR horizon, AdamW and evaluation from their benchmark's rules at their GBS,
    unless overridden."""
    from orchestrator.mlperf.rules import rules_for
    from orchestrator.mlperf.schedule import GbsError, Schedule

    m = tree["mlperf"]
    try:
        rules = rules_for(m.get("benchmark", "llama31_405b"))
        sched = Schedule(
            int(tree["train"]["global_batch_size"]),
            target_log_ppl=m.get("target_log_ppl"),
            eval_every_samples=m.get("eval_every_samples"),
            eval_samples=m.get("eval_samples"),
            start_eval_at_samples=m.get("start_eval_at_samples"),
            allow_new_rcp=m.get("allow_new_rcp", False),
            benchmark=rules.benchmark,
        )
    except GbsError as exc:
        low, high = rules.gbs_range
        raise PlanError(
            [
                Problem(
                    field="train.global_batch_size",
                    message=str(exc),
                    fix=f"a GBS in [{low}, {high}], or --set mlperf.allow_new_rcp=true",
                )
            ]
        ) from None
    except ValueError as exc:
        raise PlanError(
            [Problem(field="mlperf", message=str(exc), fix="fix the value named, or leave it unset for the rules'")]
        ) from None
    derived = {
        "train.optim.lr": sched.base_lr,
        "train.optim.min_lr": sched.min_lr,
        "train.optim.warmup_steps": sched.warmup_steps,
        "train.optim.weight_decay": rules.weight_decay,
        "train.optim.beta1": rules.adamw_beta_1,
        "train.optim.beta2": rules.adamw_beta_2,
        "train.optim.eps": rules.adamw_epsilon,
        "train.optim.clip_grad": rules.gradient_clip_norm,
        # The rules fix the LR horizon; max_steps only caps the run (and sizes Megatron's sample index).
        "train.optim.horizon_steps": sched.max_steps,
        "train.max_steps": sched.max_steps,
        "train.val_interval": sched.eval_interval_steps,
        "train.val_batches": sched.eval_batches,
    }
    for key, value in derived.items():
        if key not in overrides:
            set_dotted(tree, key, value)


def _tokenizer_tag(tree: dict[str, Any]) -> str:
    """A folder-name tag for everything that decides the tokenized bytes (tokenizer library and model, end-of-document
    tokens), so runs whose datasets differ never share a folder: readable, then a hash of the whole identity."""
    tok, eod = tree["model"]["tokenizer"], bool(tree["data"].get("append_eod", False))
    model = str(tok["model"]).rstrip("/")
    identity = json.dumps([tok.get("library"), model, eod])
    readable = re.sub(r"[^A-Za-z0-9.]+", "-", model)[-48:].strip("-")
    digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
    return f"{readable}-{tok.get('library')}{'-eod' if eod else ''}-{digest}"


def _builds_index(tree: dict[str, Any]) -> bool:
    """Whether the tree's backend (not yet validated) trains through NeMo's recipe, whose index is a stage."""
    backend = BACKENDS.get(tree["train"].get("backend"))
    return backend is not None and backend.nemo_recipe


def _stages(tree: dict[str, Any]) -> list[str]:
    source = tree["data"].get("source", "sample")
    stages = [] if source == "preprocessed" else ["consolidate", "preprocess"]
    if _builds_index(tree):
        stages.append("index")  # Megatron's sample index, built once before the training jobs (they only load it)
    if tree["train"].get("hf_model_id"):
        stages.append("import")
    return stages + ["train"]


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _fix_for(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "remove it or check its spelling (see `python -m orchestrator plan --help`)"
    if error["type"] == "identifier":
        return "use only letters, digits, '.', '_' and '-' (e.g. --run-id llama-test-1)"
    if error["type"] == "missing":
        return "set it (--set KEY=VALUE or the matching config.sh variable)"
    return "set a valid value (--set KEY=VALUE)"


# ---------------------------------------------------------------------------------------------- validation


def validate(plan: RunPlan) -> list[Problem]:
    """Every reason this plan would fail on the cluster, errors first; empty when it can run."""
    problems: list[Problem] = []
    add = problems.append
    L, arch, site, train = plan.layout, plan.model.arch, plan.cluster, plan.train
    world = plan.world_size
    where = f"{world} tasks ({L.nodes} nodes x {L.tasks_per_node})"

    if site.max_nodes and L.nodes > site.max_nodes:
        add(
            Problem(
                field="layout.nodes",
                message=f"{L.nodes} nodes, cluster {site.name!r} has at most {site.max_nodes}",
                fix=f"--set layout.nodes={site.max_nodes} (or NNODES=) or use a larger cluster profile",
            )
        )
    mp = plan.model_parallel
    if world % mp:
        step = math.lcm(mp, L.tasks_per_node) // L.tasks_per_node  # nodes whose tasks TP x PP x CP divides
        nodes = step * max(1, round(L.nodes / step))
        add(
            Problem(
                field="layout",
                message=f"TP x PP x CP = {L.tp} x {L.pp} x {L.cp} = {mp} does not divide {where}",
                fix=f"use a multiple of {step} nodes (--set layout.nodes={nodes}), "
                f"or a smaller layout (--set layout.tp=.. layout.pp=.. layout.cp=..)",
            )
        )
    if arch.num_attention_heads % L.tp:
        add(
            Problem(
                field="layout.tp",
                message=f"{arch.num_attention_heads} attention heads are not divisible by TP={L.tp}",
                fix=f"choose TP among {_divisors(arch.num_attention_heads)}",
            )
        )
    if arch.num_query_groups % L.tp and L.tp % arch.num_query_groups:
        add(
            Problem(
                field="layout.tp",
                message=f"{arch.num_query_groups} KV groups and TP={L.tp}: neither divides the other",
                fix=f"choose TP among {_divisors(arch.num_query_groups)} or a multiple of {arch.num_query_groups}",
            )
        )
    stages = L.pp * (L.vp or 1)
    if arch.num_layers % stages:
        add(
            Problem(
                field="layout.pp",
                message=f"{arch.num_layers} layers are not divisible by PP x VP = {L.pp} x {L.vp or 1} = {stages}",
                fix=f"choose PP x VP among {_divisors(arch.num_layers)}",
            )
        )
    if L.vp and L.pp == 1:
        add(
            Problem(
                field="layout.vp",
                message=f"virtual pipeline VP={L.vp} needs PP > 1",
                fix="--set layout.vp=null",
                severity="warning",
            )
        )
    if L.cp > 1 and train.seq_length % (2 * L.cp):
        add(
            Problem(
                field="train.seq_length",
                message=f"sequence {train.seq_length} is not divisible by 2 x CP = {2 * L.cp}",
                fix=f"use a sequence length that is a multiple of {2 * L.cp}, or a smaller CP",
            )
        )
    if L.sequence_parallel and L.tp == 1:
        add(
            Problem(
                field="layout.sequence_parallel",
                message="sequence parallelism needs TP > 1 (NeMo turns it off)",
                fix="--set layout.sequence_parallel=false",
                severity="warning",
            )
        )
    if arch.vocab_size < plan.model.tokenizer.vocab_size:
        add(
            Problem(
                field="model.arch.vocab_size",
                message=f"vocabulary {arch.vocab_size} is smaller than the tokenizer's "
                f"{plan.model.tokenizer.vocab_size}: its ids would index past the embedding",
                fix=f"--set model.arch.vocab_size={plan.model.tokenizer.vocab_size}, or the tokenizer the data was made with",
            )
        )
    if arch.is_moe:
        if (arch.num_experts or 0) % L.ep:
            add(
                Problem(
                    field="layout.ep",
                    message=f"{arch.num_experts} experts are not divisible by EP={L.ep}",
                    fix=f"choose EP among {_divisors(arch.num_experts or 1)}",
                )
            )
        if world % (L.pp * L.ep * L.etp):
            add(
                Problem(
                    field="layout.ep",
                    message=f"PP x EP x ETP = {L.pp * L.ep * L.etp} does not divide {where}",
                    fix="choose EP and ETP so that PP x EP x ETP divides the task count",
                )
            )
    elif L.ep > 1:
        add(Problem(field="layout.ep", message=f"EP={L.ep} on a dense model", fix="--set layout.ep=1"))
    per_step = L.micro_batch_size * plan.data_parallel
    if world % mp == 0 and train.global_batch_size % per_step:
        add(
            Problem(
                field="train.global_batch_size",
                message=f"global batch {train.global_batch_size} is not divisible by micro batch x DP = "
                f"{L.micro_batch_size} x {plan.data_parallel} = {per_step}",
                fix=f"use a global batch that is a multiple of {per_step}, or change micro_batch_size / the layout",
            )
        )
    if "train" in plan.stages:  # a smoke or data-only plan starts no trainer
        problems.extend(trainer_problems(plan))
    if train.init_mode == "full" and not train.init_from:
        add(
            Problem(
                field="train.init_mode",
                message="a full resume needs the checkpoint to resume (train.init_from)",
                fix="set MODEL_CKPT (--set train.init_from=...), or train.init_mode=weights",
            )
        )
    if train.init_step and train.init_mode != "full":
        add(
            Problem(
                field="train.init_step",
                message=f"train.init_step={train.init_step}: only a full resume starts past step 0",
                fix="--set train.init_mode=full (FROM_HF=0), or train.init_step=0",
            )
        )
    if plan.chain.jobs > 1 and not train.save_checkpoints:
        add(
            Problem(
                field="train.save_checkpoints",
                message=f"a chain of {plan.chain.jobs} jobs cannot resume without checkpoints",
                fix="set SAVE_CKPT=1 (--set train.save_checkpoints=true) or NPAR=1",
            )
        )
    limit_s = 60 * parse_time_limit(plan.chain.time_limit)
    if site.scheduler == "slurm" and site.signal_grace_s >= limit_s:
        add(
            Problem(
                field="chain.time_limit",
                message=f"time limit {plan.chain.time_limit} leaves no time after the "
                f"{site.signal_grace_s} s stop signal",
                fix=f"a time limit above {site.signal_grace_s // 60 + 1} minutes",
            )
        )
    if plan.mlperf and plan.layout.pp > 1 and train.global_batch_size % plan.layout.pp:
        add(
            Problem(
                field="train.global_batch_size",
                message=f"MLPerf's reference needs GBS % PP == 0 ({train.global_batch_size} % {L.pp})",
                fix=f"a global batch that is a multiple of {L.pp}",
            )
        )
    schedule = plan.mlperf_schedule()
    if schedule is not None and train.max_steps < schedule.first_eval_step:
        add(
            Problem(
                field="train.max_steps",
                message=f"{train.max_steps} steps end before the rules' first evaluation "
                f"(after {schedule.first_eval_step} steps): the run can never reach its target",
                fix=f"--set train.max_steps={schedule.first_eval_step} or more, or an earlier "
                "mlperf.start_eval_at_samples",
                severity="warning",
            )
        )
    problems.extend(_memory_problems(plan))
    return sorted(problems, key=lambda p: p.severity != "error")


def trainer_problems(plan: RunPlan) -> list[Problem]:
    """What the plan's trainer would refuse at its start. :func:`validate` asks at plan time, so nothing is refused
    after the queue wait; each trainer asks again at its start (:func:`check_trainer`), for a plan written by hand."""
    problems: list[Problem] = []
    add = problems.append
    L, site, train, backend = plan.layout, plan.cluster, plan.train, plan.backend
    if backend.gpus_only and site.gpus_per_node == 0:
        add(
            Problem(
                field="train.backend",
                message=f"the {backend.name} backend needs GPU nodes; cluster {site.name!r} has none",
                fix="use a GPU cluster profile, or --set train.backend=reference for the CPU reference trainer",
            )
        )
    if not backend.model_parallel and (L.tp, L.pp, L.cp, L.ep) != (1, 1, 1, 1):
        add(
            Problem(
                field="layout",
                message=f"the {backend.name} backend is data-parallel only (TP/PP/CP/EP = {L.tp}/{L.pp}/{L.cp}/{L.ep})",
                fix="--set layout.tp=1 layout.pp=1 layout.cp=1 layout.ep=1, or use the nemo backend",
            )
        )
    if train.precision not in backend.precisions:
        add(
            Problem(
                field="train.precision",
                message=f"train.precision={train.precision!r}: the {backend.name} backend trains in "
                f"{' or '.join(backend.precisions)}",
                fix=f"--set train.precision={backend.precisions[0]}, or --set train.backend=reference for fp32",
            )
        )
    if backend.nemo_recipe and not plan.model.recipe:
        add(
            Problem(
                field="model.recipe",
                message=f"model {plan.model.name!r} has no NeMo recipe",
                fix="--set train.backend=reference",
            )
        )
    if not plan.data.train_prefixes:
        add(
            Problem(
                field="data.train_prefixes",
                message="data.train_prefixes is empty: the trainers read Megatron .bin/.idx prefixes",
                fix="run the preprocess stage or --set data.train_prefixes=[...]",
            )
        )
    if train.optim.min_lr > train.optim.lr:
        add(
            Problem(
                field="train.optim.min_lr",
                message=f"train.optim.min_lr={train.optim.min_lr} exceeds train.optim.lr={train.optim.lr}; "
                + (
                    f"the {backend.name} backend's schedule then rises from lr to min_lr"
                    if backend.rising_lr
                    else "the cosine decay goes from lr down to min_lr"
                ),
                fix=f"--set train.optim.min_lr={train.optim.lr} or lower",
                severity="warning" if backend.rising_lr else "error",
            )
        )
    schedule = plan.mlperf_schedule()
    if (
        backend.nemo_recipe
        and schedule is not None
        and (train.val_interval, train.val_batches) != (schedule.eval_interval_steps, schedule.eval_batches)
    ):
        add(
            Problem(
                field="train.val_interval",
                message=f"train.val_interval={train.val_interval}, train.val_batches={train.val_batches}: an MLPerf "
                f"plan evaluates on the rules' schedule (every {schedule.eval_interval_steps} steps over "
                f"{schedule.eval_batches} batches at GBS {schedule.gbs}), which mlperf.eval_every_samples, "
                "mlperf.eval_samples and mlperf.start_eval_at_samples set; else its log would lie",
                fix="drop the train.val_interval / train.val_batches overrides and set those mlperf keys instead",
            )
        )
    return problems


def check_trainer(plan: RunPlan) -> None:
    """At a trainer's start: raise :class:`PlanError` with :func:`trainer_problems`' errors, if any."""
    errors = [p for p in trainer_problems(plan) if p.severity == "error"]
    if errors:
        raise PlanError(errors)


def _memory_problems(plan: RunPlan) -> list[Problem]:
    site = plan.cluster
    capacity = site.gpu_memory_gb if site.gpus_per_node else site.memory_per_task_gb
    if not capacity or plan.world_size % plan.model_parallel:
        return []
    est = plan.memory_estimate()
    need = est.total / memory.GIB
    device = "GPU" if site.gpus_per_node else "task"
    fixes = "--set layout.recompute=full, a larger TP or PP, or micro_batch_size=1"
    if need > capacity:
        return [
            Problem(
                field="layout",
                message=f"estimated {need:.1f} GiB per {device} > {capacity:g} GiB: {est.describe()}",
                fix=fixes,
            )
        ]
    if need > 0.9 * capacity:
        return [
            Problem(
                field="layout",
                message=f"estimated {need:.1f} GiB per {device}, over 90% of {capacity:g} GiB: {est.describe()}",
                fix=fixes,
                severity="warning",
            )
        ]
    return []


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0 and d <= 64)


def explain_overrides_help() -> str:
    sections = ", ".join(sorted(RunPlan.model_fields))
    return f"dotted plan keys, e.g. layout.tp=2 train.max_steps=50 chain.jobs=4 (sections: {sections})"


def _text_values(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _text_values(value, f"{path}.{key}".lstrip("."))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _text_values(value, f"{path}[{i}]")
