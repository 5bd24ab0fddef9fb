"""Checkpoint-resume chains on the real Slurm lab with the reference trainer: time limits, requeue (preemption),
a node going DOWN, a crash loop, kill -9 during a checkpoint write, and nightly's idempotence; and what the lab
showed under faults: slurmctld down, two chains of one run, a full disk, cancels, held jobs, array stages."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_cli

from orchestrator.collect.parse import SourceStats, iter_records, read_logs
from orchestrator.ledger import Ledger
from orchestrator.status import run_status

pytestmark = pytest.mark.slurm

TINY = ["--profile", "tiny", "--cluster", "slurm-lab"]


def data_args(lab_data: dict[str, Any]) -> list[str]:
    return [arg for key, value in lab_data.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def submit(run_dir: Path, lab_data: dict[str, Any], *args: str, expect: int = 0) -> None:
    """``submit``; with ``--wait`` it exits 0 only when the run is done."""
    done = run_cli("submit", *TINY, "--run-dir", str(run_dir), *data_args(lab_data), *args)
    assert done.returncode == expect, done.stdout + done.stderr


def wait_until(predicate, timeout: float, what: str, poll: float = 2.0) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_idle(run_dir: Path, timeout: float) -> dict[str, Any]:
    def idle() -> dict[str, Any] | None:
        status = run_status(run_dir)
        return status if status["jobs"] and not status["active"] else None

    return wait_until(idle, timeout, f"{run_dir.name} to finish")


def logged_steps(run_dir: Path) -> list[list[int]]:
    """global_step of every metric line, per log file, in the ledger's job order."""
    steps = []
    for job in Ledger(run_dir / "ledger.sqlite").jobs("train"):
        path = run_dir / "logs" / f"train-{job.job_id}.out"
        if path.exists():
            with open(path, "rb") as handle:
                steps.append([r.global_step for r in iter_records(handle, SourceStats(str(path)))])
    return steps


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))


@pytest.fixture(scope="module")
def step_seconds(lab_data, tmp_path_factory) -> float:
    """Seconds per training step of the tiny profile on two lab ranks, measured here (machines differ)."""
    run_dir = tmp_path_factory.mktemp("calibrate") / "run"
    submit(run_dir, lab_data, "--max-steps", "12", "--time", "5", "--wait")
    (log,) = (run_dir / "logs").glob("train-*.out")
    with open(log, "rb") as handle:
        timings = [r.get("train_step_timing in s") for r in iter_records(handle, SourceStats(str(log)))]
    assert len(timings) == 12
    return sorted(timings[2:])[len(timings[2:]) // 2]


def test_one_minute_jobs_chain_to_the_last_step(slurm_lab, lab_data, step_seconds, tmp_path):
    # About 80 s of training: more than one 1-minute job can do, less than four can.
    steps = max(40, math.ceil(80 / step_seconds))
    run_dir = tmp_path / "chain"
    submit(run_dir, lab_data, "--chain", "4", "--time", "1", "--max-steps", str(steps))
    status = wait_idle(run_dir, timeout=8 * 60)
    assert status["done"] and status["done"]["final_step"] == steps
    trained = [j for j in status["jobs"] if (j["steps_end"] or 0) > (j["steps_start"] or 0)]
    assert len(trained) >= 2, status["jobs"]
    assert all(j["ended"] in ("time limit", "done", "cancelled", "stopped") for j in status["jobs"]), status["jobs"]
    # A stop that saved cleanly looks clean: exit 0, and no task killed by the driver's USR2 as it exited (140).
    assert all(j["exit_code"] in (0, None) for j in status["jobs"]), status["jobs"]
    logs = "".join(p.read_text() for p in (run_dir / "logs").glob("train-*.out"))
    assert "User defined signal 2" not in logs
    per_log = logged_steps(run_dir)
    assert sum(1 for log in per_log if log) >= 2, per_log
    for log in per_log:
        assert log == sorted(set(log)), "each job's own steps strictly increase"
    # Jobs resume at their predecessor's last checkpoint (re-training any steps after it); merged with the later
    # record winning, the chain's log is strictly increasing and covers every step once.
    series, _ = read_logs([run_dir / "logs" / f"train-{j['job_id']}.out" for j in status["jobs"] if j["steps_end"]])
    assert [r.global_step for r in series] == list(range(steps))


def test_requeue_mid_run_resumes_and_finishes(slurm_lab, lab_data, step_seconds, tmp_path):
    steps = max(30, math.ceil(40 / step_seconds))
    run_dir = tmp_path / "requeue"
    submit(run_dir, lab_data, "--time", "10", "--max-steps", str(steps), "--set", "train.ckpt_interval=5")
    job_id = Ledger(run_dir / "ledger.sqlite").jobs("train")[0].job_id
    wait_until(lambda: checkpoint_steps(run_dir), 180, "a first checkpoint")
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    status = wait_idle(run_dir, timeout=6 * 60)
    assert status["done"] and status["done"]["final_step"] == steps
    attempts = [a for a in Ledger(run_dir / "ledger.sqlite").attempts("train") if a.job_id == job_id]
    assert [a.restart for a in attempts] == [0, 1]
    assert attempts[0].outcome == "preempted" and attempts[1].outcome == "done"
    assert attempts[1].start_step == attempts[0].end_step > 0


def test_node_down_mid_run_resumes_and_finishes(slurm_lab, lab_data, step_seconds, tmp_path):
    steps = max(30, math.ceil(40 / step_seconds))
    run_dir = tmp_path / "nodedown"
    submit(run_dir, lab_data, "--time", "10", "--max-steps", str(steps), "--set", "train.ckpt_interval=5")
    ledger = Ledger(run_dir / "ledger.sqlite")
    job_id = ledger.jobs("train")[0].job_id
    wait_until(lambda: checkpoint_steps(run_dir), 180, "a first checkpoint")
    nodes = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%N"], capture_output=True, text=True).stdout.strip()
    second = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True).stdout.split()[1]
    subprocess.run(["scontrol", "update", f"nodename={second}", "state=down", "reason=orchestrator-test"], check=True)
    try:
        status = wait_idle(run_dir, timeout=6 * 60)
    finally:
        # ReturnToService=2 brings the node back once its slurmd answers; resume it in case it did not.
        subprocess.run(["scontrol", "update", f"nodename={second}", "state=resume"], capture_output=True)
    assert status["done"] and status["done"]["final_step"] == steps
    attempts = [a for a in ledger.attempts("train") if a.job_id == job_id]
    assert attempts[0].outcome == "node_failure", attempts
    assert attempts[-1].outcome == "done" and attempts[-1].start_step > 0


