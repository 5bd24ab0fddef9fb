"""The seeds' measurement rules, applied to the merged steps of a run.

- throughput: the mean of ``tokens_per_sec_per_gpu`` over the logged steps, leaving out the first 10 and the last
  10 (seeds 000 and 001: "取去除前后各10个step的 tokens_per_sec_per_gpu 平均值"). With fewer than 21 steps nothing
  is left, so there is no throughput and the notes say why.
- final loss: ``reduced_train_loss`` at the last step (the largest ``global_step``), compared with a baseline.
- also: the mean ``train_step_timing in s`` over the same window, model TFLOP/s per GPU and MFU
  (throughput x FLOPs per token / peak FLOP/s, see ``flops``), ``consumed_samples`` and ``val_loss`` at the last
  step, and each new ``val_loss`` value with the first step whose line shows it.

Means are exact (``math.fsum``) over the values as printed, 4 significant digits, exactly what a person reading
the log computes.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, count
from typing import Any

from orchestrator.collect.baseline import DEFAULT_THRESHOLD, Baseline, Verdict, judge, relative_diff
from orchestrator.collect.parse import SourceStats, StepSeries

SCHEMA_VERSION = 1
STEP = "global_step"
LOSS = "reduced_train_loss"
THROUGHPUT = "tokens_per_sec_per_gpu"
STEP_TIME = "train_step_timing in s"
CONSUMED = "consumed_samples"
VAL_LOSS = "val_loss"
#: Steps left out at each end of the throughput window (warm-up, and the checkpoint/teardown at the end).
EDGE_STEPS = 10
MIN_STEPS = 2 * EDGE_STEPS + 1


@dataclass
class RunMetrics:
    """Everything ``metrics.json`` holds; ``to_dict`` is its documented schema (docs/metrics.md)."""

    model: str
    records: StepSeries
    sources: list[SourceStats]
    first_step: int | None = None
    final_step: int | None = None
    last_planned_step: int | None = None
    final_loss: float | None = None
    throughput: float | None = None
    window: tuple[int, int, int] | None = None
    mean_step_time: float | None = None
    flops_per_token: float | None = None
    peak_flops_per_gpu: float | None = None
    model_tflops_per_gpu: float | None = None
    mfu: float | None = None
    consumed_samples: float | None = None
    val_loss: float | None = None
    val_loss_history: list[tuple[int, float]] = field(default_factory=list)
    baseline: Baseline | None = None
    threshold: float = DEFAULT_THRESHOLD
    loss_rel_diff: float | None = None
    throughput_rel_diff: float | None = None
    verdict: Verdict = "none"
    verdict_reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        return len(self.records)

    @property
    def field_names(self) -> list[str]:
        return self.records.field_names()

    def to_dict(self, *, steps: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "verdict": self.verdict,
            "verdict_reason": self.verdict_reason,
            "num_steps": self.num_steps,
            "first_step": self.first_step,
            "final_step": self.final_step,
            "last_planned_step": self.last_planned_step,
            "final_loss": self.final_loss,
            "throughput_tokens_per_sec_per_gpu": self.throughput,
            "throughput_window": None
            if self.window is None
            else dict(zip(("first_step", "last_step", "steps"), self.window, strict=True)),
            "mean_step_time_s": self.mean_step_time,
            "flops_per_token": self.flops_per_token,
            "peak_flops_per_gpu": self.peak_flops_per_gpu,
            "model_tflops_per_gpu": self.model_tflops_per_gpu,
            "mfu": self.mfu,
            "consumed_samples": self.consumed_samples,
            "val_loss": self.val_loss,
            "val_loss_history": [{STEP: s, VAL_LOSS: v} for s, v in self.val_loss_history],
            "baseline": None
            if self.baseline is None
            else {
                "final_loss": self.baseline.final_loss,
                "throughput": self.baseline.throughput,
                "final_step": self.baseline.final_step,
                "source": self.baseline.source,
            },
            "threshold": self.threshold,
            "loss_rel_diff": self.loss_rel_diff,
            "throughput_rel_diff": self.throughput_rel_diff,
            "notes": list(self.notes),
            "sources": [
                {
                    "path": s.path,
                    "bytes": s.bytes,
                    "records": s.records,
                    "first_step": s.first_step,
                    "last_step": s.last_step,
                    "skipped_lines": s.skipped,
                    "skipped_examples": s.skipped_examples,
                    "partial_last_line": s.partial_last_line,
                }
                for s in self.sources
            ],
            "rewinds": [
                {"source": r.source, "first_dropped": r.first_dropped, "last_dropped": r.last_dropped}
                for r in self.records.rewinds
            ],
        }
        if steps:
            body["steps"] = [r.as_dict() for r in self.records]
        return json_safe(body)

    def iter_steps(self) -> Iterator[dict[str, Any]]:
        """metrics.json's ``steps`` entries one at a time, so writing them needs no list of all steps."""
        for record in self.records:
            yield json_safe(record.as_dict())


