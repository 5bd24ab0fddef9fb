"""The batch-script contract: who a process of a job is, as both sides of the batch script read it."""

from __future__ import annotations

import pytest

from orchestrator.contract import DEADLINE_ENV, JobEnvironment, deadline


def test_ranks_from_torchrun_srun_or_the_step_script() -> None:
    r = JobEnvironment.current({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (r.global_rank, r.world_size, r.local_rank, r.local_world_size) == (3, 8, 1, 2)
    r = JobEnvironment.current(
        {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "1", "SLURM_TASKS_PER_NODE": "2(x3)"}
    )
    assert (r.global_rank, r.world_size, r.local_rank, r.local_world_size, r.launcher) == (5, 6, 1, 2, "srun")
    # the lead's step script: RANK/LOCAL_RANK copied from SLURM_PROCID/SLURM_LOCALID, WORLD_SIZE exported
    r = JobEnvironment.current(
        {
            "RANK": "2",
            "WORLD_SIZE": "4",
            "LOCAL_RANK": "0",
            "SLURM_PROCID": "2",
            "SLURM_NTASKS": "4",
            "SLURM_LOCALID": "0",
            "SLURM_TASKS_PER_NODE": "1(x4)",
        }
    )
    assert (r.global_rank, r.world_size, r.local_rank, r.local_world_size, r.launcher) == (2, 4, 0, 1, "srun")
    assert JobEnvironment.current({}).world_size == 1


def test_the_job_identity_of_slurm_array_tasks_requeues_chains_and_local_jobs() -> None:
    array = JobEnvironment.current(
        {
            "SLURM_JOB_ID": "81",
            "SLURM_ARRAY_JOB_ID": "79",
            "SLURM_ARRAY_TASK_ID": "2",
            "SLURM_RESTART_COUNT": "1",
            "SLURMD_NODENAME": "n2",
        }
    )
    assert (array.job_id, array.array_task, array.restart, array.host, array.scheduler) == ("79_2", 2, 1, "n2", "slurm")
    train = JobEnvironment.current({"SLURM_JOB_ID": "90", "ORCHESTRATOR_CHAIN_INDEX": "3"})
    assert (train.job_id, train.chain_index, train.array_task, train.restart) == ("90", 3, None, 0)
    local = JobEnvironment.current({"SUBMITIT_LOCAL_JOB_ID": "4711", "ORCHESTRATOR_TASK_INDEX": "1"})
    assert (local.job_id, local.scheduler, local.array_task) == ("4711", "local", 1)


def test_the_deadline_is_epoch_seconds_or_a_clear_error() -> None:
    assert deadline({}) is None
    assert deadline({DEADLINE_ENV: "1900000000"}) == 1_900_000_000.0
    with pytest.raises(ValueError, match=DEADLINE_ENV):
        deadline({DEADLINE_ENV: "tomorrow"})
