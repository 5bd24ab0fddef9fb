"""The batch-script contract: what the rendered script, the in-job driver and the programs of a step exchange.

Environment names the driver exports to the step and the step's programs read (the phase, the array task, the
deadline, the chain index), and :class:`JobEnvironment`: who a process is, read once from the scheduler's variables
(Slurm's, torchrun-style rank variables, submitit's local ids), as submitit's ``JobEnvironment`` does. Both sides of
the batch script import this module; the run directory's layout (log names included) is :class:`~orchestrator.rundir.RunDir`.
Imports nothing heavy: a trainer reads it before torch.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

#: The script runs as the batch script (``driver``: it execs the driver) or, run again by the driver, as the step.
PHASE_ENV = "ORCHESTRATOR_PHASE"
STEP_PHASE = "step"
#: The array task a step runs, where the scheduler does not say (the local scheduler).
TASK_INDEX_ENV = "ORCHESTRATOR_TASK_INDEX"
#: When the trainer must have saved and exited (Unix epoch seconds): the job's end minus the signal grace.
DEADLINE_ENV = "ORCHESTRATOR_DEADLINE"
#: The training job's place in its run's chain (0 for the first job; MLPerf's partition index).
CHAIN_INDEX_ENV = "ORCHESTRATOR_CHAIN_INDEX"
#: The run directory (every stage's script exports it).
RUN_DIR_ENV = "ORCHESTRATOR_RUN_DIR"


def _int(env: Mapping[str, str], *names: str, default: int) -> int:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return int(value)
    return default


@dataclass(frozen=True)
class JobEnvironment:
    """One process of a job: the job it belongs to and its place among the job's tasks."""

    #: Slurm's job id (``<array job>_<task>`` for an array task), or the local scheduler's id.
    job_id: str
    scheduler: Literal["slurm", "local"]
    #: How often Slurm requeued this job (``SLURM_RESTART_COUNT``).
    restart: int
    host: str
    array_task: int | None
    chain_index: int | None
    global_rank: int
    local_rank: int
    world_size: int
    #: Tasks on this node.
    local_world_size: int
    #: What set the ranks: ``srun``, a torchrun-style launcher, or nothing (one process).
    launcher: str

    @classmethod
    def current(cls, env: Mapping[str, str] = os.environ) -> JobEnvironment:
        """RANK/WORLD_SIZE/LOCAL_RANK (torchrun, ``orchestrator.launch``, or the step script copying Slurm's) win over
        srun's SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID; tasks per node from LOCAL_WORLD_SIZE or Slurm's
        SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE (``2(x3)``)."""
        slurm = "SLURM_JOB_ID" in env
        task = env.get("SLURM_ARRAY_TASK_ID", "").strip() if slurm else ""
        if slurm:
            job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{task}" if task else env["SLURM_JOB_ID"]
        else:
            job_id = env.get("SUBMITIT_LOCAL_JOB_ID") or f"local-{os.getpid()}"
        if "RANK" in env and "WORLD_SIZE" in env:
            rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), _int(env, "LOCAL_RANK", default=0)
            launcher = "srun" if "SLURM_PROCID" in env else "torchrun-style env"
        elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            rank, world, local = (
                int(env["SLURM_PROCID"]),
                int(env["SLURM_NTASKS"]),
                _int(env, "SLURM_LOCALID", default=0),
            )
            launcher = "srun"
        else:
            rank, world, local, launcher = 0, 1, 0, "single process"
        per_node = env.get("LOCAL_WORLD_SIZE") or env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
        local_world = int(per_node.split("(")[0].split(",")[0]) if per_node else world
        chain = env.get(CHAIN_INDEX_ENV, "").strip()
        array_task = task or env.get(TASK_INDEX_ENV, "").strip()
        return cls(
            job_id=job_id,
            scheduler="slurm" if slurm else "local",
            restart=_int(env, "SLURM_RESTART_COUNT", default=0),
            host=env.get("SLURMD_NODENAME") or socket.gethostname(),
            array_task=int(array_task) if array_task else None,
            chain_index=int(chain) if chain else None,
            global_rank=rank,
            local_rank=local,
            world_size=world,
            local_world_size=local_world,
            launcher=launcher,
        )


def deadline(env: Mapping[str, str] = os.environ) -> float | None:
    """The deadline the driver exported, or None when the job has none."""
    raw = env.get(DEADLINE_ENV, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{DEADLINE_ENV}={raw!r} is not Unix epoch seconds (e.g. $(date -d '+4 hours' +%s))") from None
