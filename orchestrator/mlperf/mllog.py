"""MLPerf compliance logs (the ``mlperf-logging`` format): write one per training job, read them back.

One event per line, ``:::MLLOG {json}`` with the keys in this order (mlperf_logging/mllog/mllog.py)::

    :::MLLOG {"namespace": "", "time_ms": 1759832919879, "event_type": "INTERVAL_START", "key": "run_start",
              "value": null, "metadata": {"file": "train.py", "lineno": 88}}

Written here rather than through ``mlperf_logging.mllog``: that module configures one process-global logger
(``mllog.config(filename=...)`` adds a handler each call), so a job could not switch files cleanly, and the package
pulls pandas and scipy into every training image. The format is small; the tests hold it against the package's own
parser and compliance checker.

Differences from the reference's ``callbacks.py``, on purpose:

- only rank 0 writes (the reference logs ``cache_clear``/``init_start`` from every rank, before
  ``torch.distributed`` is up);
- one file per job (partition) and seed, created exclusively (the reference appends every partition and seed to
  one ``mlperf_llama31_405b.log``, which the checker then sees as several runs);
- logging does not depend on ``MAX_STEPS`` (the reference attaches its callbacks only when it is set).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from orchestrator.contract import JobEnvironment
from orchestrator.mlperf.rules import BENCHMARKS, LLAMA31_405B

if TYPE_CHECKING:
    from orchestrator.plan import RunPlan

TOKEN = ":::MLLOG "
#: The partition (0-based job index in the chain) a training job runs; the driver exports it.

INTERVAL_START = "INTERVAL_START"
INTERVAL_END = "INTERVAL_END"
POINT_IN_TIME = "POINT_IN_TIME"

CACHE_CLEAR = "cache_clear"
INIT_START = "init_start"
INIT_STOP = "init_stop"
RUN_START = "run_start"
RUN_STOP = "run_stop"
EPOCH_START = "epoch_start"
EPOCH_STOP = "epoch_stop"
BLOCK_START = "block_start"
BLOCK_STOP = "block_stop"
EVAL_START = "eval_start"
EVAL_STOP = "eval_stop"
EVAL_ACCURACY = "eval_accuracy"
TRAIN_SAMPLES = "train_samples"
SAMPLES_COUNT = "samples_count"
STATUS = "status"
SUCCESS = "success"
ABORTED = "aborted"

#: Keys that mark the course of a run; every other point-in-time key is a parameter (submission, hyper-parameter).
RUN_EVENTS = frozenset(
    {
        CACHE_CLEAR,
        INIT_START,
        INIT_STOP,
        RUN_START,
        RUN_STOP,
        EPOCH_START,
        EPOCH_STOP,
        BLOCK_START,
        BLOCK_STOP,
        EVAL_START,
        EVAL_STOP,
        EVAL_ACCURACY,
        TRAIN_SAMPLES,
        "tracked_stats",
    }
)


@dataclass(frozen=True)
class Submission:
    """The ``submission_*`` keys; the checker wants a non-empty org and platform (e.g. ``"64xDGX-H100"``)."""

    org: str
    platform: str
    division: str = "closed"
    status: str = "onprem"
    benchmark: str = LLAMA31_405B.benchmark

    def items(self) -> list[tuple[str, str]]:
        return [
            ("submission_benchmark", self.benchmark),
            ("submission_org", self.org),
            ("submission_division", self.division),
            ("submission_status", self.status),
            ("submission_platform", self.platform),
        ]


def log_filename(experiment: str, seed: int, partition: int, job_id: str | int, attempt: int = 0) -> str:
    """``mlperf_<exp>_seed<S>_par<j>_<jobid>.log``; a requeued attempt (``SLURM_RESTART_COUNT``) adds ``_r<k>``."""
    for name, value in (("experiment", experiment), ("job_id", str(job_id))):
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"{name} {value!r} cannot be part of a file name")
    retry = f"_r{attempt}" if attempt else ""
    return f"mlperf_{experiment}_seed{seed}_par{partition}_{job_id}{retry}.log"


def _open_exclusive(path: Path) -> tuple[IO[str], Path]:
    """A new file at ``path``, or at ``<stem>.<n><suffix>`` if taken: one run per file, never appended to."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 0
    while True:
        try:
            return open(candidate, "x", encoding="utf-8"), candidate
        except FileExistsError:
            n += 1
            candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
            print(f"{path} exists: this run's MLPerf log goes to {candidate}", file=sys.stderr)


