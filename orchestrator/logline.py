"""The per-step training log line, exactly as NeMo 2's ProgressPrinter prints it.

Both training backends emit this line and the collector parses it, so the seeds' measurement rules apply to either.
NeMo logs every metric as a float32 tensor and prints it with ``f"{val:.4}"`` (integral values as ints), e.g.::

    Training epoch 0, iteration 97/99 | lr: 1.469e-05 | global_batch_size: 128 | global_step: 97 |
    reduced_train_loss: 6.265 | train_step_timing in s: 12.22 | tokens_per_sec_per_gpu: 1.073e+04 | consumed_samples: 12544
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

#: Field order of a NeMo 2.5 line for a pretraining step (``val_loss`` appears once a validation has run).
FIELD_ORDER = (
    "lr",
    "global_batch_size",
    "global_step",
    "reduced_train_loss",
    "train_step_timing in s",
    "tokens_per_sec_per_gpu",
    "consumed_samples",
    "val_loss",
)


def as_float32(value: float) -> float:
    """Round through float32, as Lightning's logged metrics are."""
    if math.isnan(value) or math.isinf(value):
        return float(value)
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def format_value(value: float) -> str:
    """ProgressPrinter's rule: integral floats print as ints, everything else with 4 significant digits."""
    value = as_float32(float(value))
    if value.is_integer():
        return str(int(value))
    return f"{value:.4}"


def format_log_line(epoch: int, iteration: int, max_steps: int, metrics: Mapping[str, float]) -> str:
    """One training log line; ``metrics`` keys are printed in the order given."""
    line = f"Training epoch {epoch}, iteration {iteration}/{max_steps - 1}"
    for name, value in metrics.items():
        line += f" | {name}: {format_value(value)}"
    return line
