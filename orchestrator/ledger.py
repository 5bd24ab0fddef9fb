"""The job ledger: every job submitted for a run and every attempt that ran, in SQLite inside the run directory.

Slurm forgets finished jobs from ``squeue`` quickly and ``sacct`` knows states but not training progress, so the
ledger records what only we know: which stage and chain position a job is, and for each attempt (a start of a
job, requeues included) the checkpoint step it started from and ended at and how it ended. The crash-loop guard,
``status`` and ``nightly`` all decide from it.

Writers are the submitting CLI and the in-job drivers, rarely at the same moment; each write is one short
transaction with a generous busy timeout (no WAL: run directories live on shared file systems).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

Outcome = Literal[
    "running",  # started, not ended (or the driver was killed; reconciled from sacct)
    "done",  # the run reached max_steps
    "time_limit",  # stopped itself before the time limit after saving
    "partition",  # trained its chain.steps_per_job steps (MLPerf's MAX_STEPS) and saved
    "preempted",  # stopped by a signal it did not ask for (preemption, requeue, cancel)
    "node_failure",
    "failed",
    "cancelled",
    "stopped",  # this job was not needed or the chain gave up (done earlier, crash loop)
    "completed",  # a data stage finished its work
]
OUTCOMES: tuple[str, ...] = Outcome.__args__  # type: ignore[attr-defined]

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    stage TEXT NOT NULL,
    chain_index INTEGER,
    array_size INTEGER,
    dependency TEXT,
    script TEXT,
    submitted_at TEXT NOT NULL,
    cancelled_at TEXT
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    restart INTEGER NOT NULL DEFAULT 0,
    host TEXT,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    start_step INTEGER,
    end_step INTEGER,
    outcome TEXT NOT NULL DEFAULT 'running',
    exit_code INTEGER,
    log_path TEXT,
    note TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS strike_resets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    after_attempt INTEGER NOT NULL,
    event INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Job:
    job_id: str
    stage: str
    chain_index: int | None
    array_size: int | None
    dependency: str | None
    script: str | None
    submitted_at: str
    cancelled_at: str | None


@dataclass
class Attempt:
    id: int
    job_id: str
    stage: str
    restart: int
    host: str | None
    started_at: str
    ended_at: str | None
    start_step: int | None
    end_step: int | None
    outcome: str
    exit_code: int | None
    log_path: str | None
    note: str | None

    @property
    def progressed(self) -> bool:
        """Did this attempt leave a newer complete checkpoint than it started from?"""
        return self.end_step is not None and self.end_step > (self.start_step or 0)


@dataclass
class Event:
    id: int
    at: str
    kind: str
    message: str


@dataclass
class StrikeReset:
    """A fresh strike count: strikes count only attempts after ``after_attempt`` (a person continued a stopped chain)."""

    id: int
    at: str
    after_attempt: int
    #: The ``reset`` event recorded with it; a ``stop`` event newer than this is a stop it does not answer.
    event: int
    reason: str


class Ledger:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        db = sqlite3.connect(self.path, timeout=60)
        try:
            db.executescript(SCHEMA)  # idempotent; executescript manages its own transaction
        finally:
            db.close()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 60000")
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    # -------------------------------------------------------------------------------------------- writes

    def add_job(
        self,
        job_id: str,
        stage: str,
        *,
        chain_index: int | None = None,
        array_size: int | None = None,
        dependency: str | None = None,
        script: str | None = None,
    ) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (job_id, stage, chain_index, array_size, dependency, script, now()),
            )

    def mark_cancelled(self, job_ids: list[str]) -> None:
        with self._connect() as db:
            db.executemany("UPDATE jobs SET cancelled_at = ? WHERE job_id = ?", [(now(), j) for j in job_ids])

    def start_attempt(
        self,
        job_id: str,
        stage: str,
        *,
        restart: int = 0,
        host: str | None = None,
        start_step: int | None = None,
        log_path: str | None = None,
    ) -> int:
        with self._connect() as db:
            cur = db.execute(
                "INSERT INTO attempts (job_id, stage, restart, host, started_at, start_step, log_path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, stage, restart, host, now(), start_step, log_path),
            )
            return int(cur.lastrowid or 0)

    def end_attempt(
        self,
        attempt_id: int,
        outcome: str,
        *,
        end_step: int | None = None,
        exit_code: int | None = None,
        note: str | None = None,
    ) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; one of {OUTCOMES}")
        with self._connect() as db:
            db.execute(
                "UPDATE attempts SET ended_at = ?, outcome = ?, end_step = ?, exit_code = ?,"
                " note = COALESCE(?, note) WHERE id = ?",
                (now(), outcome, end_step, exit_code, note, attempt_id),
            )

    def event(self, kind: str, message: str) -> None:
        with self._connect() as db:
            db.execute("INSERT INTO events (at, kind, message) VALUES (?, ?, ?)", (now(), kind, message))

    def reset_strikes(self, reason: str) -> None:
        """Count strikes afresh from the next attempt on, recorded with a ``reset`` event (one transaction)."""
        with self._connect() as db:
            (after,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM attempts").fetchone()
            event = db.execute(
                "INSERT INTO events (at, kind, message) VALUES (?, 'reset', ?)", (now(), reason)
            ).lastrowid
            db.execute(
                "INSERT INTO strike_resets (at, after_attempt, event, reason) VALUES (?, ?, ?, ?)",
                (now(), after, event, reason),
            )

    # --------------------------------------------------------------------------------------------- reads

    def jobs(self, stage: str | None = None) -> list[Job]:
        return self._select(Job, "jobs", stage, "submitted_at, rowid")

    def job(self, job_id: str) -> Job | None:
        """One job by its Slurm id, or None when this run did not submit it."""
        names = ", ".join(f.name for f in fields(Job))
        with self._connect() as db:
            row = db.execute(f"SELECT {names} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else Job(*row)

    def attempts(self, stage: str | None = None) -> list[Attempt]:
        return self._select(Attempt, "attempts", stage, "id")

    def events(self) -> list[Event]:
        return self._select(Event, "events", None, "id")

    def strike_resets(self) -> list[StrikeReset]:
        return self._select(StrikeReset, "strike_resets", None, "id")

    def _select(self, cls: type, table: str, stage: str | None, order: str) -> list:
        names = ", ".join(f.name for f in fields(cls))
        where, args = ("WHERE stage = ?", (stage,)) if stage else ("", ())
        with self._connect() as db:
            rows = db.execute(f"SELECT {names} FROM {table} {where} ORDER BY {order}", args).fetchall()
        return [cls(*row) for row in rows]
