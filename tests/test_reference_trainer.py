"""The reference trainer end to end, as the in-job driver runs it: a subprocess per job, on 1 or 2 CPU ranks."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from reference_helpers import Result, command, free_port, make_plan, parse_lines, train, trainer_env

from orchestrator import logline
from orchestrator.plan import RunPlan
from orchestrator.train import checkpoint
from orchestrator.train.reference.trainer import EXIT_STOPPED, lr_at

pytestmark = pytest.mark.timeout(180)

STEPS, GBS, SEQ = 12, 8, 32


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reference")


@pytest.fixture(scope="module")
def baseline(workdir: Path) -> tuple[Path, Result]:
    """One uninterrupted run: every other run of the same plan must reproduce its losses."""
    run_dir = workdir / "baseline"
    make_plan(run_dir, workdir / "data")
    return run_dir, train(run_dir)


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint.step_dir(run_dir / "checkpoints", step) / "model.pt", weights_only=True)


def assert_same_weights(a: Path, b: Path, step: int) -> None:
    wa, wb = weights(a, step), weights(b, step)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def test_run_trains_logs_nemo_lines_and_finishes(baseline: tuple[Path, Result]) -> None:
    run_dir, result = baseline
    assert result.returncode == 0, result.stderr
    lines = result.lines
    optim = RunPlan.load(run_dir).train.optim
    assert [int(line["global_step"]) for line in lines] == list(range(STEPS))
    for k, line in enumerate(lines):
        expected = [f for f in logline.FIELD_ORDER if f in line]
        assert list(line) == expected  # NeMo's order
        assert ("consumed_samples" in line) == (k > 0)  # NeMo leaves it off a run's first line
        if k > 0:
            assert int(line["consumed_samples"]) == (k + 1) * GBS
        assert ("val_loss" in line) == (k >= 4)  # validation after 4 steps, shown from the next line on
        assert int(line["global_batch_size"]) == GBS
        assert float(line["lr"]) == pytest.approx(lr_at(k, optim, STEPS), rel=1e-3)
        rate = GBS * SEQ / float(line["train_step_timing in s"])
        assert float(line["tokens_per_sec_per_gpu"]) == pytest.approx(rate, rel=2e-3)
    losses = [float(line["reduced_train_loss"]) for line in lines]
    assert losses[0] == pytest.approx(math.log(256), abs=0.2)  # a fresh model is near uniform
    assert losses[-1] < losses[0] - 0.7
    assert float(lines[-1]["val_loss"]) < float(lines[4]["val_loss"])
    assert all(not line.startswith("Training") for line in result.stdout.splitlines()[:4])  # banner first
    done = json.loads((run_dir / "DONE").read_text())
    assert (done["final_step"], done["consumed_samples"]) == (STEPS, STEPS * GBS)
    assert checkpoint.latest_step(run_dir / "checkpoints") == STEPS
    assert "Traceback" not in result.stderr


def test_chained_jobs_and_a_kill_mid_checkpoint_reproduce_the_uninterrupted_run(
    workdir: Path, baseline: tuple[Path, Result]
) -> None:
    """Four jobs of 4 steps; the second is killed -9 while writing its checkpoint, so the third redoes its steps."""
    run_dir = workdir / "chained"
    ckpt_dir = run_dir / "checkpoints"
    make_plan(run_dir, workdir / "data", **{"chain.steps_per_job": 4})
    first = train(run_dir)
    assert first.returncode == EXIT_STOPPED and checkpoint.latest_step(ckpt_dir) == 4, first.stderr

    proc = subprocess.Popen(
        command(run_dir),
        env=trainer_env(ORCHESTRATOR_CKPT_WRITE_DELAY_S="60"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    partial = ckpt_dir / ".tmp-step-00000008" / "model.pt"
    deadline = time.monotonic() + 60
    while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert partial.exists(), proc.communicate()[1]
    proc.kill()  # SIGKILL mid-write: no handler runs
    killed_out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert sorted(Result(0, killed_out, "").losses) == [4, 5, 6, 7]  # trained, but never saved
    assert checkpoint.latest_step(ckpt_dir) == 4
    assert (ckpt_dir / "latest").read_text() == "step-00000004\n"

    jobs = [train(run_dir) for _ in range(2)]
    assert [job.returncode for job in jobs] == [EXIT_STOPPED, 0], jobs[-1].stderr
    assert "removed .tmp-step-00000008" in jobs[0].stdout
    assert "resumed from step-00000004 (consumed_samples=32)" in jobs[0].stdout
    assert "resumed from step-00000008 (consumed_samples=64)" in jobs[1].stdout
    losses = {**first.losses, **{k: v for job in jobs for k, v in job.losses.items()}}
    assert losses == baseline[1].losses  # every printed loss, every step
    validations = [line for job in (first, *jobs) for line in job.stdout.splitlines() if "validation after" in line]
    assert len(validations) == 3 and validations == [
        line for line in baseline[1].stdout.splitlines() if "validation after" in line
    ]
    assert_same_weights(run_dir, baseline[0], STEPS)  # bitwise: the whole trajectory was the same
    assert checkpoint.complete_steps(ckpt_dir) == [8, 12]  # pruned to the last two


def test_stop_signals_save_exit_75_and_the_next_job_continues(workdir: Path) -> None:
    """SIGUSR2 stops the first job mid-run, SIGTERM the resumed one: each saves where it stopped."""
    run_dir = workdir / "signals"
    make_plan(run_dir, workdir / "data", **{"train.max_steps": 100_000, "train.val_interval": None})
    start = 0
    for sig in (signal.SIGUSR2, signal.SIGTERM):
        proc = subprocess.Popen(
            command(run_dir), env=trainer_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        seen = []
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("Training") and int(parse_lines(line)[0]["global_step"]) >= start + 2:
                proc.send_signal(sig)
                break
        out, err = proc.communicate(timeout=60)
        stdout = "".join(seen) + out
        assert proc.returncode == EXIT_STOPPED, err
        steps = sorted(Result(0, stdout, "").losses)
        assert steps == list(range(start, steps[-1] + 1))
        stop = steps[-1] + 1
        assert f"stopping at step {stop}: {sig.name} received" in stdout
        assert f"saved step-{stop:08d}" in stdout
        assert checkpoint.latest_step(run_dir / "checkpoints") == stop
        if start:
            assert f"resumed from step-{start:08d}" in stdout
        start = stop


def test_two_ranks_over_gloo_match_one_rank(workdir: Path, baseline: tuple[Path, Result]) -> None:
    """Two srun-style tasks: same samples per step as one rank, so the same losses up to float summation order."""
    run_dir = workdir / "ddp"
    make_plan(run_dir, workdir / "data", **{"layout.tasks_per_node": 2})
    port = str(free_port())
    procs = [
        subprocess.Popen(
            command(run_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=trainer_env(
                SLURM_PROCID=str(rank),
                SLURM_NTASKS="2",
                SLURM_LOCALID=str(rank),
                SLURM_TASKS_PER_NODE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            ),
        )
        for rank in range(2)
    ]
    outs = [p.communicate(timeout=150) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1] + outs[1][1]
    assert outs[1][0] == ""  # rank 1 prints nothing
    two = Result(0, *outs[0]).losses
    one = baseline[1].losses
    assert sorted(two) == sorted(one)
    for k in one:
        assert float(two[k]) == pytest.approx(float(one[k]), abs=1e-3), k
    w1, w2 = weights(baseline[0], STEPS), weights(run_dir, STEPS)
    assert all(torch.allclose(w1[name], w2[name], rtol=0, atol=1e-5) for name in w1)
    assert "2 rank(s) via srun" in outs[0][0]
    rng = torch.load(checkpoint.step_dir(run_dir / "checkpoints", STEPS) / "rng.pt", weights_only=True)
    assert len(rng) == 2  # every rank's RNG state is in the checkpoint


def test_deadline_stops_before_a_step_that_would_not_fit(workdir: Path) -> None:
    run_dir = workdir / "deadline"
    make_plan(run_dir, workdir / "data")
    result = train(run_dir, ORCHESTRATOR_DEADLINE=str(time.time() + 0.5))
    assert result.returncode == EXIT_STOPPED, result.stderr
    assert "stopping at step 0: ORCHESTRATOR_DEADLINE is less than one step" in result.stdout
    assert not result.lines and checkpoint.latest_step(run_dir / "checkpoints") is None  # nothing to save yet


def test_incomplete_checkpoint_fails_loudly_instead_of_restarting(workdir: Path) -> None:
    run_dir = workdir / "incomplete"
    make_plan(run_dir, workdir / "data")
    (run_dir / "checkpoints" / "step-00000006").mkdir(parents=True)
    result = train(run_dir)
    assert result.returncode not in (0, EXIT_STOPPED)
    assert "step-00000006 has no meta.json" in result.stderr and "Traceback" in result.stderr
    assert not result.lines


def test_finished_run_exits_0_without_training(baseline: tuple[Path, Result]) -> None:
    again = train(baseline[0])
    assert again.returncode == 0, again.stderr
    assert not again.lines and "resumed from step-00000012" in again.stdout


def test_init_from_loads_weights_and_starts_at_step_0(workdir: Path, baseline: tuple[Path, Result]) -> None:
    run_dir = workdir / "continual"
    make_plan(run_dir, workdir / "data", **{"train.init_from": str(baseline[0] / "checkpoints"), "train.max_steps": 2})
    result = train(run_dir)
    assert result.returncode == 0, result.stderr
    assert "initialised weights from" in result.stdout and "step-00000012" in result.stdout
    assert sorted(result.losses) == [0, 1]
    assert float(result.losses[0]) < float(baseline[1].losses[0]) - 0.5  # trained weights, not a fresh model


def test_a_full_init_continues_that_run_at_its_step(workdir: Path, baseline: tuple[Path, Result]) -> None:
    """config.sh's FROM_HF=0: another run's checkpoint resumed in full (step, optimizer, data position)."""
    run_dir = workdir / "continued"
    start = {
        "train.init_from": str(baseline[0] / "checkpoints"),
        "train.init_mode": "full",
        "train.init_step": 12,
        "train.max_steps": 14,
    }
    make_plan(run_dir, workdir / "data", **start)
    result = train(run_dir)
    assert result.returncode == 0, result.stderr
    assert "resumed in full from" in result.stdout and sorted(result.losses) == [12, 13]
    wrong = workdir / "continued-wrong"
    make_plan(wrong, workdir / "data", **{**start, "train.init_step": 10})
    result = train(wrong)
    assert result.returncode not in (0, EXIT_STOPPED) and "starts at step 12, the plan at step 10" in result.stderr


def test_resuming_with_another_model_is_refused(workdir: Path, baseline: tuple[Path, Result]) -> None:
    run_dir = workdir / "other-model"
    other = {"model.arch.num_layers": 3, "train.ckpt_dir": str(baseline[0] / "checkpoints"), "train.max_steps": 20}
    make_plan(run_dir, workdir / "data", **other)
    result = train(run_dir)
    assert result.returncode not in (0, EXIT_STOPPED)
    assert "saved for a different model (model.arch fields num_layers differ)" in result.stderr


def test_a_truncated_checkpoint_file_is_named(workdir: Path) -> None:
    run_dir = workdir / "truncated"
    make_plan(run_dir, workdir / "data", **{"train.max_steps": 4, "train.val_interval": None})
    assert train(run_dir).returncode == 0
    model = checkpoint.step_dir(run_dir / "checkpoints", 4) / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    result = train(run_dir)
    assert result.returncode not in (0, EXIT_STOPPED)
    assert f"{model} cannot be read" in result.stderr and "truncated or corrupt" in result.stderr


def test_a_stop_signal_while_the_trainer_exits_leaves_a_clean_exit(workdir: Path) -> None:
    """A USR2 that arrives as a trainer that saved is exiting (the driver's, sent just as the trainer stopped by
    itself) once killed it during interpreter shutdown: exit 140 under srun, "User defined signal 2"."""
    run_dir = workdir / "late-signal"
    make_plan(run_dir, workdir / "data", **{"train.max_steps": 2, "train.val_interval": None})
    proc = subprocess.Popen(
        command(run_dir), env=trainer_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("[orchestrator] done:"):
            break
    while proc.poll() is None:  # from now until it is gone, a signal every millisecond
        try:
            proc.send_signal(signal.SIGUSR2)
        except ProcessLookupError:
            break
        time.sleep(0.001)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
