"""config.sh (MLPerf's variables) builds the same plan as the CLI, and a bad one writes nothing."""

from __future__ import annotations

import os
import subprocess

from conftest import REPO
from mlperf_helpers import mlperf_site

from orchestrator.settings import RunSettings

MLPERF_ENV = {
    "USER": "someone",
    "HOST": "login.example",
    "ACCOUNT": "acct",
    "PARTITION": "gpu",
    "TIME": "02:00:00",
    "NNODES": "36",
    "GPUS_PER_NODE": "8",
    "MAX_RETRIES": "2",
    "IMAGE": "nvcr.io/nvidia/nemo:25.09.00",
    "PREPROCESSED_PATH": "/data/preproc",
    "TMP_NPY_INDEX": "/data/npy",
    "TOKENIZER_PATH": "/data/tokenizer",
    "MODEL_CKPT": "/ckpt/405b",
    "CONTINUAL_CKPT": "/ckpt/continual",
    "USE_CKPT": "1",
    "FROM_HF": "1",
    "SAVE_CKPT": "1",
    "SIZE": "405b",
    "GBS": "1152",
    "MBS": "1",
    "MAX_STEPS": "100",
    "EVAL_EVERY": "18432",
    "START_STEPS": "0",
    "NEXP": "2",
    "NPAR": "3",
    "SEEDS": "7 8",
}


def _environment(env: dict[str, str], monkeypatch) -> None:
    for key in list(os.environ):
        if key in RunSettings.model_fields:
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def _settings(env: dict[str, str], monkeypatch) -> RunSettings:
    _environment(env, monkeypatch)
    return RunSettings()


def test_mlperf_config_maps_onto_the_plan(monkeypatch, tmp_path):
    env = dict(MLPERF_ENV, JOB_DIR=str(tmp_path))
    plans = _settings(env, monkeypatch).to_request().build()
    assert [p.train.seed for p in plans] == [7, 8]
    plan = plans[0]
    assert plan.run_dir.startswith(str(tmp_path)) and plan.run_id.endswith("-seed7")
    assert (plan.layout.nodes, plan.layout.tasks_per_node, plan.world_size) == (36, 8, 288)
    assert (plan.cluster.account, plan.cluster.partition, plan.chain.time_limit) == ("acct", "gpu", "02:00:00")
    assert plan.cluster.container.image == "nvcr.io/nvidia/nemo:25.09.00"
    assert (plan.chain.jobs, plan.chain.steps_per_job, plan.chain.max_retries) == (3, 100, 2)
    assert plan.data.source == "preprocessed" and plan.stages == ("index", "train")
    assert plan.data.train_prefixes == (
        "/data/preproc/c4-train.en_6_text_document",
        "/data/preproc/c4-train.en_7_text_document",
    )
    assert plan.data.validation_prefixes == ("/data/preproc/c4-validation-91205-samples.en_text_document",)
    assert plan.data.index_cache_dir == "/data/npy"
    assert (plan.train.init_from, plan.train.init_mode, plan.train.init_step) == ("/ckpt/405b", "weights", 0)
    assert plan.train.ckpt_dir == f"/ckpt/continual/{plan.run_id}"
    assert plan.model.tokenizer.model == "/data/tokenizer"


def test_env_and_cli_build_the_same_plan(monkeypatch, tmp_path):
    env = {
        "SIZE": "405b",
        "NNODES": "36",
        "GPUS_PER_NODE": "8",
        "TIME": "02:00:00",
        "NPAR": "2",
        "JOB_DIR": str(tmp_path),
        "RUN_ID": "same",
        "PREPROCESSED_PATH": "/data/preproc",
    }
    (from_env,) = _settings(env, monkeypatch).to_request().build()
    from orchestrator.settings import RunRequest

    overrides = dict(_settings(env, monkeypatch).to_request().overrides)
    (from_cli,) = RunRequest(
        profile="405b", cluster="h100-pyxis", overrides=overrides, runs_root=str(tmp_path), run_id="same"
    ).build()
    a, b = from_env.model_dump(), from_cli.model_dump()
    a.pop("created"), b.pop("created")
    assert a == b


