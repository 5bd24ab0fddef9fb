"""Model FLOPs per trained token, to turn tokens/s/GPU into TFLOP/s/GPU and MFU.

The formula (forward + backward = 3x forward, one multiply-add = 2 FLOPs, no recompute counted):

    flops_per_token = 6 * N + 12 * L * s * (a * d)        [x 0.5 on the second term when ``causal``]

- ``N`` is the number of weights that take part in a matrix multiply for one token: per layer the Q, K, V and output
  projections ``h*a*d + 2*h*g*d + a*d*h``, the MLP (SwiGLU: ``3*h*f``; MoE: ``k`` routed experts of ``3*h*f_moe``
  plus the router ``h*E``), and once the output layer ``V*h``. The input embedding is a lookup (no FLOPs); norms
  and biases are element-wise and left out. So for MoE models ``N`` counts the *active* parameters.
- ``12 * L * s * a * d`` is attention itself: ``Q K^T`` and ``softmax(.) V`` are ``2 * s * a * d`` multiply-adds
  each per token and layer, times 2 FLOPs and 3 passes. For every model here ``a * d == h`` (the familiar
  ``12 * L * h * s``) except Qwen3-30B-A3B, whose 32 heads of 128 attend in 4096 dimensions on a 2048 hidden size.

Symbols: L layers, h hidden, f FFN hidden, a attention heads, g query groups (KV heads), d head dim, V vocab,
s sequence length, E experts, k experts per token.

How it compares with NeMo (``nemo/utils/flops_formulas.py``):

- NeMo <= 2.4 (containers up to 25.07): ``llama3()`` is the same formula written as
  ``L*h^2*(12 + 12*g/a + 18*f/h + 12*s/h + 6*V/(L*h))`` (it assumes ``a*d == h``). It gives 57.91 GFLOP/token for
  Llama 3 8B at s = 8192, as ours does with ``causal=False``.
- NeMo 2.5 (container 25.09, commit 6251117f "Discount FLOPs in dot-product att") halves the attention term for
  causal masking: ``6*s/h`` in place of ``12*s/h``, 51.47 GFLOP/token for the same model. ``causal=True``
  reproduces it, so our MFU can be compared with the ``TFLOPS_per_GPU`` NeMo 25.09 logs.
- NeMo takes the vocabulary from a per-family table (128256 for Llama 3), not the padded size; pass the vocab you
  want counted. Its ``qwen3()`` MoE formula sizes the attention with ``h`` rather than ``a*d``, so for
  Qwen3-30B-A3B our figure is larger.

The default here is ``causal=False``: the plain dense-transformer count (Kaplan et al. 2020, Megatron-LM's
Narayanan et al. 2021 without the recompute pass) that most published MFU figures use.
"""

from __future__ import annotations

from typing import Protocol


def flops_per_token(
    *,
    num_layers: int,
    hidden_size: int,
    ffn_hidden_size: int,
    num_attention_heads: int,
    num_query_groups: int,
    vocab_size: int,
    seq_length: int,
    head_dim: int | None = None,
    num_experts: int | None = None,
    moe_top_k: int | None = None,
    moe_ffn_hidden_size: int | None = None,
    causal: bool = False,
) -> float:
    """Training FLOPs per token (forward and backward) of a Llama/Qwen-style decoder; see the module docstring."""
    h, heads, groups = hidden_size, num_attention_heads, num_query_groups
    d = head_dim or h // heads
    attention_weights = h * heads * d + 2 * h * groups * d + heads * d * h
    if num_experts:
        if not moe_top_k:
            raise ValueError("an MoE model needs moe_top_k (experts each token is routed to)")
        mlp_weights = moe_top_k * 3 * h * (moe_ffn_hidden_size or ffn_hidden_size) + h * num_experts
    else:
        mlp_weights = 3 * h * ffn_hidden_size
    matmul_weights = num_layers * (attention_weights + mlp_weights) + vocab_size * h
    attention = 12 * num_layers * seq_length * heads * d * (0.5 if causal else 1.0)
    return 6.0 * matmul_weights + attention


class ArchitectureLike(Protocol):
    """The fields of ``orchestrator.profiles.Architecture`` this module reads."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    vocab_size: int
    num_experts: int | None
    moe_top_k: int | None
    moe_ffn_hidden_size: int | None

    @property
    def head_dim(self) -> int: ...


def architecture_flops_per_token(arch: ArchitectureLike, seq_length: int, *, causal: bool = False) -> float:
    """``flops_per_token`` of a model profile's architecture (a plan's ``model.arch``)."""
    return flops_per_token(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        head_dim=arch.head_dim,
        vocab_size=arch.vocab_size,
        seq_length=seq_length,
        num_experts=arch.num_experts,
        moe_top_k=arch.moe_top_k,
        moe_ffn_hidden_size=arch.moe_ffn_hidden_size,
        causal=causal,
    )
