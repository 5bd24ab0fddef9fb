"""An MLPerf LLM pretraining benchmark's schedule from its rules (:mod:`orchestrator.mlperf.rules`), in integer
arithmetic, at any global batch size.

Llama 3.1 405B (mlcommons/training_policies ``training_rules.adoc``, v6.0):

- evaluate every 18,432 sequences, i.e. every ``ceil(18432/GBS)`` steps, skipping the first
  ``floor(0.0026*GBS + 12)`` evaluations; each evaluation covers 5,760 sequences (``ceil(5760/GBS)`` batches);
- AdamW, base LR ``8e-5*GBS/1152``, linear warm-up over ``ceil(8000*1152/GBS)`` steps, cosine decay to ``8e-7`` at
  step ``ceil(1_200_000*1152/GBS)``; logged decay steps = that horizon minus the warm-up;
- target: validation log-perplexity <= 5.6; GBS in [1152, 9216] (outside it, new reference convergence points).

Llama 3.1 8B: evaluate every ``ceil(12288/GBS)`` steps from the first interval on, over 1,024 sequences; base LR
and warm-up of the reference convergence points (GBS 16 to 128), cosine decay to 0.1 x base at step 1,200,000
(at any GBS); target 3.3.

The reference (``pretrain_llama31.py``) computes the first evaluation as the float
``18432*floor(0.0026*GBS+12)/GBS`` steps, which Lightning rejects when it is not integral (GBS 960, 1120, 1216,
1248) and which lands one interval early (step 224 at GBS 1152). NVIDIA's submissions use
``(skip+1)*ceil(18432/GBS)`` and their accepted logs show it: GBS 1152 evaluates first after 240 steps
(276,480 samples). This module uses that, exactly, with integers only.

**Steps.** ``steps_done`` is the number of optimizer steps completed: Lightning's ``trainer.global_step`` as seen
inside validation and callbacks. MLPerf's ``samples_count`` is ``steps_done * GBS``. "The first evaluation at
step 240 (GBS 1152)" is the evaluation that runs once 240 steps are complete, i.e. after the step whose 0-based
index is 239; it is logged with ``samples_count`` 276,480. :meth:`Schedule.lr_at` instead takes the 0-based index
of an optimizer step (the steps completed before it), as torch LR schedulers count (``last_epoch``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from orchestrator.mlperf.rules import LLAMA31_405B, Rules, rules_for


class GbsError(ValueError):
    """A global batch size the rules do not allow (without an explicit override)."""


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def skipped_evaluations(gbs: int, rules: Rules = LLAMA31_405B) -> int:
    """``floor(slope*GBS + offset)`` exactly (405B: ``floor(0.0026*GBS + 12)``, 0.0026 = 26/10000; 8B: none)."""
    return math.floor(rules.skip_evals_slope * gbs) + rules.skip_evals_offset


def cosine_annealing_lr(step: int, base: float, low: float, warmup: int, horizon: int) -> float:
    """LR of the optimizer step with 0-based index ``step``, as NeMo's ``CosineAnnealing`` computes it: the one
    schedule of both trainers and of the MLPerf log.

    NeMo 2's ``CosineAnnealingScheduler(warmup_steps, constant_steps=0, min_lr, max_steps)`` wraps
    ``nemo.core.optim.lr_scheduler.CosineAnnealing``: ``base*(step+1)/(warmup+1)`` while ``step <= warmup``
    (so step 0 trains at ``base/(warmup+1)``, step ``warmup`` at ``base``), then
    ``min + (base-min)*(1+cos(pi*(step-warmup)/(max-warmup)))/2`` up to ``max_steps`` (``horizon``), then ``min``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    # Same operations in the same order as NeMo, so the floats agree bit for bit.
    if warmup > 0 and step <= warmup:
        return base * ((step + 1) / (warmup + 1))
    if step > horizon:
        return low
    mult = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (horizon - warmup)))
    return (base - low) * mult + low


def base_learning_rate(gbs: int, rules: Rules = LLAMA31_405B) -> float:
    """The base LR at ``gbs``: 405B's formula, or the 8B RCPs' value (interpolated between two RCPs).

    405B: ``8e-5*GBS/1152`` as a float, evaluated as NVIDIA's accepted submissions do (``0.00008*GBS/1152``).
    The rules say "rounded to the 8th decimal", and the reference trains with ``round(lr, 8)``; but every
    mlperf-logging compliance ruleset for this benchmark (5.0.0 to 6.0.0) checks
    ``opt_base_learning_rate * 1152 == global_batch_size * 8e-5`` in exact floating point, which the rounded value
    fails whenever ``8e-5*GBS/1152`` has more than 8 decimals (GBS 960, 1008, 1216, 1280, 1536, ...). The two
    differ by less than 5e-9; this one is what the checker and the published results accept.
    """
    if rules.lr_linear_in_gbs:
        point = rules.lr_points[0]
        return point.base_lr * gbs / point.gbs
    return _between_points(gbs, rules, "base_lr")


