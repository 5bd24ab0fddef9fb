"""The smoke command on the real Slurm lab: a 2-node job checks ranks, hosts and MASTER_ADDR."""

from __future__ import annotations

import pytest
from conftest import run_cli

pytestmark = pytest.mark.slurm


def test_smoke_passes_on_two_lab_nodes(slurm_lab, tmp_path):
    done = run_cli("smoke", "--cluster", "slurm-lab", "--nodes", "2", "--runs-root", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rank 0/2 on n1: MASTER_ADDR=n1" in done.stdout
    assert "rank 1/2 on n2: MASTER_ADDR=n1" in done.stdout
    assert "smoke test passed" in done.stdout
