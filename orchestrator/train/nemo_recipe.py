"""The run plan applied to NeMo's own pretraining recipe: one pure function, buildable on a CPU.

``build_recipe(plan)`` starts from ``nemo.collections.llm.recipes.<plan.model.recipe>.pretrain_recipe`` and sets
only what the plan decides: the cluster shape, Megatron's parallel layout, batch sizes, sequence length (model and
data), steps, validation, per-step logging, the optimizer's numbers, recompute, gradient-reduce precision, the data
(Megatron prefixes and the tokenizer), checkpointing, resume, and the stop control. Everything else (model class and
architecture defaults, DDP overlap, async checkpoint saving, mixed precision, the LR schedule's shape) stays as
NeMo's recipe has it. Llama 3.1 405B also gets the MLPerf reference's settings (see :func:`_mlperf_405b`); an MLPerf
plan (any model) evaluates on the rules' schedule and gets :class:`~orchestrator.train.nemo_mlperf.MlperfControl`.

Nothing here instantiates a model, a trainer or a Transformer Engine module, so tests build and inspect every seed
model's recipe on a CPU; ``fdl.build`` of the result happens only inside the training job.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import fiddle as fdl
import fiddle._src.experimental.dataclasses as fdl_dc
import nemo_run as run
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from megatron.core.distributed import DistributedDataParallelConfig
from nemo import lightning as nl
from nemo.collections import llm
from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer
from nemo.collections.common.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer
from nemo.collections.llm.recipes.tp_overlap_configs import userbuffers
from nemo.lightning.pytorch.callbacks.megatron_comm_overlap import MegatronCommOverlapCallback
from nemo.lightning.pytorch.optim import CosineAnnealingScheduler
from nemo.lightning.run.plugins import PerfEnvPlugin
from nemo.utils.exp_manager import TimingCallback

from orchestrator.mlperf.hyperparameters import run_hyperparameters
from orchestrator.mlperf.schedule import Schedule
from orchestrator.plan import RunPlan, check_trainer
from orchestrator.profiles import Architecture
from orchestrator.train import stopping
from orchestrator.train.nemo_checkpoint import init_checkpoint, latest_step
from orchestrator.train.nemo_data import ReferenceOrderGPTDataset
from orchestrator.train.nemo_mlperf import MlperfControl
from orchestrator.train.nemo_stop import StopControl

#: Plan architecture field -> attribute of NeMo's model config (``Llama31Config8B``, ``Qwen3Config8B``, ...).
ARCH_FIELDS = {
    "num_layers": "num_layers",
    "hidden_size": "hidden_size",
    "ffn_hidden_size": "ffn_hidden_size",
    "num_attention_heads": "num_attention_heads",
    "num_query_groups": "num_query_groups",
    "kv_channels": "kv_channels",
    "rotary_base": "rotary_base",
    "norm_eps": "layernorm_epsilon",
    "qk_layernorm": "qk_layernorm",
    "qkv_bias": "add_qkv_bias",
    "tie_embeddings": "share_embeddings_and_output_weights",
}
MOE_FIELDS = {
    "num_experts": "num_moe_experts",
    "moe_top_k": "moe_router_topk",
    "moe_ffn_hidden_size": "moe_ffn_hidden_size",
}


def recipe_module(plan: RunPlan) -> Any:
    """``nemo.collections.llm.recipes.<name>``, the module behind ``llm.<name>.pretrain_recipe``."""
    if not plan.model.recipe:
        raise ValueError(f"model {plan.model.name!r} has no NeMo recipe; use --set train.backend=reference")
    return importlib.import_module(f"nemo.collections.llm.recipes.{plan.model.recipe}")


def build_recipe(plan: RunPlan, *, deadline: float | None = None) -> run.Partial:
    """NeMo's ``pretrain_recipe`` for the plan's model with the plan applied; ``deadline``: ``ORCHESTRATOR_DEADLINE``."""
    check_trainer(plan)  # asked at plan time too; again here for a plan.json edited since
    recipe = recipe_module(plan).pretrain_recipe(
        dir=str(Path(plan.run_dir) / "nemo"),
        name="train",
        num_nodes=plan.layout.nodes,
        num_gpus_per_node=plan.layout.tasks_per_node,
    )
    if plan.model.recipe == "llama31_405b":
        _mlperf_405b(recipe, plan)
    _apply_layout(recipe, plan)
    _configure_model(recipe.model, plan)
    _apply_trainer(recipe, plan)
    _apply_optimizer(recipe, plan)
    recipe.data = data_config(plan)
    _apply_checkpointing(recipe, plan)
    recipe.resume = resume_config(plan)
    _apply_callbacks(recipe, plan, deadline)
    return recipe


# --------------------------------------------------------------------------------------------------- pieces


def _apply_layout(recipe: run.Partial, plan: RunPlan) -> None:
    L, strategy = plan.layout, recipe.trainer.strategy
    recipe.trainer.num_nodes = L.nodes
    recipe.trainer.devices = L.tasks_per_node
    strategy.tensor_model_parallel_size = L.tp
    strategy.pipeline_model_parallel_size = L.pp
    strategy.virtual_pipeline_model_parallel_size = L.vp if L.pp > 1 else None  # NeMo drops VP at PP=1 anyway
    strategy.context_parallel_size = L.cp
    strategy.sequence_parallel = L.sequence_parallel and L.tp > 1  # NeMo drops SP at TP=1 anyway
    strategy.pipeline_dtype = torch.bfloat16 if L.pp > 1 else None  # llm.pretrain asserts it is set when PP > 1
    if plan.model.arch.is_moe or L.ep > 1:
        strategy.expert_model_parallel_size = L.ep
        strategy.expert_tensor_parallel_size = L.etp
    _fit_pipeline_split(recipe, plan)
    config = recipe.model.config
    if L.recompute == "none":
        config.recompute_granularity = config.recompute_method = config.recompute_num_layers = None
    elif L.recompute == "selective":
        config.recompute_granularity, config.recompute_method, config.recompute_num_layers = "selective", None, None
    else:
        config.recompute_granularity = "full"
        config.recompute_method = config.recompute_method or "uniform"
        config.recompute_num_layers = L.recompute_num_layers or 1
    _precision(recipe).grad_reduce_in_fp32 = L.grad_reduce_in_fp32  # the precision plugin overrides DDP's value
    if isinstance(strategy.ddp, fdl.Buildable):
        strategy.ddp.grad_reduce_in_fp32 = L.grad_reduce_in_fp32


def _fit_pipeline_split(recipe: run.Partial, plan: RunPlan) -> None:
    """Keep the recipe's "embedding and loss count as layers" split only where the layout still divides.

    The 405B recipe sets both ``account_for_*_in_pipeline_split`` flags (126 + 2 = 128 layers for PP8 x VP2). The
    MLPerf layout PP9 x VP7 splits the 126 transformer layers evenly but not 128, and Megatron then refuses to
    start; the MLPerf reference (NeMo 24.12) predates these flags and splits plain layers.
    """
    strategy, L = recipe.trainer.strategy, plan.layout
    extra = int(bool(strategy.account_for_embedding_in_pipeline_split)) + int(
        bool(strategy.account_for_loss_in_pipeline_split)
    )
    if extra and (plan.model.arch.num_layers + extra) % (L.pp * (L.vp or 1)):
        strategy.account_for_embedding_in_pipeline_split = False
        strategy.account_for_loss_in_pipeline_split = False


def model_config(plan: RunPlan) -> run.Config:
    """The recipe's model (``LlamaModel(Llama31Config8B)``, ``Qwen3Model(...)``) with the plan's shape and sequence."""
    return _configure_model(recipe_module(plan).model(), plan)


def _configure_model(model: run.Config, plan: RunPlan) -> run.Config:
    _apply_architecture(model.config, plan.model.arch, plan.model.tokenizer.vocab_size)
    model.config.seq_length = plan.train.seq_length  # the model's own copy (CP checks, FLOPs); the data has the other
    return model


def _apply_architecture(config: fdl.Config, arch: Architecture, tokenizer_vocab: int) -> None:
    """Set the plan's shape where it differs from NeMo's config class (the profiles mirror NeMo, so by default none).

    MoE fields apply to MoE models only. Llama configs leave the vocabulary to the tokenizer's, which NeMo pads to a
    multiple of 128 x TP, as Megatron does; a plan whose vocabulary differs from its tokenizer's sets it, so that the
    model trained, and the FLOPs counted for MFU, are the plan's (seen on an H100: a plan at 128256 over a
    32000-token tokenizer trained a 32000 model while the collector counted 128256).
    """
    fields = dict(ARCH_FIELDS, **(MOE_FIELDS if arch.is_moe else {}))
    if getattr(config, "vocab_size", None) is not None or arch.vocab_size != tokenizer_vocab:
        fields["vocab_size"] = "vocab_size"
    for ours, theirs in fields.items():
        value = getattr(arch, ours)
        if getattr(config, theirs) != value:
            setattr(config, theirs, value)


def _apply_trainer(recipe: run.Partial, plan: RunPlan) -> None:
    trainer, train = recipe.trainer, plan.train
    trainer.max_steps = train.max_steps
    trainer.log_every_n_steps = 1
    trainer.strategy.progress_interval = 1
    trainer.num_sanity_val_steps = 0
    schedule = plan.mlperf_schedule()
    if schedule is not None:
        # the cadence; MlperfControl's loop holds back the evaluations before first_eval_step. Lightning refuses an
        # interval longer than the epoch (max_steps batches), so a run shorter than one interval takes max_steps:
        # the scheduled loop evaluates by the rules either way
        trainer.val_check_interval = min(schedule.eval_interval_steps, train.max_steps)
        trainer.limit_val_batches = schedule.eval_batches
    elif train.val_interval and train.val_batches:
        trainer.val_check_interval = train.val_interval
        trainer.limit_val_batches = train.val_batches
    else:  # as NeMo's performance scripts switch validation off
        trainer.val_check_interval = train.max_steps
        trainer.limit_val_batches = 0
    plugins = [_precision(recipe)]
    if plan.cluster.scheduler == "slurm":  # ranks from SLURM_*, and no Lightning requeue on SIGUSR1
        plugins.append(run.Config(SLURMEnvironment, auto_requeue=False))
    trainer.plugins = plugins


def _precision(recipe: run.Partial) -> fdl.Config:
    """The recipe's ``MegatronMixedPrecision`` plugin (the recipes pass it alone; after us it is first in a list)."""
    plugins = recipe.trainer.plugins if isinstance(recipe.trainer.plugins, list) else [recipe.trainer.plugins]
    return next(p for p in plugins if fdl.get_callable(p) is nl.MegatronMixedPrecision)


