"""A small Llama 3.1 made with ``transformers``: the Hugging Face checkpoint of continual pretraining where no hub is
reachable (seeds 002/003 start from ``meta-llama/Llama-3.1-8B``).

Llama 3.1's own architecture (RMSNorm, SwiGLU, grouped-query attention, RoPE base 500000 with Llama 3.1's scaling)
and its real tokenizer (``llama-models:llama3.1``, 128256 ids), at a width that fits a CPU test: 2 layers, hidden
256, 4 heads in 2 query groups, FFN 512. :func:`pretrain` gives it a loss of its own on a dataset, so that a run
restored from it can be told from a fresh one (~ln(128256) = 11.76).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from orchestrator.data.indexed import IndexedDataset

#: The plan overrides that give the llama31_8b profile this shape (the train and import stages build it from them).
PLAN_ARCH = {
    "model.arch.num_layers": 2,
    "model.arch.hidden_size": 256,
    "model.arch.ffn_hidden_size": 512,
    "model.arch.num_attention_heads": 4,
    "model.arch.num_query_groups": 2,
}


def build(seed: int = 0) -> torch.nn.Module:
    """A freshly initialised ``LlamaForCausalLM`` in bfloat16 (Hugging Face's own initialisation, seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=128000,
        eos_token_id=128001,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(torch.bfloat16)


def save(model: torch.nn.Module, tokenizer_dir: Path, dest: Path) -> Path:
    """``save_pretrained`` into ``dest`` with the tokenizer's files beside the weights, as a hub download has them."""
    model.save_pretrained(dest)
    for path in Path(tokenizer_dir).iterdir():
        if path.suffix == ".json" and path.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(path, dest / path.name)
    return dest


def batches(prefix: str, seq: int, batch: int, seed: int = 0):
    """Endless batches of ``batch`` random windows of ``seq`` tokens of a Megatron dataset, as int64 tensors."""
    dataset = IndexedDataset(prefix)
    tokens = np.concatenate([dataset[i] for i in range(len(dataset))]).astype(np.int64)
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(tokens) - seq, size=batch)
        yield torch.from_numpy(np.stack([tokens[s : s + seq] for s in starts]))


def mean_loss(model: torch.nn.Module, data, steps: int, device: str) -> float:
    """The model's mean next-token loss over ``steps`` batches, in evaluation mode."""
    model.to(device).eval()
    with torch.no_grad():
        total = sum(model(input_ids=w, labels=w).loss.item() for w in (next(data).to(device) for _ in range(steps)))
    return total / steps


def pretrain(model: torch.nn.Module, data, steps: int, device: str, lr: float = 3e-3) -> list[float]:
    """A few AdamW steps in bfloat16 autocast over ``data``: the losses, first to last."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        window = next(data).to(device)
        loss = model(input_ids=window, labels=window).loss  # Hugging Face shifts the labels itself
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses
