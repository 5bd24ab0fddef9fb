"""The hyper-parameters an MLPerf LLM pretraining run logs, with the keys and values the reference logs them with.

Both references (``pretrain_llama31.py``, 405B and 8B) log these at ``on_train_start``; ``closed_<benchmark>.yaml``
of the mlperf-logging compliance checker tests each one (names below are mlperf_logging.mllog.constants values).
The 8B checker also requires ``max_steps``, which its reference does not log; it is logged here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.mlperf.schedule import Schedule

if TYPE_CHECKING:
    from orchestrator.plan import RunPlan


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
    schedule: Schedule, *, dp: int, mbs: int, seed: int, start_step: int, seq_length: int | None = None
) -> dict:
    """Key -> value, in the reference's logging order; ``seq_length`` is what the run really trains with (default:
    the rules').

    ``start_step`` is the step the job starts from (``init_checkpoint_step``). The rules want 0: only a run that
    starts from the initial checkpoint is a compliant result, so a resumed partition's log fails that check.
    """
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    rules = schedule.rules
    params = {
        "global_batch_size": schedule.gbs,
        "gradient_accumulation_steps": gradient_accumulation_steps(schedule.gbs, dp, mbs),
        "max_sequence_length": rules.seq_length if seq_length is None else seq_length,
        "eval_samples": schedule.eval_samples,
        "opt_name": "adamw",
        "opt_base_learning_rate": schedule.base_lr,
        "opt_adamw_beta_1": rules.adamw_beta_1,
        "opt_adamw_beta_2": rules.adamw_beta_2,
        "opt_adamw_epsilon": rules.adamw_epsilon,
        "opt_adamw_weight_decay": rules.weight_decay,
        "opt_gradient_clip_norm": rules.gradient_clip_norm,
        "opt_end_learning_rate": schedule.min_lr,
        "opt_learning_rate_warmup_steps": schedule.warmup_steps,
        "opt_learning_rate_decay_steps": schedule.decay_steps,
        "opt_learning_rate_decay_schedule": rules.decay_schedule,
        "seed": seed,
        "init_checkpoint_step": start_step,
    }
    if rules.logged_max_steps is not None:
        params["max_steps"] = schedule.max_steps
    return params


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
    if "max_steps" in params:  # the LR horizon the run trains with (the reference's trainer.max_steps)
        params["max_steps"] = plan.lr_horizon_steps
    return params
