"""Log collection and benchmark verdicts: training logs -> per-step records -> the seeds' metrics -> outputs.

``collect_logs`` is the whole engine and knows nothing of run directories: give it the logs of one chain in chain
order. ``parse`` reads them, ``metrics`` applies the seeds' rules, ``flops`` and ``baseline`` feed MFU and the
verdict; ``run`` finds a run directory's logs and the model's numbers; ``report`` and ``plots`` write metrics.json,
metrics.csv, the PNGs and report.md; ``suite`` summarises many runs; ``cli`` is the ``collect`` command.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from orchestrator.collect.baseline import DEFAULT_THRESHOLD, Baseline, BaselineError, load_baselines
from orchestrator.collect.metrics import RunMetrics, compute_metrics
from orchestrator.collect.parse import read_logs

__all__ = ["Baseline", "BaselineError", "RunMetrics", "collect_logs", "load_baselines"]


def collect_logs(
    paths: Sequence[str | os.PathLike[str]],
    *,
    model: str,
    baseline: Baseline | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    flops_per_token: float | None = None,
    peak_flops_per_gpu: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> RunMetrics:
    """Metrics and verdict of one run from its training logs, first job first (a later record wins).

    ``progress`` is called with the number of bytes read after each chunk."""
    series, sources = read_logs(paths, progress=progress)
    return compute_metrics(
        series,
        sources,
        model=model,
        baseline=baseline,
        threshold=threshold,
        flops_per_token=flops_per_token,
        peak_flops_per_gpu=peak_flops_per_gpu,
    )