class HorizonCosineAnnealingScheduler(CosineAnnealingScheduler):
    """NeMo's cosine schedule that ends at a horizon of its own instead of at ``trainer.max_steps``.

    ``MegatronStrategy.setup`` copies ``trainer.max_steps`` into every scheduler before building it. An MLPerf run's
    horizon is fixed by the rules (``ceil(1.2e6*1152/GBS)`` steps) while ``max_steps`` only caps the run, and Megatron
    sizes its sample index by ``max_steps``: a cap far below the horizon keeps the index small (1.38e9 samples at the
    horizon) without changing a single learning rate.
    """

    def __init__(
        self,
        horizon_steps: int,
        warmup_steps: int = 750,
        constant_steps: int = 80000,
        min_lr: float = 6e-5,
        interval: str = "step",
        frequency: int = 1,
        monitor: str = "val_loss",
    ):
        super().__init__(
            max_steps=horizon_steps,
            warmup_steps=warmup_steps,
            constant_steps=constant_steps,
            min_lr=min_lr,
            interval=interval,
            frequency=frequency,
            monitor=monitor,
        )
        self.horizon_steps = horizon_steps

    def scheduler(self, model: Any, optimizer: Any) -> Any:
        self.max_steps = self.horizon_steps
        return super().scheduler(model, optimizer)


