"""The MLPerf rules inside NeMo's own trainer, on a CPU: ``orchestrator.train.nemo`` as a training job runs it.

Each job here is ``tests/nemo_cpu_trainer.py``: the product's entry point with NeMo's ``nl.Trainer``,
``MegatronStrategy``, ``llm.pretrain`` (which installs NeMo's ``NoValOnRestartTrainingLoop``), a Megatron GPT model,
Megatron's optimizer and datasets and NeMo's asynchronous checkpointing, on real text preprocessed by this project.
Its only stand-ins are what a machine without a GPU needs (CUDA calls answered on the CPU); the GPU check,
``benchmarks/nemo_mlperf_run.py``, runs the same jobs without them. The MLPerf 405B profile is cut to 2 layers of
width 64 at sequence 64 and GBS 8, with an evaluation every 16 sequences over 16, the first after 32: so evaluations
follow steps 4, 6, 8, 10, 12, ...
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlperf_helpers import SCALE_KEYS, SMALL_405B, failing_keys

from orchestrator.atomic import atomic_write_text
from orchestrator.mlperf.compliance import check_compliance
from orchestrator.mlperf.mllog import chain_result, read_mllog
from orchestrator.plan import RunPlan, build_plan
from orchestrator.train.nemo_checkpoint import latest_step

pytestmark = pytest.mark.nemo
HARNESS = Path(__file__).with_name("nemo_cpu_trainer.py")


@pytest.fixture(scope="module")
def cpu_gpu_cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-node local cluster profile that declares one GPU (the nemo backend's requirement); the harness runs it
    on the CPU."""
    path = tmp_path_factory.mktemp("cluster") / "cpu-as-gpu.yaml"
    path.write_text(
        "description: one CPU standing in for a GPU\nscheduler: local\ngpus_per_node: 1\n"
        "gpu_memory_gb: 80\nmax_nodes: 1\ntime_limit: '01:00:00'\nsignal_grace_s: 60\n"
    )
    return path


def small_405b(tmp_path: Path, lab_data: dict[str, Any], cluster: Path, **overrides: Any) -> RunPlan:
    overrides = {"data.index_cache_dir": str(tmp_path / "index"), **overrides}
    plan = build_plan(
        "llama31_405b", cluster, {**lab_data, **SMALL_405B, **overrides}, run_id="mlperf-cpu", run_dir=tmp_path / "run"
    )
    Path(plan.run_dir).parent.mkdir(parents=True, exist_ok=True)
    Path(plan.run_dir).mkdir(parents=True)
    atomic_write_text(Path(plan.run_dir) / "plan.json", plan.to_json())
    return plan


def build_index(plan: RunPlan) -> None:
    """The run's index stage, as its job runs it (it needs no CUDA)."""
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.train.nemo_index", "--run-dir", plan.run_dir],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def job(plan: RunPlan, job_id: str, chain_index: int = 0, **env: str) -> subprocess.CompletedProcess[str]:
    """One training job of the run, as the step script starts it (rank variables, the job's identity)."""
    run_env = dict(
        os.environ,
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(29400 + int(job_id) % 500),
        SLURM_JOB_ID=job_id,
        ORCHESTRATOR_CHAIN_INDEX=str(chain_index),
        **env,
    )
    done = subprocess.run(
        [sys.executable, str(HARNESS), "--run-dir", plan.run_dir],
        capture_output=True,
        text=True,
        env=run_env,
        timeout=600,
    )
    Path(plan.run_dir, f"job-{job_id}.log").write_text(done.stdout + done.stderr)
    return done


