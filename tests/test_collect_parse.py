"""The log parser: the seeds' lines, noise, partial and spliced lines, chunk boundaries, and the chain merge."""
# ruff: noqa: E501  (the seeds' log lines are quoted verbatim)

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from collect_helpers import NOISE, metric_line, step_metrics, write_log

from orchestrator.collect import parse
from orchestrator.collect.parse import SourceStats, iter_records, read_logs

# Verbatim from seed 000 (LLaMa-V3 pretraining), "性能指标".
SEED_000 = """\
[2025-11-20T14:55:23+08:00] retraining/0 Training epoch 0, iteration 97/99 | lr: 1.469e-05 | global_batch_size: 128 | global_step: 97 | reduced_train_loss: 6.265 | train_step_timing in s: 12.22 | tokens_per_sec_per_gpu: 1.073e+04 | consumed_samples: 12544
[2025-11-20T14:55:35+08:00] retraining/0 Training epoch 0, iteration 98/99 | lr: 1.484e-05 | global_batch_size: 128 | global_step: 98 | reduced_train_loss: 6.181 | train_step_timing in s: 12.21 | tokens_per_sec_per_gpu: 1.074e+04 | consumed_samples: 12672
[2025-11-20T14:55:47+08:00] retraining/0 Training epoch 0, iteration 99/99 | lr: 1.499e-05 | global_batch_size: 128 | global_step: 99 | reduced_train_loss: 6.218 | train_step_timing in s: 12.21 | tokens_per_sec_per_gpu: 1.073e+04 | consumed_samples: 12800
"""

# Verbatim from seed 001 (Qwen pretraining); its first line has lost its opening '['.
SEED_001 = """\
2025-10-17T11:32:59+08:00] Training epoch 0, iteration 527/999 | lr: 0.0001758 | global_batch_size: 32 | global_step: 527 | reduced_train_loss: 2.792 | train_step_timing in s: 2.389 | tokens_per_sec_per_gpu: 6.859e+03 | consumed_samples: 16896 | val_loss: 3.624
[2025-10-17T11:33:02+08:00] Training epoch 0, iteration 528/999 | lr: 0.0001754 | global_batch_size: 32 | global_step: 528 | reduced_train_loss: 3.06 | train_step_timing in s: 2.443 | tokens_per_sec_per_gpu: 6.706e+03 | consumed_samples: 16928 | val_loss: 3.624
[2025-10-17T11:33:04+08:00] Training epoch 0, iteration 529/999 | lr: 0.0001749 | global_batch_size: 32 | global_step: 529 | reduced_train_loss: 3.221 | train_step_timing in s: 2.127 | tokens_per_sec_per_gpu: 7.702e+03 | consumed_samples: 16960 | val_loss: 3.624
"""


def parse_text(text: str | bytes) -> tuple[list[parse.StepRecord], SourceStats]:
    stats = SourceStats(path="test.log")
    data = text.encode() if isinstance(text, str) else text
    return list(iter_records(io.BytesIO(data), stats)), stats


def test_seed_000_lines_parse_to_their_numbers() -> None:
    records, stats = parse_text(SEED_000)
    assert [r.global_step for r in records] == [97, 98, 99]
    assert records[0].as_dict() == {
        "lr": 1.469e-05,
        "global_batch_size": 128.0,
        "global_step": 97.0,
        "reduced_train_loss": 6.265,
        "train_step_timing in s": 12.22,
        "tokens_per_sec_per_gpu": 10730.0,
        "consumed_samples": 12544.0,
    }
    assert [r.get("reduced_train_loss") for r in records] == [6.265, 6.181, 6.218]
    assert [r.get("tokens_per_sec_per_gpu") for r in records] == [10730.0, 10740.0, 10730.0]
    assert [r.get("consumed_samples") for r in records] == [12544.0, 12672.0, 12800.0]
    assert records[-1].last_iteration == 99  # "iteration 99/99": max_steps - 1
    assert records[0].fields[2] == "global_step" and records[0].get("val_loss") is None
    assert stats.skipped == 0 and not stats.partial_last_line


def test_seed_001_lines_parse_despite_the_missing_bracket() -> None:
    records, stats = parse_text(SEED_001)
    assert [r.global_step for r in records] == [527, 528, 529]
    assert [r.get("val_loss") for r in records] == [3.624, 3.624, 3.624]
    assert [r.get("lr") for r in records] == [0.0001758, 0.0001754, 0.0001749]
    assert [r.get("tokens_per_sec_per_gpu") for r in records] == [6859.0, 6706.0, 7702.0]
    assert records[0].last_iteration == 999 and stats.skipped == 0


