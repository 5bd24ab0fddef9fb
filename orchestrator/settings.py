"""config.sh, read by pydantic-settings: MLPerf's Llama 3.1 405B reference variables, plus ours.

``source config.sh && bash run_llama31.sh`` and ``python -m orchestrator submit --from-env`` build the same plan
as ``python -m orchestrator submit --profile ... --set ...``: this module turns the environment into exactly
those arguments (:meth:`RunSettings.to_request`). An MLPerf ``config.sh`` works unchanged; empty values mean
"unset", as in the reference's ``${VAR:-default}``.

Read but not used: ``USER`` and ``HOST`` (the reference's SSH tunnel; we submit from the login node we run on),
``NEMO_DIR``/``NEMO_RUN_DIR`` (the container's NeMo is used as is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.mlperf.checkpoints import StartError, start_point
from orchestrator.plan import PlanError, Problem, RunPlan, build_plan, default_run_id, parse_assignment
from orchestrator.profiles import get_model

#: MLPerf SIZE -> our model profile. 8b is the MLPerf small-LLM benchmark (small_llm_pretraining/nemo; the seed 002
#: profile ``llama31_8b`` is picked with PROFILE); MLPerf's 70b uses Llama 3.1 70B, architecturally Llama 3 70B.
SIZES = {"8b": "llama31_8b_mlperf", "70b": "llama3_70b", "405b": "llama31_405b"}


class RunSettings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, extra="ignore")

    # --- MLPerf reference variables (large_language_model_pretraining/nemo/config.sh) ---
    USER: str | None = None
    HOST: str | None = None
    ACCOUNT: str | None = None
    PARTITION: str | None = None
    TIME: str | None = Field(None, description="Slurm time limit of each training job")
    NNODES: int | None = Field(None, ge=1)
    GPUS_PER_NODE: int | None = Field(None, ge=1)
    MAX_RETRIES: int = Field(3, ge=0, description="requeues of a failed job (config.sh says 3; we keep that)")
    JOB_DIR: str | None = Field(None, description="where run directories are created")
    IMAGE: str | None = Field(None, description="container image (pyxis/enroot)")
    PREPROCESSED_PATH: str | None = None
    TMP_NPY_INDEX: str | None = None
    TOKENIZER_PATH: str | None = None
    MODEL_CKPT: str | None = None
    CONTINUAL_CKPT: str | None = None
    USE_CKPT: int = 0
    FROM_HF: int = 1
    SAVE_CKPT: int = 1
    SIZE: str = "405b"
    GBS: int | None = Field(None, ge=1)
    MBS: int | None = Field(None, ge=1)
    MAX_STEPS: int | None = Field(None, ge=1, description="steps per training job (a partition)")
    START_EVAL_AT: int | None = Field(None, ge=0, description="samples before the first evaluation")
    EVAL_EVERY: int | None = Field(None, ge=1, description="samples between evaluations (unset: the rules')")
    START_STEPS: int = Field(0, ge=0, description="global step of the starting checkpoint")
    NEXP: int = Field(1, ge=1, description="independent runs (seeds)")
    NPAR: int = Field(1, ge=1, description="chained training jobs per run")
    SEEDS: str | None = Field(None, description="space-separated seeds, one per run")
    DEPENDENCIES: str | None = None
    TAG: str | None = None
    TARGET: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="target log-perplexity (unset: the rules')"
    )
    STEP_TIME_ATOL: int = Field(7200, ge=1, description="seconds a step may take before the job fails")
    # --- ours ---
    CLUSTER: str = Field("h100-pyxis", description="cluster profile name or YAML path")
    PROFILE: str | None = Field(None, description="model profile; overrides SIZE")
    RUN_ID: str | None = None
    SET: str | None = Field(None, description="extra plan overrides, space-separated KEY=VALUE")
    DRY_RUN: int = 0

    @field_validator("SIZE")
    @classmethod
    def _size(cls, value: str) -> str:
        if value.lower() not in SIZES:
            raise ValueError(f"use one of {', '.join(SIZES)}")
        return value.lower()

    @field_validator("SEEDS")
    @classmethod
    def _seeds(cls, value: str | None) -> str | None:
        if value is not None and not all(s.lstrip("-").isdigit() for s in value.split()):
            raise ValueError("expected whole numbers separated by spaces, e.g. SEEDS='1234 1235'")
        return value

    @classmethod
    def from_env(cls) -> RunSettings:
        """The environment's config.sh variables; a bad value is a :class:`PlanError` naming the variable, the
        value and a fix (not pydantic's text)."""
        try:
            return cls()
        except ValidationError as exc:
            problems = []
            for e in exc.errors():
                name = str(e["loc"][0]) if e["loc"] else "config.sh"
                field = cls.model_fields.get(name)
                default = f" (default {field.default})" if field and field.default is not None else ""
                problems.append(
                    Problem(
                        field=name,
                        message=f"{name}={e.get('input')!r}: {str(e['msg']).removeprefix('Value error, ')}",
                        fix=f"set {name} to such a value in config.sh, or unset it{default}",
                    )
                )
            raise PlanError(problems) from None

    def seeds(self) -> list[int]:
        """NEXP seeds: SEEDS first, then the model's default seed plus an offset (reproducible, unlike
        the reference's random fill-in)."""
        given = [int(s) for s in (self.SEEDS or "").split()]
        extra = [1234 + i for i in range(len(given), self.NEXP)]
        return (given + extra)[: self.NEXP]

    def to_request(self) -> RunRequest:
        """The CLI arguments this environment stands for."""
        o: dict[str, Any] = {}
        profile = self.PROFILE or SIZES[self.SIZE]
        if self.ACCOUNT:
            o["cluster.account"] = self.ACCOUNT
        if self.PARTITION:
            o["cluster.partition"] = self.PARTITION
        if self.IMAGE:
            o["cluster.container.runtime"] = "pyxis"
            o["cluster.container.image"] = self.IMAGE
        if self.GPUS_PER_NODE:
            o["cluster.gpus_per_node"] = self.GPUS_PER_NODE
            o["layout.tasks_per_node"] = self.GPUS_PER_NODE
        if self.NNODES:
            o["layout.nodes"] = self.NNODES
        if self.TIME:
            o["chain.time_limit"] = self.TIME
        o["chain.max_retries"] = self.MAX_RETRIES
        o["chain.jobs"] = self.NPAR
        if self.MAX_STEPS:
            o["chain.steps_per_job"] = self.MAX_STEPS
        if self.DEPENDENCIES:
            o["chain.dependencies"] = self.DEPENDENCIES.replace(",", " ").split()
        if self.GBS:
            o["train.global_batch_size"] = self.GBS
        if self.MBS:
            o["layout.micro_batch_size"] = self.MBS
        o["train.save_checkpoints"] = bool(self.SAVE_CKPT)
        try:
            start = start_point(
                use_ckpt=bool(self.USE_CKPT),
                from_hf=bool(self.FROM_HF),
                model_ckpt=self.MODEL_CKPT,
                start_steps=self.START_STEPS,
            )
        except StartError as exc:
            raise PlanError([Problem(field="config.sh", message=exc.message, fix=exc.fix)]) from None
        if start.path:
            o["train.init_from"] = start.path
            o["train.init_mode"] = start.mode
            o["train.init_step"] = start.step
        if self.TOKENIZER_PATH:
            o["model.tokenizer.library"] = "huggingface"
            o["model.tokenizer.model"] = self.TOKENIZER_PATH
        if self.PREPROCESSED_PATH:
            # the profile's files in it (405B: merged files 6 and 7, the last 256 of 1024 shards, and the validation cut)
            o["data.source"] = "preprocessed"
            o["data.preprocessed_path"] = self.PREPROCESSED_PATH
        if self.TMP_NPY_INDEX:
            o["data.index_cache_dir"] = self.TMP_NPY_INDEX
        # key by key, so the profile's mlperf.benchmark stays (unset ones are the benchmark's rules)
        o["mlperf.step_time_atol_s"] = self.STEP_TIME_ATOL
        o["mlperf.seeds"] = self.seeds()
        for key, value in (
            ("target_log_ppl", self.TARGET),
            ("eval_every_samples", self.EVAL_EVERY),
            ("start_eval_at_samples", self.START_EVAL_AT),
        ):
            if value is not None:
                o[f"mlperf.{key}"] = value
        for item in (self.SET or "").split():
            key, value = parse_assignment(item)
            o[key] = value
        runs_root = self.JOB_DIR
        ckpt_root = self.CONTINUAL_CKPT
        return RunRequest(
            profile=profile,
            cluster=self.CLUSTER,
            overrides=o,
            runs_root=runs_root,
            ckpt_root=ckpt_root,
            run_id=self.RUN_ID,
            tag=self.TAG,
            seeds=self.seeds(),
            dry_run=bool(self.DRY_RUN),
        )


@dataclass
class RunRequest:
    """What to build: one plan per seed (NEXP), sharing everything else."""

    profile: str
    cluster: str
    overrides: dict[str, Any] = field(default_factory=dict)
    runs_root: str | None = None
    ckpt_root: str | None = None
    run_id: str | None = None
    tag: str | None = None
    seeds: list[int] = field(default_factory=list)
    dry_run: bool = False

    def build(self, check: bool = True) -> list[RunPlan]:
        """One validated plan per seed; run ids get ``-seed<S>`` when there are several."""
        seeds: list[int | None] = list(self.seeds) or [None]
        base = self.run_id or default_run_id(get_model(self.profile).name)
        if self.tag:
            base = f"{base}-{self.tag}"
        plans = []
        for seed in seeds:
            run_id = base if len(seeds) == 1 else f"{base}-seed{seed}"
            overrides = dict(self.overrides)
            if seed is not None:
                overrides["train.seed"] = seed
            if self.ckpt_root:
                overrides["train.ckpt_dir"] = str(Path(self.ckpt_root) / run_id)
            run_dir = Path(self.runs_root) / run_id if self.runs_root else None
            plans.append(build_plan(self.profile, self.cluster, overrides, run_id=run_id, run_dir=run_dir, check=check))
        return plans
