"""The run directory: the single source of truth of a run.

<run_dir>/plan.json            the resolved plan (what every stage reads)
<run_dir>/scripts/<stage>.sbatch   the rendered scripts, exactly what Slurm ran
<run_dir>/logs/<stage>-<jobid>.out  job output (appended across requeues)
<run_dir>/ledger.sqlite        jobs and attempts (see ledger.py)
<run_dir>/checkpoints/         the trainer's checkpoints (unless the plan points elsewhere)
<run_dir>/DONE                 written by the trainer when max_steps is reached
<run_dir>/STOPPED              written by the driver when the chain gave up (crash loop), with the reason
<run_dir>/submitit/            submitit's pickles of the in-job drivers
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.atomic import atomic_write_json

#: DONE's reason when the run reached ``train.max_steps``.
MAX_STEPS_REASON = "max_steps reached"


def target_reason(target_log_ppl: float | None) -> str:
    """DONE's reason when an MLPerf evaluation met the target."""
    return f"MLPerf target log-perplexity {target_log_ppl} reached"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> RunDir:
        return cls(Path(path).absolute())

    @property
    def plan(self) -> Path:
        return self.path / "plan.json"

    @property
    def scripts(self) -> Path:
        return self.path / "scripts"

    def script(self, stage: str) -> Path:
        return self.scripts / f"{stage}.sbatch"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def log(self, stage: str, job_id: str) -> Path:
        """A job's output: ``logs/<stage>-<job id>.out`` (an array task's id is ``<array job>_<task>``)."""
        return self.logs / f"{stage}-{job_id}.out"

    def log_pattern(self, stage: str, array: bool) -> Path:
        """The same name as sbatch's ``--output`` pattern (``%j``, or ``%A_%a`` for an array task)."""
        return self.log(stage, "%A_%a" if array else "%j")

    @property
    def ledger(self) -> Path:
        return self.path / "ledger.sqlite"

    @property
    def submitit(self) -> Path:
        return self.path / "submitit"

    @property
    def done_marker(self) -> Path:
        return self.path / "DONE"

    @property
    def stopped_marker(self) -> Path:
        return self.path / "STOPPED"

    def is_run(self) -> bool:
        return self.plan.is_file()

    def done(self) -> dict[str, Any] | None:
        """The trainer's DONE record, or None while the run is incomplete."""
        return _read_json(self.done_marker)

    def stopped(self) -> dict[str, Any] | None:
        return _read_json(self.stopped_marker)

    def mark_done(self, final_step: int, consumed_samples: int, reason: str, **details: Any) -> None:
        """Rank 0 of a trainer: training is complete (``max_steps`` or the MLPerf target), and why."""
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        record = {
            "final_step": final_step,
            "consumed_samples": consumed_samples,
            **details,
            "time": now,
            "reason": reason,
        }
        atomic_write_json(self.done_marker, record)

    def mark_stopped(self, reason: str, **details: Any) -> None:
        atomic_write_json(self.stopped_marker, {"reason": reason, **details})


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
