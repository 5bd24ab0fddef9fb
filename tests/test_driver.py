"""How an attempt ended, decided from its facts alone (the driver's pure half; the lab tests drive the rest)."""

from __future__ import annotations

import pytest

from orchestrator.driver import Facts, outcome


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (Facts(chain=True, exit_code=0, done=True), "done"),
        (Facts(chain=True, exit_code=0, start_step=0, end_step=30, steps_per_job=30), "partition"),
        (Facts(chain=True, exit_code=0, start_step=0, end_step=12, steps_per_job=30), "time_limit"),
        (Facts(chain=True, exit_code=0, stop="time_limit", start_step=0, end_step=40), "time_limit"),
        (Facts(chain=True, exit_code=None, stop="time_limit"), "time_limit"),
        (Facts(chain=True, exit_code=1), "failed"),
        # a save that failed on the way to a time-limit stop (disk full) is a failure, not a clean stop
        (Facts(chain=True, exit_code=1, stop="time_limit", start_step=20, end_step=40), "failed"),
        (Facts(chain=True, exit_code=137, stop="preempted"), "preempted"),
        (Facts(chain=True, exit_code=0, slurm_term=True), "preempted"),
        # scancel: Slurm's TERM, and sacct says CANCELLED
        (Facts(chain=True, exit_code=0, slurm_term=True, cancelled=True), "cancelled"),
        (Facts(chain=False, exit_code=0), "completed"),
        (Facts(chain=False, exit_code=0, slurm_term=True), "completed"),
        (Facts(chain=False, exit_code=2), "failed"),
        (Facts(chain=False, exit_code=143, slurm_term=True), "preempted"),
        (Facts(chain=False, exit_code=143, slurm_term=True, cancelled=True), "cancelled"),
        (Facts(chain=False, exit_code=-12, stop="time_limit"), "time_limit"),
    ],
)
def test_outcome_of_an_attempt(facts: Facts, expected: str) -> None:
    assert outcome(facts) == expected