def test_any_float_notation_and_optional_nemo_fields() -> None:
    line = (
        "0: Training epoch 1, iteration 0/999 | lr: 3e-4 | global_batch_size: 512 | global_step: 19 "
        "| max_memory_reserved: 70999998464 | reduced_train_loss: nan | train_step_timing in s: 1e+04 "
        "| tokens_per_sec_per_gpu: inf | TFLOPS_per_GPU: 552.3 | consumed_samples: 10240 | val_loss: -0.5\n"
    )
    (record,), _ = parse_text(line)
    assert record.global_step == 19  # not the iteration, which restarts every epoch
    assert record.fields == (
        "lr",
        "global_batch_size",
        "global_step",
        "max_memory_reserved",
        "reduced_train_loss",
        "train_step_timing in s",
        "tokens_per_sec_per_gpu",
        "TFLOPS_per_GPU",
        "consumed_samples",
        "val_loss",
    )
    assert math.isnan(record.get("reduced_train_loss"))
    assert record.get("tokens_per_sec_per_gpu") == math.inf
    assert record.get("max_memory_reserved") == 70999998464.0
    assert (record.get("lr"), record.get("train_step_timing in s"), record.get("val_loss")) == (3e-4, 1e4, -0.5)


def test_noise_ansi_colours_and_look_alikes_are_not_steps() -> None:
    good = metric_line(5, 100, step_metrics(5, loss=7.5, tps=1.0e4))
    text = "\n".join(
        [
            *NOISE,
            f"\x1b[32m{good}\x1b[0m",  # a coloured metric line still counts
            "\x1b[1mTraining\x1b[0m epoch 0, iteration 6/99 | global_step: 6 | reduced_train_loss: 7.25",
            "[NeMo I 2025-11-20 14:55:24 nemo_logging:393] Training epoch 0 finished",
            "Training epoch 0, iteration 7/99",
            "Training epoch 0, iteration 8/99 | lr: 1e-05 | reduced_train_loss: 7.0",
            "Training epoch 0, iteration 9/99 | lr: fast | global_step: 9",
            "Training epoch 0, iteration 10/99 | lr: 1e-05 | global_step: 10.5 | reduced_train_loss: 7.0",
        ]
    )
    records, stats = parse_text(text + "\n")
    assert [(r.global_step, r.get("reduced_train_loss")) for r in records] == [(5, 7.5), (6, 7.25)]
    # NOISE holds look-alikes without the marker ("Validation: iteration 3/32", "... global_step: 100"): not counted.
    assert stats.skipped == 5
    first_skipped_line = len(NOISE) + 3
    assert stats.skipped_examples[0].startswith(f"test.log:{first_skipped_line}: not a metric line: ")
    assert "no global_step field" in stats.skipped_examples[2]
    assert "not a number" in stats.skipped_examples[3]
    assert "not a step number" in stats.skipped_examples[4]


def test_a_line_spliced_by_another_rank_is_skipped_and_the_next_one_on_it_kept() -> None:
    cut = metric_line(57, 100, step_metrics(57, loss=6.0, tps=1.0e4))[:70]
    whole = metric_line(50, 100, step_metrics(50, loss=6.5, tps=1.1e4), prefix="[2025-11-20T15:00:00+08:00] ")
    records, stats = parse_text(cut + whole + "\n")
    assert [(r.global_step, r.get("reduced_train_loss")) for r in records] == [(50, 6.5)]
    assert stats.skipped == 1


def test_a_progress_bar_redrawn_with_carriage_returns_does_not_hide_the_line() -> None:
    line = metric_line(3, 100, step_metrics(3, loss=9.0, tps=1.0e4))
    records, _ = parse_text(f"Epoch 0:  10%|#   | 3/30\r{line}\r\nnext\n")
    assert [(r.global_step, r.get("consumed_samples")) for r in records] == [(3, 512.0)]


def test_an_unterminated_last_line_is_not_taken() -> None:
    full = metric_line(1, 100, step_metrics(1, loss=9.0, tps=1.0e4))
    records, stats = parse_text(SEED_000 + full[: len(full) - 3])  # "... | consumed_samples: 2" cut short
    assert [r.global_step for r in records] == [97, 98, 99]
    assert stats.partial_last_line
    _, clean = parse_text(SEED_000 + "a partial noise line without the marker")
    assert not clean.partial_last_line


