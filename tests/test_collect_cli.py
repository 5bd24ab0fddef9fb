"""The collect command through its real entry: exit codes for CI gating, outputs, RUN directories and suites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from collect_helpers import printed, step_metrics, write_log

from orchestrator.collect.cli import EXIT_FAIL, EXIT_OK, EXIT_UNUSABLE, EXIT_USAGE, main

REPO = Path(__file__).resolve().parents[1]


def rate(step: int) -> float:
    return 3.0e3 if step < 10 or step >= 90 else 1.0e4 + 11.0 * step


def loss(step: int) -> float:
    return 11.0 - 0.05 * step


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.collect.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


@pytest.fixture
def log_100(tmp_path: Path) -> Path:
    return write_log(
        tmp_path / "train-7.out",
        range(100),
        100,
        lambda s: step_metrics(s, loss=loss(s), tps=rate(s)),
        noise_every=5,
        tail="\x1b[0mTraining epoch 0, iteration 1",
    )


def baseline_file(tmp_path: Path, model: str, final_loss: float) -> Path:
    path = tmp_path / f"baseline-{final_loss}.json"
    path.write_text(json.dumps({model: {"final_loss": final_loss, "throughput": 1.05e4}}))
    return path


def test_within_5_percent_exits_0_and_10_percent_off_exits_non_zero(log_100: Path, tmp_path: Path) -> None:
    final = printed(loss(99))
    ok = cli(
        "--log",
        log_100,
        "--model",
        "llama3_8b",
        "--json",
        "--baseline",
        baseline_file(tmp_path, "llama3_8b", final * 1.03),
    )
    assert ok.returncode == EXIT_OK, ok.stderr
    body = json.loads(ok.stdout)
    assert body["verdict"] == "pass" and body["final_step"] == 99 and body["final_loss"] == final
    assert body["throughput_tokens_per_sec_per_gpu"] == sum(printed(rate(s)) for s in range(10, 90)) / 80
    assert len(body["steps"]) == 100

    bad = cli(
        "--log", log_100, "--model", "llama3_8b", "--baseline", baseline_file(tmp_path, "llama3_8b", final * 1.10)
    )
    assert bad.returncode == EXIT_FAIL != 0
    assert "fail" in bad.stdout


def test_without_a_baseline_the_verdict_is_none_and_exit_0(log_100: Path, capsys) -> None:
    assert main(["--log", str(log_100), "--model", "llama3_8b"]) == EXIT_OK
    assert "none" in capsys.readouterr().out
    assert main(["--log", str(log_100), "--model", "llama3_8b", "--json"]) == EXIT_OK
    body = json.loads(capsys.readouterr().out)
    assert body["verdict"] == "none" and body["baseline"] is None
    # The llama3_8b profile gives FLOPs per token; MFU also needs the GPU's peak (--peak-tflops or the plan).
    assert body["flops_per_token"] == pytest.approx(57.91e9, rel=1e-4) and body["mfu"] is None
    assert "no MFU: the GPU's peak FLOP/s unknown" in body["notes"]
    assert main(["--log", str(log_100), "--model", "llama3_8b", "--json", "--peak-tflops", "989"]) == EXIT_OK
    body = json.loads(capsys.readouterr().out)
    assert body["mfu"] == pytest.approx(body["throughput_tokens_per_sec_per_gpu"] * body["flops_per_token"] / 989e12)


def test_a_model_missing_from_the_baseline_file_warns(log_100: Path, tmp_path: Path, capsys) -> None:
    code = main(
        ["--log", str(log_100), "--model", "qwen3_8b", "--baseline", str(baseline_file(tmp_path, "llama3_8b", 5.0))]
    )
    assert code == EXIT_OK
    assert "has no entry for 'qwen3_8b'" in capsys.readouterr().err


def test_log_mode_writes_outputs_only_with_out(log_100: Path, tmp_path: Path) -> None:
    assert main(["--log", str(log_100), "--model", "m", "--no-plots"]) == EXIT_OK
    assert not (tmp_path / "metrics.json").exists()
    assert main(["--log", str(log_100), "--model", "m", "--out", str(tmp_path / "o")]) == EXIT_OK
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "loss.png",
        "metrics.csv",
        "metrics.json",
        "report.md",
        "throughput.png",
    ]


def test_unusable_input_has_its_own_exit_code_and_names_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "train-1.out"
    empty.write_text("NCCL INFO bootstrap\nTraining epoch 0, iteration 3/9 | lr: 1e-4\n")
    result = cli("--log", empty, "--model", "m")
    assert result.returncode == EXIT_UNUSABLE
    assert str(empty) in result.stderr and "no metric line" in result.stderr and "no global_step" in result.stderr
    missing = cli("--log", tmp_path / "nope.out", "--model", "m")
    assert missing.returncode == EXIT_UNUSABLE and "nope.out" in missing.stderr
    broken = tmp_path / "b.json"
    broken.write_text("{")
    assert main(["--log", str(empty), "--model", "m", "--baseline", str(broken)]) == EXIT_UNUSABLE
    assert main([str(tmp_path / "no-run")]) == EXIT_UNUSABLE


@pytest.mark.parametrize(
    "argv",
    [[], ["--log", "x.out"], ["run", "--suite", "d"], ["--log", "x.out", "--model", "m", "--threshold", "5"]],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    assert main(argv) == EXIT_USAGE


def make_run(root: Path, name: str, model: str, final_loss: float, steps: int = 100) -> Path:
    run = root / name
    (run / "logs").mkdir(parents=True)
    plan = {
        "model": {
            "name": model,
            "arch": {
                "family": "llama",
                "num_layers": 32,
                "hidden_size": 4096,
                "ffn_hidden_size": 14336,
                "num_attention_heads": 32,
                "num_query_groups": 8,
                "vocab_size": 128256,
            },
        },
        "train": {"seq_length": 8192},
        "cluster": {"gpu_peak_tflops": 989},
    }
    (run / "plan.json").write_text(json.dumps(plan))
    # Job 99 ran first and reached step 60; job 100 resumed from step 50. Job-id order, not text order, is chain order.
    write_log(run / "logs" / "train-99.out", range(61), steps, lambda s: step_metrics(s, loss=50.0, tps=1e3))
    write_log(
        run / "logs" / "train-100.out",
        range(50, steps),
        steps,
        lambda s: step_metrics(s, loss=final_loss + (steps - 1 - s) / 100, tps=rate(s)),
    )
    return run


def test_run_directory_mode_writes_into_the_run_and_merges_in_job_order(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path, "run-a", "llama3_8b", 6.0)
    assert main([str(run), "--json"]) == EXIT_OK
    body = json.loads((run / "metrics.json").read_text())
    assert json.loads(capsys.readouterr().out) == body
    assert body["model"] == "llama3_8b" and body["final_loss"] == 6.0
    assert [Path(s["path"]).name for s in body["sources"]] == ["train-99.out", "train-100.out"]
    assert body["flops_per_token"] == pytest.approx(57.91e9, rel=1e-4) and body["peak_flops_per_gpu"] == 989e12
    assert body["mfu"] == pytest.approx(body["throughput_tokens_per_sec_per_gpu"] * body["flops_per_token"] / 989e12)
    assert (run / "loss.png").exists() and (run / "report.md").exists()


def test_suite_one_row_per_model_and_a_failing_model_fails_the_suite(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    make_run(runs, "llama-old", "llama3_8b", 9.0)
    newer = make_run(runs, "llama-new", "llama3_8b", 6.0)
    make_run(runs, "qwen", "qwen3_8b", 4.0)
    for log in (newer / "logs").iterdir():  # the newer run's logs are newer
        os.utime(log, (log.stat().st_atime, log.stat().st_mtime + 100))
    baselines = tmp_path / "b.json"
    baselines.write_text(json.dumps({"llama3_8b": {"final_loss": 6.1}, "qwen3_8b": {"final_loss": 3.0}}))

    assert main(["--suite", str(runs), "--baseline", str(baselines), "--json"]) == EXIT_FAIL
    rows = json.loads(capsys.readouterr().out)
    assert [(r["model"], Path(r["run"]).name, r["runs_of_model"], r["verdict"]) for r in rows] == [
        ("llama3_8b", "llama-new", 2, "pass"),
        ("qwen3_8b", "qwen", 1, "fail"),
    ]
    assert rows[0]["loss_rel_diff"] == pytest.approx((6.0 - 6.1) / 6.1)
    markdown = (runs / "suite.md").read_text()
    assert "| llama3_8b | llama-new (latest of 2) | 100 |" in markdown and "| fail |" in markdown

    lenient = tmp_path / "lenient.json"
    lenient.write_text(json.dumps({"llama3_8b": {"final_loss": 6.1}, "qwen3_8b": {"final_loss": 4.1}}))
    assert main(["--suite", str(runs), "--baseline", str(lenient)]) == EXIT_OK
    table = capsys.readouterr().out
    assert "llama3_8b" in table and "qwen3_8b" in table and "pass" in table


def test_suite_reads_a_fresh_metrics_json_and_recollects_a_stale_one(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path, "r", "llama3_8b", 6.0)
    assert main([str(run), "--no-plots"]) == EXIT_OK
    capsys.readouterr()
    stored = json.loads((run / "metrics.json").read_text())
    stored["final_loss"] = 1.0  # a metrics.json newer than the logs is trusted as is
    (run / "metrics.json").write_text(json.dumps(stored))
    assert main(["--suite", str(tmp_path), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)[0]["final_loss"] == 1.0
    later = (run / "metrics.json").stat().st_mtime + 10
    os.utime(run / "logs" / "train-100.out", (later, later))  # the logs moved on: parse them again
    assert main(["--suite", str(tmp_path), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)[0]["final_loss"] == 6.0


def test_empty_suite_is_unusable(tmp_path: Path) -> None:
    assert main(["--suite", str(tmp_path)]) == EXIT_UNUSABLE