def warmup_steps(gbs: int, rules: Rules = LLAMA31_405B) -> int:
    """Linear warm-up steps: the warm-up sequences at ``gbs`` over GBS, rounded up."""
    if rules.lr_linear_in_gbs:
        return ceil_div(rules.lr_points[0].warmup_samples, gbs)
    return math.ceil(_between_points(gbs, rules, "warmup_samples") / gbs)


def _between_points(gbs: int, rules: Rules, name: str) -> float:
    """A point's value at its GBS, linear between two points, the nearest point's outside them."""
    points = rules.lr_points
    if gbs <= points[0].gbs:
        return getattr(points[0], name)
    for low, high in zip(points, points[1:]):
        if gbs <= high.gbs:
            if gbs == high.gbs:
                return getattr(high, name)
            t = (gbs - low.gbs) / (high.gbs - low.gbs)
            return getattr(low, name) + t * (getattr(high, name) - getattr(low, name))
    return getattr(points[-1], name)


def lr_horizon_steps(gbs: int, rules: Rules = LLAMA31_405B) -> int:
    """Where the cosine decay ends: 405B ``ceil(1_200_000*1152/GBS)``, 8B 1,200,000 at any GBS."""
    if rules.horizon_scale_gbs is None:
        return rules.horizon_steps
    return ceil_div(rules.horizon_steps * rules.horizon_scale_gbs, gbs)


def end_learning_rate(base_lr: float, rules: Rules = LLAMA31_405B) -> float:
    """405B's fixed ``8e-7``; 8B ``base * 0.1`` (as the reference computes ``min_lr=max_lr * 0.1``)."""
    if rules.end_lr is not None:
        return rules.end_lr
    assert rules.end_lr_fraction is not None
    return base_lr * rules.end_lr_fraction


def lr_passes_checker(gbs: int, rules: Rules = LLAMA31_405B) -> bool:
    """Whether the checker's exact float test of the base LR holds (405B: for some GBS no float can; 8B: no test)."""
    if not rules.checker_tests_lr:
        return True
    point = rules.lr_points[0]
    return base_learning_rate(gbs, rules) * point.gbs == gbs * point.base_lr


def check_gbs(gbs: int, *, allow_new_rcp: bool = False, rules: Rules = LLAMA31_405B) -> None:
    """Raise :class:`GbsError` for a GBS the rules do not allow without new RCPs, naming the fix."""
    if isinstance(gbs, bool) or not isinstance(gbs, int) or gbs < 1:
        raise GbsError(f"global batch size must be a positive integer, got {gbs!r}")
    low, high = rules.gbs_range
    if not low <= gbs <= high and not allow_new_rcp:
        raise GbsError(
            f"GBS {gbs} is outside [{low}, {high}]: the MLPerf {rules.benchmark} rules ({rules.gbs_rule_source}) "
            f"require new reference convergence points for it, so its result is not comparable. Use a GBS in "
            f"[{low}, {high}], or pass allow_new_rcp=True (GBS outside the range is allowed then, e.g. to study "
            f"convergence)."
        )


