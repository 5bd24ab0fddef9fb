"""What each stage runs, derived from the plan: the program argv, inputs, outputs and array size.

The render step turns these into scripts; the submit step asks :func:`pending_stages` which stages still have
work, so that a rerun after a failure does only what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.plan import RunPlan
from orchestrator.render import StageScript, python_for_driver, render_stage
from orchestrator.rundir import RunDir


def merged_train_file(plan: RunPlan, k: int) -> Path:
    return Path(plan.data.merged_path or "") / f"c4-train.en_{k}.json.gz"


def validation_name(plan: RunPlan) -> str:
    n = plan.data.n_validation_samples
    return f"c4-validation-{n}-samples.en" if n else "c4-validation.en"


def preprocess_jobs(plan: RunPlan) -> list[tuple[Path, Path]]:
    """(input file, output prefix without ``_text_document``) for each file the trainer will read."""
    out = Path(plan.data.preprocessed_path)
    shards = plan.data.train_shards or tuple(range(plan.data.train_outputs))
    jobs = [(merged_train_file(plan, k), out / f"c4-train.en_{k}") for k in shards]
    name = validation_name(plan)
    jobs.append((Path(plan.data.merged_path or "") / f"{name}.json.gz", out / name))
    return jobs


def tokenizer_model_path(plan: RunPlan) -> str:
    """``mistral-common:<file>`` resolves to the file the mistral-common package ships; anything else is a path."""
    model = plan.model.tokenizer.model
    if model.startswith("mistral-common:"):
        try:
            import mistral_common
        except ImportError:
            raise ValueError(f"model.tokenizer.model={model!r} needs the mistral-common package (it ships the file): "
                             "pip install mistral-common, or set a path to tokenizer.model") from None

        return str(Path(mistral_common.__file__).parent / "data" / model.split(":", 1)[1])
    return model


def consolidate_argv(plan: RunPlan, python: str) -> list[Any]:
    """MLPerf's consolidation (C4_PATH, MERGED_C4_PATH, TRAIN_OUTPUTS, N_VALIDATION_SAMPLES) as flags."""
    return [python, "-u", "-m", "orchestrator.data.consolidate", "--c4-path", plan.data.c4_path,
            "--merged-path", plan.data.merged_path, "--train-outputs", plan.data.train_outputs,
            "--n-validation-samples", plan.data.n_validation_samples or 0]  # fmt: skip


def preprocess_argv(plan: RunPlan, python: str) -> list[Any]:
    """Megatron's preprocess_data.py flags, with the tokenizer semantics NeMo's tool (the seeds', MLPerf's) has:
    no BOS, and Hugging Face's slow tokenizer where one exists."""
    tok = plan.model.tokenizer
    argv: list[Any] = [python, "-u", "-m", "orchestrator.data.preprocess", "--json-keys", "text"]
    if tok.library == "sentencepiece":
        argv += ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tokenizer_model_path(plan)]
    else:
        argv += ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer_model_path(plan),
                 "--tokenizer-hf-no-use-fast", "--tokenizer-hf-no-include-special-tokens"]  # fmt: skip
    argv += ["--workers", plan.data.workers or plan.cluster.cpus_per_task or plan.cluster.cpu_tasks_per_node]
    if plan.data.append_eod:
        argv.append("--append-eod")
    return argv


def context(plan: RunPlan, stage: str) -> dict[str, Any]:
    """Template values of a stage."""
    python = python_for_driver(plan)
    if stage == "train":
        module = "orchestrator.train.nemo" if plan.train.backend == "nemo" else "orchestrator.train.reference"
        return {"module": module}
    if stage == "consolidate":
        # Array task k writes merged output k; task train_outputs writes the validation file training reads.
        needed = list(plan.data.train_shards or range(plan.data.train_outputs))
        return {"program": consolidate_argv(plan, python), "array": [*needed, plan.data.train_outputs]}
    if stage == "preprocess":
        jobs = preprocess_jobs(plan)
        return {"program": preprocess_argv(plan, python), "inputs": [str(i) for i, _ in jobs],
                "outputs": [str(o) for _, o in jobs], "launcher_single": [], "array": list(range(len(jobs)))}  # fmt: skip
    if stage == "import":
        return {}
    if stage == "smoke":
        return {"report_dir": str(RunDir.of(plan.run_dir).path / "smoke")}
    raise ValueError(f"unknown stage {stage!r}")


def render_all(plan: RunPlan, stages: tuple[str, ...] | None = None) -> list[StageScript]:
    return [render_stage(plan, stage, **context(plan, stage)) for stage in (stages or plan.stages)]
