"""The stop policy both trainers follow: which step boundary ends a job, and why."""

from __future__ import annotations

import os
import signal

import pytest

from orchestrator.train import stopping
from orchestrator.train.stopping import StopPolicy, keeps_validation


def late(deadline: float | None, now: float = 1000.0) -> bool:
    return StopPolicy(deadline=deadline, save_s=5, longest_step_s=5).late(now, validates_next=False)


def test_deadline_leaves_room_for_a_step_and_a_save() -> None:
    assert not late(None)
    assert not late(1011.0)
    assert late(1010.0)


def test_a_validation_due_next_counts_against_the_deadline() -> None:
    policy = StopPolicy(deadline=1100.0, save_s=10, longest_step_s=5, validation_s=100)
    assert policy.seconds_to_stop(validates_next=False) == 15.0 and not policy.late(1000.0, False)
    assert policy.seconds_to_stop(validates_next=True) == 115.0 and policy.late(1000.0, True)


def test_the_step_quota_comes_first_then_a_signal_then_the_deadline() -> None:
    policy = StopPolicy(steps_per_job=4)
    assert policy.reason(4, signalled=True, late=True) == "steps_per_job"
    assert policy.reason(3, signalled=True, late=True) == "signal"
    assert policy.reason(3, signalled=False, late=True) == "deadline"
    assert policy.reason(3, signalled=False, late=False) is None
    assert StopPolicy().reason(10**6, signalled=False, late=False) is None  # no quota


def test_a_due_validation_survives_a_quota_stop_and_every_mlperf_stop() -> None:
    assert keeps_validation("steps_per_job", validates_here=True, mlperf=False)
    assert not keeps_validation("signal", validates_here=True, mlperf=False)
    assert keeps_validation("signal", validates_here=True, mlperf=True)
    assert not keeps_validation("steps_per_job", validates_here=False, mlperf=True)


@pytest.mark.usefixtures("fresh_signals")
def test_a_stop_signal_is_remembered_not_fatal() -> None:
    stopping.install()
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stopping.received() == "SIGUSR2"  # the first one names the stop
    assert StopPolicy().describe("signal") == "SIGUSR2 received"


def test_the_save_estimate_is_the_state_at_200_mb_per_second_plus_a_second() -> None:
    assert stopping.save_estimate_s(0) == 1.0
    assert stopping.save_estimate_s(2e9) == 11.0
