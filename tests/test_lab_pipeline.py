"""The embedded default on the real Slurm lab: every stage as Slurm jobs (arrays for the data), training on 2
nodes; and a run split across jobs reproduces the uninterrupted run's losses."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from orchestrator.collect.parse import read_logs
from orchestrator.ledger import Ledger
from orchestrator.status import run_status

pytestmark = pytest.mark.slurm


def losses(run_dir) -> dict[int, float]:
    logs = [run_dir / "logs" / f"train-{j.job_id}.out" for j in Ledger(run_dir / "ledger.sqlite").jobs("train")]
    series, _ = read_logs([p for p in logs if p.exists()])
    return {r.global_step: r.get("reduced_train_loss") for r in series}


def test_tiny_pipeline_on_two_lab_nodes_learns_and_resumes_exactly(slurm_lab, tmp_path):
    run_dir = tmp_path / "whole"
    done = run_cli("submit", "--profile", "tiny", "--cluster", "slurm-lab", "--run-dir", str(run_dir), "--wait")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = run_status(run_dir)
    stages = [j["stage"] for j in status["jobs"]]
    assert stages == ["consolidate", "preprocess", "train"], status["jobs"]
    assert all(j["state"] == "COMPLETED" for j in status["jobs"]), status["jobs"]
    assert status["done"]["final_step"] == 60
    train_log = (run_dir / "logs" / f"train-{status['jobs'][2]['job_id']}.out").read_text()
    assert "2 rank(s) via srun" in train_log  # one srun step over both nodes, a rank on each
    whole = losses(run_dir)
    assert sorted(whole) == list(range(60))
    assert whole[59] < whole[0] - 2.0, f"loss did not fall: {whole[0]} -> {whole[59]}"
    assert (run_dir / "metrics.json").exists() and json.loads((run_dir / "metrics.json").read_text())[
        "final_step"
    ] == 59

    # The same plan on the same (already tokenized) data, split into two jobs of 30 steps each.
    split_dir = tmp_path / "split"
    whole_data = [
        "--set",
        f"data.train_prefixes={json.dumps([str(run_dir / 'data' / 'preprocessed' / f'c4-train.en_{k}_text_document') for k in (0, 1)])}",
        "--set",
        f"data.validation_prefixes={json.dumps([str(run_dir / 'data' / 'preprocessed' / 'c4-validation.en_text_document')])}",
    ]
    done = run_cli(
        "submit",
        "--profile",
        "tiny",
        "--cluster",
        "slurm-lab",
        "--run-dir",
        str(split_dir),
        "--set",
        "data.source=preprocessed",
        *whole_data,
        "--chain",
        "2",
        "--set",
        "chain.steps_per_job=30",
        "--wait",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    attempts = Ledger(split_dir / "ledger.sqlite").attempts("train")
    assert [(a.start_step, a.end_step, a.outcome) for a in attempts] == [(None, 30, "partition"), (30, 60, "done")]
    assert losses(split_dir) == whole, "resumed and uninterrupted losses differ"