def test_a_trainer_that_always_fails_stops_after_two_strikes(slurm_lab, lab_data, tmp_path):
    run_dir = tmp_path / "crashloop"
    for suffix in (".bin", ".idx"):  # there, as submit checks, but no dataset: every job fails reading it
        (tmp_path / f"no-such-dataset{suffix}").touch()
    broken = dict(lab_data, **{"data.train_prefixes": [str(tmp_path / "no-such-dataset")]})
    submit(run_dir, broken, "--chain", "4", "--time", "2", "--max-steps", "20")
    status = wait_idle(run_dir, timeout=4 * 60)
    assert not status["done"]
    assert (
        status["stopped"]
        and "2 consecutive training jobs ended without a new checkpoint" in status["stopped"]["reason"]
    )
    assert [j["ended"] for j in status["jobs"]] == ["failed", "failed", "cancelled", "cancelled"]
    assert "no-such-dataset" in status["stopped"]["log_tail"], "the reason comes with the failing log's last lines"
    shown = run_cli("status", str(run_dir))
    assert "STOPPED" in shown.stdout and "no-such-dataset" in shown.stdout


def test_kill_9_during_a_checkpoint_write_resumes_from_the_previous_checkpoint(slurm_lab, lab_data, tmp_path):
    """A complete checkpoint at step 5, then kill -9 while step 10 is being written: the next job resumes from 5."""
    run_dir = tmp_path / "kill9"
    ckpts = run_dir / "checkpoints"
    # Every save sleeps 15 s in the middle of writing its temporary directory (the trainer's fault-injection knob).
    env = dict(os.environ, ORCHESTRATOR_CKPT_WRITE_DELAY_S="15")
    done = run_cli(
        "submit",
        *TINY,
        "--run-dir",
        str(run_dir),
        *data_args(lab_data),
        "--chain",
        "2",
        "--time",
        "6",
        "--max-steps",
        "15",
        "--set",
        "train.ckpt_interval=5",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    wait_until(
        lambda: 5 in checkpoint_steps(run_dir) and list(ckpts.glob(".tmp-step-00000010*")),
        300,
        "step 5 complete and step 10 being written",
    )
    # kill -9 this run's trainer processes (only this run's: the lab may be running other jobs)
    subprocess.run(["pkill", "-9", "-f", f"orchestrator.train.reference --run-dir {run_dir}"], check=False)
    status = wait_idle(run_dir, timeout=8 * 60)
    attempts = Ledger(run_dir / "ledger.sqlite").attempts("train")
    assert attempts[0].outcome == "failed" and attempts[0].end_step == 5, attempts
    assert attempts[1].start_step == 5, "the half-written step-10 checkpoint was never taken as the latest"
    assert status["done"] and status["done"]["final_step"] == 15


def test_concurrent_nightly_calls_submit_exactly_one_chain(slurm_lab, lab_data, tmp_path):
    run_dir = tmp_path / "nightly"
    # A job of 5 steps out of 30 ends the first job with the run incomplete and idle.
    submit(run_dir, lab_data, "--time", "5", "--max-steps", "30", "--set", "chain.steps_per_job=5", "--wait", expect=1)
    status = run_status(run_dir)
    assert not status["done"] and not status["active"] and status["latest_checkpoint_step"] == 5
    calls = [
        subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "nightly", "--run", str(run_dir), "--json"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    decisions = [json.loads(c.communicate(timeout=120)[0]) for c in calls]
    assert sorted(d["action"] for d in decisions) == ["continue", "none"], decisions
    assert len(Ledger(run_dir / "ledger.sqlite").jobs("train")) == 2
    run_cli("cancel", str(run_dir))


def test_nightly_on_a_finished_run_submits_nothing(slurm_lab, lab_data, tmp_path):
    run_dir = tmp_path / "finished"
    submit(run_dir, lab_data, "--time", "5", "--max-steps", "4", "--wait")
    assert run_status(run_dir)["done"]
    done = run_cli("nightly", "--run", str(run_dir), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["action"] == "none"
    assert len(Ledger(run_dir / "ledger.sqlite").jobs("train")) == 1


def test_nightly_schedule_runs_the_check_at_the_hour_and_requeues_itself(slurm_lab, lab_data, tmp_path):
    run_dir = tmp_path / "scheduled"
    submit(run_dir, lab_data, "--time", "5", "--max-steps", "4", "--wait")
    at = (dt.datetime.now() + dt.timedelta(minutes=1)).strftime("%H:%M")
    done = run_cli("nightly", "--run", str(run_dir), "--schedule", at)
    assert done.returncode == 0, done.stdout + done.stderr
    first = re.search(r"queued as job (\d+)", done.stdout).group(1)
    script = run_dir / "scripts" / "nightly.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert subprocess.run(["shellcheck", str(script)], capture_output=True).returncode == 0
    # The check runs at HH:MM (Slurm starts it within its scheduling interval), decides, and queues tomorrow's.
    log = wait_until(
        lambda: next((p for p in (run_dir / "logs").glob(f"nightly-{first}.out") if "nightly:" in p.read_text()), None),
        240,
        "the scheduled nightly check to run",
    )
    assert "nightly: none: run done at step 4" in log.read_text()
    queued = subprocess.run(
        ["squeue", "-h", "-n", f"orch-{run_dir.name}-nightly", "-o", "%i %S"], capture_output=True, text=True
    ).stdout.split()
    assert queued and queued[0] != first, "tomorrow's check is queued"
    tomorrow = (dt.datetime.now() + dt.timedelta(days=1)).strftime("%Y-%m-%d")
    assert queued[1].startswith(tomorrow) and queued[1][11:16] == at
    subprocess.run(["scancel", queued[0]], check=True)


# ------------------------------------------------------------------------------------------- faults


def popen_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def controllers() -> list[str]:
    """The slurmctld processes that run (not zombies)."""
    pids = subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True, text=True).stdout.split()
    alive = []
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            if Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
                alive.append(pid)
    return alive


@contextlib.contextmanager
def controller_down() -> Iterator[None]:
    """slurmctld stopped (jobs keep running on the nodes) for the block; brought back by scripts/slurm-lab up."""
    subprocess.run(["scontrol", "shutdown", "slurmctld"], check=True, capture_output=True)
    try:
        wait_until(lambda: not controllers(), 30, "slurmctld to exit", poll=0.2)
        yield
    finally:
        subprocess.run([str(REPO / "scripts" / "slurm-lab"), "up"], check=True, capture_output=True)


def started(run_dir: Path, timeout: float = 180) -> str:
    """The run's first training job, once its trainer has logged a step."""
    job_id = Ledger(run_dir / "ledger.sqlite").jobs("train")[0].job_id
    log = run_dir / "logs" / f"train-{job_id}.out"
    wait_until(lambda: log.exists() and "Training epoch" in log.read_text(), timeout, f"job {job_id} to train")
    return job_id


def test_nightly_and_cancel_refuse_while_slurmctld_is_down(slurm_lab, lab_data, tmp_path):
    """The job RUNNING, slurmctld stopped, nightly started, slurmctld back 14 s later: nightly once decided "idle"
    and queued a second chain beside the running job. Now it, and cancel, refuse; status shows the job running."""
    run_dir = tmp_path / "ctld"
    submit(run_dir, lab_data, "--time", "5", "--max-steps", "5000")
    job_id = started(run_dir)
    try:
        for _ in range(3):
            with controller_down():
                calls = [
                    popen_cli("nightly", "--run", str(run_dir), "--json"),
                    popen_cli("cancel", str(run_dir)),
                    popen_cli("status", str(run_dir), "--json"),
                ]
                outputs = [call.communicate(timeout=120) for call in calls]  # each has met a failing squeue
                undisturbed = not controllers()  # no other user of the lab started slurmctld meanwhile
            if undisturbed:
                break
        else:
            pytest.fail("another user of the lab restarted slurmctld during each of 3 tries")
        (nightly, cancel, status) = [(call.returncode, *output) for call, output in zip(calls, outputs)]
        assert nightly[0] == 1, nightly
        decision = json.loads(nightly[1])
        assert (
            decision["action"] == "refuse"
            and f"cannot rule out that job(s) {job_id} are queued or running" in decision["why"]
        )
        assert cancel[0] == 1 and "nothing cancelled" in cancel[2], cancel
        shown = json.loads(status[1])
        assert shown["active"] and shown["warning"] and "Slurm did not answer" in shown["warning"]
        assert (shown["jobs"][0]["alive"], shown["jobs"][0]["ended"]) == (None, "running")  # the open attempt
        assert [j.job_id for j in Ledger(run_dir / "ledger.sqlite").jobs("train")] == [job_id], "no second chain"
        assert run_status(run_dir)["jobs"][0]["ended"] == "running"
    finally:
        run_cli("cancel", str(run_dir))


def test_two_chains_of_one_run_take_turns(slurm_lab, lab_data, step_seconds, tmp_path):
    """Two login nodes running nightly at the same moment, where the lock on the run directory does not reach
    across hosts: both queue a chain. Slurm's singleton dependency runs them one after the other."""
    from orchestrator.plan import RunPlan
    from orchestrator.rundir import RunDir
    from orchestrator.stages import TRAIN, stage_spec
    from orchestrator.submit import queue_stages

    run_dir = tmp_path / "twohosts"
    steps = max(20, math.ceil(20 / step_seconds))
    submit(run_dir, lab_data, "--time", "5", "--max-steps", str(steps))
    first = started(run_dir)
    plan = RunPlan.load(run_dir)
    second = queue_stages(plan, RunDir.of(run_dir), [stage_spec(plan, TRAIN)], say=lambda m: None, chain_start=1).jobs[
        0
    ][1]
    reason = subprocess.run(["squeue", "-h", "-j", second, "-o", "%r"], capture_output=True, text=True).stdout.strip()
    assert reason == "Dependency", reason
    status = wait_idle(run_dir, timeout=6 * 60)
    assert status["done"] and status["done"]["final_step"] == steps
    attempts = {a.job_id: a for a in Ledger(run_dir / "ledger.sqlite").attempts("train")}
    assert attempts[first].outcome == "done"
    # The second chain never trained: the first cancelled it when the run was done, or it started after and stopped.
    if second in attempts:
        assert attempts[first].ended_at <= attempts[second].started_at and attempts[second].outcome == "stopped"
    assert [j["ended"] for j in status["jobs"]][1] in ("cancelled", "stopped"), status["jobs"]


def test_a_stopped_chain_continues_as_the_message_says(slurm_lab, lab_data, tmp_path):
    """After the crash-loop stop, fix the cause and delete STOPPED as nightly's message says: the next job trains
    on a fresh strike count (recorded in the ledger), where it once stopped at once with the old reason."""
    run_dir = tmp_path / "continue"
    unreadable = tmp_path / "dataset-fixed-later"
    for suffix in (".bin", ".idx"):
        (tmp_path / f"{unreadable.name}{suffix}").touch()
    broken = dict(lab_data, **{"data.train_prefixes": [str(unreadable)], "data.train_weights": [100]})
    submit(run_dir, broken, "--chain", "2", "--time", "2", "--max-steps", "4")
    status = wait_idle(run_dir, timeout=4 * 60)
    assert status["stopped"] and [j["ended"] for j in status["jobs"]] == ["failed", "failed"]
    for suffix in (".bin", ".idx"):  # fix the cause: the dataset the plan names is a real one now
        shutil.copy(lab_data["data.train_prefixes"][0] + suffix, str(unreadable) + suffix)
    told = json.loads(run_cli("nightly", "--run", str(run_dir), "--json").stdout)
    marker = re.search(r"then delete (\S+) to allow continuing", told["why"]).group(1)
    Path(marker).unlink()
    done = run_cli("nightly", "--run", str(run_dir), "--json")
    assert json.loads(done.stdout)["action"] == "continue", done.stdout + done.stderr
    status = wait_idle(run_dir, timeout=4 * 60)
    assert status["done"] and status["done"]["final_step"] == 4, status
    ledger = Ledger(run_dir / "ledger.sqlite")
    (reset,) = ledger.strike_resets()
    assert "was removed after the chain stopped" in reset.reason and status["strikes"] == 0
    assert [a.outcome for a in ledger.attempts("train")] == ["failed", "failed", "done"]


def test_a_save_that_fails_on_a_full_disk_is_a_failure_named_as_such(slurm_lab, lab_data, tmp_path):
    """A one-minute job whose only save, at its time limit, meets a full disk: once recorded as a clean time-limit
    stop (Slurm's USR2 comes first, and the driver took the step's exit 1 for a saved stop), with torch's
    "unexpected pos" and no path in the log."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        run_dir = tmp_path / "diskfull"
        submit(run_dir, lab_data, "--time", "1", "--max-steps", "5000", "--set", f"train.ckpt_dir={mount / 'ckpt'}")
        job_id = Ledger(run_dir / "ledger.sqlite").jobs("train")[0].job_id
        status = wait_idle(run_dir, timeout=3 * 60)
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    (job,) = status["jobs"]
    assert job["ended"] == "failed" and job["exit_code"] not in (0, None), job
    log = (run_dir / "logs" / f"train-{job_id}.out").read_text()
    assert f"disk full: no space left on device writing {mount / 'ckpt'}/.tmp-step-" in log and " free of " in log
    assert "the next job of the chain continues" not in log


def test_a_job_cancelled_by_the_user_is_recorded_as_cancelled(slurm_lab, lab_data, tmp_path):
    run_dir = tmp_path / "usercancel"
    submit(run_dir, lab_data, "--time", "5", "--max-steps", "5000")
    job_id = started(run_dir)
    subprocess.run(["scancel", job_id], check=True)
    status = wait_idle(run_dir, timeout=2 * 60)
    (attempt,) = Ledger(run_dir / "ledger.sqlite").attempts("train")
    assert attempt.outcome == "cancelled" and status["jobs"][0]["ended"] == "cancelled", attempt


def test_a_requeued_job_held_by_slurm_is_seen_and_cancelled(slurm_lab, lab_data, tmp_path):
    """Requeued in a held state, the job shows in sacct as PENDING and in squeue as SPECIAL_EXIT: it may run again
    once released, so status shows it held, nightly leaves it alone and cancel cancels it."""
    run_dir = tmp_path / "held"
    submit(run_dir, lab_data, "--time", "5", "--max-steps", "5000")
    job_id = started(run_dir)
    try:
        subprocess.run(["scontrol", "requeuehold", "state=SpecialExit", job_id], check=True)
        ledger = Ledger(run_dir / "ledger.sqlite")
        wait_until(lambda: ledger.attempts("train")[0].outcome != "running", 60, "the attempt to end")
        status = wait_until(
            lambda: (s := run_status(run_dir))["jobs"][0]["state"] == "SPECIAL_EXIT" and s, 60, "the hold"
        )
        assert status["active"] and (status["jobs"][0]["alive"], status["jobs"][0]["ended"]) == (True, "held"), status
        done = run_cli("nightly", "--run", str(run_dir), "--json")
        assert json.loads(done.stdout)["action"] == "none", done.stdout + done.stderr
        assert len(ledger.jobs("train")) == 1
        done = run_cli("cancel", str(run_dir))
        assert done.returncode == 0 and f"cancelled: {job_id}" in done.stdout, done.stdout + done.stderr
        assert not run_status(run_dir)["active"]
    finally:
        subprocess.run(["scancel", job_id], check=False)


def test_cancel_leaves_completed_array_stages_alone(slurm_lab, tmp_path):
    """sacct keys array tasks as 79_0, 79_1: a completed array stage was once cancelled and listed as active."""
    run_dir = tmp_path / "array"
    done = run_cli(
        "submit",
        "--profile",
        "tiny",
        "--cluster",
        "slurm-lab",
        "--run-dir",
        str(run_dir),
        "--stages",
        "consolidate",
        "--wait",
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr
    status = run_status(run_dir)
    assert [(j["stage"], j["state"]) for j in status["jobs"]] == [("consolidate", "COMPLETED")], status["jobs"]
    done = run_cli("cancel", str(run_dir))
    assert done.returncode == 0 and "cancelled: nothing was queued or running" in done.stdout, done.stdout
