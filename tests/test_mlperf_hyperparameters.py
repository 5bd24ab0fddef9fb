"""The hyper-parameter record: the reference's keys, the checker's required keys, the RCPs' values."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.mlperf.compliance import rules_file
from orchestrator.mlperf.hyperparameters import gradient_accumulation_steps, reference_hyperparameters
from orchestrator.mlperf.rules import LLAMA31_405B
from orchestrator.mlperf.schedule import Schedule

# The keys pretrain_llama31.py logs (its `configs` dict, then seed and init_checkpoint_step), in its order.
REFERENCE_KEYS = [
    "global_batch_size",
    "gradient_accumulation_steps",
    "max_sequence_length",
    "eval_samples",
    "opt_name",
    "opt_base_learning_rate",
    "opt_adamw_beta_1",
    "opt_adamw_beta_2",
    "opt_adamw_epsilon",
    "opt_adamw_weight_decay",
    "opt_gradient_clip_norm",
    "opt_end_learning_rate",
    "opt_learning_rate_warmup_steps",
    "opt_learning_rate_decay_steps",
    "opt_learning_rate_decay_schedule",
    "seed",
    "init_checkpoint_step",
]


def test_keys_are_the_reference_keys_in_order() -> None:
    params = reference_hyperparameters(Schedule(1152), dp=8, mbs=1, seed=1234, start_step=0)
    assert list(params) == REFERENCE_KEYS


def test_every_key_the_checker_requires_once_is_logged() -> None:
    path = rules_file(LLAMA31_405B.latest_ruleset)
    if path is None:
        pytest.skip("mlperf-logging is not installed")
    rules = yaml.safe_load(path.read_text())
    required = {r["KEY"]["NAME"] for r in rules if "KEY" in r and r["KEY"].get("REQ") == "EXACTLY_ONE"}
    params = reference_hyperparameters(Schedule(1152), dp=8, mbs=1, seed=1234, start_step=0)
    assert required <= set(params)


def test_values_of_the_1152_reference_convergence_points() -> None:
    """rcps_llama31_405b.json (mlperf-logging training_6.0.0) logs, for GBS 1152 on 288xDGX-H100 (DP 8, MBS 1):
    opt_base_learning_rate 8e-05, opt_learning_rate_warmup_steps 8000, gradient_accumulation_steps 144."""
    params = reference_hyperparameters(Schedule(1152), dp=8, mbs=1, seed=1, start_step=0)
    assert params["opt_base_learning_rate"] == 8e-05
    assert params["opt_learning_rate_warmup_steps"] == 8000
    assert params["gradient_accumulation_steps"] == 144
    assert params["opt_learning_rate_decay_steps"] == 1_200_000 - 8000
    assert params["opt_end_learning_rate"] == 8e-07


def test_gradient_accumulation_needs_whole_micro_batches() -> None:
    assert gradient_accumulation_steps(2304, 8, 2) == 144
    with pytest.raises(ValueError, match="1216 is not a multiple of .* 3 x 1"):
        gradient_accumulation_steps(1216, 3, 1)
    with pytest.raises(ValueError, match="must be >= 1"):
        gradient_accumulation_steps(1152, 0, 1)
    with pytest.raises(ValueError, match="start_step"):
        reference_hyperparameters(Schedule(1152), dp=8, mbs=1, seed=1, start_step=-1)


def test_a_run_logs_its_plans_numbers_where_they_differ_from_the_rules() -> None:
    from orchestrator.mlperf.hyperparameters import run_hyperparameters
    from orchestrator.plan import build_plan

    base = {"data.source": "preprocessed", "data.train_prefixes": ["/d/a"]}
    plan = build_plan("llama31_405b", "h100-pyxis", base, run_dir="/tmp/unused/run")
    params = run_hyperparameters(plan, start_step=480)
    rules = reference_hyperparameters(Schedule(1152), dp=8, mbs=1, seed=plan.train.seed, start_step=480)
    assert params == rules  # the 405B profile trains with the rules' numbers: DP 8 = 2304 GPUs / (TP8 PP9 CP4)

    override = build_plan(
        "llama31_405b",
        "h100-pyxis",
        {**base, "train.optim.lr": 1e-4, "train.seq_length": 4096},
        run_dir="/tmp/unused/run",
    )
    params = run_hyperparameters(override, start_step=0)
    assert (params["opt_base_learning_rate"], params["max_sequence_length"]) == (1e-4, 4096)
    with pytest.raises(ValueError, match="not an MLPerf plan"):
        run_hyperparameters(build_plan("llama3_8b", "h100-pyxis", base, run_dir="/tmp/unused/run"), start_step=0)
