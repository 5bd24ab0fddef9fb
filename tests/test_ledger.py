"""The run's ledger: one job looked up by its Slurm id, as the driver does for its chain position."""

from __future__ import annotations

from pathlib import Path

from orchestrator.ledger import Ledger


def test_a_job_is_found_by_its_id_with_its_chain_index(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_job("101", "preprocess", array_size=2)
    ledger.add_job("102", "train", chain_index=0)
    ledger.add_job("103", "train", chain_index=1)
    job = ledger.job("103")
    assert job is not None and (job.stage, job.chain_index) == ("train", 1)
    assert ledger.job("101").array_size == 2
    assert ledger.job("999") is None
