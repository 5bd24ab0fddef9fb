"""``ORCHESTRATOR_DEADLINE``: when a job must have saved and stopped, in Unix epoch seconds.

The driver exports it to the train step (the job's end minus the cluster's signal grace); both trainers stop at the
last step boundary from which one more step and a checkpoint save still finish before it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DEADLINE_ENV = "ORCHESTRATOR_DEADLINE"


def deadline_from_env(env: Mapping[str, str] = os.environ) -> float | None:
    """The deadline the driver exported, or None when the job has none."""
    raw = env.get(DEADLINE_ENV, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{DEADLINE_ENV}={raw!r} is not Unix epoch seconds (e.g. $(date -d '+4 hours' +%s))") from None


def deadline_reached(now: float, deadline: float | None, step_s: float, save_s: float) -> bool:
    """True when one more step and one checkpoint save would not finish before the deadline."""
    return deadline is not None and now + step_s + save_s >= deadline
