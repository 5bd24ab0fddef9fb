"""Chain decisions over a real ledger: strikes, and continuing a stopped chain as the stop message says."""

from __future__ import annotations

from pathlib import Path

from orchestrator import chain
from orchestrator.ledger import Ledger
from orchestrator.rundir import RunDir


def failed_attempt(ledger: Ledger, job_id: str) -> None:
    attempt = ledger.start_attempt(job_id, "train", start_step=None)
    ledger.end_attempt(attempt, "failed", end_step=None, exit_code=1)


def test_removing_stopped_starts_a_fresh_strike_count_recorded_in_the_ledger(tmp_path: Path) -> None:
    rd = RunDir.of(tmp_path)
    ledger = Ledger(rd.ledger)
    failed_attempt(ledger, "11")
    failed_attempt(ledger, "12")
    assert chain.strikes(chain.counted(ledger)) == 2
    rd.mark_stopped("2 consecutive training jobs ended without a new checkpoint")
    ledger.event("stop", "2 consecutive training jobs ended without a new checkpoint")
    assert chain.continue_after_stop(rd, ledger) is None, "STOPPED is still there"

    rd.stopped_marker.unlink()  # what the message tells a person to do, after fixing the cause
    reason = chain.continue_after_stop(rd, ledger)
    assert reason and f"{rd.stopped_marker} was removed" in reason
    assert chain.continue_after_stop(rd, ledger) is None, "recorded once"
    assert chain.strikes(chain.counted(ledger)) == 0
    (reset,) = ledger.strike_resets()
    assert reset.after_attempt == ledger.attempts()[-1].id and reset.reason == reason
    assert [e.kind for e in ledger.events()] == ["stop", "reset"]

    failed_attempt(ledger, "13")  # the cause was not fixed after all: strikes count again, from one
    assert chain.strikes(chain.counted(ledger)) == 1
