"""What mlperf-logging's compliance checker says about a log, reduced to the keys it names as failing."""

from __future__ import annotations

#: What a CPU-sized run cannot honestly log at the benchmark's values (sequence 8192, 5760 evaluation sequences).
SCALE_KEYS = ("max_sequence_length", "eval_samples")
#: The keys whose checks a run's log could fail: its scale, the target, and every hyper-parameter formula.
CHECKED_KEYS = (*SCALE_KEYS, "eval_accuracy", "global_batch_size", "opt_base_learning_rate",
                "opt_learning_rate_decay_steps", "opt_learning_rate_warmup_steps", "init_checkpoint_step", "opt_name",
                "opt_adamw_epsilon", "opt_gradient_clip_norm", "gradient_accumulation_steps")  # fmt: skip


def failing_keys(output: str) -> set[str]:
    """The checked keys that the checker's failure lines name."""
    failing = [line for line in output.splitlines() if "CHECK" in line or "fail" in line.lower()]
    return {key for key in CHECKED_KEYS if any(f"'{key}'" in line or f" {key}" in line for line in failing)}
