"""The MLPerf log writer and reader: the format the package parses, one run per file, rank 0 only."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from orchestrator.contract import JobEnvironment
from orchestrator.mlperf.hyperparameters import reference_hyperparameters
from orchestrator.mlperf.mllog import (
    RUN_EVENTS,
    MlperfLogger,
    Submission,
    chain_result,
    log_filename,
    read_mllog,
    read_runs,
)
from orchestrator.mlperf.schedule import Schedule

SUBMISSION = Submission(org="orchestrator", platform="288xDGX-H100")


def fake_clock(start_s: float = 1_759_832_000.0, step_s: float = 60.0):
    """Each event one minute after the previous one, so durations are exact."""
    ticks = itertools.count()
    return lambda: start_s + step_s * next(ticks)


def write_run(
    path: Path,
    losses: list[float],
    *,
    gbs: int = 1152,
    start_step: int = 0,
    rank: int = 0,
    seed: int = 1234,
    hyperparameters: dict | None = None,
) -> MlperfLogger:
    """A run as a trainer logs it: evaluations on the schedule's grid from ``start_step`` on."""
    schedule = Schedule(gbs, allow_new_rcp=True)
    log = MlperfLogger(path, rank=rank, gbs=gbs, echo=False, clock=fake_clock())
    log.on_init_start()
    params = hyperparameters or reference_hyperparameters(schedule, dp=8, mbs=1, seed=seed, start_step=start_step)
    log.on_train_start(start_step, params, SUBMISSION)
    step = start_step
    for loss in losses:
        step = schedule.next_eval_step(step)
        log.on_eval_start(step)
        if log.on_eval_end(step, loss):
            break
    log.on_train_end(step)
    return log


def test_lines_are_the_package_format(tmp_path: Path) -> None:
    parser = pytest.importorskip("mlperf_logging.compliance_checker.mlp_parser")
    log = write_run(tmp_path / "run.log", [5.76, 5.58])
    lines, errors = parser.parse_file(str(log.path), ruleset="6.0.0")
    assert errors == []
    assert [line.key for line in lines][:2] == ["cache_clear", "init_start"]
    first = json.loads(log.path.read_text().splitlines()[0].removeprefix(":::MLLOG "))
    assert list(first) == ["namespace", "time_ms", "event_type", "key", "value", "metadata"]
    assert first["metadata"]["file"] == __file__  # the trainer's call site, as mllog records it
    assert isinstance(first["time_ms"], int)


def test_event_order_is_the_reference_callbacks(tmp_path: Path) -> None:
    log = write_run(tmp_path / "run.log", [5.76, 5.58])
    records = [json.loads(line.removeprefix(":::MLLOG ")) for line in log.path.read_text().splitlines()]
    keys = [r["key"] for r in records if r["key"] in RUN_EVENTS]
    assert keys == [
        "cache_clear",
        "init_start",
        "init_stop",
        "run_start",
        "epoch_start",
        "block_start",
        "block_stop",
        "eval_start",
        "eval_accuracy",
        "eval_stop",
        "block_start",
        "block_stop",
        "eval_start",
        "eval_accuracy",
        "eval_stop",
        "epoch_stop",
        "run_stop",
        "train_samples",
    ]
    by_key = {r["key"]: r for r in records}
    assert by_key["run_stop"]["metadata"]["status"] == "success"
    assert by_key["eval_accuracy"]["metadata"]["samples_count"] == 256 * 1152
    assert by_key["train_samples"]["value"] == 256 * 1152


def test_other_ranks_write_nothing(tmp_path: Path) -> None:
    log = write_run(tmp_path / "rank1.log", [5.5], rank=1)
    assert not log.enabled
    assert not (tmp_path / "rank1.log").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_log_is_never_appended_to(tmp_path: Path) -> None:
    first = write_run(tmp_path / "job.log", [5.5])
    second = write_run(tmp_path / "job.log", [5.5])
    assert first.path == tmp_path / "job.log"
    assert second.path == tmp_path / "job.1.log"
    assert len(read_runs(first.path)) == 1 and len(read_runs(second.path)) == 1


def test_read_back_time_to_train_and_curve(tmp_path: Path) -> None:
    log = write_run(tmp_path / "run.log", [5.76, 5.70, 5.64, 5.58, 5.50])
    result = read_mllog(log.path)
    assert result.status == "success"
    assert result.evals == [(276_480, 5.76), (294_912, 5.70), (313_344, 5.64), (331_776, 5.58)]
    assert result.reached
    # fake_clock puts one minute between events, so the run lasts as many minutes as events lie between.
    lines = log.path.read_text().splitlines()
    keys = [json.loads(line.removeprefix(":::MLLOG "))["key"] for line in lines]
    assert result.run_minutes == keys.index("run_stop") - keys.index("run_start")
    assert result.time_to_train_minutes == result.run_minutes
    assert result.params["seed"] == 1234 and result.global_batch_size == 1152
    assert result.params["submission_platform"] == "288xDGX-H100"
    assert result.train_samples == 331_776
    assert result.errors == []


