"""Submission refusals a person meets at the command line."""

from __future__ import annotations

from conftest import run_cli


def test_submit_into_an_existing_run_refuses_with_the_reason_and_no_traceback(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli("render", "--profile", "tiny", "--out", str(run_dir)).returncode == 0  # writes its plan.json
    done = run_cli("submit", "--profile", "tiny", "--run-dir", str(run_dir))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"error: {run_dir} already holds a run; resume it with `orchestrator nightly --run {run_dir}`" in done.stderr
    assert "Traceback" not in done.stderr and not (run_dir / "ledger.sqlite").exists()
