"""The parser's fast path against its definition, and StepSeries' storage against a plain list of records.

``read_logs`` takes whole chunks of well-formed metric lines in bulk (``parse._FastPath``); ``_scan`` parses line by
line and defines the behaviour. Each log here is read both ways, at several chunk sizes, and must give the same
records (bit for bit), skipped lines and their examples, rewinds and partial-line flag. The adversarial logs hold
one line that the bulk route must not take.
"""

from __future__ import annotations

import io
import math
import random
import re
import struct
from array import array
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from collect_helpers import NOISE, metric_line, step_metrics

from orchestrator.collect import parse
from orchestrator.collect.metrics import val_loss_history
from orchestrator.collect.parse import SourceStats, StepRecord, StepSeries, iter_records, read_logs

PREFIX = "[2025-11-20T14:55:23+08:00] retraining/0 "
CHUNKS = [7, 100, 4096, 1 << 20]


def line(step: int, *, max_steps: int = 1000, prefix: str = PREFIX, **extra: float) -> str:
    fields = step_metrics(step, loss=10 - step / 100, tps=1.0e4 + step % 7)
    fields.update(extra)
    return metric_line(step, max_steps, fields, prefix=prefix)


def clean(steps: range) -> list[str]:
    return [line(s) for s in steps]


def bits(values: tuple[float, ...]) -> bytes:
    """Bit-exact (NaN equals NaN, -0.0 differs from 0.0)."""
    return struct.pack(f"{len(values)}d", *values)


def record_key(r: StepRecord) -> tuple[Any, ...]:
    return r.global_step, r.fields, bits(r.values), r.last_iteration, r.source


def snapshot(series: StepSeries, stats: list[SourceStats]) -> dict[str, Any]:
    return {
        "records": [record_key(r) for r in series],
        "stats": stats,
        "rewinds": (series.rewinds, series.rewind_count),
        "field_names": series.field_names(),
        "columns": {
            n: [(s, v if v is None else bits((v,))) for s, v in series.column(n)] for n in series.field_names()
        },
    }


def read(paths: list[Path], *, fast: bool) -> tuple[dict[str, Any], int]:
    """``read_logs`` with the fast path on or off, and how many chunks it took."""
    taken = 0
    original = parse._FastPath.block

    def block(self: parse._FastPath, *args: Any) -> parse._Block | None:
        nonlocal taken
        got = original(self, *args) if fast else None
        taken += got is not None
        return got

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(parse._FastPath, "block", block)
        series, stats = read_logs(paths)
    return snapshot(series, stats), taken


def compare(monkeypatch: pytest.MonkeyPatch, paths: list[Path], chunks: list[int] = CHUNKS) -> dict[int, int]:
    """Fast and slow agree at every chunk size; returns the chunks the fast path took, per chunk size."""
    taken = {}
    for chunk in chunks:
        monkeypatch.setattr(parse, "CHUNK_BYTES", chunk)
        fast, taken[chunk] = read(paths, fast=True)
        slow, _ = read(paths, fast=False)
        assert fast == slow, f"CHUNK_BYTES={chunk}"
    return taken


def write(path: Path, lines: list[str], tail: str = "") -> Path:
    path.write_text("\n".join(lines) + "\n" + tail, newline="")
    return path


def setv(text: str, key: str, value: str) -> str:
    """``text`` with the value of field ``key`` printed as ``value``."""
    return re.sub(rf"(\| {re.escape(key)}: )[^ ]+", lambda m: m[1] + value, text)


def drop(text: str, key: str) -> str:
    return re.sub(rf" \| {re.escape(key)}: [^ ]+", "", text)


def odd(**changes: Callable[[str], str]) -> list[str]:
    """Steps 0..29 with the lines of some steps changed, e.g. ``odd(s10=...)``."""
    return [changes.get(f"s{s}", str)(line(s)) for s in range(30)]