def _apply_optimizer(recipe: run.Partial, plan: RunPlan) -> None:
    o = plan.train.optim
    if o.horizon_steps is not None:
        recipe.optim.lr_scheduler = run.Config(
            HorizonCosineAnnealingScheduler,
            horizon_steps=o.horizon_steps,
            **{k: v for k, v in fdl.ordered_arguments(recipe.optim.lr_scheduler).items() if k != "max_steps"},
        )
    opt, sched = recipe.optim.config, recipe.optim.lr_scheduler
    opt.lr = o.lr
    opt.weight_decay = o.weight_decay
    opt.adam_beta1 = o.beta1
    opt.adam_beta2 = o.beta2
    opt.adam_eps = o.eps
    opt.clip_grad = o.clip_grad
    opt.use_distributed_optimizer = plan.layout.distributed_optimizer
    sched.warmup_steps = o.warmup_steps
    sched.min_lr = o.min_lr


def data_config(plan: RunPlan) -> run.Config:
    """``PreTrainingDataModule`` over the plan's prefixes: weighted train blend, then separate validation or a split.
    An MLPerf plan reads validation as the reference does, in file order (:class:`ReferenceOrderGPTDataset`)."""
    d, train = plan.data, plan.train
    blend: list[Any] = []
    for weight, prefix in zip(d.train_weights, d.train_prefixes, strict=True):
        blend += [weight, prefix]
    paths: list[Any] | dict[str, list[Any]] = blend
    split: str | None = d.split
    if d.validation_prefixes:
        paths = {"train": blend, "validation": list(d.validation_prefixes), "test": list(d.validation_prefixes)}
        split = None
    extra = {"dataset_cls": ReferenceOrderGPTDataset} if plan.mlperf is not None else {}
    return run.Config(
        llm.PreTrainingDataModule,
        paths=paths,
        split=split,
        **extra,
        seq_length=train.seq_length,
        global_batch_size=train.global_batch_size,
        micro_batch_size=plan.layout.micro_batch_size,
        seed=train.seed,
        index_mapping_dir=d.index_cache_dir,
        tokenizer=tokenizer_config(plan),
    )


