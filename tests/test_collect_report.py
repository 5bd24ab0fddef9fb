"""The outputs a run directory gets: metrics.json (schema), metrics.csv, valid PNG plots, report.md."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from collect_helpers import printed, step_metrics, write_log

from orchestrator.collect import collect_logs
from orchestrator.collect.baseline import Baseline
from orchestrator.collect.report import write_outputs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rate(step: int) -> float:
    return 1.0e4 + 10 * step


@pytest.fixture
def metrics(tmp_path: Path):
    first = write_log(
        tmp_path / "train-1.out",
        range(40),
        100,
        lambda s: step_metrics(s, loss=10 - s / 20, tps=rate(s), val_loss=4.5 if s >= 20 else None),
    )
    second = write_log(
        tmp_path / "train-2.out",
        range(35, 100),
        100,
        lambda s: step_metrics(s, loss=10 - s / 20, tps=rate(s), val_loss=4.0 if s >= 60 else 4.5),
    )
    return collect_logs(
        [first, second],
        model="llama3_8b",
        baseline=Baseline(final_loss=5.0, throughput=1.1e4),
        flops_per_token=5.791e10,
        peak_flops_per_gpu=989e12,
    )


def test_metrics_json_has_the_documented_fields_and_per_step_records(metrics, tmp_path: Path) -> None:
    out = tmp_path / "run"
    written = write_outputs(metrics, out)
    assert sorted(p.name for p in written) == ["loss.png", "metrics.csv", "metrics.json", "report.md", "throughput.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)  # no temporary left behind
    body = json.loads((out / "metrics.json").read_text())
    assert body == metrics.to_dict()  # streamed step by step, the same document
    assert body["final_step"] == 99 and body["final_loss"] == printed(10 - 99 / 20)
    assert body["throughput_tokens_per_sec_per_gpu"] == pytest.approx(sum(rate(s) for s in range(10, 90)) / 80)
    assert body["verdict"] == "pass" and body["loss_rel_diff"] == pytest.approx((printed(5.05) - 5.0) / 5.0)
    assert body["throughput_rel_diff"] == pytest.approx(body["throughput_tokens_per_sec_per_gpu"] / 1.1e4 - 1)
    assert body["mfu"] == pytest.approx(body["throughput_tokens_per_sec_per_gpu"] * 5.791e10 / 989e12)
    assert body["val_loss"] == 4.0 and body["val_loss_history"] == [
        {"global_step": 20, "val_loss": 4.5},
        {"global_step": 60, "val_loss": 4.0},
    ]
    assert body["rewinds"] == [{"source": 1, "first_dropped": 35, "last_dropped": 39}]
    assert [s["records"] for s in body["sources"]] == [40, 65]
    steps = body["steps"]
    assert [s["global_step"] for s in steps] == list(range(100))
    assert steps[97] == {
        "lr": printed(1e-5 * 98 / 100),
        "global_batch_size": 128,
        "global_step": 97,
        "reduced_train_loss": printed(10 - 97 / 20),
        "train_step_timing in s": printed(128 * 8192 / 8 / rate(97)),
        "tokens_per_sec_per_gpu": printed(rate(97)),
        "consumed_samples": 98 * 128,
        "val_loss": 4.0,
    }


def test_metrics_csv_has_one_row_per_step(metrics, tmp_path: Path) -> None:
    write_outputs(metrics, tmp_path, plots=False)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 100
    assert list(rows[0]) == [
        "global_step",
        "lr",
        "global_batch_size",
        "reduced_train_loss",
        "train_step_timing in s",
        "tokens_per_sec_per_gpu",
        "consumed_samples",
        "val_loss",
    ]
    assert rows[0]["val_loss"] == "" and rows[20]["val_loss"] == "4.5"
    assert rows[99]["global_step"] == "99" and float(rows[99]["tokens_per_sec_per_gpu"]) == printed(rate(99))


def test_plots_are_valid_pngs(metrics, tmp_path: Path) -> None:
    from matplotlib.image import imread

    write_outputs(metrics, tmp_path)
    for name in ("loss.png", "throughput.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        image = imread(tmp_path / name)
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert image.std() > 0.01  # something was drawn


def test_report_md_states_the_verdict_and_the_sources(metrics, tmp_path: Path) -> None:
    write_outputs(metrics, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# llama3_8b: pass")
    assert "| throughput | 10,495.0 tokens/s/GPU (mean over steps 10..89, 80 steps) |" in text
    assert "![loss](loss.png)" in text and "train-2.out" in text
    assert "logs step 35 again" in text


def test_a_plot_without_data_is_removed_not_left_stale(tmp_path: Path) -> None:
    path = write_log(tmp_path / "x.out", range(30), 30, lambda s: {"global_step": s, "reduced_train_loss": 3.0})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "throughput.png").write_bytes(PNG_MAGIC)
    m = collect_logs([path], model="m")
    written = write_outputs(m, tmp_path / "out")
    assert "throughput.png" not in [p.name for p in written]
    assert not (tmp_path / "out" / "throughput.png").exists()
    assert any("no throughput.png" in n for n in m.notes)
