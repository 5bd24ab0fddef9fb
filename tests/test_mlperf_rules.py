"""The Llama 3.1 8B rules against the files they come from: mlperf-logging's RCPs and checker, and config.sh."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from mlperf_helpers import mlperf_site
from test_settings import MLPERF_ENV, _settings

from orchestrator.mlperf.compliance import rules_file
from orchestrator.mlperf.hyperparameters import reference_hyperparameters
from orchestrator.mlperf.rules import LLAMA31_8B, LLAMA31_405B
from orchestrator.mlperf.schedule import GbsError, Schedule
from orchestrator.profiles import get_model

mlperf_logging = pytest.importorskip("mlperf_logging")


def _rcps() -> dict[int, dict]:
    """BS -> the RCP record of rcps_llama31_8b.json, for every ruleset that has the benchmark (all must agree)."""
    root = Path(mlperf_logging.__file__).parent / "rcp_checker"
    files = [root / f"training_{r}" / "rcps_llama31_8b.json" for r in LLAMA31_8B.rulesets]
    records = [{rec["BS"]: rec for rec in json.loads(f.read_text()).values()} for f in files]
    assert all(r == records[0] for r in records), "the RCP files of the rulesets differ"
    return records[0]


def _checker_rules() -> dict[str, dict]:
    path = rules_file(LLAMA31_8B.latest_ruleset, LLAMA31_8B.benchmark)
    assert path is not None, f"mlperf-logging has no training_{LLAMA31_8B.latest_ruleset}/closed_llama31_8b.yaml"
    return {r["KEY"]["NAME"]: r["KEY"] for r in yaml.safe_load(path.read_text()) if "KEY" in r}


@pytest.mark.parametrize("gbs", sorted(_rcps()))
def test_schedule_at_each_rcp_uses_its_lr_and_warmup(gbs: int) -> None:
    rcp = _rcps()[gbs]["Hyperparams"]
    s = Schedule(gbs, benchmark="llama31_8b")
    assert s.base_lr == rcp["opt_base_learning_rate"]
    assert s.warmup_steps == math.ceil(rcp["opt_learning_rate_warmup_samples"] / gbs)
    assert s.min_lr == rcp["opt_base_learning_rate"] * 0.1  # training_rules.adoc: end LR = base * 0.1
    assert not [w for w in s.warnings if "reference convergence point" in w]


def test_the_gbs_range_is_the_rcps_and_outside_it_needs_an_override() -> None:
    low, high = min(_rcps()), max(_rcps())
    assert LLAMA31_8B.gbs_range == (low, high)
    for gbs in (low - 1, high + 1):
        with pytest.raises(GbsError, match=rf"GBS {gbs} is outside \[{low}, {high}\].*rcps_llama31_8b.json"):
            Schedule(gbs, benchmark="llama31_8b")
        assert Schedule(gbs, benchmark="llama31_8b", allow_new_rcp=True).base_lr > 0


def test_between_two_rcps_lr_and_warmup_are_interpolated_and_said_so() -> None:
    rcps = _rcps()
    low, high = 64, 96
    gbs = (low + high) // 2
    lo, hi = rcps[low]["Hyperparams"], rcps[high]["Hyperparams"]
    s = Schedule(gbs, benchmark="llama31_8b")
    t = (gbs - low) / (high - low)
    lr = lo["opt_base_learning_rate"] + t * (hi["opt_base_learning_rate"] - lo["opt_base_learning_rate"])
    warmup = lo["opt_learning_rate_warmup_samples"] + t * (
        hi["opt_learning_rate_warmup_samples"] - lo["opt_learning_rate_warmup_samples"]
    )
    assert s.base_lr == pytest.approx(lr) and s.warmup_steps == math.ceil(warmup / gbs)
    assert any(f"no reference convergence point has GBS {gbs}" in w for w in s.warnings)


@pytest.mark.parametrize("gbs", [16, 24, 32, 100, 128])
def test_evaluation_and_horizon_follow_the_8b_rules(gbs: int) -> None:
    checks = _checker_rules()
    s = Schedule(gbs, benchmark="llama31_8b")
    # training_rules.adoc: every 12288 sequences, CEIL(12288/GBS) steps, no evaluation skipped
    assert (s.eval_interval_steps, s.skipped_evals, s.first_eval_step) == (-(-12288 // gbs), 0, -(-12288 // gbs))
    eval_samples = int(re.search(r"== (\d+)", checks["eval_samples"]["CHECK"]).group(1))
    assert s.eval_samples == eval_samples and s.eval_batches == -(-eval_samples // gbs)
    target = float(re.search(r"<= ([0-9.]+)", checks["eval_accuracy"]["ATLEAST_ONE_CHECK"]).group(1))
    assert s.target_log_ppl == target and not [w for w in s.warnings if "not the rules" in w]
    max_steps = int(re.search(r"== (\d+)", checks["max_steps"]["CHECK"]).group(1))
    assert s.max_steps == max_steps and s.decay_steps == max_steps - s.warmup_steps


def test_logged_hyperparameters_pass_every_value_check_of_the_8b_checker() -> None:
    """Each CHECK of closed_llama31_8b.yaml, evaluated on the logged value as the checker evaluates it."""
    checks = _checker_rules()
    params = reference_hyperparameters(Schedule(32, benchmark="llama31_8b"), dp=2, mbs=1, seed=1, start_step=0)
    state: dict = {}
    for name, rule in checks.items():
        if name == "eval_accuracy":  # the run's result, not a hyper-parameter
            continue
        assert name in params, f"closed_llama31_8b.yaml requires {name}, which is not logged"
        v = {"value": params[name]}
        if "POST" in rule:
            exec(rule["POST"], {}, {"s": state, "v": v})
        if "CHECK" in rule:
            assert eval(rule["CHECK"], {}, {"s": state, "v": v}), f"{name}={params[name]!r}: {rule['CHECK']}"


def test_size_8b_selects_the_mlperf_8b_profile_with_its_rules(monkeypatch, tmp_path) -> None:
    env = {k: v for k, v in MLPERF_ENV.items() if k not in ("EVAL_EVERY", "MODEL_CKPT", "USE_CKPT")}
    env.update(SIZE="8b", GBS="32", NNODES="1", NEXP="1", SEEDS="", JOB_DIR=str(tmp_path))
    (plan,) = _settings(env, monkeypatch).to_request().build(check=False)
    s = plan.mlperf_schedule()
    assert plan.model.name == "llama31_8b_mlperf" and plan.mlperf is not None
    assert plan.mlperf.benchmark == "llama31_8b" and s is not None
    assert (plan.mlperf.target_log_ppl, plan.mlperf.eval_every_samples, plan.mlperf.eval_samples) == (
        LLAMA31_8B.target_log_ppl,
        LLAMA31_8B.eval_every_samples,
        LLAMA31_8B.eval_samples,
    )
    assert (plan.train.optim.lr, plan.train.optim.min_lr, plan.train.optim.warmup_steps) == (
        s.base_lr,
        s.min_lr,
        s.warmup_steps,
    )
    assert [Path(p).name for p in plan.data.train_prefixes] == ["c4-train.en_6_text_document"]


def test_size_405b_keeps_the_405b_rules(monkeypatch, tmp_path) -> None:
    env = {k: v for k, v in MLPERF_ENV.items() if k != "EVAL_EVERY"}
    env.update(NEXP="1", SEEDS="", JOB_DIR=str(tmp_path))
    (plan,) = _settings(env, monkeypatch).to_request().build(check=False)
    assert plan.mlperf is not None and plan.mlperf.benchmark == "llama31_405b"
    assert (plan.mlperf.target_log_ppl, plan.mlperf.eval_every_samples) == (
        LLAMA31_405B.target_log_ppl,
        LLAMA31_405B.eval_every_samples,
    )


def test_the_8b_profile_tokenizes_with_llama_31_from_llama_models() -> None:
    """The reference's tokenizer is meta-llama/Llama-3.1-8B's; no hub is reachable, so llama-models' file."""
    assert get_model("llama31_8b_mlperf").tokenizer.model == "llama-models:llama3.1"


def test_run_llama31_dry_runs_the_8b_plan_and_prints_its_schedule(tmp_path) -> None:
    job_dir = tmp_path / "jobs"
    job_dir.mkdir()
    env = {**os.environ, **MLPERF_ENV, **mlperf_site(tmp_path), "JOB_DIR": str(job_dir), "DRY_RUN": "1"}
    env.update(SIZE="8b", GBS="32", NNODES="1", NEXP="1", SEEDS="", USE_CKPT="0", EVAL_EVERY="", MAX_STEPS="")
    env["PYTHON"] = sys.executable
    done = subprocess.run(["bash", str(REPO / "run_llama31.sh")], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    s = Schedule(32, benchmark="llama31_8b")
    assert "model llama31_8b_mlperf" in out
    assert f"evaluation first after {s.first_eval_step} steps ({s.samples(s.first_eval_step):,} samples)" in out
    assert f"opt_base_learning_rate {s.base_lr:.10g}, warm-up {s.warmup_steps} steps" in out
    assert f"log-perplexity <= {LLAMA31_8B.target_log_ppl}" in out
    assert list(job_dir.iterdir()) == []