# name: (lines, whether the fast path takes the whole log as one chunk, whether it can take any chunk)
CASES: dict[str, tuple[list[str], bool, bool]] = {
    "clean": (clean(range(40)), True, True),
    "noise between": ([x for s in range(30) for x in [line(s), *NOISE * (s % 3 == 0)]], True, True),
    "ansi colours": ([f"\x1b[32m{line(s)}\x1b[0m" if s % 4 else line(s) for s in range(30)], True, True),
    "progress bar before the line": ([f"Epoch 0:  10%|#  | {s}/30\r{line(s)}" for s in range(30)], True, True),
    "separators in the prefix": ([line(s, prefix="0: rank | host: n1 ") for s in range(30)], True, True),
    "steps with gaps": (clean(range(0, 90, 3)), True, True),
    "nan and inf": (odd(s10=lambda x: setv(setv(x, "reduced_train_loss", "nan"), "lr", "-inf")), True, True),
    "odd float spellings": (
        odd(
            s10=lambda x: setv(setv(x, "lr", "+1.1E-6"), "global_batch_size", "1_28"),
            s20=lambda x: setv(setv(x, "reduced_train_loss", "-0"), "train_step_timing in s", "Infinity"),
        ),
        True,
        True,
    ),
    "an extra field": (odd(s10=lambda x: x + " | max_memory_reserved: 7.1e+10"), False, True),
    "a missing field": (odd(s10=lambda x: drop(x, "tokens_per_sec_per_gpu")), False, True),
    "fields in another order": (odd(s10=lambda x: drop(x, "lr") + " | lr: 1e-05"), False, True),
    "a spliced line": (clean(range(10)) + [line(10)[:90] + line(11)] + clean(range(12, 20)), False, True),
    "a repeated step": (clean(range(20)) + clean(range(15, 30)), False, True),
    "a value that is not a number": (odd(s10=lambda x: setv(x, "lr", "fast")), False, True),
    "a value with a slash": (odd(s10=lambda x: setv(x, "lr", "1/2")), False, True),
    "a value ending in a colon": (odd(s10=lambda x: setv(x, "lr", "1:")), False, True),
    "a bad first line": (odd(s0=lambda x: setv(x, "global_step", "-1")), False, True),
    "a fractional step": (odd(s10=lambda x: setv(x, "global_step", "10.5")), False, True),
    "a negative step": (odd(s10=lambda x: setv(x, "global_step", "-10")), False, True),
    "two spaces after a key": (odd(s10=lambda x: x.replace("lr: ", "lr:  ")), False, True),
    "a tab in a value": (odd(s10=lambda x: setv(x, "lr", "\t1e-05")), False, True),
    "crlf line ends": ([line(s) + "\r" for s in range(20)], False, False),
    "val_loss appears": (clean(range(10)) + [line(s, val_loss=3.5) for s in range(10, 20)], False, True),
    "another max_steps": (clean(range(10)) + [line(s, max_steps=2000) for s in range(10, 20)], False, True),
    "leading zeros in N": (odd(s10=lambda x: x.replace("iteration 10/999", "iteration 10/0999")), False, True),
    "a look-alike with the marker": (
        clean(range(10)) + ["[NeMo I] Training epoch 0 finished"] + clean(range(10, 20)),
        False,
        True,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_fast_and_slow_paths_agree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    lines, whole, some = CASES[name]
    path = write(tmp_path / "train.out", lines, tail=line(99)[:60])  # and an unterminated last line
    taken = compare(monkeypatch, [path], [1, *CHUNKS] if len(lines) < 50 else CHUNKS)
    assert (taken[1 << 20] == 1) == whole  # read as one chunk, the log takes the bulk route or falls back as it must
    assert any(taken.values()) == some  # with small chunks, those without the odd line are taken in bulk


def test_a_chain_of_logs_with_rewinds_agrees(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = write(tmp_path / "train-1.out", clean(range(58)))
    second = write(tmp_path / "train-2.out", clean(range(50, 100)) + clean(range(90, 120)))
    third = write(tmp_path / "train-3.out", clean(range(110, 115)))
    taken = compare(monkeypatch, [first, second, third])
    assert taken[1 << 20] == 2  # the first and third whole; the second repeats steps 90..99 within itself
    series, _ = read_logs([first, second, third])
    assert [(r.first_dropped, r.last_dropped) for r in series.rewinds] == [(50, 57), (90, 99), (110, 119)]
    assert [r.global_step for r in series] == list(range(115))


@pytest.mark.parametrize("seed", range(4))
def test_random_mixtures_agree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, seed: int) -> None:
    """Logs stitched from pieces of every case, their steps moved on (or back, as a resumed job's go)."""
    rng = random.Random(seed)
    paths = []
    for job in range(3):
        lines: list[str] = []
        for piece in range(12):
            offset = 25 * (job * 12 + piece) + rng.choice([0, 0, 0, -40])
            shifted = partial(
                re.sub, r"global_step: (\d+)\b", lambda m, offset=offset: f"global_step: {int(m[1]) + offset}"
            )
            lines += [shifted(x) for x in CASES[rng.choice(list(CASES))][0]]
        paths.append(write(tmp_path / f"train-{job}.out", lines, tail=rng.choice(["", line(5)[:70], "noise"])))
    taken = compare(monkeypatch, paths, [64, 512, 4096, 1 << 20])
    assert any(taken.values())


def test_skipped_line_numbers_are_right_in_later_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Line numbers are counted only when an example is taken, by reading the stream again; a stream that cannot
    seek is counted as it passes. Both give each line's true number."""
    lines = clean(range(200))
    bad = [37, 120, 121, 199]
    for i in bad:
        lines[i] = lines[i].replace("global_step: ", "global_step: x")
    data = ("\n".join(lines) + "\n").encode()

    class Pipe(io.BytesIO):
        def seekable(self) -> bool:
            return False

    monkeypatch.setattr(parse, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(parse, "MAX_LINE_BYTES", 2000)
    for head in ("", "#" * 10_000 + "\n"):  # a line too long to keep whole shifts the buffers against the bytes
        for stream in (io.BytesIO(head.encode() + data), Pipe(head.encode() + data)):
            stats = SourceStats(path="p")
            records = list(iter_records(stream, stats))
            assert len(records) == 200 - len(bad)
            assert [int(e.split(":")[1]) for e in stats.skipped_examples] == [i + 1 + bool(head) for i in bad]


# StepSeries: rows in runs of one shape, against a list of records with the rule written out (and the metrics'
# val_loss history, read from its slices, against the same rule applied row by row).

SHAPES = [("lr", "global_step", "loss"), ("lr", "global_step", "loss", "val_loss"), ("global_step", "a b", "loss")]


def model_add(model: list[StepRecord], record: StepRecord) -> None:
    """The merge rule: a step that comes again drops every record from it on."""
    model[:] = [r for r in model if r.global_step < record.global_step]
    model.append(record)


@pytest.mark.parametrize("seed", range(6))
def test_step_series_matches_a_list_of_records(seed: int) -> None:
    rng = random.Random(seed)
    series, model = StepSeries(), []
    seen: dict[tuple[str, ...], None] = {}
    step = 0
    for _ in range(60):
        fields = rng.choice(SHAPES)
        seen.setdefault(fields)
        source, last_iteration = rng.choice([(0, 99), (0, 99), (1, 99), (1, 199)])
        step = max(0, step + rng.choice([1, 1, 1, 5, -3, -40]))
        count = rng.choice([1, 1, 4, 30])
        records = []
        for s in range(step, step + count):
            values = tuple(
                float(s) if f == "global_step" else rng.choice([0.5, 0.5, 0.0, -0.0, float("nan"), s / 7])
                for f in fields
            )
            records.append(StepRecord(s, fields, values, last_iteration, source))
        step += count
        if count > 1 and rng.random() < 0.5:
            flat = array("d", [v for r in records for v in r.values])
            series.extend(
                parse._Block(fields, array("d", [r.global_step for r in records]), last_iteration, flat, source)
            )
        else:
            for r in records:
                series.add(r)
        for r in records:
            model_add(model, r)

        assert [record_key(r) for r in series] == [record_key(r) for r in model]
        assert len(series) == len(model)
        if model:
            assert record_key(series[-1]) == record_key(model[-1])
            a = rng.randrange(len(model))
            b = rng.randrange(a, len(model) + 1)
            for name in ("loss", "val_loss", "a b"):
                expected = [(r.global_step, r.get(name)) for r in model[a:b]]
                assert [(s, None if v is None else bits((v,))) for s, v in series.column(name, range(a, b))] == [
                    (s, None if v is None else bits((v,))) for s, v in expected
                ]
                present = tuple(v for _, v in expected if v is not None)
                assert bits(tuple(series.values(name, range(a, b)))) == bits(present)
    history: list[tuple[int, float]] = []  # val_loss_history's rule, row by row
    for r in model:
        v = r.get("val_loss")
        if v is not None and (not history or not (history[-1][1] == v or math.isnan(history[-1][1]) and math.isnan(v))):
            history.append((r.global_step, v))
    assert [(s, bits((v,))) for s, v in val_loss_history(series)] == [(s, bits((v,))) for s, v in history]
    used = {r.fields for r in model}
    names = {"global_step": None}
    for fields in seen:  # the shapes in first-seen order, dropped rows' included, as the log showed them
        if fields in used:
            names.update(dict.fromkeys(fields))
    assert series.field_names() == list(names)