def tokenizer_config(plan: RunPlan) -> run.Config:
    """NeMo's ``AutoTokenizer`` for Hugging Face tokenizers (a local folder, or a hub id in the HF cache: the cluster
    runs offline), NeMo's ``SentencePieceTokenizer`` for a sentencepiece model (``mistral-common:<file>`` is the file
    the mistral-common package ships, as the preprocess stage reads it: the Mixtral-8x22B tokenizer of the MLPerf
    405B benchmark, vocabulary 32000)."""
    if plan.model.tokenizer.library == "huggingface":
        return run.Config(AutoTokenizer, pretrained_model_name=plan.tokenizer_path)
    return run.Config(SentencePieceTokenizer, model_path=plan.tokenizer_path)


def _apply_checkpointing(recipe: run.Partial, plan: RunPlan) -> None:
    """Only ``*last`` checkpoints, in the plan's directory, every ``ckpt_interval`` steps and at every stop.

    ``save_top_k=0``: the recipe keeps the 10 best by ``val_loss`` besides ``*last``, which doubles every save
    (5 TB per 405B checkpoint); resume and progress read only ``*last``. No time-based saves: they are not
    deterministic and Lightning forbids them together with ``every_n_train_steps``. ``save_on_train_epoch_end``
    (as the MLPerf reference sets it): otherwise Lightning also saves ``*last`` after every validation, every 16
    steps on the 405B profile.
    """
    ckpt = recipe.log.ckpt
    ckpt.dirpath = plan.train.ckpt_dir
    if not plan.train.save_checkpoints:
        # a callback that saves nothing: NeMo's AutoResume needs one to restore a checkpoint (its setup sets
        # ``last_model_path`` on it), and StopControl saves only through a callback that keeps ``*last``
        ckpt.every_n_train_steps = None
        ckpt.train_time_interval = None
        ckpt.save_last = False
        ckpt.save_top_k = 0
        ckpt.save_on_train_epoch_end = False
        ckpt.always_save_context = False
        ckpt.save_context_on_train_end = False
        ckpt.save_optim_on_train_end = False
        return
    ckpt.every_n_train_steps = plan.train.ckpt_interval
    ckpt.train_time_interval = None
    ckpt.save_last = True
    ckpt.save_top_k = 0
    ckpt.save_optim_on_train_end = True
    ckpt.save_on_train_epoch_end = True


