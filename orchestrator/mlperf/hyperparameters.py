"""The hyper-parameters a Llama 3.1 405B run logs, with the keys and values the reference logs them with.

The reference (``pretrain_llama31.py``) logs these at ``on_train_start``; ``closed_llama31_405b.yaml`` of the
mlperf-logging compliance checker tests each one (names below are mlperf_logging.mllog.constants values).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.mlperf.schedule import DECAY_SCHEDULE, SEQUENCE_LENGTH, Schedule

if TYPE_CHECKING:
    from orchestrator.plan import RunPlan

ADAMW_BETA_1 = 0.9
ADAMW_BETA_2 = 0.95
ADAMW_EPSILON = 1e-5
WEIGHT_DECAY = 0.1
GRADIENT_CLIP_NORM = 1.0


def gradient_accumulation_steps(gbs: int, dp: int, mbs: int) -> int:
    """Micro-batches per optimizer step on one data-parallel rank: ``GBS / (DP * MBS)``, which must be whole."""
    if dp < 1 or mbs < 1:
        raise ValueError(f"data-parallel size ({dp}) and micro batch size ({mbs}) must be >= 1")
    if gbs % (dp * mbs):
        raise ValueError(
            f"global batch size {gbs} is not a multiple of data-parallel size x micro batch size = {dp} x {mbs}: "
            f"choose GBS as a multiple of {dp * mbs}, or change DP (GPUs / (TP*PP*CP)) or MBS"
        )
    return gbs // (dp * mbs)


def reference_hyperparameters(
    schedule: Schedule, *, dp: int, mbs: int, seed: int, start_step: int, seq_length: int = SEQUENCE_LENGTH
) -> dict:
    """Key -> value, in the reference's logging order; ``seq_length`` is what the run really trains with.

    ``start_step`` is the step the job starts from (``init_checkpoint_step``). The rules want 0: only a run that
    starts from the initial checkpoint is a compliant result, so a resumed partition's log fails that check.
    """
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    return {
        "global_batch_size": schedule.gbs,
        "gradient_accumulation_steps": gradient_accumulation_steps(schedule.gbs, dp, mbs),
        "max_sequence_length": seq_length,
        "eval_samples": schedule.eval_samples,
        "opt_name": "adamw",
        "opt_base_learning_rate": schedule.base_lr,
        "opt_adamw_beta_1": ADAMW_BETA_1,
        "opt_adamw_beta_2": ADAMW_BETA_2,
        "opt_adamw_epsilon": ADAMW_EPSILON,
        "opt_adamw_weight_decay": WEIGHT_DECAY,
        "opt_gradient_clip_norm": GRADIENT_CLIP_NORM,
        "opt_end_learning_rate": schedule.min_lr,
        "opt_learning_rate_warmup_steps": schedule.warmup_steps,
        "opt_learning_rate_decay_steps": schedule.decay_steps,
        "opt_learning_rate_decay_schedule": DECAY_SCHEDULE,
        "seed": seed,
        "init_checkpoint_step": start_step,
    }


def run_hyperparameters(plan: RunPlan, *, start_step: int) -> dict[str, Any]:
    """What a run of an MLPerf ``plan`` logs: the reference's keys, with the values the run really trains with.

    The data-parallel size and micro batch come from the plan's layout, the sequence length and every optimizer
    number from ``plan.train``: a value overridden away from the rules shows in the log (and the checker names it)
    instead of the log claiming the rules' value. Both backends log this.
    """
    schedule = plan.mlperf_schedule()
    if schedule is None:
        raise ValueError(f"run {plan.run_id}: not an MLPerf plan (plan.mlperf is null); it logs no hyper-parameters")
    train, opt = plan.train, plan.train.optim
    params = reference_hyperparameters(
        schedule,
        dp=plan.data_parallel,
        mbs=plan.layout.micro_batch_size,
        seed=train.seed,
        start_step=start_step,
        seq_length=train.seq_length,
    )
    params.update(
        opt_base_learning_rate=opt.lr,
        opt_end_learning_rate=opt.min_lr,
        opt_learning_rate_warmup_steps=opt.warmup_steps,
        opt_learning_rate_decay_steps=plan.lr_horizon_steps - opt.warmup_steps,
        opt_adamw_beta_1=opt.beta1,
        opt_adamw_beta_2=opt.beta2,
        opt_adamw_epsilon=opt.eps,
        opt_adamw_weight_decay=opt.weight_decay,
        opt_gradient_clip_norm=opt.clip_grad,
    )
    return params
