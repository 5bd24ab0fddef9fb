"""Many runs at a glance: one row per model (its most recent run) with throughput, final loss, baseline delta and
verdict, for the nightly summary and CI.

A run is a directory with ``metrics.json`` or ``logs/*.out``: the suite directory itself or one of its immediate
subdirectories (a runs root). A run whose logs are newer than its metrics.json (or that has none) is collected
afresh, so the table never shows stale numbers. With baselines, every verdict is judged again against them;
without, a stored metrics.json keeps its own verdict.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.collect.baseline import DEFAULT_THRESHOLD, Baseline, choose, judge, relative_diff
from orchestrator.collect.metrics import json_safe
from orchestrator.collect.report import METRICS_JSON
from orchestrator.collect.run import collect_run, find_logs


@dataclass(frozen=True)
class SuiteRow:
    model: str
    run: str
    runs_of_model: int
    num_steps: int
    final_step: int | None
    final_loss: float | None
    throughput: float | None
    baseline_loss: float | None
    baseline_throughput: float | None
    loss_rel_diff: float | None
    throughput_rel_diff: float | None
    verdict: str
    reason: str


def discover(root: str | os.PathLike[str]) -> list[Path]:
    """Run directories under ``root``: itself and its immediate subdirectories that hold metrics or logs."""
    root = Path(root)
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    return [p for p in candidates if (p / METRICS_JSON).is_file() or find_logs(p)]


def _newest_mtime(paths: list[Path]) -> float:
    return max((p.stat().st_mtime for p in paths), default=0.0)


def run_summary(
    run_dir: Path, *, baselines: Mapping[str, Baseline] | None, threshold: float
) -> tuple[dict[str, Any], float]:
    """metrics.json's body (without steps) for one run, and when its newest input was written."""
    stored, logs = run_dir / METRICS_JSON, find_logs(run_dir)
    fresh = stored.is_file() and stored.stat().st_mtime >= _newest_mtime(logs)
    if fresh:
        try:
            body = json.loads(stored.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            body = {"model": run_dir.name, "verdict": "none", "verdict_reason": f"{stored}: unreadable ({exc})"}
        return body, stored.stat().st_mtime
    metrics = collect_run(run_dir, baselines=baselines, threshold=threshold)
    return metrics.to_dict(steps=False), _newest_mtime(logs)


def _row(
    body: dict[str, Any], run_dir: Path, runs: int, baselines: Mapping[str, Baseline] | None, threshold: float
) -> SuiteRow:
    model = str(body.get("model", run_dir.name))
    stored_baseline = body.get("baseline") or {}
    verdict, reason = body.get("verdict", "none"), body.get("verdict_reason", "")
    loss_diff = body.get("loss_rel_diff")
    base_loss, base_rate = stored_baseline.get("final_loss"), stored_baseline.get("throughput")
    if baselines is not None:
        baseline, missing = choose(baselines, model)
        judgement = judge(
            final_loss=body.get("final_loss"),
            final_step=body.get("final_step"),
            last_planned_step=body.get("last_planned_step"),
            baseline=baseline,
            threshold=threshold,
        )
        verdict, reason, loss_diff = judgement.verdict, missing or judgement.reason, judgement.loss_rel_diff
        base_loss = baseline.final_loss if baseline else None
        base_rate = baseline.throughput if baseline else None
    throughput = body.get("throughput_tokens_per_sec_per_gpu")
    return SuiteRow(
        model=model,
        run=str(run_dir),
        runs_of_model=runs,
        num_steps=int(body.get("num_steps") or 0),
        final_step=body.get("final_step"),
        final_loss=body.get("final_loss"),
        throughput=throughput,
        baseline_loss=base_loss,
        baseline_throughput=base_rate,
        loss_rel_diff=loss_diff,
        throughput_rel_diff=relative_diff(throughput, base_rate),
        verdict=verdict,
        reason=reason,
    )


def summarise(
    root: str | os.PathLike[str],
    *,
    baselines: Mapping[str, Baseline] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> list[SuiteRow]:
    """One row per model, from its most recent run under ``root``, sorted by model."""
    latest: dict[str, tuple[float, Path, dict[str, Any]]] = {}
    counts: dict[str, int] = {}
    for run_dir in discover(root):
        body, written = run_summary(run_dir, baselines=baselines, threshold=threshold)
        model = str(body.get("model", run_dir.name))
        counts[model] = counts.get(model, 0) + 1
        if model not in latest or written >= latest[model][0]:
            latest[model] = (written, run_dir, body)
    return [
        _row(body, run_dir, counts[model], baselines, threshold) for model, (_, run_dir, body) in sorted(latest.items())
    ]


COLUMNS = (
    "model",
    "run",
    "steps",
    "throughput (tokens/s/GPU)",
    "final loss",
    "baseline loss",
    "loss Δ",
    "throughput Δ",
    "verdict",
)


def row_cells(row: SuiteRow) -> list[str]:
    def num(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    runs = f" (latest of {row.runs_of_model})" if row.runs_of_model > 1 else ""
    return [
        row.model,
        Path(row.run).name + runs,
        str(row.num_steps),
        num(row.throughput, ",.1f"),
        num(row.final_loss, ".4g"),
        num(row.baseline_loss, ".4g"),
        num(row.loss_rel_diff, "+.2%"),
        num(row.throughput_rel_diff, "+.2%"),
        row.verdict,
    ]


def suite_markdown(rows: list[SuiteRow], threshold: float = DEFAULT_THRESHOLD) -> str:
    lines = ["# Benchmark suite", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    reasons = [f"- **{r.model}**: {r.verdict}: {r.reason}" for r in rows if r.reason]
    if reasons:
        lines += ["", f"Verdicts (final loss within {threshold:.0%} of the baseline's):", ""] + reasons
    return "\n".join(lines) + "\n"


def suite_json(rows: list[SuiteRow]) -> str:
    return json.dumps(json_safe([asdict(r) for r in rows]), indent=2, allow_nan=False) + "\n"
