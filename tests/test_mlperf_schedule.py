"""The Llama 3.1 405B schedule against the rules' formulas, worked by hand, and against published logs."""

from __future__ import annotations

import itertools
import math
import subprocess
from fractions import Fraction

import pytest
from conftest import nemo_python

from orchestrator.mlperf.schedule import GbsError, Schedule, lr_passes_checker, skipped_evaluations

# Derivations, from training_rules.adoc (interval = ceil(18432/GBS), skip = floor(0.0026*GBS + 12),
# first = (skip + 1) * interval, eval batches = ceil(5760/GBS), warm-up = ceil(8000*1152/GBS) = ceil(9216000/GBS),
# horizon = ceil(1200000*1152/GBS) = ceil(1382400000/GBS), decay = horizon - warm-up, LR = 8e-5*GBS/1152):
#
# GBS   interval           skip                     first        batches          warm-up              horizon
# 576   18432/576 = 32     floor(1.4976+12) = 13    14*32 = 448  5760/576 = 10    9216000/576 = 16000  2400000
# 960   ceil(19.2) = 20    floor(2.496+12) = 14     15*20 = 300  5760/960 = 6     9216000/960 = 9600   1440000
# 1152  18432/1152 = 16    floor(2.9952+12) = 14    15*16 = 240  5760/1152 = 5    8000                 1200000
# 1216  ceil(15.16) = 16   floor(3.1616+12) = 15    16*16 = 256  ceil(4.74) = 5   ceil(7578.9) = 7579  1136843 (a)
# 9216  18432/9216 = 2     floor(23.9616+12) = 35   36*2 = 72    ceil(0.625) = 1  9216000/9216 = 1000  150000
# (a) ceil(1382400000/1216) = ceil(1136842.1)
#
# Published logs (mlcommons/training_results_v5.1) confirm the grid: GBS 576 (University-of-Florida n32) evaluates
# at steps 448, 480; GBS 960 (NVIDIA hsg_ngpu2560) at 300, 320, 340; GBS 1152 (NVIDIA theia_ngpu512) at 240, 256,
# 272, 288 (samples_count 276480 ...). Their logged decay steps: 2384000 (576), 1430400 (960).
TABLE = {
    576: dict(
        eval_interval_steps=32,
        skipped_evals=13,
        first_eval_step=448,
        eval_batches=10,
        warmup_steps=16000,
        max_steps=2_400_000,
        decay_steps=2_384_000,
        base_lr=4e-05,
    ),
    960: dict(
        eval_interval_steps=20,
        skipped_evals=14,
        first_eval_step=300,
        eval_batches=6,
        warmup_steps=9600,
        max_steps=1_440_000,
        decay_steps=1_430_400,
        base_lr=6.666666666666667e-05,
    ),
    1152: dict(
        eval_interval_steps=16,
        skipped_evals=14,
        first_eval_step=240,
        eval_batches=5,
        warmup_steps=8000,
        max_steps=1_200_000,
        decay_steps=1_192_000,
        base_lr=8e-05,
    ),
    1216: dict(
        eval_interval_steps=16,
        skipped_evals=15,
        first_eval_step=256,
        eval_batches=5,
        warmup_steps=7579,
        max_steps=1_136_843,
        decay_steps=1_129_264,
        base_lr=8.444444444444444e-05,
    ),
    9216: dict(
        eval_interval_steps=2,
        skipped_evals=35,
        first_eval_step=72,
        eval_batches=1,
        warmup_steps=1000,
        max_steps=150_000,
        decay_steps=149_000,
        base_lr=0.00064,
    ),
}

#: (step, samples_count) of eval_start events in those logs.
PUBLISHED_EVALS = {
    576: [(448, 258_048), (480, 276_480)],
    960: [(300, 288_000), (320, 307_200), (340, 326_400)],
    1152: [(240, 276_480), (256, 294_912), (272, 313_344), (288, 331_776)],
}


@pytest.mark.parametrize("gbs", sorted(TABLE))
def test_schedule_matches_the_rules(gbs: int) -> None:
    schedule = Schedule(gbs, allow_new_rcp=gbs < 1152)
    for name, expected in TABLE[gbs].items():
        assert getattr(schedule, name) == expected, name
    assert schedule.min_lr == 8e-7
    assert schedule.target_log_ppl == 5.6


