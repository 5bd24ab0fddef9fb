"""Model and cluster profiles: the data a run starts from.

A model profile is the architecture (as NeMo 2.5.3's config classes build it), the benchmark settings of the seed
documents (GPUs, global batch, sequence length, seed, steps) and a default parallel layout that fits those GPUs.
A cluster profile is a site: scheduler, account, partition, GPUs per node, time limit, container, environment.
Model profiles are built in; cluster profiles are YAML files in ``cluster_profiles/`` (or a user's own path).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a profile must not silently become a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: What a name that becomes a job name, a folder or a log line may hold: nothing a shell or sbatch reads specially.
IDENTIFIER = re.compile(r"[A-Za-z0-9._-]+")


def _identifier(value: str) -> str:
    if not IDENTIFIER.fullmatch(value):
        raise PydanticCustomError(
            "identifier",
            "{value} is not a plain name: it becomes a Slurm job name, a folder and log text, so only letters, "
            "digits, '.', '_' and '-' are allowed",
            {"value": repr(value)},
        )
    return value


#: A run id, or a model's or a site's name (full match of :data:`IDENTIFIER`; a trailing newline is refused).
Identifier = Annotated[str, AfterValidator(_identifier)]


# --------------------------------------------------------------------------------------------- model profiles


class Architecture(Strict):
    """Transformer shape; the numbers NeMo's ``Llama3Config8B``, ``Qwen3Config8B``, ... carry."""

    family: Literal["llama", "qwen2", "qwen3"]
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    ffn_hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_query_groups: int = Field(gt=0)
    kv_channels: int | None = None
    vocab_size: int = Field(gt=0)
    rotary_base: float = 500_000.0
    llama31_rope_scaling: bool = False
    norm_eps: float = 1e-5
    qk_layernorm: bool = False
    qkv_bias: bool = False
    tie_embeddings: bool = False
    num_experts: int | None = None
    moe_top_k: int | None = None
    moe_ffn_hidden_size: int | None = None

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts)

    def layer_params(self, active: bool = False) -> int:
        """Parameters of one transformer layer (norms included); ``active`` counts only top-k experts."""
        h, d = self.hidden_size, self.head_dim
        q = h * self.num_attention_heads * d
        kv = 2 * h * self.num_query_groups * d
        out = self.num_attention_heads * d * h
        bias = (self.num_attention_heads + 2 * self.num_query_groups) * d if self.qkv_bias else 0
        norms = 2 * h + (2 * d if self.qk_layernorm else 0)
        if self.is_moe:
            experts = (self.moe_top_k or 0) if active else (self.num_experts or 0)
            mlp = experts * 3 * h * (self.moe_ffn_hidden_size or self.ffn_hidden_size) + h * (self.num_experts or 0)
        else:
            mlp = 3 * h * self.ffn_hidden_size  # SwiGLU: gate, up, down
        return q + kv + out + bias + norms + mlp

    def embedding_params(self) -> int:
        """Input embedding plus output layer (untied) plus the final norm."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2) + self.hidden_size

    def num_params(self, active: bool = False) -> int:
        return self.num_layers * self.layer_params(active) + self.embedding_params()


class Parallelism(Strict):
    """Megatron's parallel layout. DP is derived: world / (TP x PP x CP)."""

    tp: int = Field(1, ge=1, description="tensor parallel size")
    pp: int = Field(1, ge=1, description="pipeline parallel size")
    cp: int = Field(1, ge=1, description="context parallel size")
    vp: int | None = Field(None, ge=1, description="virtual pipeline stages per pipeline rank (interleaving)")
    ep: int = Field(1, ge=1, description="expert parallel size (MoE)")
    etp: int = Field(1, ge=1, description="expert tensor parallel size (MoE)")
    sequence_parallel: bool = False
    micro_batch_size: int = Field(1, ge=1)
    recompute: Literal["none", "selective", "full"] = "none"
    recompute_num_layers: int | None = Field(None, ge=1)
    grad_reduce_in_fp32: bool = False
    distributed_optimizer: bool = True


