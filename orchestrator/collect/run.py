"""Where a run directory keeps what ``collect`` needs: the training logs in chain order and the model's numbers.

This is the seam between the engine (``collect_logs``, layout-free) and the run layout (``orchestrator.rundir``):
``plan.json`` gives the model, its architecture, the sequence length and the GPU's peak; the training logs are
``logs/train-<jobid>.out`` (Slurm; a requeue appends to the same file) or submitit's ``submitit/<jobid>_0_log.out``
(local runs). Chain order comes from the ledger (train jobs in submission order, each attempt's log first);
without one, from the job ids in the file names (Slurm ids only grow).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.collect import collect_logs
from orchestrator.collect.baseline import DEFAULT_THRESHOLD, Baseline, choose
from orchestrator.collect.flops import architecture_flops_per_token
from orchestrator.collect.metrics import RunMetrics
from orchestrator.rundir import RunDir
from orchestrator.stages import TRAIN


@dataclass(frozen=True)
class RunInfo:
    """One run as ``collect`` sees it: ``logs`` in chain order (first job first), and what MFU needs."""

    model: str
    logs: tuple[Path, ...]
    run_dir: Path | None = None
    flops_per_token: float | None = None
    peak_flops_per_gpu: float | None = None
    notes: tuple[str, ...] = field(default=())


def _job_order(path: Path) -> tuple[tuple[int, ...], str]:
    return tuple(int(n) for n in re.findall(r"\d+", path.name)), path.name


def _ledger_logs(run_dir: Path) -> list[Path]:
    """The train jobs' logs in the ledger's order: submission order, and each job's attempts in order."""
    ledger_path = run_dir / "ledger.sqlite"
    if not ledger_path.is_file():
        return []
    from orchestrator.ledger import Ledger

    ledger = Ledger(ledger_path)
    attempts = ledger.attempts(TRAIN)
    ordered: dict[Path, None] = {}
    for job in ledger.jobs(TRAIN):
        candidates = [Path(a.log_path) for a in attempts if a.job_id == job.job_id and a.log_path]
        candidates += [
            RunDir.of(run_dir).log(TRAIN, job.job_id),
            run_dir / "submitit" / f"{job.job_id}_0_log.out",
        ]
        ordered.update(dict.fromkeys(p for p in candidates if p.is_file()))
    return list(ordered)


def find_logs(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The run's training logs, first job first."""
    run_dir = Path(run_dir)
    return _ledger_logs(run_dir) or sorted((run_dir / "logs").glob(f"{TRAIN}-*.out"), key=_job_order)


def _dig(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


def run_info(run_dir: str | os.PathLike[str], *, model: str | None = None) -> RunInfo:
    """Read ``plan.json`` (if any) and list the logs. ``model`` overrides the plan's model name."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: not a directory; give a run directory, or --log FILE... --model NAME")
    logs = tuple(find_logs(run_dir))
    if not logs:
        raise FileNotFoundError(
            f"{run_dir}: no training logs (logs/{TRAIN}-<jobid>.out, or a train job in ledger.sqlite); "
            "has the training stage started?"
        )
    notes: list[str] = []
    plan_path = run_dir / "plan.json"
    plan: Any = None
    if plan_path.exists():
        try:
            plan = json.loads(plan_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            notes.append(f"{plan_path}: unreadable ({exc}); no model numbers from the plan")
    name = model or _dig(plan, "model", "name") or run_dir.name
    if not (model or _dig(plan, "model", "name")):
        notes.append(f"no plan.json with model.name in {run_dir}; calling the model {name!r} (use --model)")
    flops, flops_note = _plan_flops(plan)
    if flops_note:
        notes.append(flops_note)
    peak_tflops = _dig(plan, "cluster", "gpu_peak_tflops")
    return RunInfo(
        model=name,
        logs=logs,
        run_dir=run_dir,
        flops_per_token=flops,
        peak_flops_per_gpu=peak_tflops * 1e12 if isinstance(peak_tflops, (int, float)) else None,
        notes=tuple(notes),
    )


def _plan_flops(plan: Any) -> tuple[float | None, str | None]:
    arch, seq = _dig(plan, "model", "arch"), _dig(plan, "train", "seq_length")
    if arch is None or seq is None:
        return None, None
    from orchestrator.profiles import Architecture  # pydantic: only when a plan is there to read

    try:
        return architecture_flops_per_token(Architecture.model_validate(arch), int(seq)), None
    except (ValueError, TypeError) as exc:
        return None, f"plan.json model.arch: cannot compute FLOPs per token ({exc})"


def collect_info(
    info: RunInfo,
    *,
    baselines: Mapping[str, Baseline] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    progress: Callable[[int], None] | None = None,
) -> RunMetrics:
    """``collect_logs`` over one run's logs, judged against the model's entry in ``baselines``."""
    baseline, missing = choose(baselines, info.model)
    metrics = collect_logs(
        info.logs,
        model=info.model,
        baseline=baseline,
        threshold=threshold,
        flops_per_token=info.flops_per_token,
        peak_flops_per_gpu=info.peak_flops_per_gpu,
        progress=progress,
    )
    metrics.notes[:0] = info.notes
    if missing:
        metrics.verdict_reason = missing
        metrics.notes.append(missing)
    return metrics


def collect_run(
    run_dir: str | os.PathLike[str],
    *,
    model: str | None = None,
    baselines: Mapping[str, Baseline] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> RunMetrics:
    """``collect_info`` of a run directory, with the plan's FLOPs per token and GPU peak for MFU."""
    return collect_info(run_info(run_dir, model=model), baselines=baselines, threshold=threshold)