@pytest.mark.parametrize("gbs, evals", sorted(PUBLISHED_EVALS.items()))
def test_eval_steps_match_published_logs(gbs: int, evals: list[tuple[int, int]]) -> None:
    schedule = Schedule(gbs, allow_new_rcp=True)
    steps = list(schedule.eval_steps(until=evals[-1][0]))
    assert [(step, schedule.samples(step)) for step in steps] == evals


def test_first_eval_at_gbs_1152_is_after_240_steps() -> None:
    schedule = Schedule(1152)
    assert schedule.samples(schedule.first_eval_step) == 276_480  # NVIDIA theia_ngpu512 result_0, first eval
    assert not schedule.is_eval_step(224)  # where the reference's float formula puts it (one interval early)
    assert [s for s in range(300) if schedule.is_eval_step(s)] == [240, 256, 272, 288]


def test_reference_float_start_is_not_integral_where_it_crashed() -> None:
    """The reference's start_eval_at = 18432*floor(0.0026*GBS+12)/GBS; Lightning rejects non-integral floats."""
    for gbs in (960, 1120, 1216, 1248):
        reference = 18432 * math.floor(0.0026 * gbs + 12) / gbs
        assert not reference.is_integer()
        schedule = Schedule(gbs, allow_new_rcp=True)
        assert isinstance(schedule.first_eval_step, int)
        assert schedule.first_eval_step % schedule.eval_interval_steps == 0


def test_integer_skip_equals_the_exact_real_formula() -> None:
    for gbs in range(1, 20_001):
        assert skipped_evaluations(gbs) == math.floor(Fraction(26, 10_000) * gbs + 12)


def test_every_legal_gbs_gives_an_integral_grid_that_skips_the_rules_count() -> None:
    for gbs in range(1152, 9217):
        schedule = Schedule(gbs)
        interval = schedule.eval_interval_steps
        assert (interval - 1) * gbs < 18432 <= interval * gbs  # the smallest whole step count covering 18432
        grid_points_before_first = schedule.first_eval_step // interval - 1
        assert grid_points_before_first == schedule.skipped_evals
        assert schedule.eval_batches * gbs >= 5760 > (schedule.eval_batches - 1) * gbs


def test_next_eval_step_for_a_resumed_job() -> None:
    schedule = Schedule(1152)
    assert schedule.next_eval_step(0) == 240
    assert schedule.next_eval_step(239) == 240
    assert schedule.next_eval_step(240) == 256
    assert schedule.next_eval_step(250) == 256
    assert schedule.next_eval_step(256) == 272


def test_lr_at_key_steps_gbs_1152() -> None:
    schedule = Schedule(1152)
    base, low = 8e-5, 8e-7
    assert schedule.lr_at(0) == pytest.approx(base / 8001, rel=1e-15)  # (0+1)/(8000+1)
    assert schedule.lr_at(7999) == pytest.approx(base * 8000 / 8001, rel=1e-15)
    assert schedule.lr_at(8000) == base  # end of warm-up
    midpoint = 8000 + 1_192_000 // 2  # cos(pi/2) = 0: halfway between base and min
    assert schedule.lr_at(midpoint) == pytest.approx((base + low) / 2, rel=1e-12)
    assert schedule.lr_at(1_200_000) == pytest.approx(low, rel=1e-12)
    assert schedule.lr_at(1_200_001) == low
    lrs = [schedule.lr_at(s) for s in range(8000, 1_200_000, 9973)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))  # monotone cosine decay


def test_lr_during_the_benchmark_is_inside_warmup() -> None:
    """The run converges in about 300 steps at GBS 1152, far inside the 8000-step warm-up."""
    schedule = Schedule(1152)
    assert schedule.lr_at(287) == pytest.approx(8e-5 * 288 / 8001, rel=1e-15)


def test_reached_is_less_or_equal() -> None:
    schedule = Schedule(1152)
    assert schedule.reached(5.6)
    assert schedule.reached(5.577085971832275)
    assert not schedule.reached(5.6000001)
    assert not schedule.reached(float("nan"))
    assert Schedule(1152, target_log_ppl=5.7).reached(5.65)


