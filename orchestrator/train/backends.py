"""The two trainers, told apart in one place: ``train.backend`` names a :class:`Backend`, and what differs between
NeMo's recipe and the reference trainer (the program, how progress is read, what a plan must satisfy, which stages
run before training) is a field of it, read by the plan, the stages and the chain instead of a comparison of names.

Light on purpose: the login node imports it with the plan, so it names programs and reads checkpoint directories
without importing either trainer."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.train import checkpoint, nemo_checkpoint


@dataclass(frozen=True)
class Backend:
    name: str
    #: The training program (``python -m``), one task per rank.
    module: str
    #: The newest complete checkpoint's step in a checkpoint directory, in this trainer's format (None: none yet).
    latest_step: Callable[[str | os.PathLike[str]], int | None]
    #: It builds NeMo's pretraining recipe: the model needs one (``model.recipe``), Megatron's sample index is built
    #: by a stage of its own before training, and the checkpoint it starts from is a NeMo 2 checkpoint.
    nemo_recipe: bool
    #: It splits the model (TP/PP/CP/EP); else it is data-parallel only.
    model_parallel: bool
    #: It needs GPU nodes.
    gpus_only: bool
    #: The ``train.precision`` values it trains in.
    precisions: tuple[str, ...]
    #: It trains with ``min_lr`` above ``lr`` (its schedule then rises); else it refuses such a plan.
    rising_lr: bool


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            name="nemo",
            module="orchestrator.train.nemo",
            latest_step=nemo_checkpoint.latest_step,
            nemo_recipe=True,
            model_parallel=True,
            gpus_only=True,
            precisions=("bf16-mixed",),  # as NeMo's recipes train
            rising_lr=True,  # MLPerf's fixed end LR is above the base LR of a small-GBS proxy (allow_new_rcp)
        ),
        Backend(
            name="reference",
            module="orchestrator.train.reference",
            latest_step=checkpoint.latest_step,
            nemo_recipe=False,
            model_parallel=False,
            gpus_only=False,
            precisions=("bf16-mixed", "fp32"),
            rising_lr=False,
        ),
    )
}