def _jsonable(value: Any) -> Any:
    """numpy / torch scalars (a loss tensor) become Python numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot log a {type(value).__name__} in an MLPerf log")


def _caller() -> dict[str, Any]:
    """File and line of the first frame outside this module, as mllog records them."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return {"file": frame.f_code.co_filename, "lineno": frame.f_lineno}


class MlperfLogger:
    """Writes one run's MLPerf log. Ranks other than 0 write nothing and create no file.

    A trainer calls the ``on_*`` hooks, which emit the reference's event sequence::

        log = MlperfLogger(run_dir / log_filename(...), rank=JobEnvironment.current().global_rank, gbs=schedule.gbs)
        log.on_init_start()                            # process start: cache_clear, init_start
        ...                                            # build model, load checkpoint, build data
        log.on_train_start(step, hyperparameters, submission)   # ..., init_stop, run_start, epoch/block_start
        log.on_eval_start(step)                        # block_stop, eval_start
        stop = log.on_eval_end(step, val_loss)         # eval_accuracy, eval_stop (+ block_start); True at target
        log.on_train_end(step)                         # epoch_stop, run_stop{status}, train_samples

    ``step`` is always the number of optimizer steps done (``trainer.global_step``); ``samples_count`` is
    ``step * gbs``, counted from step 0 of the whole run, also in a resumed job.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        rank: int,
        gbs: int,
        target_log_ppl: float = LLAMA31_405B.target_log_ppl,
        echo: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gbs = gbs
        self.target_log_ppl = target_log_ppl
        self.echo = echo
        self.clock = clock
        self.status = ABORTED
        self.path: Path | None = None
        self._file: IO[str] | None = None
        if rank == 0:
            self._file, self.path = _open_exclusive(Path(path))

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def _write(self, event_type: str, key: str, value: Any, metadata: Mapping[str, Any] | None) -> None:
        if self._file is None:
            return
        record = {
            "namespace": "",
            "time_ms": int(self.clock() * 1e3),
            "event_type": event_type,
            "key": key,
            "value": value,
            "metadata": {**_caller(), **(metadata or {})},
        }
        line = TOKEN + json.dumps(record, default=_jsonable)
        self._file.write(line + "\n")
        self._file.flush()
        if self.echo:
            print(line, flush=True)

    def event(self, key: str, value: Any = None, metadata: Mapping[str, Any] | None = None) -> None:
        self._write(POINT_IN_TIME, key, value, metadata)

    def start(self, key: str, value: Any = None, metadata: Mapping[str, Any] | None = None) -> None:
        self._write(INTERVAL_START, key, value, metadata)

    def end(self, key: str, value: Any = None, metadata: Mapping[str, Any] | None = None) -> None:
        self._write(INTERVAL_END, key, value, metadata)

    def _samples(self, step: int) -> dict[str, int]:
        return {SAMPLES_COUNT: int(step) * self.gbs}

    def on_init_start(self) -> None:
        """At process start, before the model, the checkpoint and the data are built (that time is not timed)."""
        self.event(CACHE_CLEAR, True)
        self.start(INIT_START)

    def on_train_start(self, step: int, hyperparameters: Mapping[str, Any], submission: Submission) -> None:
        """When the first training step is about to run: everything before is initialisation, after is timed."""
        for key, value in (*submission.items(), *hyperparameters.items()):
            self.event(key, value)
        self.end(INIT_STOP)
        self.start(RUN_START)
        self.start(EPOCH_START, metadata=self._samples(step))
        self.start(BLOCK_START, metadata=self._samples(step))

    def on_eval_start(self, step: int) -> None:
        self.end(BLOCK_STOP, metadata=self._samples(step))
        self.start(EVAL_START, metadata=self._samples(step))

    def on_eval_end(self, step: int, val_loss: float) -> bool:
        """Log the validation log-perplexity; True once it meets the target (then stop training)."""
        val_loss = float(val_loss)
        self.event(EVAL_ACCURACY, val_loss, metadata=self._samples(step))
        self.end(EVAL_STOP, metadata=self._samples(step))
        reached = val_loss <= self.target_log_ppl
        if reached:
            self.status = SUCCESS
        else:
            self.start(BLOCK_START, metadata=self._samples(step))
        return reached

    def on_train_end(self, step: int) -> str:
        """At the end of training, for any reason; status ``success`` only if an evaluation met the target."""
        self.end(EPOCH_STOP, metadata=self._samples(step))
        self.end(RUN_STOP, metadata={**self._samples(step), STATUS: self.status})
        self.event(TRAIN_SAMPLES, int(step) * self.gbs)
        self.close()
        return self.status

    def close(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def __enter__(self) -> MlperfLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_job_log(plan: RunPlan, job: JobEnvironment) -> MlperfLogger | None:
    """The compliance log of this training job of an MLPerf plan, started; None when the plan is not one.

    Call it at process start: it logs ``cache_clear`` and ``init_start`` now, so the model build and the checkpoint
    load count as initialisation. One file per job and seed, ``<run_dir>/mlperf/mlperf_<run_id>_seed<S>_par<j>_<job>
    [_r<k>].log``: ``j`` the job's chain index, ``k`` its restart count (a requeued attempt). Global rank 0 writes;
    the others get a logger that writes nothing but still tells when the target is reached.
    """
    schedule = plan.mlperf_schedule()
    if schedule is None:
        return None
    name = log_filename(plan.run_id, plan.train.seed, job.chain_index or 0, job.job_id, attempt=job.restart)
    logger = MlperfLogger(
        Path(plan.run_dir) / "mlperf" / name,
        rank=job.global_rank,
        gbs=schedule.gbs,
        target_log_ppl=schedule.target_log_ppl,
    )
    logger.on_init_start()
    return logger


@dataclass
class MlperfResult:
    """One run read back from a log: what the collector reports."""

    path: Path
    run_start_ms: int | None = None
    run_stop_ms: int | None = None
    status: str | None = None
    #: ``(samples_count, log-perplexity)`` per evaluation, in log order.
    evals: list[tuple[int, float]] = field(default_factory=list)
    #: Every other point-in-time key: submission info, hyper-parameters, seed.
    params: dict[str, Any] = field(default_factory=dict)
    train_samples: int | None = None
    #: None: the target of the benchmark the log names (``submission_benchmark``), else 405B's.
    target_log_ppl: float | None = None
    #: Lines that carry the MLLOG token but do not parse (e.g. a write cut short by a kill).
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Both ends of the timed region are in the log (a job killed by its time limit has no ``run_stop``)."""
        return self.run_start_ms is not None and self.run_stop_ms is not None

    @property
    def run_minutes(self) -> float | None:
        """``run_stop - run_start`` in minutes: MLPerf's time to train when the status is success."""
        if not self.complete:
            return None
        return (self.run_stop_ms - self.run_start_ms) / 60000

    @property
    def time_to_train_minutes(self) -> float | None:
        return self.run_minutes if self.status == SUCCESS else None

    @property
    def target(self) -> float:
        if self.target_log_ppl is not None:
            return self.target_log_ppl
        return BENCHMARKS.get(self.params.get("submission_benchmark"), LLAMA31_405B).target_log_ppl

    @property
    def reached(self) -> bool:
        return any(value <= self.target for _, value in self.evals)

    @property
    def global_batch_size(self) -> int | None:
        return self.params.get("global_batch_size")


