"""One seed's chain of training jobs: which steps each trains, what it restores, where it saves.

As the reference (``pretrain_llama31.py``): job (partition) ``j`` trains steps ``[START + j*MAX, START + (j+1)*MAX)``
and saves ``<CONTINUAL_CKPT>/checkpoint-seed-<S>-par-<j>-<end>-steps/checkpoint``; partition 0 restores
``MODEL_CKPT`` (weights only when ``FROM_HF=1``: NeMo's ``RestoreConfig``, no optimizer, step 0; in full when
``FROM_HF=0``: ``AutoResume``, a checkpoint of an earlier chain); partition ``j>0`` resumes in full from
``j-1``'s checkpoint. Steps are optimizer steps done (``trainer.global_step``); the LR horizon does not change.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: NeMo's ``ModelCheckpoint(dirpath=<partition dir>, filename="checkpoint")`` writes this directory.
CHECKPOINT_NAME = "checkpoint"
#: NeMo writes ``<checkpoint>-unfinished`` before saving and removes it after (ModelCheckpoint).
UNFINISHED_SUFFIX = "-unfinished"

Restore = Literal["none", "weights", "full"]

_DIR_PATTERN = re.compile(r"^checkpoint-seed-(?P<seed>\d+)-par-(?P<par>\d+)-(?P<end>\d+)-steps$")


def checkpoint_dir_name(seed: int, partition: int, end_step: int) -> str:
    return f"checkpoint-seed-{seed}-par-{partition}-{end_step}-steps"


@dataclass(frozen=True)
class Partition:
    index: int
    start_step: int
    end_step: int
    restore: Restore
    restore_from: Path | None
    #: The partition's directory (NeMo's ``dirpath``); None when checkpoints are not saved.
    save_dir: Path | None

    @property
    def steps(self) -> int:
        return self.end_step - self.start_step

    @property
    def checkpoint(self) -> Path | None:
        """What this partition leaves for the next: ``<save_dir>/checkpoint``."""
        return None if self.save_dir is None else self.save_dir / CHECKPOINT_NAME


def plan_partitions(
    *,
    seed: int,
    num_partitions: int,
    start_step: int,
    steps_per_partition: int,
    continual_dir: str | os.PathLike[str] | None,
    model_ckpt: str | os.PathLike[str] | None = None,
    from_hf: bool = True,
    save: bool = True,
) -> list[Partition]:
    """The chain of ``NPAR`` jobs (``START_STEPS``, ``MAX_STEPS``, ``CONTINUAL_CKPT``, ``MODEL_CKPT``, ``FROM_HF``,
    ``SAVE_CKPT`` of ``config.sh``). Without ``model_ckpt`` the first job starts from random weights (debug only)."""
    if num_partitions < 1 or steps_per_partition < 1 or start_step < 0:
        raise ValueError(
            f"need NPAR >= 1 (got {num_partitions}), MAX_STEPS >= 1 (got {steps_per_partition}) and "
            f"START_STEPS >= 0 (got {start_step})"
        )
    if save and continual_dir is None:
        raise ValueError("SAVE_CKPT=1 needs CONTINUAL_CKPT, the directory the checkpoints are written to")
    if num_partitions > 1 and not save:
        raise ValueError(f"NPAR={num_partitions} chains jobs through checkpoints: set SAVE_CKPT=1 (and CONTINUAL_CKPT)")
    if model_ckpt is None and start_step > 0:
        raise ValueError(f"START_STEPS={start_step} resumes a run: set MODEL_CKPT to its checkpoint and FROM_HF=0")
    if model_ckpt is not None and from_hf and start_step > 0:
        raise ValueError(
            f"FROM_HF=1 restores weights only, so training restarts at step 0, not START_STEPS={start_step}: set "
            f"START_STEPS=0, or FROM_HF=0 with MODEL_CKPT=<CONTINUAL_CKPT>/checkpoint-seed-{seed}-par-<j>-"
            f"{start_step}-steps/checkpoint to continue that run"
        )
    continual = None if continual_dir is None else Path(continual_dir)
    previous = None if model_ckpt is None else Path(model_ckpt)
    first_restore: Restore = "none" if model_ckpt is None else ("weights" if from_hf else "full")
    partitions = []
    for j in range(num_partitions):
        start = start_step + j * steps_per_partition
        end = start + steps_per_partition
        save_dir = continual / checkpoint_dir_name(seed, j, end) if save and continual is not None else None
        restore: Restore = first_restore if j == 0 else "full"
        partitions.append(Partition(j, start, end, restore, previous, save_dir))
        previous = partitions[-1].checkpoint
    return partitions


def nemo_checkpoint_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a complete NeMo 2 checkpoint, or None if it is.

    Complete: the directory exists, NeMo's ``<path>-unfinished`` marker is gone, and ``weights/metadata.json``
    exists (megatron-core writes it last, after every shard, in its finalize step).
    """
    path = Path(path)
    if not path.is_dir():
        return f"{path}: no checkpoint directory"
    if Path(f"{path}{UNFINISHED_SUFFIX}").exists():
        return f"{path}: unfinished (NeMo's {path.name}{UNFINISHED_SUFFIX} marker is present)"
    if not (path / "weights" / "metadata.json").is_file():
        return f"{path}: no weights/metadata.json (the save did not finish)"
    return None


def latest_checkpoint(continual_dir: str | os.PathLike[str], seed: int) -> tuple[int, Path] | None:
    """``(end step, checkpoint path)`` of the furthest complete checkpoint of ``seed``, to continue a chain."""
    root = Path(continual_dir)
    if not root.is_dir():
        return None
    found = []
    for entry in root.iterdir():
        match = _DIR_PATTERN.match(entry.name)
        if match and int(match["seed"]) == seed and nemo_checkpoint_problem(entry / CHECKPOINT_NAME) is None:
            found.append((int(match["end"]), entry / CHECKPOINT_NAME))
    return max(found, default=None)
