"""Every step inside a real container on the Slurm lab: cluster_profiles/slurm-lab-container.yaml runs the lab's image
(scripts/lab-image: Debian's python3 and the in-job packages, not the orchestrator, not mistral-common) under bubblewrap.
Inside, only what the plan mounts exists, so a path a stage needs but does not mount fails these runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_cli
from test_lab_chain import checkpoint_steps, data_args, logged_steps, wait_idle

from orchestrator.status import run_status

pytestmark = pytest.mark.slurm
CLUSTER = "slurm-lab-container"
IMAGE_PYTHON = "/usr/bin/python3"


def test_the_tiny_pipeline_runs_inside_the_container_on_two_lab_nodes(slurm_lab: None, tmp_path: Path) -> None:
    """README's main job on the lab, with the container: the sample corpus, consolidation, tokenization (the
    Mixtral tokenizer written into the run's data, since the image has no mistral-common) and training on 2 nodes."""
    run_dir = tmp_path / "pipeline"
    done = run_cli("submit", "--profile", "tiny", "--cluster", CLUSTER, "--run-dir", str(run_dir), "--wait")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = run_status(run_dir)
    assert status["done"] and [j["stage"] for j in status["jobs"]] == ["consolidate", "preprocess", "train"]
    (train_log,) = (run_dir / "logs").glob("train-*.out")
    text = train_log.read_text()
    assert "step in a container: runtime bubblewrap" in text and "image id: ORCHESTRATOR_IMAGE_RECIPE=" in text
    mounts = next(line for line in text.splitlines() if "mounts (same path inside):" in line)
    assert f" {run_dir}" in mounts and f" {REPO / 'orchestrator'}:ro" in mounts
    assert f"at {IMAGE_PYTHON}" in text and sys.executable not in text.split("step in a container")[1]
    for log in (run_dir / "logs").glob("preprocess-*.out"):
        assert "runtime bubblewrap" in log.read_text()


def test_a_chain_across_a_time_limit_resumes_inside_the_container(
    slurm_lab: None, lab_data: dict[str, Any], tmp_path: Path
) -> None:
    """One-minute jobs: the time limit's USR2 reaches the trainer inside bubblewrap, which saves and exits; the next
    job of the chain resumes from that checkpoint."""
    run_dir = tmp_path / "chain"
    done = run_cli(
        "submit",
        "--profile",
        "tiny",
        "--cluster",
        CLUSTER,
        "--run-dir",
        str(run_dir),
        *data_args(lab_data),
        "--chain",
        "3",
        "--time",
        "1",
        "--max-steps",
        "150",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    status = wait_idle(run_dir, timeout=8 * 60)
    trained = [j for j in status["jobs"] if (j["steps_end"] or 0) > (j["steps_start"] or 0)]
    assert len(trained) >= 2, status["jobs"]
    assert any(j["ended"] == "time limit" for j in status["jobs"]), status["jobs"]
    second = trained[1]
    assert second["steps_start"] == trained[0]["steps_end"] > 0, status["jobs"]  # resumed where the first saved
    assert checkpoint_steps(run_dir), "checkpoints were written through the mount"
    assert all(log == sorted(set(log)) for log in logged_steps(run_dir) if log)


def test_smoke_inside_the_container_sees_the_images_python_and_the_ranks(slurm_lab: None, tmp_path: Path) -> None:
    done = run_cli("smoke", "--cluster", CLUSTER, "--nodes", "2", "--runs-root", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "smoke test passed" in done.stdout and "rank 1/2 on n2: MASTER_ADDR=n1" in done.stdout
    reports = [json.loads(p.read_text()) for p in tmp_path.glob("*/smoke/rank-*.json")]
    assert len(reports) == 2
    assert all(r["python"].startswith(IMAGE_PYTHON) for r in reports)  # not the submitting venv's interpreter
    assert all(r["package"] == str(REPO / "orchestrator") for r in reports)  # the package, from its mount
    assert all(Path(r["cwd"]).parent == tmp_path for r in reports)  # the run directory is the working directory