def test_run_llama31_dry_run_with_a_bad_layout_fails_and_writes_nothing(tmp_path):
    job_dir = tmp_path / "jobs"
    job_dir.mkdir()
    env = {**os.environ, **MLPERF_ENV, "JOB_DIR": str(job_dir), "NNODES": "3", "DRY_RUN": "1", "NEXP": "1", "SEEDS": ""}
    env["PYTHON"] = __import__("sys").executable
    done = subprocess.run(["bash", str(REPO / "run_llama31.sh")], capture_output=True, text=True, env=env)
    assert done.returncode != 0
    assert "TP x PP x CP = 8 x 9 x 4 = 288 does not divide 24 tasks (3 nodes x 8)" in done.stderr
    assert list(job_dir.iterdir()) == []


def test_run_llama31_dry_run_prints_scripts_and_writes_nothing(tmp_path):
    job_dir = tmp_path / "jobs"
    job_dir.mkdir()
    env = {
        **os.environ,
        **MLPERF_ENV,
        **mlperf_site(tmp_path),
        "JOB_DIR": str(job_dir),
        "DRY_RUN": "1",
        "NEXP": "1",
        "SEEDS": "",
    }
    env["PYTHON"] = __import__("sys").executable
    done = subprocess.run(["bash", str(REPO / "run_llama31.sh")], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --nodes=36" in done.stdout and "would run: sbatch" in done.stdout
    assert list(job_dir.iterdir()) == []


def test_a_dry_run_names_the_inputs_that_do_not_exist_and_exits_2(tmp_path):
    """config.sh paths that are not there are said before anything is queued, not after the queue wait."""
    env = {
        **os.environ,
        **MLPERF_ENV,
        "JOB_DIR": str(tmp_path),
        "DRY_RUN": "1",
        "NEXP": "1",
        "SEEDS": "",
        "PREPROCESSED_PATH": str(tmp_path / "nowhere"),
        "PYTHON": __import__("sys").executable,
    }
    done = subprocess.run(["bash", str(REPO / "run_llama31.sh")], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert f"dataset (.bin/.idx) {tmp_path / 'nowhere'}/c4-train.en_6_text_document does not exist" in done.stderr
    assert "MODEL_CKPT" in done.stderr and "/ckpt/405b does not exist" in done.stderr


def test_config_sh_example_is_valid_bash_and_sources_cleanly():
    example = REPO / "config.sh.example"
    assert subprocess.run(["bash", "-n", str(example)]).returncode == 0
    assert subprocess.run(["shellcheck", str(example)], capture_output=True).returncode == 0
    shown = subprocess.run(
        ["bash", "-c", f'source {example} && echo $SIZE $NNODES $GBS "[$EVAL_EVERY]" "[$TARGET]"'],
        capture_output=True,
        text=True,
    )
    # evaluation and target empty: the benchmark's rules (405b or 8b) decide
    assert shown.stdout.split() == ["405b", "288", "1152", "[]", "[]"]


def test_nightly_prints_a_crontab_line_that_runs_the_check(tmp_path):
    from orchestrator.nightly import cron_line

    run_dir = tmp_path / "run"
    line = cron_line(run_dir, "02:30")
    minute, hour, dom, month, dow, command = line.split(" ", 5)
    assert (minute, hour, dom, month, dow) == ("30", "2", "*", "*", "*")
    assert f"-m orchestrator nightly --run {run_dir}" in command and "nightly.log" in command


def test_every_bad_config_sh_value_is_named_with_its_value_and_a_fix(monkeypatch, capsys):
    """TARGET=nan and the negative ones were accepted; NNODES=0 and SIZE=999b gave pydantic's text and link;
    SEEDS=abc said "invalid literal for int()" without naming SEEDS."""
    from orchestrator import cli

    cases = {"TARGET": ["nan", "-1"], "STEP_TIME_ATOL": ["-1"], "NNODES": ["0"], "SIZE": ["999b"], "SEEDS": ["abc"]}
    for name, values in cases.items():
        for value in values:
            _environment({**MLPERF_ENV, name: value}, monkeypatch)
            assert cli.main(["plan", "--from-env", "--profile", "405b"]) == 2
            shown = capsys.readouterr().err
            assert f"{name}: {name}={value!r}" in shown and f"fix: set {name} to" in shown, shown
            assert "pydantic" not in shown and "Traceback" not in shown, shown
