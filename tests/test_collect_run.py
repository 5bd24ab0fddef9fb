"""Run directories: logs in chain order (ledger first, job ids otherwise), the plan's numbers, the lead's entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from collect_helpers import step_metrics, write_log
from rich.console import Console

from orchestrator.collect.cli import collect_run_dir
from orchestrator.collect.run import collect_run, find_logs, run_info
from orchestrator.ledger import Ledger

REPO = Path(__file__).resolve().parents[1]


def test_without_a_ledger_chain_order_is_job_id_order(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("train-100.out", "train-99.out", "train-1234_1.out", "train-1234_0.out", "preprocess-5.out"):
        (logs / name).write_text("")
    assert [p.name for p in find_logs(tmp_path)] == [
        "train-99.out",
        "train-100.out",
        "train-1234_0.out",
        "train-1234_1.out",
    ]


def test_the_ledger_gives_chain_order_and_finds_local_logs(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "submitit").mkdir()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_job("5000", "preprocess")
    for job in ("900", "1000", "95"):  # chain order, not numeric order
        ledger.add_job(job, "train", chain_index=0)
    (tmp_path / "logs" / "preprocess-5000.out").write_text("")
    (tmp_path / "logs" / "train-900.out").write_text("")
    (tmp_path / "logs" / "train-1000.out").write_text("")
    (tmp_path / "submitit" / "95_0_log.out").write_text("")  # a local job: submitit's stdout
    assert find_logs(tmp_path) == [
        tmp_path / "logs" / "train-900.out",
        tmp_path / "logs" / "train-1000.out",
        tmp_path / "submitit" / "95_0_log.out",
    ]


def test_run_info_reads_the_plan_and_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no training logs"):
        run_info(tmp_path)
    (tmp_path / "logs").mkdir()
    write_log(tmp_path / "logs" / "train-1.out", range(30), 30, lambda s: step_metrics(s, loss=4.0, tps=1e4))
    info = run_info(tmp_path)
    assert info.model == tmp_path.name and info.flops_per_token is None
    assert any("no plan.json" in n for n in info.notes)
    arch = {
        "family": "qwen3",
        "num_layers": 48,
        "hidden_size": 2048,
        "ffn_hidden_size": 6144,
        "num_attention_heads": 32,
        "num_query_groups": 4,
        "kv_channels": 128,
        "vocab_size": 151936,
        "qk_layernorm": True,
        "num_experts": 128,
        "moe_top_k": 8,
        "moe_ffn_hidden_size": 768,
    }
    plan = {
        "model": {"name": "qwen3_30b_a3b", "arch": arch},
        "train": {"seq_length": 4096},
        "cluster": {"gpu_peak_tflops": 989},
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    info = run_info(tmp_path)
    assert info.model == "qwen3_30b_a3b" and info.peak_flops_per_gpu == 989e12 and not info.notes
    # 6 x active matmul weights + attention in a·d = 4096 dimensions (flops.py); ~3.3 B active parameters.
    active = 48 * (2048 * 4096 + 2 * 2048 * 4 * 128 + 4096 * 2048 + 8 * 3 * 2048 * 768 + 2048 * 128) + 151936 * 2048
    assert info.flops_per_token == 6 * active + 12 * 48 * 4096 * 4096
    m = collect_run(tmp_path)
    assert m.model == "qwen3_30b_a3b" and m.mfu == pytest.approx(1e4 * info.flops_per_token / 989e12)


def test_collect_run_dir_prints_on_the_given_console_and_returns_the_exit_code(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    write_log(tmp_path / "logs" / "train-1.out", range(30), 30, lambda s: step_metrics(s, loss=4.0, tps=1e4))
    console = Console(record=True, width=200)
    assert collect_run_dir(tmp_path, console) == 0
    text = console.export_text()
    assert "10,000.0 tokens/s/GPU" in text and f"wrote {tmp_path / 'metrics.json'}" in text
    assert (tmp_path / "metrics.json").is_file()


def test_python_m_orchestrator_collect_is_the_same_command(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    write_log(tmp_path / "logs" / "train-1.out", range(30), 30, lambda s: step_metrics(s, loss=4.0, tps=1e4))
    (tmp_path / "b.json").write_text(json.dumps({tmp_path.name: {"final_loss": 3.0}}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "orchestrator", "collect", str(tmp_path), "--baseline", str(tmp_path / "b.json")]
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["verdict"] == "fail"
