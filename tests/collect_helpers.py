"""Synthetic training logs for the collect tests: real metric lines (orchestrator.logline) between realistic noise."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from orchestrator.logline import as_float32, format_log_line, format_value

NOISE = (
    "node-a:12345:12399 [3] NCCL INFO Channel 07/0 : 3[3] -> 4[4] via P2P/IPC/read",
    "node-a:12345:12345 [0] NCCL WARN Call to ibv_reg_mr failed with error Cannot allocate memory",
    "\x1b[33m[NeMo W 2025-11-20 14:55:23 nemo_logging:405]\x1b[0m Could not find global_step in checkpoint name",
    "Validation: iteration 3/32",
    "Sanity checking Validation: iteration 1/2",
    "Running garbage collection at train global_step: 100",
    "Epoch 0, global step 50: 'val_loss' reached 3.62400 (best 3.62400), saving model to '/ckpt' as top 10",
    "[NeMo I 2025-11-20 14:55:24 nemo_logging:393] Async checkpoint save for step 50 finalized successfully.",
    "  warnings.warn(  # iteration 5/99 | global_step: 5 | reduced_train_loss: 1.0",
)


def printed(value: float) -> float:
    """The number a reader gets back from the log: the value as NeMo prints it, parsed again."""
    return float(format_value(value))


def step_metrics(
    step: int, *, loss: float, tps: float, gbs: int = 128, seq: int = 8192, gpus: int = 8, val_loss: float | None = None
) -> dict[str, float]:
    """A NeMo 2.5 pretraining line's fields, in NeMo's order."""
    fields = {
        "lr": 1.0e-5 * (step + 1) / 100,
        "global_batch_size": gbs,
        "global_step": step,
        "reduced_train_loss": loss,
        "train_step_timing in s": gbs * seq / gpus / tps,
        "tokens_per_sec_per_gpu": tps,
        "consumed_samples": (step + 1) * gbs,
    }
    if val_loss is not None:
        fields["val_loss"] = val_loss
    return fields


def metric_line(
    step: int,
    max_steps: int,
    fields: dict[str, float],
    *,
    prefix: str = "",
    epoch: int = 0,
    iteration: int | None = None,
) -> str:
    it = step if iteration is None else iteration
    return prefix + format_log_line(epoch, it, max_steps, fields)


def write_log(
    path: Path,
    steps: Iterable[int],
    max_steps: int,
    fields: Callable[[int], dict[str, float]],
    *,
    noise_every: int = 0,
    prefix: str = "[2025-11-20T14:55:23+08:00] retraining/0 ",
    tail: str = "",
) -> Path:
    """A log with one metric line per step, ``NOISE`` lines in between every ``noise_every`` steps, then ``tail``
    (e.g. an unterminated partial line)."""
    lines = ["All distributed processes registered. Starting with 8 processes"]
    for i, step in enumerate(steps):
        if noise_every and i % noise_every == 0:
            lines.extend(NOISE)
        lines.append(metric_line(step, max_steps, fields(step), prefix=prefix))
    path.write_text("\n".join(lines) + "\n" + tail)
    return path


__all__ = ["NOISE", "as_float32", "metric_line", "printed", "step_metrics", "write_log"]