def _records(path: Path) -> Iterable[tuple[int, dict[str, Any] | str]]:
    """``(line number, record)`` for each MLLOG line; an error text instead of the record if it does not parse."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, 1):
            at = line.find(TOKEN)
            if at < 0:
                continue
            try:
                record = json.loads(line[at + len(TOKEN) :])
                if not isinstance(record, dict) or not {"key", "event_type", "time_ms"} <= record.keys():
                    raise ValueError("missing key, event_type or time_ms")
            except ValueError as exc:
                yield lineno, f"{path}:{lineno}: unreadable MLLOG line ({exc}): {line.strip()[:120]}"
                continue
            yield lineno, record


def read_runs(path: str | os.PathLike[str], target_log_ppl: float | None = None) -> list[MlperfResult]:
    """Every run in a log. Ours hold one; the reference's shared append-mode file holds one per partition and seed.

    A new run begins at the first ``cache_clear``/``init_start`` after a ``run_start``.
    """
    path = Path(path)
    runs: list[MlperfResult] = []
    current: MlperfResult | None = None
    for _, record in _records(path):
        if isinstance(record, str):
            if current is None:
                current = MlperfResult(path, target_log_ppl=target_log_ppl)
                runs.append(current)
            current.errors.append(record)
            continue
        key = record["key"]
        if current is None or (key in (CACHE_CLEAR, INIT_START) and current.run_start_ms is not None):
            current = MlperfResult(path, target_log_ppl=target_log_ppl)
            runs.append(current)
        metadata = record.get("metadata") or {}
        value = record.get("value")
        if key == RUN_START:
            current.run_start_ms = int(record["time_ms"])
        elif key == RUN_STOP:
            current.run_stop_ms = int(record["time_ms"])
            current.status = metadata.get(STATUS)
        elif key == EVAL_ACCURACY:
            current.evals.append((int(metadata.get(SAMPLES_COUNT, -1)), float(value)))
        elif key == TRAIN_SAMPLES and record["event_type"] == POINT_IN_TIME and current.run_stop_ms is not None:
            current.train_samples = int(value)
        elif record["event_type"] == POINT_IN_TIME and key not in RUN_EVENTS:
            current.params[key] = value
    return runs


def read_mllog(path: str | os.PathLike[str], target_log_ppl: float | None = None) -> MlperfResult:
    """The one run of a per-job log; an error if the file holds none or several (use :func:`read_runs` then)."""
    runs = read_runs(path, target_log_ppl)
    if len(runs) != 1:
        raise ValueError(
            f"{path}: {len(runs)} runs in one MLPerf log (expected 1); a shared append-mode log (the reference's "
            f"mlperf_llama31_<size>.log) holds one per partition and seed: read it with read_runs()"
        )
    return runs[0]


@dataclass(frozen=True)
class ChainResult:
    """The partitions of one seed's chain, in order, read as one training run."""

    partitions: tuple[MlperfResult, ...]

    @property
    def status(self) -> str | None:
        return self.partitions[-1].status if self.partitions else None

    @property
    def evals(self) -> list[tuple[int, float]]:
        return [point for run in self.partitions for point in run.evals]

    @property
    def reached(self) -> bool:
        return any(run.reached for run in self.partitions)

    @property
    def train_minutes(self) -> float | None:
        """Sum of the partitions' timed regions (each job's initialisation and checkpoint load excluded, as in a
        single run); None if a partition has no ``run_stop`` (killed), since its timed region is unknown."""
        minutes = [run.run_minutes for run in self.partitions]
        if not minutes or any(m is None for m in minutes):
            return None
        return sum(minutes)


def chain_result(partitions: Sequence[MlperfResult]) -> ChainResult:
    """Join per-partition results (in partition order); the evaluation curve must move forward."""
    samples = [s for run in partitions for s, _ in run.evals]
    if any(b <= a for a, b in itertools.pairwise(samples)):
        raise ValueError(
            "evaluation samples_count does not increase across the partitions "
            f"({', '.join(str(run.path) for run in partitions)}): pass them in partition order, one seed at a time"
        )
    return ChainResult(tuple(partitions))
