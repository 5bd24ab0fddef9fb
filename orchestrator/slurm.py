"""Thin, typed wrappers over the Slurm commands the orchestrator needs besides submission.

A command that fails raises :class:`SlurmError`; it never reads as "no jobs" (a failed ``squeue`` taken as an
empty queue is how watchers double-submit).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterable, Sequence

#: sacct states of a job that may still run (requeued jobs come back as PENDING).
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


class SlurmError(RuntimeError):
    pass


def available() -> bool:
    return shutil.which("sbatch") is not None


def run(argv: Sequence[str], timeout: float = 60) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} not found: is this a Slurm login node? (PATH lacks Slurm's commands)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(argv)} did not answer within {timeout:.0f}s") from None
    if done.returncode != 0:
        raise SlurmError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    name: str
    state: str
    exit_code: str
    start: str
    end: str
    node_list: str

    @property
    def base_state(self) -> str:
        """``CANCELLED by 0`` -> ``CANCELLED``."""
        return self.state.split()[0] if self.state else "UNKNOWN"

    @property
    def active(self) -> bool:
        return self.base_state in ACTIVE_STATES


def sacct(job_ids: Iterable[str]) -> dict[str, JobRecord]:
    """Latest accounting record of each job (array tasks appear as ``<id>_<index>``)."""
    ids = sorted({str(j).split("_")[0] for j in job_ids})
    if not ids:
        return {}
    out = run(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,JobName,State,ExitCode,Start,End,NodeList"])
    records: dict[str, JobRecord] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 7:
            records[parts[0]] = JobRecord(*parts)
    return records


def queued(names: Iterable[str]) -> dict[str, str]:
    """Jobs Slurm still holds (pending, running, requeued and held), by base job id -> state, found by job name.

    ``squeue`` is the authority here: ``sacct`` shows a requeued job's last finished run (NODE_FAIL, PREEMPTED)
    until it starts again, which would read as "nothing queued".
    """
    wanted = sorted(set(names))
    if not wanted:
        return {}
    out = run(["squeue", "-h", "-n", ",".join(wanted), "-o", "%i|%T"])
    jobs: dict[str, str] = {}
    for line in out.splitlines():
        job, _, state = line.partition("|")
        jobs.setdefault(job.split("_")[0], state)
    return jobs


def history(job_id: str) -> list[JobRecord]:
    """Every run of one job, oldest first (``sacct -D``): a requeued job appears once per start."""
    out = run(["sacct", "-n", "-P", "-X", "-D", "-j", str(job_id), "-o", "JobID,JobName,State,ExitCode,Start,End,NodeList"])
    return [JobRecord(*line.split("|")) for line in out.splitlines() if line.count("|") == 6]


def cancel(job_ids: Iterable[str]) -> list[str]:
    ids = [str(j) for j in job_ids]
    if ids:
        run(["scancel", *ids])
    return ids


def requeue(job_id: str) -> None:
    run(["scontrol", "requeue", str(job_id)])


def end_time(job_id: str) -> dt.datetime | None:
    """When Slurm will end this job (its time limit), in local time; None if unknown."""
    text = run(["squeue", "-h", "-j", str(job_id), "-o", "%e"]).strip()
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None
