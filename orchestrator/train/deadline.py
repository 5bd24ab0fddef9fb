"""The deadline test both trainers apply: can one more step and one checkpoint save still finish before it?"""

from __future__ import annotations


def deadline_reached(now: float, deadline: float | None, step_s: float, save_s: float) -> bool:
    """True when one more step and one checkpoint save would not finish before the deadline."""
    return deadline is not None and now + step_s + save_s >= deadline
