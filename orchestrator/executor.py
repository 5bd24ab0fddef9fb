"""submitit executors that submit *our* rendered scripts.

submitit stays the submission engine (the pickled in-job driver, its USR2 handling and requeue, job handles and
state through sacct); we only replace the text of the batch file it writes with the script we rendered, so what
the run directory holds is exactly what Slurm ran. Dependencies and other per-submission sbatch options go on the
command line and into the ledger, so every job of a chain runs the very same file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.core import utils

#: Requeues of one job after timeouts that submitit allows (a chain's last job continuing a run).
MAX_TIMEOUT_REQUEUES = 3


class ScriptExecutor(submitit.SlurmExecutor):
    """A SlurmExecutor whose batch file is a given script; ``sbatch_args`` are added to the sbatch call."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        script: str,
        *,
        time_minutes: int,
        sbatch_args: Sequence[str] = (),
        array: Sequence[int] | None = None,
    ) -> None:
        super().__init__(folder, max_num_timeout=MAX_TIMEOUT_REQUEUES)
        self.script = script
        self.sbatch_args = list(sbatch_args)
        self.array = list(array or ())
        # submitit's timeout heuristic reads the time limit from here.
        self.update_parameters(time=time_minutes)

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        return self.script

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        return ["sbatch", *self.sbatch_args, str(submission_file_path)]

    def _num_tasks(self) -> int:
        return 1  # the driver is one process on the batch host; the step's tasks are srun's business

    def _internal_process_submissions(self, delayed_submissions: list[utils.DelayedSubmission]) -> list[Any]:
        jobs = super()._internal_process_submissions(delayed_submissions)
        if self.array:
            # Each array task looks for <id>_<index>_submitted.pkl; all run the same driver.
            for job in jobs:
                pickle = job.paths.submitted_pickle
                for index in self.array:
                    link = pickle.with_name(f"{job.job_id}_{index}_submitted.pkl")
                    if not link.exists():
                        link.symlink_to(pickle.name)
        return jobs


def local_executor(folder: str | os.PathLike[str]) -> submitit.LocalExecutor:
    executor = submitit.LocalExecutor(folder)
    executor.update_parameters(timeout_min=24 * 60)
    return executor
