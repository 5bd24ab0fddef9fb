"""Baselines and the seeds' accuracy verdict: the final loss within 5% of the baseline's.

A baseline file is JSON mapping a model name to what a trusted run reached::

    {"llama3_8b": {"final_loss": 6.218, "throughput": 10730, "final_step": 99, "note": "25.09, 8xH100, 2025-11-20"}}

``final_loss`` is required; ``throughput`` (tokens/s/GPU) is shown as a delta but never decides the verdict;
``final_step``, when given, must equal the run's final step, since losses at different steps do not compare.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Verdict = Literal["pass", "fail", "none"]
DEFAULT_THRESHOLD = 0.05
#: Far below the 4 significant digits a log prints, far above float rounding error.
ROUNDING_SLACK = 1e-9
_ENTRY_KEYS = {"final_loss", "throughput", "final_step", "note"}


class BaselineError(ValueError):
    """The baseline file cannot be used; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class Baseline:
    final_loss: float
    throughput: float | None = None
    final_step: int | None = None
    source: str = ""


def _number(path: Path, where: str, value: object, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BaselineError(f"{path}: {where} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise BaselineError(f"{path}: {where} must be > 0 (relative differences divide by it), got {value!r}")
    return float(value)


def load_baselines(path: str | os.PathLike[str]) -> dict[str, Baseline]:
    """All entries of a baseline file, validated; unknown keys are errors (a typo must not pass silently)."""
    path = Path(path)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaselineError(f"{path}: baseline file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(body, dict):
        raise BaselineError(f'{path}: expected an object mapping model -> {{"final_loss": ...}}')
    baselines = {}
    for model, entry in body.items():
        if not isinstance(entry, dict):
            raise BaselineError(f'{path}: entry {model!r} must be an object like {{"final_loss": 6.2}}')
        unknown = sorted(set(entry) - _ENTRY_KEYS)
        if unknown:
            raise BaselineError(f"{path}: entry {model!r} has unknown keys {unknown}; allowed: {sorted(_ENTRY_KEYS)}")
        if "final_loss" not in entry:
            raise BaselineError(f"{path}: entry {model!r} has no final_loss")
        throughput = entry.get("throughput")
        final_step = entry.get("final_step")
        if final_step is not None and (isinstance(final_step, bool) or not isinstance(final_step, int)):
            raise BaselineError(f"{path}: {model}.final_step must be an integer step, got {final_step!r}")
        baselines[model] = Baseline(
            final_loss=_number(path, f"{model}.final_loss", entry["final_loss"], positive=True),
            throughput=None if throughput is None else _number(path, f"{model}.throughput", throughput, positive=True),
            final_step=final_step,
            source=str(path),
        )
    return baselines


def choose(baselines: Mapping[str, Baseline] | None, model: str) -> tuple[Baseline | None, str | None]:
    """The model's baseline, or why there is none although baselines were given (a likely misconfiguration)."""
    if baselines is None or model in baselines:
        return (baselines or {}).get(model), None
    sources = sorted({b.source for b in baselines.values()}) or ["the baseline file"]
    return None, f"{', '.join(sources)} has no entry for {model!r} (it has: {', '.join(sorted(baselines)) or 'none'})"


def relative_diff(value: float | None, reference: float | None) -> float | None:
    """(value - reference) / reference: +0.03 is 3% above the reference."""
    if value is None or reference is None or not math.isfinite(value):
        return None
    return (value - reference) / reference


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str
    loss_rel_diff: float | None


def judge(
    *,
    final_loss: float | None,
    final_step: int | None,
    last_planned_step: int | None,
    baseline: Baseline | None,
    threshold: float = DEFAULT_THRESHOLD,
) -> Judgement:
    """``pass`` when |final - baseline| / baseline <= threshold at the baseline's step, else ``fail``; ``none``
    without a baseline. A run that stopped before its last planned step fails: the seeds compare the last step."""
    if baseline is None:
        return Judgement("none", "no baseline to compare with", None)
    diff = relative_diff(final_loss, baseline.final_loss)
    if final_loss is None or final_step is None:
        return Judgement("fail", "no reduced_train_loss at the last step", None)
    if not math.isfinite(final_loss):
        return Judgement("fail", f"the final loss is {final_loss}", None)
    if last_planned_step is not None and final_step < last_planned_step:
        return Judgement("fail", f"incomplete: the logs end at step {final_step} of {last_planned_step}", diff)
    if baseline.final_step is not None and baseline.final_step != final_step:
        return Judgement(
            "fail", f"the baseline is for step {baseline.final_step}, this run ends at step {final_step}", diff
        )
    assert diff is not None
    side = "above" if diff >= 0 else "below"
    words = (
        f"final loss {final_loss:.4g} is {abs(diff):.2%} {side} the baseline {baseline.final_loss:.4g} "
        f"(threshold {threshold:.2%})"
    )
    # Inclusive ("不超过5%"), with slack for binary rounding: (4.2 - 4.0) / 4.0 is 0.05000000000000004.
    return Judgement("pass" if abs(diff) <= threshold + ROUNDING_SLACK else "fail", words, diff)
