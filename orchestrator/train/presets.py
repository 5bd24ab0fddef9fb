"""Named override sets for well-known runs: dotted plan keys a user selects on top of a model profile.

A preset is just ``--set`` assignments written down once, with where each number comes from; ``--set`` given after
it still wins. Apply one with ``build_plan(profile, cluster, {**presets.get(name), **user_overrides})``.

Continual pretraining of Llama 3.1 8B (seed 003, after NVIDIA's "NeMo Framework で実践する継続事前学習 – 日本語 LLM
編" blog): import ``meta-llama/Llama-3.1-8B`` from Hugging Face, restore its weights with a fresh optimizer, and train
with a learning rate one order below pretraining. Two variants are recorded in the seed:

* ``cpt-llama31-8b``: the blog's full run on 8 x H100: lr 2.5e-5 with 15 warm-up steps, cosine to 2.5e-6, weight
  decay 0.1, betas (0.9, 0.95), gradient clipping 1.0, global batch 1024 of 8192 tokens, 150 steps, validation every
  15 steps on 1 batch, seed 42.
* ``cpt-llama31-8b-small``: the seed's two-GPU walk-through: TP2, lr 3e-5 with 50 warm-up steps, cosine to 5e-6,
  global batch 8 of 4096 tokens, validation every 100 steps. (Its ``constant_steps=500`` is NeMo 1's hold phase;
  NeMo 2's recipe schedule has none, so it is not carried over.)

Both keep Llama 3.1's RoPE base of 500000, which the imported weights were trained with and NeMo's
``Llama31Config8B`` carries. The seed's ``+model.rotary_base=5000000.0`` (5e6) only sets a NeMo 1 config key; with a
restored model it would shift every position's rotation, so it is not reproduced.

MLPerf Llama 3.1 405B needs no preset: an MLPerf plan takes its schedule from ``orchestrator.mlperf.schedule`` at
whatever global batch size it has.
"""

from __future__ import annotations

from typing import Any

_CPT_COMMON: dict[str, Any] = {
    "train.hf_model_id": "meta-llama/Llama-3.1-8B",
    "train.init_mode": "weights",
    "train.optim.weight_decay": 0.1,
    "train.optim.beta1": 0.9,
    "train.optim.beta2": 0.95,
    "train.optim.clip_grad": 1.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    "cpt-llama31-8b": {
        **_CPT_COMMON,
        "train.optim.lr": 2.5e-5,
        "train.optim.min_lr": 2.5e-6,
        "train.optim.warmup_steps": 15,
        "train.global_batch_size": 1024,
        "train.seq_length": 8192,
        "train.max_steps": 150,
        "train.val_interval": 15,
        "train.val_batches": 1,
        "train.seed": 42,
    },
    "cpt-llama31-8b-small": {
        **_CPT_COMMON,
        "train.optim.lr": 3e-5,
        "train.optim.min_lr": 5e-6,
        "train.optim.warmup_steps": 50,
        "train.global_batch_size": 8,
        "train.seq_length": 4096,
        "train.val_interval": 100,
        "train.val_batches": 1,
        "layout.tp": 2,
    },
}

#: The profile each preset is written for.
PRESET_PROFILES = {"cpt-llama31-8b": "llama31_8b", "cpt-llama31-8b-small": "llama31_8b"}


def names() -> list[str]:
    return sorted(PRESETS)


def get(name: str) -> dict[str, Any]:
    """The overrides of preset ``name`` (a copy)."""
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of: {', '.join(names())}") from None
