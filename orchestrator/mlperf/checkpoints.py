"""Where an MLPerf run starts: config.sh's checkpoint variables, exactly as the reference means them.

``pretrain_llama31.py`` reads ``USE_CKPT``, ``FROM_HF``, ``MODEL_CKPT``, ``START_STEPS``, ``SAVE_CKPT``, ``NPAR`` and
``CONTINUAL_CKPT`` (mounted as ``/checkpoint`` and ``/continual``):

- ``USE_CKPT=0``: random weights, step 0.
- ``USE_CKPT=1 FROM_HF=1``: the weights of ``MODEL_CKPT`` (NeMo's ``RestoreConfig``: no optimizer state), step 0: a
  benchmark run from the converted Llama 3.1 405B.
- ``USE_CKPT=1 FROM_HF=0``: a full resume from ``MODEL_CKPT`` (NeMo's ``AutoResume``: weights, optimizer, step, LR
  schedule, data position), whose step is ``START_STEPS``: continuing an earlier chain from its
  ``<CONTINUAL_CKPT>/checkpoint-seed-<S>-par-<j>-<end>-steps/checkpoint``.
- ``NPAR > 1`` needs ``SAVE_CKPT=1`` (the reference asserts it): later jobs resume from the earlier ones' checkpoints.

:func:`start_point` applies these rules and refuses, at plan time, each combination the reference refuses or would
run wrongly (a ``START_STEPS`` that the restored state does not have), naming the variable and a fix. The trainers
then check, at their first step, that they start where the plan says (:func:`check_start`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: NeMo's ``ModelCheckpoint`` writes ``<path>-unfinished`` while a save is in flight and removes it once complete.
UNFINISHED_SUFFIX = "-unfinished"
_REFERENCE_NAME = re.compile(r"checkpoint-seed-\d+-par-\d+-(?P<end>\d+)-steps$")
_NEMO_STEP = re.compile(r"(?<![A-Za-z0-9_])step=(?P<step>\d+)(?=-|$)")


class StartError(ValueError):
    """A config.sh combination the run cannot honour: what is wrong (naming the variables) and the fix."""

    def __init__(self, message: str, fix: str):
        super().__init__(f"{message}; fix: {fix}")
        self.message, self.fix = message, fix


@dataclass(frozen=True)
class StartPoint:
    """What the first job of the run restores: nothing, weights only, or everything at ``step``."""

    mode: Literal["scratch", "weights", "full"]
    path: str | None = None
    #: Completed optimizer steps at the start (``START_STEPS``); nonzero only for a full resume.
    step: int = 0


def checkpoint_steps(path: str) -> int | None:
    """Completed steps of a checkpoint, as its name says: the reference's ``checkpoint-seed-S-par-j-<end>-steps``
    (its ``/checkpoint`` inside), or NeMo's ``...-step=<index>-...`` (the index of the last step: completed - 1)."""
    p = Path(path)
    for name in (p.name, p.parent.name):
        if match := _REFERENCE_NAME.search(name):
            return int(match["end"])
    if match := _NEMO_STEP.search(p.name):
        return int(match["step"]) + 1
    return None


def nemo_checkpoint_problem(path: str) -> str | None:
    """Why ``path`` is not a complete NeMo 2 checkpoint (None when it is): the folder exists, NeMo's unfinished
    marker is gone, and ``weights/metadata.json`` exists (megatron-core writes it last)."""
    p = Path(path)
    if not p.is_dir():
        return f"{p}: no checkpoint folder"
    if Path(f"{p}{UNFINISHED_SUFFIX}").exists():
        return f"{p}: unfinished (NeMo's {p.name}{UNFINISHED_SUFFIX} marker is present)"
    if not (p / "weights" / "metadata.json").is_file():
        return f"{p}: no weights/metadata.json (the save did not finish, or this is not a NeMo 2 checkpoint)"
    return None


def start_point(*, use_ckpt: bool, from_hf: bool, model_ckpt: str | None, start_steps: int) -> StartPoint:
    """config.sh's start, or :class:`StartError` naming what to change."""
    if start_steps < 0:
        raise StartError(f"START_STEPS={start_steps} is negative", "the completed steps of MODEL_CKPT (0 or more)")
    if not use_ckpt:
        if start_steps:
            raise StartError(
                f"START_STEPS={start_steps} with USE_CKPT=0: a run from random weights starts at step 0",
                "START_STEPS=0, or USE_CKPT=1 FROM_HF=0 MODEL_CKPT=<the checkpoint of that step>",
            )
        return StartPoint("scratch")
    if not model_ckpt:
        raise StartError("USE_CKPT=1 without MODEL_CKPT: nothing to start from", "set MODEL_CKPT, or USE_CKPT=0")
    if from_hf:
        if start_steps:
            raise StartError(
                f"START_STEPS={start_steps} with FROM_HF=1: FROM_HF=1 restores weights only, so training starts at step 0",
                f"START_STEPS=0, or FROM_HF=0 with MODEL_CKPT=<CONTINUAL_CKPT>/checkpoint-seed-<S>-par-<j>-"
                f"{start_steps}-steps/checkpoint to continue that run with its optimizer and schedule",
            )
        return StartPoint("weights", model_ckpt)
    named = checkpoint_steps(model_ckpt)
    if named is not None and named != start_steps:
        raise StartError(
            f"START_STEPS={start_steps} but MODEL_CKPT={model_ckpt} holds {named} completed steps (its "
            "name says so), and FROM_HF=0 resumes that state exactly",
            f"START_STEPS={named}",
        )
    return StartPoint("full", model_ckpt, start_steps)


def check_start(expected: int, actual: int, path: str | None) -> None:
    """A job's first step is where its plan says (raises otherwise: the restored checkpoint is not the one meant)."""
    if actual != expected:
        raise RuntimeError(
            f"the job starts at step {actual}, the plan at step {expected}"
            + (f" (train.init_step, from {path})" if path else "")
            + "; the checkpoint restored is not the one the plan names: fix START_STEPS / train.init_step or MODEL_CKPT"
        )