def resume_config(plan: RunPlan) -> run.Config:
    """Resume from the newest finished ``*last`` in the run's checkpoint directory; else start from ``init_from``.

    ``resume_ignore_no_checkpoint`` lets the first job start; NeMo still refuses to start when checkpoints exist but
    all are unfinished. A checkpoint of this run always wins over ``init_from``. Without one, ``init_mode=weights``
    (config.sh's FROM_HF=1) restores the weights only (``RestoreConfig``: a fresh optimizer, step 0), and
    ``init_mode=full`` (FROM_HF=0) resumes that checkpoint as NeMo resumes its own (``resume_from_path``: weights,
    optimizer, step, LR schedule, data position). Built at each job's start, so only the chain's first job takes
    ``init_from``. ``load_artifacts=False``: the tokenizer comes from the plan, not from the checkpoint's context.
    """
    restore, path = None, None
    start = init_checkpoint(plan)
    if start and latest_step(plan.train.ckpt_dir) is None:
        if plan.train.init_mode == "full":
            path = start
        else:
            restore = run.Config(
                nl.RestoreConfig, path=start, load_model_state=True, load_optim_state=False, load_artifacts=False
            )
    return run.Config(
        nl.AutoResume,
        resume_if_exists=True,
        resume_ignore_no_checkpoint=True,
        resume_from_directory=plan.train.ckpt_dir,
        resume_from_path=path,
        restore_config=restore,
    )


def start_step(plan: RunPlan) -> int:
    """Where this job of the run must start: the run's own newest checkpoint, else a full resume's step, else 0."""
    own = latest_step(plan.train.ckpt_dir)
    if own is not None:
        return own
    return plan.train.init_step if plan.train.init_mode == "full" and init_checkpoint(plan) else 0


def _apply_callbacks(recipe: run.Partial, plan: RunPlan, deadline: float | None) -> None:
    """``TimingCallback(log_tokens_per_sec=True)`` first (the seeds' ``tokens_per_sec_per_gpu``; MLPerf's step-time
    limit reads its metric), then the recipe's, MLPerf control (MLPerf plans), stop control last (so ``run_stop`` is
    logged before the final checkpoint is saved)."""
    callbacks = [c for c in (recipe.trainer.callbacks or []) if fdl.get_callable(c) is not TimingCallback]
    schedule = schedule_config(plan)
    mlperf = []
    if plan.mlperf is not None:
        mlperf.append(
            run.Config(
                MlperfControl,
                schedule=schedule,
                hyperparameters=run_hyperparameters(plan, start_step=0),
                step_time_atol_s=plan.mlperf.step_time_atol_s,
            )
        )
    recipe.trainer.callbacks = [
        run.Config(TimingCallback, log_tokens_per_sec=True),
        *callbacks,
        *mlperf,
        run.Config(
            StopControl,
            steps_per_job=plan.chain.steps_per_job,
            deadline=deadline,
            save_estimate_s=save_estimate_s(plan),
            eval_schedule=schedule,
            start_step=start_step(plan),
        ),
    ]


def schedule_config(plan: RunPlan) -> run.Config | None:
    """``plan.mlperf_schedule()`` as a buildable config (one object, shared by the two callbacks), or None."""
    schedule = plan.mlperf_schedule()
    if schedule is None:
        return None
    return run.Config(Schedule, **{f.name: getattr(schedule, f.name) for f in dataclasses.fields(schedule) if f.init})


def save_estimate_s(plan: RunPlan) -> float:
    """One checkpoint save before this job has timed one: each rank's weights and optimizer state (the plan's memory
    estimate), at the rate :mod:`~orchestrator.train.stopping` assumes."""
    estimate = plan.memory_estimate()
    return stopping.save_estimate_s(estimate.weights + estimate.optimizer)


def _mlperf_405b(recipe: run.Partial, plan: RunPlan) -> None:
    """What the MLPerf Llama 3.1 405B reference (``pretrain_llama31.py``) changes in NeMo's 405B recipe.

    Its DDP config (no ``average_in_collective``), no TensorBoard, and TP communication overlap with the H100
    user-buffer layout (NeMo's perf scripts use the B200 one on Blackwell). The overlap needs Transformer Engine,
    TP > 1 and sequence parallelism; it stays a config here and is instantiated only in the training container.
    VP 7 and the learning-rate numbers come from the plan (the 405B profile carries them).
    """
    recipe.trainer.strategy.ddp = run.Config(
        DistributedDataParallelConfig,
        check_for_nan_in_grad=True,
        grad_reduce_in_fp32=plan.layout.grad_reduce_in_fp32,
        overlap_grad_reduce=True,
        overlap_param_gather=True,
    )
    recipe.log.tensorboard = None
    if plan.layout.tp > 1 and plan.layout.sequence_parallel:
        recipe.trainer.callbacks.append(
            run.Config(
                MegatronCommOverlapCallback,
                tp_comm_overlap=True,
                tp_comm_overlap_cfg=_userbuffers_405b(plan),
                defer_embedding_wgrad_compute=True,
                wgrad_deferral_limit=50,
                overlap_param_gather_with_optimizer_step=False,
                align_param_gather=True,
            )
        )