def evaluated(done: subprocess.CompletedProcess[str], gbs: int = 8) -> list[int]:
    """Steps after which the job evaluated, from the compliance lines it printed."""
    records = [json.loads(line.split(":::MLLOG ", 1)[1]) for line in done.stdout.splitlines() if ":::MLLOG " in line]
    return [r["metadata"]["samples_count"] // gbs for r in records if r["key"] == "eval_accuracy"]


def test_a_chain_of_two_jobs_evaluates_on_the_rules_schedule_inside_nemos_trainer(
    tmp_path: Path, lab_data: dict[str, Any], cpu_gpu_cluster: Path
) -> None:
    """Would have failed on main at 0d94cba: the MLPerf control refused NeMo's own epoch loop in ``setup``."""
    plan = small_405b(tmp_path, lab_data, cpu_gpu_cluster, **{"chain.steps_per_job": 6})
    build_index(plan)
    first = job(plan, "501")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "NoValOnRestartTrainingLoop" in first.stdout  # the loop NeMo installed is the one that ran the schedule
    log = first.stdout + first.stderr
    assert "Load the ReferenceOrderGPTDataset train indices" in log and "Build and save" not in log  # the index stage's
    assert evaluated(first) == [4, 6]  # step 2 is a grid point the rules skip; a stop on step 6 evaluates first
    assert latest_step(plan.train.ckpt_dir) == 6 and not Path(plan.run_dir, "DONE").exists()

    second = job(plan, "502", chain_index=1)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert evaluated(second) == [8, 10, 12]  # resumed at 6 by NeMo's AutoResume; 6 is not evaluated again
    done = json.loads(Path(plan.run_dir, "DONE").read_text())
    assert (done["final_step"], done["reason"]) == (12, "max_steps reached")

    logs = sorted(Path(plan.run_dir, "mlperf").glob("*.log"), key=lambda p: "par1" in p.name)
    assert [p.name for p in logs] == [
        "mlperf_mlperf-cpu_seed1234_par0_501.log",
        "mlperf_mlperf-cpu_seed1234_par1_502.log",
    ]
    runs = [read_mllog(p) for p in logs]
    chain = chain_result(runs)  # refuses an evaluation logged twice or out of order
    assert [samples // 8 for samples, _ in chain.evals] == [4, 6, 8, 10, 12]
    assert [r.params["init_checkpoint_step"] for r in runs] == [0, 6]
    assert all(r.complete for r in runs)


def test_the_checker_accepts_the_real_trainers_log_but_for_the_benchmark_scale(
    tmp_path: Path, lab_data: dict[str, Any], cpu_gpu_cluster: Path
) -> None:
    """mlperf-logging's checker on the log NeMo's trainer wrote; a target above the first evaluation's loss ends the
    run there: DONE with the reason, the final checkpoint saved, ``run_stop`` with status success."""
    plan = small_405b(tmp_path, lab_data, cpu_gpu_cluster, **{"mlperf.target_log_ppl": 50.0})
    build_index(plan)
    done = job(plan, "503")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert evaluated(done) == [4]
    record = json.loads(Path(plan.run_dir, "DONE").read_text())
    assert (record["final_step"], record["reason"]) == (4, "MLPerf target log-perplexity 50.0 reached")
    assert latest_step(plan.train.ckpt_dir) == 4
    (path,) = Path(plan.run_dir, "mlperf").glob("*.log")
    run = read_mllog(path)
    assert run.complete and run.status == "success"
    ok, output = check_compliance(path)
    # the sequence length and evaluation size this CPU run honestly logs (64, 16), and the target it was given
    assert failing_keys(output) == {*SCALE_KEYS, "eval_accuracy"}, output[-3000:]


def test_a_step_slower_than_the_limit_fails_the_job_inside_nemos_trainer(
    tmp_path: Path, lab_data: dict[str, Any], cpu_gpu_cluster: Path
) -> None:
    plan = small_405b(tmp_path, lab_data, cpu_gpu_cluster, **{"mlperf.step_time_atol_s": 0})
    build_index(plan)
    done = job(plan, "504")
    assert done.returncode != 0 and "mlperf.step_time_atol_s=0" in done.stdout + done.stderr
    (path,) = Path(plan.run_dir, "mlperf").glob("*.log")
    run = read_mllog(path)
    assert run.complete and run.status == "aborted" and not Path(plan.run_dir, "DONE").exists()


def test_from_hf_0_resumes_another_runs_checkpoint_in_full_at_start_steps(
    tmp_path: Path, lab_data: dict[str, Any], cpu_gpu_cluster: Path
) -> None:
    """config.sh's USE_CKPT=1 FROM_HF=0 MODEL_CKPT=<a checkpoint of step 6> START_STEPS=6 continues that run: step,
    schedule and optimizer come back, evaluations follow the rules from there, and the log says it started at 6. A
    START_STEPS that the checkpoint does not hold (its name does not say, so only the job can tell) fails the job
    before its first step."""
    earlier = small_405b(tmp_path / "a", lab_data, cpu_gpu_cluster, **{"chain.steps_per_job": 6})
    build_index(earlier)
    assert job(earlier, "601").returncode == 0 and latest_step(earlier.train.ckpt_dir) == 6
    (ckpt,) = [p for p in Path(earlier.train.ckpt_dir).iterdir() if p.name.endswith("-last")]

    later = small_405b(
        tmp_path / "b",
        lab_data,
        cpu_gpu_cluster,
        **{
            "train.init_from": str(ckpt),
            "train.init_mode": "full",
            "train.init_step": 6,
            "data.index_cache_dir": earlier.data.index_cache_dir,
        },
    )
    build_index(later)  # the same data, seed and counts: complete already, nothing rebuilt
    done = job(later, "602")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "global_step: 6 " in done.stdout and "global_step: 0 " not in done.stdout
    assert evaluated(done) == [8, 10, 12]
    (log,) = Path(later.run_dir, "mlperf").glob("*.log")
    assert read_mllog(log).params["init_checkpoint_step"] == 6

    # the same start in a plan that saves nothing (on the GPU, the 405B proxy's job past a full disk): NeMo's
    # AutoResume restores it, the job trains on the schedule and leaves no checkpoint
    quiet = small_405b(
        tmp_path / "d",
        lab_data,
        cpu_gpu_cluster,
        **{
            "train.init_from": str(ckpt),
            "train.init_mode": "full",
            "train.init_step": 6,
            "train.save_checkpoints": False,
            "chain.jobs": 1,
            "data.index_cache_dir": earlier.data.index_cache_dir,
        },
    )
    done = job(quiet, "604")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert evaluated(done) == [8, 10, 12] and not any(Path(quiet.train.ckpt_dir).glob("*"))

    shutil.copytree(ckpt, tmp_path / "renamed-checkpoint")  # a name that says nothing of its step
    wrong = small_405b(
        tmp_path / "c",
        lab_data,
        cpu_gpu_cluster,
        **{
            "train.init_from": str(tmp_path / "renamed-checkpoint"),
            "train.init_mode": "full",
            "train.init_step": 4,
            "data.index_cache_dir": earlier.data.index_cache_dir,
        },
    )
    failed = job(wrong, "603")
    assert failed.returncode != 0 and "starts at step 6, the plan at step 4" in failed.stdout + failed.stderr