@dataclass(frozen=True)
class Schedule:
    """Everything a benchmark's rules fix for one global batch size. Only the first seven fields are inputs; unset
    (None) ones are the rules', overrides (``TARGET``, ``EVAL_EVERY``, ``START_EVAL_AT``) are allowed and listed in
    ``warnings``. ``benchmark`` names the :class:`~orchestrator.mlperf.rules.Rules` (a name, so the schedule stays a
    plain config NeMo-Run can build)."""

    gbs: int
    target_log_ppl: float | None = None
    eval_every_samples: int | None = None
    eval_samples: int | None = None
    #: Samples before the first evaluation, instead of the rules' skip: it is moved up to the next grid point.
    start_eval_at_samples: int | None = None
    allow_new_rcp: bool = False
    benchmark: str = LLAMA31_405B.benchmark

    #: ``ceil(eval_every_samples/GBS)``: steps between evaluations.
    eval_interval_steps: int = field(init=False)
    #: The rules' skip (405B ``floor(0.0026*GBS + 12)``, 8B none): evaluations of the grid that are skipped.
    skipped_evals: int = field(init=False)
    #: ``(skipped_evals + 1) * eval_interval_steps``: steps done at the first evaluation.
    first_eval_step: int = field(init=False)
    #: ``ceil(eval_samples/GBS)``: validation batches per evaluation (``limit_val_batches``).
    eval_batches: int = field(init=False)
    base_lr: float = field(init=False)
    min_lr: float = field(init=False)
    warmup_steps: int = field(init=False)
    #: The LR horizon (the reference's ``trainer.max_steps``): 405B ``ceil(1_200_000*1152/GBS)``, 8B 1,200,000.
    max_steps: int = field(init=False)
    #: ``max_steps - warmup_steps``, as logged (``opt_learning_rate_decay_steps``).
    decay_steps: int = field(init=False)
    #: Things that are allowed but worth telling the user (not the rules' values, checker pitfalls).
    warnings: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        rules = self.rules
        for name in ("target_log_ppl", "eval_every_samples", "eval_samples"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(rules, name))
        check_gbs(self.gbs, allow_new_rcp=self.allow_new_rcp, rules=rules)
        if self.eval_every_samples < 1 or self.eval_samples < 1 or (self.start_eval_at_samples or 0) < 0:
            raise ValueError(
                f"eval_every_samples ({self.eval_every_samples}) and eval_samples ({self.eval_samples}) must be >= 1, "
                f"start_eval_at_samples ({self.start_eval_at_samples}) >= 0"
            )
        gbs = self.gbs
        interval = ceil_div(self.eval_every_samples, gbs)
        skipped = self._first_grid_point(interval) - 1
        warmup = warmup_steps(gbs, rules)
        horizon = lr_horizon_steps(gbs, rules)
        base = base_learning_rate(gbs, rules)
        derived = {
            "eval_interval_steps": interval,
            "skipped_evals": skipped,
            "first_eval_step": (skipped + 1) * interval,
            "eval_batches": ceil_div(self.eval_samples, gbs),
            "base_lr": base,
            "min_lr": end_learning_rate(base, rules),
            "warmup_steps": warmup,
            "max_steps": horizon,
            "decay_steps": horizon - warmup,
            "warnings": tuple(self._warnings(skipped)),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @property
    def rules(self) -> Rules:
        return rules_for(self.benchmark)

    def _warnings(self, skipped: int) -> list[str]:
        rules, notes = self.rules, []
        if self.eval_every_samples != rules.eval_every_samples or self.eval_samples != rules.eval_samples:
            notes.append(
                f"evaluation every {self.eval_every_samples} sequences over {self.eval_samples} is not the rules' "
                f"{rules.eval_every_samples} over {rules.eval_samples}: not a closed-division schedule"
            )
        if skipped != skipped_evaluations(self.gbs, rules):
            notes.append(
                f"first evaluation after {self.start_eval_at_samples} samples is not the rules' (skip the first "
                f"{skipped_evaluations(self.gbs, rules)} evaluations): not a closed-division schedule"
            )
        if self.target_log_ppl != rules.target_log_ppl:
            notes.append(f"target log-perplexity {self.target_log_ppl} is not the rules' {rules.target_log_ppl}")
        if not lr_passes_checker(self.gbs, rules):
            point = rules.lr_points[0]
            notes.append(
                f"at GBS {self.gbs} no float satisfies the compliance checker's exact test "
                f"'opt_base_learning_rate * {point.gbs} == global_batch_size * {point.base_lr:g}': the log will fail "
                f"that check"
            )
        if not rules.lr_linear_in_gbs and self.gbs not in {p.gbs for p in rules.lr_points}:
            notes.append(
                f"no reference convergence point has GBS {self.gbs} (they have "
                f"{', '.join(str(p.gbs) for p in rules.lr_points)}): base LR and warm-up are interpolated linearly "
                f"between the nearest ones (the nearest one's outside them); the rules leave both unconstrained"
            )
        sequences = ceil_div(self.eval_samples, self.gbs) * self.gbs
        if sequences > self.eval_samples:
            notes.append(
                f"each evaluation reads {sequences} sequences ({sequences // self.gbs} batches of {self.gbs}) "
                f"from a {self.eval_samples}-sequence validation set: the data wraps around, as in the reference"
            )
        return notes

    def _first_grid_point(self, interval: int) -> int:
        """1-based index of the first evaluation on the grid: the rules' skip + 1, or the first grid point at or
        after ``start_eval_at_samples``."""
        if self.start_eval_at_samples is None:
            return skipped_evaluations(self.gbs, self.rules) + 1
        return max(ceil_div(ceil_div(self.start_eval_at_samples, self.gbs), interval), 1)

    @property
    def eval_sequences(self) -> int:
        """Sequences one evaluation reads: whole batches, so at least ``eval_samples``."""
        return self.eval_batches * self.gbs

    def samples(self, steps_done: int) -> int:
        """MLPerf's ``samples_count`` after ``steps_done`` optimizer steps."""
        return steps_done * self.gbs

    def is_eval_step(self, steps_done: int) -> bool:
        """Whether an evaluation runs once ``steps_done`` optimizer steps are complete."""
        return steps_done >= self.first_eval_step and steps_done % self.eval_interval_steps == 0

    def next_eval_step(self, steps_done: int) -> int:
        """The first evaluation strictly after ``steps_done`` completed steps (for a job resuming mid-run)."""
        if steps_done < self.first_eval_step:
            return self.first_eval_step
        return (steps_done // self.eval_interval_steps + 1) * self.eval_interval_steps

    def eval_steps(self, until: int | None = None) -> Iterator[int]:
        """Evaluation points (steps done) up to ``until`` inclusive (default: the LR horizon)."""
        last = self.max_steps if until is None else until
        return iter(range(self.first_eval_step, last + 1, self.eval_interval_steps))

    def lr_at(self, step: int) -> float:
        """LR of the optimizer step with 0-based index ``step`` (:func:`cosine_annealing_lr` of the rules' numbers)."""
        return cosine_annealing_lr(step, self.base_lr, self.min_lr, self.warmup_steps, self.max_steps)

    def reached(self, val_loss: float) -> bool:
        """Whether a validation log-perplexity meets the target (``<=``, as the reference and the checker test)."""
        return val_loss <= self.target_log_ppl
