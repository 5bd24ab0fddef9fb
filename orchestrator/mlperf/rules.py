"""The MLPerf LLM pretraining benchmarks' rules, as data: one :class:`Rules` value per benchmark.

:mod:`orchestrator.mlperf.schedule` turns a value into the schedule of one global batch size, and
:mod:`orchestrator.mlperf.hyperparameters` into the keys a run logs; nothing else states these numbers.

Sources, each value below names its own:

- ``training_rules.adoc``: mlcommons/training_policies ``training_rules.adoc`` (v6.0 tables: quality targets,
  evaluation frequency, hyper-parameters, minimum number of runs);
- ``closed_<benchmark>.yaml``: the checks of mlperf-logging 4.1.68's compliance checker
  (``mlperf_logging/compliance_checker/training_<ruleset>/``);
- ``rcps_llama31_8b.json``: mlperf-logging 4.1.68's reference convergence points
  (``mlperf_logging/rcp_checker/training_6.1.0/``, the same in 5.1.0 and 6.0.0);
- the references: mlcommons/training ``large_language_model_pretraining/nemo`` (405B) and
  ``small_llm_pretraining/nemo`` (8B) ``pretrain_llama31.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class LrPoint:
    """A global batch size with its base LR and linear warm-up (in sequences, so in steps ``ceil(samples/GBS)``)."""

    gbs: int
    base_lr: float
    warmup_samples: int


@dataclass(frozen=True)
class Rules:
    """What one benchmark fixes. LR and warm-up come from ``lr_points``: with ``lr_linear_in_gbs`` the base LR is
    ``lr_points[0].base_lr * GBS / lr_points[0].gbs`` at any GBS (405B's formula), else the points are reference
    convergence points and a GBS between two is interpolated linearly (as the RCP checker interpolates them)."""

    benchmark: str
    target_log_ppl: float
    seq_length: int
    eval_every_samples: int
    eval_samples: int
    #: Evaluations skipped at the start: ``floor(skip_evals_slope * GBS + skip_evals_offset)``.
    skip_evals_slope: Fraction
    skip_evals_offset: int
    lr_points: tuple[LrPoint, ...]
    lr_linear_in_gbs: bool
    #: The end LR: ``end_lr`` if given, else ``end_lr_fraction * base LR``.
    end_lr: float | None
    end_lr_fraction: float | None
    #: The LR horizon in steps; with ``horizon_scale_gbs`` it is ``ceil(horizon_steps * horizon_scale_gbs / GBS)``.
    horizon_steps: int
    horizon_scale_gbs: int | None
    #: Allowed without new reference convergence points, inclusive.
    gbs_range: tuple[int, int]
    adamw_beta_1: float
    adamw_beta_2: float
    adamw_epsilon: float
    weight_decay: float
    gradient_clip_norm: float
    decay_schedule: str
    min_runs: int
    #: Compliance rulesets of mlperf-logging that have ``closed_<benchmark>.yaml``, oldest first.
    rulesets: tuple[str, ...]
    #: The checker tests ``opt_base_learning_rate * lr_points[0].gbs == GBS * lr_points[0].base_lr`` exactly.
    checker_tests_lr: bool
    #: Logged as ``max_steps`` (the 8B checker requires the key); None: not logged (405B's reference does not).
    logged_max_steps: int | None
    #: Where the GBS rule is written, for error messages.
    gbs_rule_source: str

    @property
    def latest_ruleset(self) -> str:
        return self.rulesets[-1]


#: Shared by both benchmarks: AdamW constants and the decay schedule's name (training_rules.adoc hyper-parameter
#: table; closed_llama31_405b.yaml and closed_llama31_8b.yaml check each).
_ADAMW = dict(
    adamw_beta_1=0.9,
    adamw_beta_2=0.95,
    adamw_epsilon=1e-5,
    weight_decay=0.1,
    gradient_clip_norm=1.0,
    decay_schedule="cosine with linear warmup",
)

LLAMA31_405B = Rules(
    benchmark="llama31_405b",
    target_log_ppl=5.6,  # training_rules.adoc quality targets; closed_llama31_405b.yaml
    seq_length=8192,  # training_rules.adoc; closed_llama31_405b.yaml checks max_sequence_length
    eval_every_samples=18432,  # training_rules.adoc evaluation frequency
    eval_samples=5760,  # closed_llama31_405b.yaml checks eval_samples
    skip_evals_slope=Fraction(26, 10000),  # training_rules.adoc: skip FLOOR(0.0026*GBS+12) evaluations
    skip_evals_offset=12,
    # training_rules.adoc "Llama 3.1 405b hyperparameter constraints": 8e-5 * GBS/1152; warm-up
    # ceil(8000*1152/GBS) steps = 9,216,000 sequences at any GBS
    lr_points=(LrPoint(1152, 8e-5, 8000 * 1152),),
    lr_linear_in_gbs=True,
    end_lr=8e-7,  # training_rules.adoc opt_end_learning_rate
    end_lr_fraction=None,
    horizon_steps=1_200_000,  # training_rules.adoc: decay ends at ceil(1_200_000*1152/GBS)
    horizon_scale_gbs=1152,
    gbs_range=(1152, 9216),  # training_rules.adoc: outside it new RCPs are needed
    min_runs=3,  # training_rules.adoc minimum number of runs, LLM pretraining
    rulesets=("5.0.0", "5.1.0", "6.0.0"),  # 6.1.0 (mlperf-logging 4.1.68) retired the benchmark
    checker_tests_lr=True,  # closed_llama31_405b.yaml
    logged_max_steps=None,
    gbs_rule_source="training_rules.adoc, 'Llama 3.1 405b hyperparameter constraints'",
    **_ADAMW,
)

LLAMA31_8B = Rules(
    benchmark="llama31_8b",
    target_log_ppl=3.3,  # training_rules.adoc quality targets; closed_llama31_8b.yaml eval_accuracy <= 3.3
    seq_length=8192,  # training_rules.adoc sequence_length; closed_llama31_8b.yaml max_sequence_length
    eval_every_samples=12288,  # training_rules.adoc: every 12288 sequences (CEIL(12288/GBS) steps)
    eval_samples=1024,  # closed_llama31_8b.yaml eval_samples == 1024; the reference's --eval_tokens 1024
    skip_evals_slope=Fraction(0),  # training_rules.adoc skips none for 8B; the reference evaluates from the first
    skip_evals_offset=0,
    # rcps_llama31_8b.json: BS, opt_base_learning_rate, opt_learning_rate_warmup_samples of each RCP (16348 at
    # GBS 96 as the file has it, not 16384). training_rules.adoc leaves LR and warm-up unconstrained; these are
    # the hyper-parameters the reference convergence points were trained with.
    lr_points=(
        LrPoint(16, 4e-4, 256),
        LrPoint(32, 8e-4, 4096),
        LrPoint(64, 8e-4, 6144),
        LrPoint(96, 1e-3, 16348),
        LrPoint(128, 2e-3, 32768),
    ),
    lr_linear_in_gbs=False,
    end_lr=None,
    end_lr_fraction=0.1,  # training_rules.adoc opt_end_learning_rate = opt_base_learning_rate * 0.1
    # training_rules.adoc max_steps 1200000 and decay steps 1_200_000 - warm-up, at every GBS
    # (closed_llama31_8b.yaml checks both)
    horizon_steps=1_200_000,
    horizon_scale_gbs=None,
    gbs_range=(16, 128),  # rcps_llama31_8b.json: BS 16 to 128; the RCP checker interpolates between them
    min_runs=10,  # training_rules.adoc minimum number of runs, Small LLM pretraining
    rulesets=("5.1.0", "6.0.0", "6.1.0"),  # the training_<ruleset>/closed_llama31_8b.yaml of mlperf-logging 4.1.68
    checker_tests_lr=False,  # closed_llama31_8b.yaml only requires opt_base_learning_rate
    logged_max_steps=1_200_000,  # closed_llama31_8b.yaml requires max_steps == 1200000
    gbs_rule_source="rcps_llama31_8b.json (mlperf-logging's reference convergence points for BS 16 to 128)",
    **_ADAMW,
)

BENCHMARKS: dict[str, Rules] = {r.benchmark: r for r in (LLAMA31_405B, LLAMA31_8B)}


def rules_for(benchmark: str) -> Rules:
    """The rules of a benchmark by its MLPerf name (``submission_benchmark``)."""
    try:
        return BENCHMARKS[benchmark]
    except KeyError:
        raise ValueError(f"mlperf.benchmark={benchmark!r} is not one of {', '.join(BENCHMARKS)}") from None