def _userbuffers_405b(plan: RunPlan) -> fdl.Config:
    layout = (
        userbuffers.userbuffers_bf16_b200_h16384_tp4_cp2_mbs1_seqlen8192
        if _is_blackwell(plan)
        else userbuffers.userbuffers_bf16_h100_h16384_tp8_cp2_mbs1_seqlen8192
    )
    # a copy as a fiddle config: the module-level dataclass stays untouched and the recipe stays serialisable
    return fdl.cast(run.Config, fdl_dc.convert_dataclasses_to_configs(layout))


def _is_blackwell(plan: RunPlan) -> bool:
    name = (plan.cluster.gpu_name or "").upper()
    return any(tag in name for tag in ("B200", "B300", "GB200", "GB300"))


# --------------------------------------------------------------------------------------- environment, summary


def perf_env(plan: RunPlan, recipe: run.Partial) -> dict[str, str]:
    """The environment NeMo's ``PerfEnvPlugin`` gives a run (as the MLPerf reference and the perf scripts use it):
    ``CUDA_DEVICE_MAX_CONNECTIONS`` for TP/CP overlap, LayerNorm SM margins, the P2P chunk size with PP, NCCL
    priority. Without NeMo-Run's executor the trainer applies these itself before CUDA starts."""
    executor = run.LocalExecutor()
    plugin = PerfEnvPlugin(
        enable_vboost=False,
        nccl_pp_comm_chunksize=2097152 if plan.layout.pp > 1 else None,
        gpu_sm100_or_newer=_is_blackwell(plan),
    )
    plugin.setup(recipe, executor)
    return dict(executor.env_vars)


