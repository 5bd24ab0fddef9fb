"""Which stages of a plan still have work: a rerun after a failure does only what is missing."""

from __future__ import annotations

from orchestrator.data import indexed
from orchestrator.plan import RunPlan
from orchestrator.rundir import RunDir
from orchestrator.stages import preprocess_jobs


def complete_reason(plan: RunPlan, stage: str) -> str | None:
    """Why ``stage`` can be skipped (its outputs are complete), or None when it must run."""
    if stage == "train":
        done = RunDir.of(plan.run_dir).done()
        return f"the run is done (step {done.get('final_step')})" if done else None
    if stage == "preprocess":
        prefixes = [f"{out}_text_document" for _, out in preprocess_jobs(plan)]
        if all(indexed.exists(p) for p in prefixes):
            return f"all {len(prefixes)} Megatron datasets exist"
        return None
    if stage == "consolidate":
        if complete_reason(plan, "preprocess"):
            return "its outputs were already tokenized"
        inputs = [i for i, _ in preprocess_jobs(plan)]
        if all(i.is_file() for i in inputs):
            return f"all {len(inputs)} merged files exist"
        return None
    return None
