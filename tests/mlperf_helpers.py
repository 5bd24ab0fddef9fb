"""What mlperf-logging's compliance checker says about a log, reduced to the keys it names as failing."""

from __future__ import annotations

from pathlib import Path

#: What a CPU-sized run cannot honestly log at the benchmark's values (sequence 8192, 5760 evaluation sequences).
SCALE_KEYS = ("max_sequence_length", "eval_samples")
#: The keys whose checks a run's log could fail: its scale, the target, and every hyper-parameter formula.
CHECKED_KEYS = (
    *SCALE_KEYS,
    "eval_accuracy",
    "global_batch_size",
    "opt_base_learning_rate",
    "opt_learning_rate_decay_steps",
    "opt_learning_rate_warmup_steps",
    "init_checkpoint_step",
    "opt_name",
    "opt_adamw_epsilon",
    "opt_gradient_clip_norm",
    "gradient_accumulation_steps",
    "max_steps",  # the 8B checker's
)


def failing_keys(output: str) -> set[str]:
    """The checked keys that the checker's failure lines name."""
    failing = [line for line in output.splitlines() if "CHECK" in line or "fail" in line.lower()]
    return {key for key in CHECKED_KEYS if any(f"'{key}'" in line or f" {key}" in line for line in failing)}


#: The MLPerf 405B profile cut to 2 layers of width 64 on one task, at sequence 64 and GBS 8, with an evaluation every
#: 16 sequences over 16, the first after 32: evaluations after steps 4, 6, 8, ...
SMALL_405B = {
    "model.arch.num_layers": 2,
    "model.arch.hidden_size": 64,
    "model.arch.ffn_hidden_size": 128,
    "model.arch.num_attention_heads": 4,
    "model.arch.num_query_groups": 2,
    "layout.nodes": 1,
    "layout.tasks_per_node": 1,
    "layout.tp": 1,
    "layout.pp": 1,
    "layout.cp": 1,
    "layout.vp": None,
    "layout.sequence_parallel": False,
    "train.global_batch_size": 8,
    "train.seq_length": 64,
    # a cap on the run (and on Megatron's sample index); the LR horizon stays the rules'
    "train.max_steps": 12,
    "mlperf.allow_new_rcp": True,
    "mlperf.eval_every_samples": 16,
    "mlperf.eval_samples": 16,
    "mlperf.start_eval_at_samples": 32,
}


def mlperf_site(root: Path) -> dict[str, str]:
    """config.sh's paths as a site has them, under ``root``: the three tokenized datasets (empty files), a tokenizer
    folder, a finished NeMo checkpoint to start from, and empty folders for checkpoints and the index."""
    from pathlib import Path

    paths = {
        name: Path(root) / sub
        for name, sub in (
            ("PREPROCESSED_PATH", "d/pre"),
            ("TOKENIZER_PATH", "t/tok"),
            ("MODEL_CKPT", "m/ckpt"),
            ("CONTINUAL_CKPT", "c/ck"),
            ("TMP_NPY_INDEX", "n/idx"),
        )
    }
    for path in paths.values():
        path.mkdir(parents=True)
    (paths["MODEL_CKPT"] / "weights").mkdir()
    (paths["MODEL_CKPT"] / "weights" / "metadata.json").write_text("{}")
    (paths["TOKENIZER_PATH"] / "tokenizer.json").write_text("{}")
    for name in ("c4-train.en_6", "c4-train.en_7", "c4-validation-91205-samples.en"):
        for ext in ("bin", "idx"):
            (paths["PREPROCESSED_PATH"] / f"{name}_text_document.{ext}").write_bytes(b"")
    return {name: str(path) for name, path in paths.items()}