def test_gbs_outside_the_rcp_range_needs_an_override() -> None:
    for gbs in (576, 1151, 9217):
        with pytest.raises(GbsError, match=f"GBS {gbs} is outside \\[1152, 9216\\].*allow_new_rcp=True"):
            Schedule(gbs)
        assert Schedule(gbs, allow_new_rcp=True).gbs == gbs
    for bad in (0, -1152, 1152.0, True):
        with pytest.raises(GbsError, match="positive integer"):
            Schedule(bad)  # type: ignore[arg-type]


def test_lr_checker_exactness_is_warned_only_where_no_float_passes() -> None:
    """The checker tests lr*1152 == GBS*8e-5 exactly; where our float fails, no float near it passes either."""
    for gbs in range(1152, 9217):
        exact = 8e-5 * gbs / 1152
        neighbours = [exact]
        for direction in (0.0, 1.0):
            value = exact
            for _ in range(6):
                value = math.nextafter(value, direction)
                neighbours.append(value)
        assert lr_passes_checker(gbs) == any(v * 1152 == gbs * 8e-5 for v in neighbours)
    assert lr_passes_checker(1152) and lr_passes_checker(960) and lr_passes_checker(1216)
    assert any("no float satisfies" in w for w in Schedule(1456).warnings)
    assert not Schedule(1152).warnings


def test_overrides_are_flagged() -> None:
    schedule = Schedule(1152, eval_every_samples=46080, target_log_ppl=5.7)
    assert schedule.eval_interval_steps == 40
    assert any("not the rules'" in w for w in schedule.warnings)
    assert any("target log-perplexity 5.7" in w for w in schedule.warnings)
    assert any("wraps around" in w for w in Schedule(9216).warnings)


NEMO_PYTHON = nemo_python()

NEMO_SCRIPT = """
import sys, torch
from nemo.lightning.pytorch.optim import CosineAnnealingScheduler
for lr, warmup, horizon in [(8e-05, 8000, 1200000), (0.00064, 1000, 150000)]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    module = CosineAnnealingScheduler(max_steps=horizon, warmup_steps=warmup, constant_steps=0, min_lr=8e-7)
    scheduler = module.scheduler(None, optimizer)["lr_scheduler"]["scheduler"]
    for step in (0, 1, 2, warmup - 1, warmup, warmup + 1, horizon // 2, horizon - 1, horizon, horizon + 1):
        scheduler.last_epoch = step - 1  # the LR is a function of the step count alone
        scheduler.step()
        print(warmup, step, repr(optimizer.param_groups[0]["lr"]))
"""


@pytest.mark.nemo
@pytest.mark.skipif(NEMO_PYTHON is None, reason="needs the NeMo stack (ORCHESTRATOR_NEMO_PYTHON)")
def test_lr_at_equals_nemo_cosine_annealing() -> None:
    """Bit for bit against NeMo's CosineAnnealingScheduler, the reference's scheduler (constant_steps=0)."""
    out = subprocess.run([NEMO_PYTHON, "-c", NEMO_SCRIPT], capture_output=True, text=True, timeout=600, check=True)
    schedules = {8000: Schedule(1152), 1000: Schedule(9216)}
    rows = [line.split() for line in out.stdout.splitlines() if len(line.split()) == 3 and line[0].isdigit()]
    assert len(rows) == 20, out.stdout + out.stderr
    for warmup, step, lr in rows:
        assert schedules[int(warmup)].lr_at(int(step)) == float(lr), (warmup, step, lr)


def test_start_eval_at_override_stays_on_the_grid() -> None:
    """START_EVAL_AT (samples): the first evaluation moves to the first grid point at or after it."""
    rules = Schedule(1152, start_eval_at_samples=276_480)  # the rules' own first point: no warning
    assert rules.first_eval_step == 240 and rules.warnings == ()
    early = Schedule(1216, start_eval_at_samples=100_000)  # ceil(100000/1216) = 83 steps -> grid point 96
    assert (early.first_eval_step, early.skipped_evals) == (96, 5)
    assert any("not the rules' (skip the first 15" in w for w in early.warnings)
    assert Schedule(1152, start_eval_at_samples=0).first_eval_step == 16  # never at step 0
