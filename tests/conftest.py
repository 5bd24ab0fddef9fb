"""Shared fixtures. Tests marked `slurm` run against the real lab (scripts/slurm-lab); it is started once per
session and a failure to start it fails those tests: they never skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def slurm_lab() -> None:
    """A running Slurm lab (munge, MariaDB, slurmdbd, slurmctld, nodes n1..n3)."""
    done = subprocess.run([str(REPO / "scripts" / "slurm-lab"), "up"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"the Slurm lab did not start (scripts/slurm-lab up):\n{done.stdout}\n{done.stderr}")
    state = subprocess.run(["sinfo", "-h", "-o", "%D %T"], capture_output=True, text=True).stdout
    if "idle" not in state and "mixed" not in state:
        pytest.fail(f"the lab has no usable node: {state!r}")


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`python -m orchestrator ...` as a user runs it."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or REPO, timeout=timeout)
