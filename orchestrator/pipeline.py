"""Which stages of a plan still have work, and the inputs to prepare before queueing them.

A rerun after a failure does only what is missing: consolidation and tokenization are complete when their
manifests (written last, next to each output) describe the same inputs, tokenizer and flags as this plan's.
"""

from __future__ import annotations

from orchestrator.plan import RunPlan
from orchestrator.render import python_for_driver
from orchestrator.rundir import RunDir
from orchestrator.stages import consolidate_argv, preprocess_argv, preprocess_jobs


def complete_reason(plan: RunPlan, stage: str) -> str | None:
    """Why ``stage`` can be skipped (its outputs are complete), or None when it must run."""
    if stage == "train":
        done = RunDir.of(plan.run_dir).done()
        return f"the run is done (step {done.get('final_step')})" if done else None
    if stage == "preprocess":
        from orchestrator.data import preprocess

        argv = preprocess_argv(plan, python_for_driver(plan))[4:]
        jobs = preprocess_jobs(plan)
        if all(preprocess.is_complete(preprocess.config_from_argv([*argv, "--input", i, "--output-prefix", o])) for i, o in jobs):
            return f"all {len(jobs)} datasets are tokenized (manifests match this plan)"
        return None
    if stage == "consolidate":
        if complete_reason(plan, "preprocess"):
            return "its outputs are already tokenized"
        from orchestrator.data import consolidate

        try:
            made = consolidate.plan_from_args(_consolidate_args(plan))
        except consolidate.ConsolidationError:
            return None  # the job reports the problem by shard name
        needed = list(plan.data.train_shards or range(plan.data.train_outputs)) + [plan.data.train_outputs]
        if consolidate.is_complete(made, needed):
            return f"all {len(needed)} merged files are complete (manifests match the shards)"
        return None
    return None


def _consolidate_args(plan: RunPlan):  # type: ignore[no-untyped-def]
    import argparse

    from orchestrator.data import consolidate

    parser = argparse.ArgumentParser(add_help=False)
    consolidate.add_arguments(parser)
    return parser.parse_args([str(a) for a in consolidate_argv(plan, "python")[4:]])


def prepare_inputs(plan: RunPlan, say) -> None:  # type: ignore[no-untyped-def]
    """Build the sample corpus of a ``data.source=sample`` plan (small, deterministic, on the login node)."""
    if plan.data.source != "sample" or plan.data.c4_path is None:
        return
    from pathlib import Path

    from orchestrator.data import sample

    c4 = Path(plan.data.c4_path)
    if any(c4.glob("c4-train.*-of-01024.json.gz")):
        return
    # Two shards per merged output, so that consolidation really merges (as the 4-shard example).
    sample.build_corpus(c4, 2 * plan.data.train_outputs, 1, plan.data.sample_docs_per_shard, plan.train.seed)
    say(f"built the sample corpus (real text, see orchestrator/data/sample.py) in {c4}")