def summarize(recipe: run.Partial) -> dict[str, Any]:
    """The numbers that matter in a configured recipe, JSON-able: for tests, ``plan`` previews and run records."""
    trainer, strategy, model = recipe.trainer, recipe.trainer.strategy, recipe.model.config
    data, optim, log, resume = recipe.data, recipe.optim, recipe.log, recipe.resume
    plugins = trainer.plugins if isinstance(trainer.plugins, list) else [trainer.plugins]
    precision = _precision(recipe)
    ddp = strategy.ddp
    ckpt = log.ckpt
    restore = resume.restore_config
    callbacks = [fdl.get_callable(c).__name__ for c in trainer.callbacks]
    timing = next(c for c in trainer.callbacks if fdl.get_callable(c) is TimingCallback)
    stop = next(c for c in trainer.callbacks if fdl.get_callable(c) is StopControl)
    mlperf = next((c for c in trainer.callbacks if fdl.get_callable(c) is MlperfControl), None)
    return {
        "entry": fdl.get_callable(recipe).__name__,
        "model": {
            "class": fdl.get_callable(recipe.model).__name__,
            "config": fdl.get_callable(model).__name__,
            **{name: getattr(model, name) for name in (*ARCH_FIELDS.values(), "seq_length")},
            **({name: getattr(model, name) for name in MOE_FIELDS.values()} if model.num_moe_experts else {}),
            "vocab_size": getattr(model, "vocab_size", None),
            "recompute": [model.recompute_granularity, model.recompute_method, model.recompute_num_layers],
        },
        "trainer": {
            "num_nodes": trainer.num_nodes,
            "devices": trainer.devices,
            "max_steps": trainer.max_steps,
            "val_check_interval": trainer.val_check_interval,
            "limit_val_batches": trainer.limit_val_batches,
            "log_every_n_steps": trainer.log_every_n_steps,
            "num_sanity_val_steps": trainer.num_sanity_val_steps,
            "precision": precision.precision,
            "grad_reduce_in_fp32": precision.grad_reduce_in_fp32,
            "plugins": [fdl.get_callable(p).__name__ for p in plugins],
            "slurm_auto_requeue": next(
                (p.auto_requeue for p in plugins if fdl.get_callable(p) is SLURMEnvironment), None
            ),
            "callbacks": callbacks,
            "log_tokens_per_sec": timing.log_tokens_per_sec,
            "steps_per_job": stop.steps_per_job,
            "deadline": stop.deadline,
            "save_estimate_s": stop.save_estimate_s,
        },
        "parallel": {
            "tp": strategy.tensor_model_parallel_size,
            "pp": strategy.pipeline_model_parallel_size,
            "vp": strategy.virtual_pipeline_model_parallel_size,
            "cp": strategy.context_parallel_size,
            "ep": strategy.expert_model_parallel_size,
            "etp": strategy.expert_tensor_parallel_size,
            "sequence_parallel": strategy.sequence_parallel,
            "pipeline_dtype": str(strategy.pipeline_dtype) if strategy.pipeline_dtype is not None else None,
            "account_for_embedding_in_pipeline_split": strategy.account_for_embedding_in_pipeline_split,
            "account_for_loss_in_pipeline_split": strategy.account_for_loss_in_pipeline_split,
            "progress_interval": strategy.progress_interval,
            "ckpt_async_save": strategy.ckpt_async_save,
            "ddp": ddp if isinstance(ddp, str) else {k: getattr(ddp, k) for k in fdl.ordered_arguments(ddp)},
            "tp_comm_overlap": any(
                fdl.get_callable(c) is MegatronCommOverlapCallback and c.tp_comm_overlap for c in trainer.callbacks
            ),
        },
        "optimizer": {
            "optimizer": optim.config.optimizer,
            "lr": optim.config.lr,
            "min_lr": optim.lr_scheduler.min_lr,
            "warmup_steps": optim.lr_scheduler.warmup_steps,
            "weight_decay": optim.config.weight_decay,
            "beta1": optim.config.adam_beta1,
            "beta2": optim.config.adam_beta2,
            "eps": optim.config.adam_eps,
            "clip_grad": optim.config.clip_grad,
            "distributed_optimizer": optim.config.use_distributed_optimizer,
            "schedule": fdl.get_callable(optim.lr_scheduler).__name__,
            "horizon_steps": getattr(optim.lr_scheduler, "horizon_steps", None),
        },
        "data": {
            "class": fdl.get_callable(data).__name__,
            "paths": data.paths,
            "split": data.split,
            "seq_length": data.seq_length,
            "global_batch_size": data.global_batch_size,
            "micro_batch_size": data.micro_batch_size,
            "seed": data.seed,
            "index_mapping_dir": data.index_mapping_dir,
            "tokenizer": {
                "class": fdl.get_callable(data.tokenizer).__name__,
                **{k: getattr(data.tokenizer, k) for k in fdl.ordered_arguments(data.tokenizer)},
            },
        },
        "checkpoint": None
        if ckpt is None
        else {
            "dir": ckpt.dirpath,
            "every_n_train_steps": ckpt.every_n_train_steps,
            "train_time_interval": ckpt.train_time_interval,
            "save_last": ckpt.save_last,
            "save_top_k": ckpt.save_top_k,
            "save_optim_on_train_end": ckpt.save_optim_on_train_end,
            "save_on_train_epoch_end": ckpt.save_on_train_epoch_end,
            "filename": ckpt.filename,
        },
        "log_dir": str(Path(log.log_dir) / log.name),
        "tensorboard": log.tensorboard is not None,
        "resume": {
            "resume_if_exists": resume.resume_if_exists,
            "resume_ignore_no_checkpoint": resume.resume_ignore_no_checkpoint,
            "directory": resume.resume_from_directory,
            "path": resume.resume_from_path,
            "restore": None
            if restore is None
            else {
                "path": restore.path,
                "load_model_state": restore.load_model_state,
                "load_optim_state": restore.load_optim_state,
                "load_artifacts": restore.load_artifacts,
            },
        },
        "mlperf": None if mlperf is None else _summarize_mlperf(mlperf),
    }


def _summarize_mlperf(mlperf: fdl.Config) -> dict[str, Any]:
    schedule: Schedule = fdl.build(mlperf.schedule)  # a pure dataclass: its derived steps, without a trainer
    return {
        "first_eval_step": schedule.first_eval_step,
        "eval_interval_steps": schedule.eval_interval_steps,
        "eval_batches": schedule.eval_batches,
        "target_log_ppl": schedule.target_log_ppl,
        "step_time_atol_s": mlperf.step_time_atol_s,
        "hyperparameters": dict(mlperf.hyperparameters),
    }
