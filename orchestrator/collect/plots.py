"""PNG plots of loss and throughput per step, drawn with matplotlib's Agg renderer (no display, no pyplot state)."""

from __future__ import annotations

import math
from pathlib import Path

from orchestrator.atomic import atomic_output
from orchestrator.collect.metrics import EDGE_STEPS, LOSS, THROUGHPUT, RunMetrics

LOSS_PNG = "loss.png"
THROUGHPUT_PNG = "throughput.png"


def _series(metrics: RunMetrics, name: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for step, value in metrics.records.column(name):
        if value is not None and math.isfinite(value):
            steps.append(step)
            values.append(value)
    return steps, values


def _resumes(metrics: RunMetrics) -> list[int]:
    """Steps where a later job's log takes over: where the chain resumed."""
    return sorted({s.first_step for s in metrics.sources[1:] if s.first_step is not None})


def _figure(title: str, ylabel: str):  # -> (Figure, Axes); matplotlib is an optional dependency
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("global_step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _mark_resumes(ax, metrics: RunMetrics) -> None:
    for i, step in enumerate(_resumes(metrics)):
        ax.axvline(step, color="grey", linestyle=":", linewidth=1, label="resumed" if i == 0 else None)


def _save(fig, path: Path) -> Path:
    with atomic_output(path, "wb") as handle:
        fig.savefig(handle, format="png")
    return path


def plot_loss(metrics: RunMetrics, path: Path) -> Path | None:
    steps, losses = _series(metrics, LOSS)
    if not steps:
        return None
    fig, ax = _figure(f"{metrics.model}: training loss", LOSS)
    ax.plot(steps, losses, linewidth=1, label=LOSS)
    validations = [(s, v) for s, v in metrics.val_loss_history if math.isfinite(v)]
    if validations:
        ax.plot(*zip(*validations, strict=True), "o", markersize=4, label="val_loss (at the first line showing it)")
    if metrics.baseline is not None:
        base, band = metrics.baseline.final_loss, metrics.baseline.final_loss * metrics.threshold
        ax.axhline(base, color="black", linestyle="--", linewidth=1, label=f"baseline {base:.4g}")
        ax.axhspan(base - band, base + band, color="green", alpha=0.1, label=f"±{metrics.threshold:.0%}")
    _mark_resumes(ax, metrics)
    ax.legend(loc="upper right")
    return _save(fig, path)


def plot_throughput(metrics: RunMetrics, path: Path) -> Path | None:
    steps, rates = _series(metrics, THROUGHPUT)
    if not steps:
        return None
    fig, ax = _figure(f"{metrics.model}: throughput", THROUGHPUT)
    ax.plot(steps, rates, linewidth=1, label=THROUGHPUT)
    if metrics.window is not None and metrics.throughput is not None:
        first, last, _ = metrics.window
        ax.axvspan(steps[0], first, color="grey", alpha=0.15, label=f"left out (first/last {EDGE_STEPS})")
        ax.axvspan(last, steps[-1], color="grey", alpha=0.15)
        ax.hlines(metrics.throughput, first, last, colors="red", label=f"mean {metrics.throughput:,.0f}")
    _mark_resumes(ax, metrics)
    ax.legend(loc="lower right")
    return _save(fig, path)


def write_plots(metrics: RunMetrics, out_dir: Path) -> tuple[list[Path], list[str]]:
    """The plots written, and notes on those that were not (no data, or matplotlib missing)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return [], ["no plots: matplotlib is not installed (pip install 'orchestrator[report]')"]
    written, notes = [], []
    for name, plot, what in ((LOSS_PNG, plot_loss, LOSS), (THROUGHPUT_PNG, plot_throughput, THROUGHPUT)):
        path = plot(metrics, out_dir / name)
        if path is None:
            (out_dir / name).unlink(missing_ok=True)  # never leave an older run's plot looking current
            notes.append(f"no {name}: no step has a finite {what}")
        else:
            written.append(path)
    return written, notes
