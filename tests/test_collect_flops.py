"""FLOPs per token: the documented formula, cross-checked against NeMo's closed forms written out independently."""

from __future__ import annotations

import pytest

from orchestrator.collect.flops import architecture_flops_per_token, flops_per_token
from orchestrator.profiles import get_model

LLAMA3_8B = dict(
    num_layers=32,
    hidden_size=4096,
    ffn_hidden_size=14336,
    num_attention_heads=32,
    num_query_groups=8,
    vocab_size=128256,
    seq_length=8192,
)


def nemo_llama3(L: int, h: int, f: int, a: int, g: int, V: int, s: int, attention: float) -> float:
    """nemo/utils/flops_formulas.py llama3(), per token: attention=12 before NeMo 2.5, 6 from 2.5 (causal)."""
    return L * h * h * (12 + 12 * g / a + 18 * f / h + attention * s / h + 6 * V / (L * h))


def test_llama3_8b_matches_nemo_before_and_after_the_causal_discount() -> None:
    args = (32, 4096, 14336, 32, 8, 128256, 8192)
    assert flops_per_token(**LLAMA3_8B) == pytest.approx(nemo_llama3(*args, attention=12), rel=1e-12)
    assert flops_per_token(**LLAMA3_8B, causal=True) == pytest.approx(nemo_llama3(*args, attention=6), rel=1e-12)
    # The figures of the NeMo anchor notes (57.9 old formula, 51.47 with the 25.09 formula).
    assert flops_per_token(**LLAMA3_8B) / 1e9 == pytest.approx(57.91, abs=0.005)
    assert flops_per_token(**LLAMA3_8B, causal=True) / 1e9 == pytest.approx(51.47, abs=0.005)


def test_llama3_70b_matches_nemo_2_5() -> None:
    arch = dict(
        num_layers=80,
        hidden_size=8192,
        ffn_hidden_size=28672,
        num_attention_heads=64,
        num_query_groups=8,
        vocab_size=128256,
        seq_length=8192,
    )
    assert flops_per_token(**arch, causal=True) / 1e9 == pytest.approx(449.2, abs=0.05)


def test_moe_counts_only_the_routed_experts() -> None:
    moe = dict(
        num_layers=48,
        hidden_size=2048,
        ffn_hidden_size=6144,
        num_attention_heads=32,
        num_query_groups=4,
        head_dim=128,
        vocab_size=151936,
        seq_length=4096,
        moe_ffn_hidden_size=768,
    )
    top8 = flops_per_token(**moe, num_experts=128, moe_top_k=8)
    top4 = flops_per_token(**moe, num_experts=128, moe_top_k=4)
    assert top8 - top4 == pytest.approx(6 * 48 * 4 * 3 * 2048 * 768)
    more_experts = flops_per_token(**moe, num_experts=256, moe_top_k=8)
    assert more_experts - top8 == pytest.approx(6 * 48 * 2048 * 128)  # only the router grows
    with pytest.raises(ValueError, match="moe_top_k"):
        flops_per_token(**moe, num_experts=128)


def test_attention_uses_heads_times_head_dim() -> None:
    """Qwen3-30B-A3B: 32 heads of 128 on hidden 2048; the attention term is 12·L·s·4096, not 12·L·s·2048."""
    base = dict(
        num_layers=1,
        hidden_size=2048,
        ffn_hidden_size=1,
        num_attention_heads=32,
        num_query_groups=4,
        head_dim=128,
        vocab_size=1,
    )
    assert flops_per_token(**base, seq_length=2) - flops_per_token(**base, seq_length=1) == 12 * 4096


def test_profile_architecture_gives_the_same_number() -> None:
    profile = get_model("llama3_8b")
    assert architecture_flops_per_token(profile.arch, 8192) == flops_per_token(**LLAMA3_8B)
