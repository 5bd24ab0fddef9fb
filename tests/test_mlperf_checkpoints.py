"""Where an MLPerf run starts: config.sh's USE_CKPT, FROM_HF, MODEL_CKPT and START_STEPS as the reference means them,
and every combination it refuses (or would run wrongly) refused at plan time, naming the variables and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.mlperf.checkpoints import (
    StartError,
    StartPoint,
    check_start,
    checkpoint_steps,
    nemo_checkpoint_problem,
    start_point,
)
from orchestrator.plan import PlanError
from orchestrator.settings import RunSettings

CONTINUED = "/continual/checkpoint-seed-1234-par-2-300-steps/checkpoint"


def test_the_reference_starts() -> None:
    assert start_point(use_ckpt=False, from_hf=True, model_ckpt=None, start_steps=0) == StartPoint("scratch")
    # FROM_HF=1: the converted Llama 3.1 weights, a fresh optimizer, step 0 (a benchmark run)
    assert start_point(use_ckpt=True, from_hf=True, model_ckpt="/m/ckpt", start_steps=0) == StartPoint(
        "weights", "/m/ckpt"
    )
    # FROM_HF=0: an earlier chain's checkpoint continued exactly, at the step its name says
    assert start_point(use_ckpt=True, from_hf=False, model_ckpt=CONTINUED, start_steps=300) == StartPoint(
        "full", CONTINUED, 300
    )


@pytest.mark.parametrize(
    ("use_ckpt", "from_hf", "model_ckpt", "start_steps", "names", "fix"),
    [
        (False, True, None, 300, "START_STEPS=300 with USE_CKPT=0", "USE_CKPT=1 FROM_HF=0"),
        (True, True, None, 0, "USE_CKPT=1 without MODEL_CKPT", "set MODEL_CKPT"),
        (True, True, "/m/ckpt", 300, "START_STEPS=300 with FROM_HF=1", "FROM_HF=0 with MODEL_CKPT="),
        (True, False, CONTINUED, 200, "START_STEPS=200 but MODEL_CKPT=", "START_STEPS=300"),
        (
            True,
            False,
            "/x/model_name=0--val_loss=5.71-step=99-consumed_samples=115200.0-last",
            0,
            "holds 100",
            "START_STEPS=100",
        ),
        (True, False, "/m/ckpt", -1, "START_STEPS=-1", "0 or more"),
    ],
)
def test_refused_combinations_name_the_variables_and_the_fix(
    use_ckpt, from_hf, model_ckpt, start_steps, names, fix
) -> None:
    with pytest.raises(StartError) as caught:
        start_point(use_ckpt=use_ckpt, from_hf=from_hf, model_ckpt=model_ckpt, start_steps=start_steps)
    assert names in caught.value.message and fix in caught.value.fix


def test_config_sh_refusals_reach_the_user_before_anything_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key in RunSettings.model_fields:
            monkeypatch.delenv(key)
    for key, value in {"USE_CKPT": "1", "FROM_HF": "1", "MODEL_CKPT": "/m/ckpt", "START_STEPS": "300"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(PlanError, match="START_STEPS=300 with FROM_HF=1") as caught:
        RunSettings().to_request()
    assert "FROM_HF=0 with MODEL_CKPT=" in caught.value.problems[0].fix


def test_the_steps_a_checkpoint_holds_come_from_its_name() -> None:
    assert checkpoint_steps(CONTINUED) == 300  # the reference's partition directory
    assert checkpoint_steps("/c/checkpoint-seed-7-par-0-20-steps") == 20
    assert checkpoint_steps("/c/model_name=0--val_loss=0.00-step=18-consumed_samples=9728.0-last") == 19  # NeMo's
    assert checkpoint_steps("/m/Llama-3.1-405B") is None


def test_a_job_starting_elsewhere_than_planned_fails_naming_both_steps() -> None:
    check_start(300, 300, CONTINUED)
    with pytest.raises(RuntimeError, match="starts at step 0, the plan at step 300"):
        check_start(300, 0, CONTINUED)


def test_only_a_finished_nemo_checkpoint_is_complete(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint"
    assert "no checkpoint folder" in (nemo_checkpoint_problem(str(ckpt)) or "")
    (ckpt / "weights").mkdir(parents=True)
    assert "metadata.json" in (nemo_checkpoint_problem(str(ckpt)) or "")
    (ckpt / "weights" / "metadata.json").write_text("{}")
    assert nemo_checkpoint_problem(str(ckpt)) is None
    Path(f"{ckpt}-unfinished").touch()
    assert "unfinished" in (nemo_checkpoint_problem(str(ckpt)) or "")