class Optimizer(Strict):
    """AdamW with linear warm-up and cosine decay to ``min_lr`` at the last step (NeMo recipes' default)."""

    lr: float = Field(3e-4, gt=0)
    min_lr: float = Field(3e-5, ge=0)
    warmup_steps: int = Field(2000, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-5
    clip_grad: float = 1.0
    horizon_steps: int | None = Field(
        None,
        ge=1,
        description="the step at which the cosine decay reaches min_lr; None: train.max_steps (NeMo's recipes)",
    )


class Benchmark(Strict):
    """The seeds' fixed table: GPUs, global batch, sequence length, seed and steps."""

    gpus: int = Field(gt=0)
    global_batch_size: int = Field(gt=0)
    seq_length: int = Field(gt=0)
    seed: int = 1234
    max_steps: int = Field(gt=0)
    source: str = ""


class Tokenizer(Strict):
    """What turns text into ids; ``model`` is a path, a Hugging Face id, or a packaged tokenizer
    (``mistral-common:<file>``, ``llama-models:llama3``: see :mod:`orchestrator.data.packaged_tokenizers`)."""

    library: Literal["sentencepiece", "huggingface"]
    model: str
    vocab_size: int = Field(gt=0)
    #: Where jobs read a packaged tokenizer: a file or folder of the site's data, written at submission.
    path: str | None = None


MIXTRAL_V1 = Tokenizer(library="sentencepiece", model="mistral-common:tokenizer.model.v1", vocab_size=32000)


class ModelProfile(Strict):
    name: Identifier
    aliases: tuple[str, ...] = ()
    description: str
    recipe: str | None = Field(None, description="nemo.collections.llm.recipes module; None: reference backend only")
    backend: Literal["nemo", "reference"] = "nemo"
    arch: Architecture
    bench: Benchmark
    parallel: Parallelism
    optim: Optimizer = Optimizer()
    tokenizer: Tokenizer
    val_interval: int | None = Field(None, ge=1, description="validate every N steps; None: never")
    val_batches: int = Field(32, ge=0)
    data: dict[str, Any] = Field(default_factory=dict, description="plan.data defaults (e.g. MLPerf's C4 layout)")
    mlperf: Literal["llama31_405b", "llama31_8b"] | None = Field(
        None, description="the MLPerf benchmark whose rules (schedule, logging) apply by default"
    )


_LLAMA3_8B = Architecture(
    family="llama",
    num_layers=32,
    hidden_size=4096,
    ffn_hidden_size=14336,
    num_attention_heads=32,
    num_query_groups=8,
    vocab_size=128256,
    rotary_base=500_000.0,
)
_LLAMA3_70B = _LLAMA3_8B.model_copy(
    update=dict(num_layers=80, hidden_size=8192, ffn_hidden_size=28672, num_attention_heads=64)
)
_LLAMA_TOKENIZER = Tokenizer(library="huggingface", model="meta-llama/Meta-Llama-3-8B", vocab_size=128256)
_QWEN_OPTIM = Optimizer(lr=3e-4, min_lr=3e-5, warmup_steps=500)
_SEED_000 = "seed 000 (NeMo 25.09 Llama3 benchmark table)"
_SEED_001 = "seed 001 (NeMo 25.09 Qwen benchmark table)"

MODELS: tuple[ModelProfile, ...] = (
    ModelProfile(
        name="tiny",
        description="A few million parameters, Llama-shaped; trains on CPUs in minutes (the embedded default).",
        backend="reference",
        arch=Architecture(
            family="llama",
            num_layers=4,
            hidden_size=128,
            ffn_hidden_size=352,
            num_attention_heads=4,
            num_query_groups=2,
            vocab_size=32000,
            rotary_base=10_000.0,
        ),
        bench=Benchmark(gpus=2, global_batch_size=16, seq_length=128, max_steps=60, source="embedded default"),
        parallel=Parallelism(),
        optim=Optimizer(lr=3e-3, min_lr=3e-4, warmup_steps=10, weight_decay=0.01),
        tokenizer=MIXTRAL_V1,
        val_interval=20,
        val_batches=2,
    ),
    ModelProfile(
        name="llama3_8b",
        description="Llama 3 8B; the H100 BF16 layout of NeMo's performance configs (TP1 CP2).",
        recipe="llama3_8b",
        arch=_LLAMA3_8B,
        bench=Benchmark(gpus=8, global_batch_size=128, seq_length=8192, max_steps=100, source=_SEED_000),
        parallel=Parallelism(cp=2),
        tokenizer=_LLAMA_TOKENIZER,
    ),
    ModelProfile(
        name="llama3_70b",
        aliases=("70b",),
        description="Llama 3 70B on 32 GPUs: TP4 PP4 CP2 VP5 (DP 1, 64 micro-batches per step).",
        recipe="llama3_70b",
        arch=_LLAMA3_70B,
        bench=Benchmark(gpus=32, global_batch_size=64, seq_length=8192, max_steps=100, source=_SEED_000),
        parallel=Parallelism(tp=4, pp=4, cp=2, vp=5, sequence_parallel=True),
        tokenizer=_LLAMA_TOKENIZER,
    ),
    ModelProfile(
        name="llama31_8b",
        aliases=("8b",),
        description="Llama 3.1 8B pretraining / continual pretraining (seeds 002, 003): TP4 on 8 GPUs.",
        recipe="llama31_8b",
        arch=_LLAMA3_8B.model_copy(update=dict(llama31_rope_scaling=True)),
        bench=Benchmark(gpus=8, global_batch_size=2048, seq_length=8192, max_steps=100, source="seed 002"),
        parallel=Parallelism(tp=4, sequence_parallel=True),
        tokenizer=Tokenizer(library="huggingface", model="meta-llama/Llama-3.1-8B", vocab_size=128256),
    ),
    ModelProfile(
        name="llama31_405b",
        aliases=("405b",),
        description="Llama 3.1 405B, the MLPerf reference: TP8 PP9 VP7 CP4 on 288 nodes of 8, GBS 1152, "
        "Mixtral-8x22B tokenizer (vocab 32000).",
        recipe="llama31_405b",
        arch=Architecture(
            family="llama",
            num_layers=126,
            hidden_size=16384,
            ffn_hidden_size=53248,
            num_attention_heads=128,
            num_query_groups=8,
            vocab_size=32000,
            rotary_base=500_000.0,
            llama31_rope_scaling=True,
        ),
        bench=Benchmark(gpus=2304, global_batch_size=1152, seq_length=8192, max_steps=1_200_000, source="seed 004"),
        parallel=Parallelism(tp=8, pp=9, cp=4, vp=7, sequence_parallel=True, grad_reduce_in_fp32=True),
        optim=Optimizer(lr=8e-5, min_lr=8e-7, warmup_steps=8000),
        tokenizer=MIXTRAL_V1,
        val_interval=16,
        val_batches=5,
        # C4 en 3.0.1 consolidated into 8 files; the benchmark trains on files 6 and 7 (the last 256 shards).
        data={"source": "c4", "train_outputs": 8, "train_shards": [6, 7], "n_validation_samples": 91205},
        mlperf="llama31_405b",
    ),
    ModelProfile(
        name="llama31_8b_mlperf",
        aliases=("mlperf_8b",),
        description="Llama 3.1 8B under the MLPerf Training small-LLM pretraining rules (mlcommons/training "
        "small_llm_pretraining/nemo): random init, TP4 on 8 GPUs, GBS 32, Llama 3.1 tokenizer, target 3.3.",
        recipe="llama31_8b",
        # the reference swaps Llama31Config8B (seq 8192) into NeMo's llama3_8b recipe; NeMo's llama31_8b builds it
        arch=_LLAMA3_8B.model_copy(update=dict(llama31_rope_scaling=True)),
        # config_H100_1x8x4_8b.sh of the reference folder: 1 node of 8 H100s, GBS 32, MBS 1, TENSOR_PARALLEL_SIZE 4
        # (its pretrain_llama31.py sets PP = VP = CP = 1); the LR horizon (1,200,000 steps) is the rules' max_steps
        bench=Benchmark(
            gpus=8, global_batch_size=32, seq_length=8192, max_steps=1_200_000, source="MLPerf small LLM pretraining"
        ),
        parallel=Parallelism(tp=4, sequence_parallel=True),
        # the reference's tokenizer is meta-llama/Llama-3.1-8B's; built here from llama-models' tokenizer.model
        tokenizer=Tokenizer(library="huggingface", model="llama-models:llama3.1", vocab_size=128256),
        # pretrain_llama31.py (get_data): trains on merged file 6 only (weight 10), validates on the same
        # 91,205-document file as 405B
        data={"source": "c4", "train_outputs": 8, "train_shards": [6], "n_validation_samples": 91205},
        mlperf="llama31_8b",
    ),
    ModelProfile(
        name="qwen3_8b",
        description="Qwen3 8B on 8 GPUs: TP4 (the recipe's layout), sequence 8192.",
        recipe="qwen3_8b",
        arch=Architecture(
            family="qwen3",
            num_layers=36,
            hidden_size=4096,
            ffn_hidden_size=12288,
            num_attention_heads=32,
            num_query_groups=8,
            kv_channels=128,
            vocab_size=151936,
            rotary_base=1e6,
            norm_eps=1e-6,
            qk_layernorm=True,
        ),
        bench=Benchmark(gpus=8, global_batch_size=128, seq_length=8192, max_steps=1000, source=_SEED_001),
        parallel=Parallelism(tp=4, sequence_parallel=True),
        optim=_QWEN_OPTIM,
        tokenizer=Tokenizer(library="huggingface", model="Qwen/Qwen3-8B", vocab_size=151669),
    ),
    ModelProfile(
        name="qwen25_7b",
        description="Qwen2.5 7B on 8 GPUs: TP2 (the recipe's layout), sequence 8192.",
        recipe="qwen25_7b",
        arch=Architecture(
            family="qwen2",
            num_layers=28,
            hidden_size=3584,
            ffn_hidden_size=18944,
            num_attention_heads=28,
            num_query_groups=4,
            vocab_size=152064,
            rotary_base=1e6,
            norm_eps=1e-6,
            qkv_bias=True,
        ),
        bench=Benchmark(gpus=8, global_batch_size=128, seq_length=8192, max_steps=1000, source=_SEED_001),
        parallel=Parallelism(tp=2, sequence_parallel=True),
        optim=_QWEN_OPTIM,
        tokenizer=Tokenizer(library="huggingface", model="Qwen/Qwen2.5-7B", vocab_size=151665),
    ),
    ModelProfile(
        name="qwen3_30b_a3b",
        description="Qwen3 30B-A3B MoE (128 experts, top-8) on 8 GPUs: TP4 PP2 EP4, full recompute.",
        recipe="qwen3_30b_a3b",
        arch=Architecture(
            family="qwen3",
            num_layers=48,
            hidden_size=2048,
            ffn_hidden_size=6144,
            num_attention_heads=32,
            num_query_groups=4,
            kv_channels=128,
            vocab_size=151936,
            rotary_base=1e6,
            norm_eps=1e-6,
            qk_layernorm=True,
            num_experts=128,
            moe_top_k=8,
            moe_ffn_hidden_size=768,
        ),
        bench=Benchmark(gpus=8, global_batch_size=32, seq_length=4096, max_steps=1000, source=_SEED_001),
        parallel=Parallelism(tp=4, pp=2, ep=4, sequence_parallel=True, recompute="full", recompute_num_layers=1),
        optim=_QWEN_OPTIM,
        tokenizer=Tokenizer(library="huggingface", model="Qwen/Qwen3-30B-A3B", vocab_size=151669),
    ),
    ModelProfile(
        name="qwen2_72b",
        description="Qwen2 72B on 32 GPUs: TP8 PP4 (DP 1).",
        recipe="qwen2_72b",
        arch=Architecture(
            family="qwen2",
            num_layers=80,
            hidden_size=8192,
            ffn_hidden_size=29568,
            num_attention_heads=64,
            num_query_groups=8,
            vocab_size=152064,
            rotary_base=1e6,
            norm_eps=1e-5,
            qkv_bias=True,
        ),
        bench=Benchmark(gpus=32, global_batch_size=64, seq_length=8192, max_steps=1000, source=_SEED_001),
        parallel=Parallelism(tp=8, pp=4, sequence_parallel=True),
        optim=_QWEN_OPTIM,
        tokenizer=Tokenizer(library="huggingface", model="Qwen/Qwen2-72B", vocab_size=151646),
    ),
)
MODELS = MODELS + (
    MODELS[-1].model_copy(
        update=dict(
            name="qwen25_72b",
            recipe="qwen25_72b",
            description="Qwen2.5 72B on 32 GPUs: TP8 PP4 (DP 1).",
            tokenizer=Tokenizer(library="huggingface", model="Qwen/Qwen2.5-72B", vocab_size=151665),
        )
    ),
)


def model_names() -> list[str]:
    return [m.name for m in MODELS]


def get_model(name: str) -> ModelProfile:
    """Look a model up by name or alias (``405b`` as MLPerf's SIZE says it)."""
    key = name.strip().lower()
    for model in MODELS:
        if key == model.name or key in model.aliases:
            return model
    known = ", ".join(f"{m.name}" + (f" ({'/'.join(m.aliases)})" if m.aliases else "") for m in MODELS)
    raise KeyError(f"unknown model profile {name!r}; choose one of: {known}")


# ------------------------------------------------------------------------------------------- cluster profiles


class Container(Strict):
    """How a job's steps run: on the node, or in a container (pyxis/enroot on GPU sites; bubblewrap in the Slurm lab).

    Every path a step needs is mounted at its own path (orchestrator/container.py); ``mounts`` are a site's extras
    (``SRC[:DST[:ro]]``), tried first. ``workdir`` defaults to the run directory."""

    runtime: Literal["none", "pyxis", "bubblewrap"] = "none"
    image: str | None = Field(
        None, description="pyxis: an image URI or squashfs file; bubblewrap: a folder with rootfs/"
    )
    mounts: tuple[str, ...] = ()
    workdir: str | None = None
    extra_srun_args: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _image_for_runtime(self) -> Container:
        if self.runtime != "none" and not self.image:
            raise ValueError(
                f"container.runtime is {self.runtime!r} but container.image is empty; set the image (IMAGE=)"
            )
        return self


class ClusterProfile(Strict):
    name: Identifier
    description: str = ""
    scheduler: Literal["slurm", "local"]
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    reservation: str | None = None
    gpus_per_node: int = Field(0, ge=0, description="0 for CPU-only nodes (the reference backend runs there)")
    cpu_tasks_per_node: int = Field(1, ge=1, description="training tasks per node when gpus_per_node is 0")
    cpus_per_task: int | None = Field(None, ge=1)
    gpu_name: str | None = None
    gpu_memory_gb: float | None = Field(None, gt=0)
    gpu_peak_tflops: float | None = Field(None, gt=0, description="dense BF16 peak, for MFU")
    memory_per_task_gb: float | None = Field(None, gt=0, description="host memory a CPU task may use")
    max_nodes: int | None = Field(None, ge=1)
    time_limit: str = "04:00:00"
    signal_grace_s: int = Field(300, ge=10, description="USR2 this long before the time limit: save and exit")
    exclusive: bool = False
    mem: str | None = None
    container: Container = Container()
    python: str | None = Field(
        None, description="interpreter of the driver on the batch host; None: the submitting one"
    )
    venv: str | None = None
    modules: tuple[str, ...] = ()
    env: dict[str, str] = {}
    runs_root: str = "runs"
    data_root: str = Field("data", description="shared data folder: C4 shards, merged files, tokenized datasets")
    master_port_base: int = Field(29500, ge=1024, le=60000)

    @field_validator("time_limit")
    @classmethod
    def _time_limit(cls, value: str) -> str:
        parse_time_limit(value)
        return value

    @property
    def tasks_per_node(self) -> int:
        return self.gpus_per_node or self.cpu_tasks_per_node

    @property
    def time_limit_minutes(self) -> int:
        return parse_time_limit(self.time_limit)


def parse_time_limit(value: str | int) -> int:
    """Slurm's time formats (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) to whole minutes, rounded up."""
    text = str(value).strip()
    try:
        days = 0
        if "-" in text:
            day_text, text = text.split("-", 1)
            days = int(day_text)
            parts = [int(p) for p in text.split(":")] + [0, 0]
            hours, minutes, seconds = parts[0], parts[1], parts[2]
        else:
            parts = [int(p) for p in text.split(":")]
            if len(parts) == 1:
                hours, minutes, seconds = 0, parts[0], 0
            elif len(parts) == 2:
                hours, minutes, seconds = 0, parts[0], parts[1]
            elif len(parts) == 3:
                hours, minutes, seconds = parts
            else:
                raise ValueError
    except ValueError:
        raise ValueError(f"time limit {value!r} is not a Slurm time (MM, HH:MM:SS or D-HH:MM:SS)") from None
    total = days * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)
    if total < 1:
        raise ValueError(f"time limit {value!r} is under one minute, Slurm's smallest limit")
    return total


def format_time_limit(minutes: int) -> str:
    return f"{minutes // 1440}-{minutes % 1440 // 60:02d}:{minutes % 60:02d}:00"


def profiles_dir() -> Path:
    """``cluster_profiles/`` of a source checkout, or the copy inside an installed wheel."""
    packaged = Path(__file__).parent / "_cluster_profiles"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "cluster_profiles"


def cluster_names() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def load_cluster(name_or_path: str | os.PathLike[str]) -> ClusterProfile:
    """A shipped profile by name, or a user's YAML file by path."""
    text = os.fspath(name_or_path)
    path = Path(text)
    if not (path.suffix in (".yaml", ".yml") or os.sep in text):
        path = profiles_dir() / f"{text}.yaml"
        if not path.is_file():
            raise KeyError(f"unknown cluster profile {text!r}; shipped: {', '.join(cluster_names())}, or give a path")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read cluster profile: {exc}") from None
    data.setdefault("name", path.stem)
    try:
        return ClusterProfile.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{path}: invalid cluster profile:\n{_explain(exc)}") from None


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)
