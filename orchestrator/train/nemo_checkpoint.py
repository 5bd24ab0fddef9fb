"""NeMo 2 checkpoint layout, read without importing NeMo: progress for the driver, the imported model's place.

NeMo's ``ModelCheckpoint`` writes one directory per checkpoint into the run's checkpoint directory, named from the
recipe's filename pattern ``{model_name}--{val_loss:.2f}-{step}-{consumed_samples}`` plus ``-last`` (or ``-end``),
e.g. ``model_name=0--val_loss=0.00-step=18-consumed_samples=9728.0-last``. While a save is in flight rank 0 keeps a
marker file ``<dir>-unfinished`` beside it and removes it only once every rank (and the async writer) is done, so a
directory without that marker is complete. ``AutoResume`` resumes from finished ``*last`` / ``*end`` directories only;
:func:`latest_step` applies the same rule so the driver measures progress exactly as the trainer will resume.

The ``step=`` in the name is the ``step`` metric the strategy logs inside ``training_step``: the index of the step
being run, i.e. completed optimizer steps minus one (the log line's ``global_step``). A checkpoint named ``step=18``
holds 19 completed steps (``consumed_samples=9728`` at global batch 512), and NeMo reports it as "Async checkpoint
save for step 19". :func:`latest_step` returns completed steps: the ``trainer.global_step`` a resumed job starts at.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the plan imports this module (through train.backends)
    from orchestrator.plan import RunPlan

UNFINISHED_SUFFIX = "-unfinished"
_STEP = re.compile(r"(?<![A-Za-z0-9_])step=(\d+)(?=-|$)")


def checkpoint_step(name: str) -> int | None:
    """Completed steps held by the checkpoint directory ``name`` (its ``step=`` plus one); None if it has none."""
    match = _STEP.search(name)
    return int(match.group(1)) + 1 if match else None


def finished_checkpoints(ckpt_dir: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint directories AutoResume would consider: ``*last`` or ``*end``, without an ``-unfinished`` marker."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if not child.is_dir() or not child.name.endswith(("last", "end")):
            continue
        if (child.parent / (child.name + UNFINISHED_SUFFIX)).exists():
            continue
        found.append(child)
    return sorted(found)


def latest_step(ckpt_dir: str | os.PathLike[str]) -> int | None:
    """Completed training steps of the newest finished checkpoint in ``ckpt_dir``; None when there is none.

    A run whose directory holds only unfinished checkpoints has no usable progress (NeMo's AutoResume refuses to
    start from it rather than silently training from scratch), so this returns None for it too.
    """
    steps = [s for s in (checkpoint_step(p.name) for p in finished_checkpoints(ckpt_dir)) if s is not None]
    return max(steps) if steps else None


# ------------------------------------------------------------------------------------- imported HF checkpoints


def init_checkpoint(plan: RunPlan) -> str | None:
    """The NeMo checkpoint a run starts from (weights only), or None for training from scratch.

    ``train.init_from`` wins (a directory, or ``nemo://<org>/<name>`` in ``$NEMO_MODELS_CACHE``); otherwise a plan
    with ``train.hf_model_id`` starts from what the import stage wrote into the run directory:
    ``<run_dir>/imported/<org>--<name>`` for a hub id, ``<run_dir>/imported/<folder name>`` for a local folder.
    The import stage writes to this same path.
    """
    if plan.train.init_from:
        return plan.train.init_from
    model_id = plan.train.hf_model_id
    if not model_id:
        return None
    name = Path(model_id).name if is_local_model(model_id) else model_id.replace("/", "--")
    return str(Path(plan.run_dir) / "imported" / name)


def is_local_model(model_id: str) -> bool:
    """A filesystem path (``/``, ``~`` or ``.`` first) rather than a Hugging Face hub id (``org/name``)."""
    return model_id.startswith(("/", "~", "."))


def is_nemo_checkpoint(path: str | os.PathLike[str]) -> bool:
    """A complete NeMo 2 checkpoint directory: ``weights/`` (the distributed checkpoint) and ``context/``."""
    root = Path(path)
    return (root / "weights").is_dir() and (root / "context").is_dir()