def test_a_run_that_misses_the_target_is_aborted(tmp_path: Path) -> None:
    result = read_mllog(write_run(tmp_path / "run.log", [5.9, 5.8]).path)
    assert result.status == "aborted" and not result.reached
    assert result.time_to_train_minutes is None and result.run_minutes is not None


def test_killed_job_and_torn_last_line(tmp_path: Path) -> None:
    """A job killed by its time limit: no run_stop, and the last write cut in the middle."""
    path = tmp_path / "killed.log"
    log = MlperfLogger(path, rank=0, gbs=1152, echo=False, clock=fake_clock())
    log.on_init_start()
    log.on_train_start(0, {"seed": 1}, SUBMISSION)
    log.on_eval_start(240)
    log.on_eval_end(240, 5.9)
    log.close()
    with open(path, "a") as handle:
        handle.write(':::MLLOG {"namespace": "", "time_ms": 17598')
    result = read_mllog(path)
    assert not result.complete and result.run_minutes is None and result.status is None
    assert result.evals == [(276_480, 5.9)]
    assert len(result.errors) == 1 and "killed.log:" in result.errors[0]


def test_shared_append_mode_log_of_the_reference_splits_into_runs(tmp_path: Path) -> None:
    """The reference appends every partition (and every rank's cache_clear/init_start) to one file."""
    shared = tmp_path / "mlperf_llama31_405b.log"
    parts = [
        write_run(tmp_path / "p0.log", [5.9], start_step=0),
        write_run(tmp_path / "p1.log", [5.7, 5.5], start_step=240),
    ]
    with open(shared, "w") as out:
        for part in parts:
            text = part.path.read_text()
            first_two = "".join(text.splitlines(keepends=True)[:2])
            out.write(first_two * 3 + text)  # three ranks' duplicate cache_clear/init_start
    runs = read_runs(shared)
    assert [run.params["init_checkpoint_step"] for run in runs] == [0, 240]
    assert [run.status for run in runs] == ["aborted", "success"]
    with pytest.raises(ValueError, match="2 runs in one MLPerf log.*read_runs"):
        read_mllog(shared)


def test_chain_of_partitions(tmp_path: Path) -> None:
    p0 = read_mllog(write_run(tmp_path / "p0.log", [5.9], start_step=0).path)
    p1 = read_mllog(write_run(tmp_path / "p1.log", [5.7, 5.5], start_step=240).path)
    chain = chain_result([p0, p1])
    assert chain.status == "success" and chain.reached
    assert chain.evals == [(276_480, 5.9), (294_912, 5.7), (313_344, 5.5)]
    assert chain.train_minutes == p0.run_minutes + p1.run_minutes
    with pytest.raises(ValueError, match="partition order"):
        chain_result([p1, p0])


def test_log_filename_and_rank() -> None:
    assert log_filename("405b", 1234, 2, "98765") == "mlperf_405b_seed1234_par2_98765.log"
    assert log_filename("405b", 1234, 2, 98765, attempt=1) == "mlperf_405b_seed1234_par2_98765_r1.log"
    with pytest.raises(ValueError, match="file name"):
        log_filename("../x", 1, 0, "1")
    assert JobEnvironment.current({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}).global_rank == 3
    assert JobEnvironment.current({"RANK": "5", "WORLD_SIZE": "8", "SLURM_PROCID": "3"}).global_rank == 5
    assert JobEnvironment.current({}).global_rank == 0


def test_a_job_log_is_named_for_the_partition_job_and_attempt_and_starts_the_init(tmp_path: Path) -> None:
    from orchestrator.mlperf.mllog import open_job_log
    from orchestrator.plan import build_plan

    base = {"data.source": "preprocessed", "data.train_prefixes": ["/d/a"]}
    plan = build_plan("llama31_405b", "h100-pyxis", base, run_id="r405", run_dir=tmp_path / "run")
    env = {"SLURM_JOB_ID": "4242", "ORCHESTRATOR_CHAIN_INDEX": "3", "SLURM_RESTART_COUNT": "1"}
    log = open_job_log(plan, JobEnvironment.current(env))
    assert (
        log is not None
        and log.path == tmp_path / "run" / "mlperf" / f"mlperf_r405_seed{plan.train.seed}_par3_4242_r1.log"
    )
    log.close()
    lines = [json.loads(line.removeprefix(":::MLLOG ")) for line in log.path.read_text().splitlines()]
    assert [(r["key"], r["event_type"]) for r in lines] == [
        ("cache_clear", "POINT_IN_TIME"),
        ("init_start", "INTERVAL_START"),
    ]

    other = open_job_log(
        plan, JobEnvironment.current({**env, "RANK": "5", "WORLD_SIZE": "8"})
    )  # every rank gets a logger; only rank 0 writes
    assert other is not None and not other.enabled and len(list((tmp_path / "run" / "mlperf").iterdir())) == 1
    assert (
        open_job_log(build_plan("llama3_8b", "h100-pyxis", base, run_dir=tmp_path / "r8"), JobEnvironment.current(env))
        is None
    )
