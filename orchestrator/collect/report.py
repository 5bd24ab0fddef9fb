"""A run's outputs: metrics.json (schema in docs/metrics.md), metrics.csv, loss/throughput plots and report.md.

Every file is written atomically: a reader (a dashboard, the nightly job, CI) sees the previous version or the new
one, never half of one.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import TextIO

from orchestrator.atomic import atomic_output, atomic_write_text
from orchestrator.collect.metrics import RunMetrics
from orchestrator.collect.plots import write_plots

METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
REPORT_MD = "report.md"


def _num(value: float | None, spec: str = ".4g", unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:{spec}}{unit}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2%}"


def summary_rows(m: RunMetrics) -> list[tuple[str, str]]:
    """(label, value) pairs people read first; the CLI table and report.md both show them."""
    window = "" if m.window is None else f" (mean over steps {m.window[0]}..{m.window[1]}, {m.window[2]} steps)"
    baseline = "none"
    if m.baseline is not None:
        baseline = f"{m.baseline.final_loss:.4g}"
        if m.baseline.throughput is not None:
            baseline += f", {m.baseline.throughput:,.0f} tokens/s/GPU"
    mfu = "n/a"
    if m.mfu is not None:
        mfu = f"{m.mfu:.1%} ({m.model_tflops_per_gpu:.1f} TFLOP/s/GPU, {m.flops_per_token / 1e9:.2f} GFLOP/token)"
    elif m.model_tflops_per_gpu is not None:
        mfu = f"n/a ({m.model_tflops_per_gpu:.1f} TFLOP/s/GPU; peak unknown)"
    steps = "0" if m.first_step is None else f"{m.num_steps} (global_step {m.first_step}..{m.final_step})"
    if m.last_planned_step is not None and m.final_step is not None and m.final_step < m.last_planned_step:
        steps += f", planned ..{m.last_planned_step}"
    return [
        ("model", m.model),
        ("steps", steps),
        ("final loss", _num(m.final_loss) + ("" if m.final_step is None else f" at step {m.final_step}")),
        ("throughput", _num(m.throughput, ",.1f", " tokens/s/GPU") + window),
        ("mean step time", _num(m.mean_step_time, ".4g", " s")),
        ("MFU", mfu),
        ("consumed samples", _num(m.consumed_samples, ",.0f")),
        ("val_loss", _num(m.val_loss) + (f" ({len(m.val_loss_history)} validations)" if m.val_loss_history else "")),
        ("baseline", baseline),
        ("loss vs baseline", _pct(m.loss_rel_diff)),
        ("throughput vs baseline", _pct(m.throughput_rel_diff)),
        ("verdict", f"{m.verdict}: {m.verdict_reason}" if m.verdict_reason else m.verdict),
    ]


def write_metrics_json(m: RunMetrics, out: TextIO) -> None:
    """metrics.json into ``out``, one step per line, streamed: a million steps need no list of a million dicts."""
    head = json.dumps(m.to_dict(steps=False), indent=2, allow_nan=False)
    out.write(head[: -len("\n}")] + ',\n  "steps": [')
    separator = "\n    "
    for step in m.iter_steps():
        out.write(separator + json.dumps(step, allow_nan=False))
        separator = ",\n    "
    out.write("\n  ]\n}\n")


def write_metrics_csv(m: RunMetrics, out: TextIO) -> None:
    """One row per step, one column per log field (``global_step`` first); empty where a line lacks the field."""
    writer = csv.writer(out, lineterminator="\n")
    names = m.field_names
    writer.writerow(names)
    for record in m.records:
        values = record.as_dict()
        values["global_step"] = record.global_step
        writer.writerow([_csv_cell(values.get(name)) for name in names])


def _csv_cell(value: float | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return repr(value)


def report_markdown(m: RunMetrics, plots: list[Path]) -> str:
    lines = [f"# {m.model}: {m.verdict}", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {value.replace('|', '/')} |" for label, value in summary_rows(m)]
    if plots:
        lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    if m.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in m.notes]
    lines += [
        "",
        "## Logs (chain order)",
        "",
        "| file | bytes | records | steps | skipped lines |",
        "|---|---|---|---|---|",
    ]
    for s in m.sources:
        steps = "-" if s.first_step is None else f"{s.first_step}..{s.last_step}"
        lines.append(f"| `{s.path}` | {s.bytes:,} | {s.records} | {steps} | {s.skipped} |")
    lines += [
        "",
        "Throughput is the mean tokens_per_sec_per_gpu leaving out the first and last 10 logged steps; the final "
        "loss is reduced_train_loss at the last step; see docs/metrics.md.",
        "",
    ]
    return "\n".join(lines)


def write_outputs(m: RunMetrics, out_dir: str | os.PathLike[str], *, plots: bool = True) -> list[Path]:
    """Write metrics.json, metrics.csv, the plots and report.md into ``out_dir``; return the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    drawn: list[Path] = []
    if plots:
        drawn, notes = write_plots(m, out)
        m.notes.extend(notes)
        written += drawn
    with atomic_output(out / METRICS_JSON, "w") as handle:
        write_metrics_json(m, handle)
    with atomic_output(out / METRICS_CSV, "w") as handle:
        write_metrics_csv(m, handle)
    atomic_write_text(out / REPORT_MD, report_markdown(m, drawn))
    return written + [out / METRICS_JSON, out / METRICS_CSV, out / REPORT_MD]
