"""Shared fixtures. Tests marked `slurm` run against the real lab (scripts/slurm-lab); it is started once per
session and a failure to start it fails those tests: they never skip. Under CI (``CI=true``) no test may skip at
all: CI installs everything every test needs, so a skip there is a missing piece, not a pass."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["pytester"]  # tests/test_ci_skips.py runs this file's hooks in a scratch suite


@functools.cache
def nemo_python() -> str | None:
    """The interpreter with the NeMo stack (nemo, megatron-core, transformers), for tests that compare with it in a
    subprocess: ``ORCHESTRATOR_NEMO_PYTHON``, else this one when it has the stack (CI's .venv does), else None."""
    configured = os.environ.get("ORCHESTRATOR_NEMO_PYTHON")
    if configured:
        return configured
    probe = subprocess.run([sys.executable, "-c", "import nemo, megatron.core, transformers"], capture_output=True)
    return sys.executable if probe.returncode == 0 else None


def _fail_skips_under_ci(report: pytest.CollectReport | pytest.TestReport) -> None:
    if report.skipped and os.environ.get("CI", "").lower() == "true" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Under CI, a skipped test is reported as failed, with its reason."""
    _fail_skips_under_ci((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """Under CI, a module skipped at import (``pytest.importorskip``) is a collection error, with its reason."""
    _fail_skips_under_ci((yield).get_result())


@pytest.fixture
def fresh_signals(monkeypatch: pytest.MonkeyPatch):
    """No stop signal remembered from another test, and the process's handlers as they were afterwards
    (the trainers install theirs). Tests take it with ``pytestmark = pytest.mark.usefixtures("fresh_signals")``."""
    from orchestrator.train import stopping

    monkeypatch.setattr(stopping, "_received", [])
    saved = {sig: signal.getsignal(sig) for sig in stopping.STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture(scope="session")
def slurm_lab() -> None:
    """A running Slurm lab (munge, MariaDB, slurmdbd, slurmctld, nodes n1..n3)."""
    done = subprocess.run([str(REPO / "scripts" / "slurm-lab"), "up"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"the Slurm lab did not start (scripts/slurm-lab up):\n{done.stdout}\n{done.stderr}")
    state = subprocess.run(["sinfo", "-h", "-o", "%D %T"], capture_output=True, text=True).stdout
    if "idle" not in state and "mixed" not in state:
        pytest.fail(f"the lab has no usable node: {state!r}")


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`python -m orchestrator ...` as a user runs it."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def lab_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Real text made into Megatron datasets by this project's own pipeline, once per session: the sample corpus
    (4 C4-layout shards), consolidated into 2 files and tokenized with the Mixtral v1 tokenizer. The returned
    plan overrides point a tiny-profile run at them."""
    from orchestrator.data import consolidate, preprocess, sample
    from orchestrator.plan import build_plan
    from orchestrator.stages import preprocess_configs
    from orchestrator.submit import prepare_inputs

    root = tmp_path_factory.mktemp("lab-data")
    sample.build_corpus(root / "c4", 4, 1, 400, 1234)
    assert (
        consolidate.main(
            [
                "--c4-path",
                str(root / "c4"),
                "--merged-path",
                str(root / "merged"),
                "--train-outputs",
                "2",
                "--n-validation-samples",
                "0",
            ]
        )
        == 0
    )
    plan = build_plan(
        "tiny",
        "local",
        {"data.merged_path": str(root / "merged"), "data.preprocessed_path": str(root / "pre")},
        run_dir=root / "plan",
    )
    prepare_inputs(plan, print)  # the Mixtral tokenizer, written where the plan says jobs read it
    assert plan.tokenizer_path.endswith("tokenizer.model.v1")
    for config in preprocess_configs(plan):  # the preprocess stage's own jobs
        assert preprocess.main(config.to_argv()) == 0
    pre = root / "pre"
    return {
        "data.source": "preprocessed",
        "data.preprocessed_path": str(pre),
        "data.train_prefixes": [str(pre / "c4-train.en_0_text_document"), str(pre / "c4-train.en_1_text_document")],
        "data.train_weights": [50, 50],
        "data.validation_prefixes": [str(pre / "c4-validation.en_text_document")],
        "model.tokenizer.path": plan.tokenizer_path,
    }
