"""The seeds' rules on merged steps: throughput window, final loss, the verdict, MFU, val_loss; and baselines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from collect_helpers import printed, step_metrics, write_log

from orchestrator.collect import collect_logs
from orchestrator.collect.baseline import Baseline, BaselineError, choose, judge, load_baselines


def known_rate(step: int) -> float:
    """Distinct per step, and far off in the first and last 10, so any wrong window changes the mean."""
    return 2.0e3 + step if step < 10 or step >= 90 else 1.0e4 + 37.0 * step


def known_loss(step: int) -> float:
    return 11.0 - 0.05 * step


@pytest.fixture
def log_100(tmp_path: Path) -> Path:
    return write_log(
        tmp_path / "train-1.out",
        range(100),
        100,
        lambda s: step_metrics(s, loss=known_loss(s), tps=known_rate(s)),
        noise_every=9,
        tail="Training epoch 0, iteration 100/99 | lr: 1.5e-05 | global_st",
    )


def test_throughput_is_the_mean_over_steps_10_to_89_and_loss_is_step_99s(log_100: Path) -> None:
    m = collect_logs([log_100], model="llama3_8b")
    window = [printed(known_rate(s)) for s in range(10, 90)]
    assert m.throughput == math.fsum(window) / 80
    assert m.window == (10, 89, 80)
    assert (m.final_step, m.final_loss) == (99, printed(known_loss(99)))
    step_times = [printed(128 * 8192 / 8 / known_rate(s)) for s in range(10, 90)]
    assert m.mean_step_time == pytest.approx(math.fsum(step_times) / 80, rel=1e-15)
    assert m.consumed_samples == 100 * 128
    assert m.verdict == "none" and m.loss_rel_diff is None
    assert any("unterminated last line" in n for n in m.notes)


def test_baseline_within_5_percent_passes_and_10_percent_off_fails(log_100: Path) -> None:
    final = printed(known_loss(99))
    near = collect_logs([log_100], model="m", baseline=Baseline(final_loss=final / 1.04))
    assert near.verdict == "pass"
    assert near.loss_rel_diff == pytest.approx(0.04)
    far = collect_logs([log_100], model="m", baseline=Baseline(final_loss=final / 1.10))
    assert far.verdict == "fail" and far.loss_rel_diff == pytest.approx(0.10)
    below = collect_logs([log_100], model="m", baseline=Baseline(final_loss=final / 0.9))
    assert below.verdict == "fail" and below.loss_rel_diff == pytest.approx(-0.10)
    loose = collect_logs([log_100], model="m", baseline=Baseline(final_loss=final / 1.10), threshold=0.12)
    assert loose.verdict == "pass"


def test_fewer_than_21_steps_says_so(tmp_path: Path) -> None:
    path = write_log(tmp_path / "short.out", range(20), 20, lambda s: step_metrics(s, loss=5.0, tps=1e4))
    m = collect_logs([path], model="m", flops_per_token=5e10, peak_flops_per_gpu=989e12)
    assert m.throughput is None and m.mean_step_time is None and m.mfu is None and m.window is None
    assert any("only 20 steps" in n and "at least 21" in n for n in m.notes)
    assert m.final_loss == 5.0


def test_21_steps_leave_exactly_the_middle_one(tmp_path: Path) -> None:
    path = write_log(tmp_path / "s.out", range(21), 21, lambda s: step_metrics(s, loss=5.0, tps=1e4 + 100 * s))
    m = collect_logs([path], model="m")
    assert m.window == (10, 10, 1) and m.throughput == 1e4 + 1000


def test_mfu_from_flops_per_token_and_peak(log_100: Path) -> None:
    m = collect_logs([log_100], model="m", flops_per_token=5.0e10, peak_flops_per_gpu=1.0e15)
    assert m.model_tflops_per_gpu == pytest.approx(m.throughput * 5.0e10 / 1e12)
    assert m.mfu == pytest.approx(m.throughput * 5.0e10 / 1.0e15)


def test_a_run_that_stopped_early_fails_against_its_baseline(tmp_path: Path) -> None:
    path = write_log(tmp_path / "t.out", range(60), 100, lambda s: step_metrics(s, loss=5.0, tps=1e4))
    m = collect_logs([path], model="m", baseline=Baseline(final_loss=5.0))
    assert m.verdict == "fail" and "step 59 of 99" in m.verdict_reason
    assert collect_logs([path], model="m").verdict == "none"


def test_a_nan_final_loss_fails_and_is_null_in_json(tmp_path: Path) -> None:
    path = write_log(
        tmp_path / "n.out", range(30), 30, lambda s: step_metrics(s, loss=math.nan if s == 29 else 5.0, tps=1e4)
    )
    m = collect_logs([path], model="m", baseline=Baseline(final_loss=5.0))
    assert m.verdict == "fail" and "nan" in m.verdict_reason
    body = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    assert body["final_loss"] is None and body["steps"][-1]["reduced_train_loss"] is None


def test_val_loss_is_the_last_value_with_each_validation_once(tmp_path: Path) -> None:
    def val(step: int) -> float | None:
        return None if step < 25 else 4.0 if step < 50 else 3.5 if step < 75 else 3.25

    path = write_log(tmp_path / "v.out", range(100), 100, lambda s: step_metrics(s, loss=5.0, tps=1e4, val_loss=val(s)))
    m = collect_logs([path], model="m")
    assert m.val_loss == 3.25
    assert m.val_loss_history == [(25, 4.0), (50, 3.5), (75, 3.25)]


def test_merged_chain_metrics_use_the_later_job(tmp_path: Path) -> None:
    first = write_log(tmp_path / "a.out", range(60), 100, lambda s: step_metrics(s, loss=99.0, tps=1.0))
    second = write_log(tmp_path / "b.out", range(40, 100), 100, lambda s: step_metrics(s, loss=4.0, tps=known_rate(s)))
    m = collect_logs([first, second], model="m")
    assert m.final_loss == 4.0
    # Steps 10..39 come from job 1 (rate 1.0), 40..89 from job 2.
    window = [1.0] * 30 + [printed(known_rate(s)) for s in range(40, 90)]
    assert m.throughput == math.fsum(window) / 80
    assert any("b.out logs step 40 again" in n for n in m.notes)
    assert any(n.startswith("step 40 starts a later job") and "b.out" in n for n in m.notes)  # its warm-up counts
    alone = collect_logs([second], model="m")
    assert not any("starts a later job" in n for n in alone.notes)


def test_judge_is_symmetric_and_inclusive_at_the_threshold() -> None:
    base = Baseline(final_loss=4.0)
    assert judge(final_loss=4.2, final_step=9, last_planned_step=9, baseline=base).verdict == "pass"
    assert judge(final_loss=3.8, final_step=9, last_planned_step=9, baseline=base).verdict == "pass"
    assert judge(final_loss=4.21, final_step=9, last_planned_step=9, baseline=base).verdict == "fail"
    stepped = Baseline(final_loss=4.0, final_step=999)
    assert judge(final_loss=4.0, final_step=99, last_planned_step=99, baseline=stepped).verdict == "fail"


def test_load_baselines_and_its_errors(tmp_path: Path) -> None:
    good = tmp_path / "b.json"
    good.write_text(
        json.dumps({"llama3_8b": {"final_loss": 6.218, "throughput": 10730}, "qwen3_8b": {"final_loss": 3}})
    )
    baselines = load_baselines(good)
    assert baselines["llama3_8b"] == Baseline(final_loss=6.218, throughput=10730.0, source=str(good))
    assert choose(baselines, "qwen3_8b")[0].final_loss == 3.0
    entry, why = choose(baselines, "qwen25_7b")
    assert entry is None and "has no entry for 'qwen25_7b'" in why and "llama3_8b" in why
    assert choose(None, "x") == (None, None)

    cases = {
        '{"m": {"final_loss": 6.2, "throughtput": 1}}': "unknown keys ['throughtput']",
        '{"m": {"throughput": 1}}': "no final_loss",
        '{"m": {"final_loss": "6.2"}}': "m.final_loss must be a finite number",
        '{"m": {"final_loss": 0}}': "must be > 0",
        "[1, 2]": "expected an object",
        '{"m": 6.2}': "must be an object",
        "{not json": "not a readable JSON file",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(BaselineError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
            load_baselines(bad)
        assert str(bad) in str(info.value)
    with pytest.raises(BaselineError, match="not found"):
        load_baselines(tmp_path / "missing.json")