@pytest.mark.parametrize("chunk", [1, 7, 100, 4096])
def test_chunk_boundaries_change_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, chunk: int) -> None:
    path = write_log(
        tmp_path / "a.out", range(30), 30, lambda s: step_metrics(s, loss=10 - s / 10, tps=1e4 + s), noise_every=4
    )
    expected, _ = read_logs([path])
    monkeypatch.setattr(parse, "CHUNK_BYTES", chunk)
    got, stats = read_logs([path])
    assert [r.as_dict() for r in got] == [r.as_dict() for r in expected]
    assert len(got) == 30 and stats[0].bytes == path.stat().st_size and stats[0].skipped == 0


def test_a_huge_line_without_breaks_keeps_memory_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parse, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(parse, "MAX_LINE_BYTES", 2000)
    reads: list[int] = []
    stream = io.BytesIO(b"#" * 200_000 + b"\n" + SEED_000.encode())
    original_scan = parse._scan

    def scan(buf, *args):  # record every buffer handed to the scanner
        reads.append(len(buf))
        return original_scan(buf, *args)

    monkeypatch.setattr(parse, "_scan", scan)
    records = list(iter_records(stream, SourceStats(path="x")))
    assert [r.global_step for r in records] == [97, 98, 99]
    assert max(reads) <= 2 * 2000 + 1000


def test_merge_across_jobs_later_record_wins(tmp_path: Path) -> None:
    """Job 1 reaches step 57 but its last checkpoint is step 49; job 2 re-trains 50..57 with other numbers."""
    first = write_log(tmp_path / "train-101.out", range(58), 100, lambda s: step_metrics(s, loss=1000 + s, tps=1e4))
    second = write_log(tmp_path / "train-102.out", range(50, 100), 100, lambda s: step_metrics(s, loss=s, tps=2e4))
    series, stats = read_logs([first, second])
    steps = {r.global_step: r for r in series}
    assert sorted(steps) == list(range(100))
    assert [steps[s].get("reduced_train_loss") for s in (49, 50, 57, 58)] == [1049.0, 50.0, 57.0, 58.0]
    assert [steps[s].source for s in (49, 50)] == [0, 1]
    assert [(s.first_step, s.last_step, s.records) for s in stats] == [(0, 57, 58), (50, 99, 50)]
    assert [(r.source, r.first_dropped, r.last_dropped) for r in series.rewinds] == [(1, 50, 57)]


def test_a_resume_that_falls_short_drops_the_abandoned_steps(tmp_path: Path) -> None:
    """Steps 54..57 of job 1 come after job 2's restart point: the run's final state never went through them."""
    first = write_log(tmp_path / "train-1.out", range(58), 100, lambda s: step_metrics(s, loss=1000 + s, tps=1e4))
    second = write_log(tmp_path / "train-2.out", range(50, 54), 100, lambda s: step_metrics(s, loss=s, tps=1e4))
    series, _ = read_logs([first, second])
    records = list(series)
    assert records[-1].global_step == 53 and records[-1].get("reduced_train_loss") == 53.0
    assert len(records) == 54


def test_a_requeued_job_appending_to_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "train.out"
    lines = [metric_line(s, 20, step_metrics(s, loss=100 + s, tps=1e4)) for s in range(12)]
    lines += ["Restoring states from the checkpoint path at /ckpt/step=7"]
    lines += [metric_line(s, 20, step_metrics(s, loss=s, tps=1e4)) for s in range(8, 20)]
    path.write_text("\n".join(lines) + "\n")
    series, _ = read_logs([path])
    assert [r.get("reduced_train_loss") for r in series][6:10] == [106.0, 107.0, 8.0, 9.0]
    assert len(series) == 20


def test_field_names_keep_the_log_order_and_add_late_fields(tmp_path: Path) -> None:
    path = write_log(
        tmp_path / "v.out",
        range(6),
        6,
        lambda s: step_metrics(s, loss=5.0, tps=1e4, val_loss=3.5 if s >= 3 else None),
    )
    series, _ = read_logs([path])
    assert series.field_names() == [
        "global_step",
        "lr",
        "global_batch_size",
        "reduced_train_loss",
        "train_step_timing in s",
        "tokens_per_sec_per_gpu",
        "consumed_samples",
        "val_loss",
    ]


def test_skipped_lines_are_all_counted_and_a_few_shown() -> None:
    text = "".join(f"Training epoch 0, iteration {i}/99 | lr: 1e-05 | loss: 2.0\n" for i in range(12))
    records, stats = parse_text(text + SEED_000)
    assert len(records) == 3 and stats.skipped == 12
    assert [e.split(":")[1] for e in stats.skipped_examples] == ["1", "2", "3", "4", "5"]