def json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: those become null (the verdict reason still says the loss was nan).
    Integral floats become ints, as NeMo prints them (``global_step: 97``, ``consumed_samples: 12544``)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def val_loss_history(series: StepSeries) -> list[tuple[int, float]]:
    """Each distinct validation result, with the first step whose line shows it (NeMo repeats the latest one on
    every later line). Two validations that print the same 4 digits in a row look like one."""
    history: list[tuple[int, float]] = []
    for steps, values in series.slices(VAL_LOSS):
        if values is None:
            continue
        # Only a row whose value differs from the row before can start a new entry.
        for i in chain((0,), compress(count(1), map(operator.ne, values[1:], values))):
            if not history or not _same(history[-1][1], values[i]):
                history.append((int(steps[i]), values[i]))
    return history


def compute_metrics(
    series: StepSeries,
    sources: list[SourceStats],
    *,
    model: str,
    baseline: Baseline | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    flops_per_token: float | None = None,
    peak_flops_per_gpu: float | None = None,
) -> RunMetrics:
    m = RunMetrics(
        model=model,
        records=series,
        sources=sources,
        baseline=baseline,
        threshold=threshold,
        flops_per_token=flops_per_token,
        peak_flops_per_gpu=peak_flops_per_gpu,
    )
    notes = m.notes
    for source in sources:
        if source.skipped:
            notes.append(
                f"{source.path}: skipped {source.skipped} line(s) that mention 'Training epoch' but are not "
                f"metric lines; first: {source.skipped_examples[0]}"
            )
        if source.partial_last_line:
            notes.append(f"{source.path}: ignored the unterminated last line (a write cut short)")
    for rewind in series.rewinds:
        notes.append(
            f"{sources[rewind.source].path} logs step {rewind.first_dropped} again: its records replace "
            f"steps {rewind.first_dropped}..{rewind.last_dropped} logged before"
        )
    if series.rewind_count > len(series.rewinds):
        notes.append(f"... {series.rewind_count - len(series.rewinds)} more repeated steps not listed")
    if series:
        _fill(m, series, flops_per_token, peak_flops_per_gpu)
    if m.window is not None:
        for source in sources[1:]:
            if source.first_step is not None and m.window[0] <= source.first_step <= m.window[1]:
                notes.append(
                    f"step {source.first_step} starts a later job ({source.path}): its warm-up after the restart "
                    f"is inside the throughput window (the seeds' rule leaves out only the run's first and last "
                    f"{EDGE_STEPS} steps)"
                )
    judgement = judge(
        final_loss=m.final_loss,
        final_step=m.final_step,
        last_planned_step=m.last_planned_step,
        baseline=baseline,
        threshold=threshold,
    )
    m.verdict, m.verdict_reason, m.loss_rel_diff = judgement.verdict, judgement.reason, judgement.loss_rel_diff
    if baseline is not None:
        m.throughput_rel_diff = relative_diff(m.throughput, baseline.throughput)
    return m


def _fill(m: RunMetrics, series: StepSeries, flops_per_token: float | None, peak: float | None) -> None:
    notes, n = m.notes, len(series)
    last = series[-1]
    m.first_step, m.final_step, m.last_planned_step = series[0].global_step, last.global_step, last.last_iteration
    m.final_loss = last.get(LOSS)
    m.consumed_samples = last.get(CONSUMED)
    m.val_loss = last.get(VAL_LOSS)
    m.val_loss_history = val_loss_history(series)
    if m.final_loss is None:
        notes.append(f"the last step ({last.global_step}) has no {LOSS}")
    if m.final_step < m.last_planned_step:
        notes.append(
            f"incomplete: the logs end at step {m.final_step}; the run plans steps up to {m.last_planned_step}"
        )
    if m.final_step - m.first_step + 1 != n:
        notes.append(
            f"global_step has gaps ({n} records for steps {m.first_step}..{m.final_step}): the first and "
            f"last {EDGE_STEPS} left out of the throughput are logged records, not steps"
        )

    if n < MIN_STEPS:
        notes.append(
            f"only {n} steps logged: the throughput rule leaves out the first and last {EDGE_STEPS}, "
            f"so it needs at least {MIN_STEPS}; no throughput, step time or MFU"
        )
    else:
        window = range(EDGE_STEPS, n - EDGE_STEPS)
        m.window = (series[window[0]].global_step, series[window[-1]].global_step, len(window))
        rates = series.values(THROUGHPUT, window)
        if len(rates) < len(window):
            notes.append(
                f"{THROUGHPUT} is missing on {len(window) - len(rates)} of the {len(window)} steps in the window "
                "(NeMo's TimingCallback prints it only with log_tokens_per_sec=True)"
            )
        m.throughput = _mean(rates)
        m.mean_step_time = _mean(series.values(STEP_TIME, window))

    if m.throughput is not None and flops_per_token:
        m.model_tflops_per_gpu = m.throughput * flops_per_token / 1e12
        if peak:
            m.mfu = m.throughput * flops_per_token / peak
    if m.throughput is not None and m.mfu is None:
        missing = "FLOPs per token" if not flops_per_token else "the GPU's peak FLOP/s"
        notes.append(f"no MFU: {missing} unknown")
