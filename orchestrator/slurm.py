"""Thin, typed wrappers over the Slurm commands the orchestrator needs besides submission.

A command that fails raises :class:`SlurmError`; it never reads as "no jobs" (a failed ``squeue`` taken as an
empty queue is how watchers double-submit).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: squeue states of a job whose work is under way (suspended included: it resumes where it was).
RUNNING_STATES = {"RUNNING", "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "SUSPENDED"}
#: squeue states of a job waiting its turn; any other state squeue lists (REQUEUE_HOLD, SPECIAL_EXIT) is held.
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_FED"}
#: What squeue says when asked for one job id it no longer knows (several unknown ids give an empty list).
_UNKNOWN_JOB = "Invalid job id specified"
_SACCT_FIELDS = "JobID,JobName,State,ExitCode,Start,End,NodeList"


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


@dataclass(frozen=True)
class JobState:
    """What Slurm says about one job (an array job: about all its tasks)."""

    job_id: str
    #: squeue's state of each part Slurm still holds (pending, running, requeued, held); empty once it left the queue.
    held: tuple[str, ...]
    #: sacct's latest record of the job, or of each array task; empty when accounting has none (yet).
    records: tuple[JobRecord, ...]

    @property
    def alive(self) -> bool:
        """Slurm holds the job: it runs, or may run (again)."""
        return bool(self.held)

    @property
    def states(self) -> list[str]:
        """squeue's states while Slurm holds the job, else sacct's: how it ended."""
        return sorted(set(self.held)) if self.held else sorted({r.base_state for r in self.records})

    @property
    def cancelled(self) -> bool:
        """Someone cancelled the job (``scancel``): sacct says so from the moment of the cancel."""
        return any(r.base_state == "CANCELLED" for r in self.records)


@dataclass(frozen=True)
class Liveness:
    jobs: dict[str, JobState]
    #: Why sacct did not answer: how jobs ended is unknown then; whether they are alive is known (from squeue).
    accounting_error: str | None = None

    def alive(self) -> list[str]:
        return [job_id for job_id, state in self.jobs.items() if state.alive]


def liveness(job_ids: Iterable[str]) -> Liveness:
    """The one answer to "is this job alive, held, finished, and how did it end?", for status, wait, cancel,
    nightly, the chain and the smoke test.

    ``squeue`` (by job id) is the authority on what Slurm holds: ``sacct`` shows a requeued job's last finished
    run (NODE_FAIL) while it waits out its hold, and a held job as PENDING. When ``squeue`` cannot answer
    (slurmctld restarting) this raises :class:`SlurmError`: no job can be ruled out. ``sacct`` then says how the
    jobs that left the queue ended; its failure (slurmdbd down) is reported in ``accounting_error``. Keys are the
    ids asked for; an array job's tasks (``79_0``) are folded into the array's id (``79``).
    """
    wanted = list(dict.fromkeys(str(j) for j in job_ids))
    if not wanted:
        return Liveness({})
    try:
        queue = run(["squeue", "-h", "-j", ",".join(wanted), "-o", "%i|%T"])
    except SlurmError as exc:
        if _UNKNOWN_JOB not in str(exc):
            raise
        queue = ""
    held: dict[str, list[str]] = {j: [] for j in wanted}
    for line in queue.splitlines():
        job, _, state = line.strip().partition("|")
        if (owner := _owner(job, wanted)) is not None:
            held[owner].append(state)
    records: dict[str, list[JobRecord]] = {j: [] for j in wanted}
    error = None
    try:
        out = run(["sacct", "-n", "-P", "-X", "-j", ",".join(wanted), "-o", _SACCT_FIELDS])
    except SlurmError as exc:
        error, out = str(exc), ""
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 7 and (owner := _owner(parts[0], wanted)) is not None:
            records[owner].append(JobRecord(*parts))
    jobs = {j: JobState(j, tuple(held[j]), tuple(records[j])) for j in wanted}
    return Liveness(jobs, error)


def _owner(reported: str, wanted: list[str]) -> str | None:
    """Which asked-for id a line of squeue or sacct is about: itself, or the array it is a task of."""
    if reported in wanted:
        return reported
    base = reported.split("_")[0]
    return base if base in wanted else None


def history(job_id: str) -> list[JobRecord]:
    """Every run of one job, oldest first (``sacct -D``): a requeued job appears once per start."""
    out = run(["sacct", "-n", "-P", "-X", "-D", "-j", str(job_id), "-o", _SACCT_FIELDS])
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
