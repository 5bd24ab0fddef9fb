"""The Llama-style model matches the profile's architecture numbers; the LR schedule is NeMo's CosineAnnealing."""

from __future__ import annotations

import math

import pytest
import torch

from orchestrator.profiles import Architecture, Optimizer, get_model
from orchestrator.train.reference.model import Transformer, rope_frequencies
from orchestrator.train.reference.trainer import lr_at

SMALL = {
    "num_layers": 2,
    "hidden_size": 64,
    "ffn_hidden_size": 160,
    "num_attention_heads": 4,
    "num_query_groups": 2,
    "vocab_size": 97,
}


@pytest.mark.parametrize(
    "arch",
    [
        get_model("tiny").arch,
        Architecture(family="qwen2", qkv_bias=True, **SMALL),
        Architecture(family="qwen3", qk_layernorm=True, kv_channels=24, **SMALL),
        Architecture(family="llama", tie_embeddings=True, **SMALL),
    ],
    ids=["tiny", "qwen2-bias", "qwen3-qknorm-headdim", "tied"],
)
def test_parameter_count_is_the_profiles(arch: Architecture) -> None:
    model = Transformer(arch, max_seq_length=16)
    assert sum(p.numel() for p in model.parameters()) == arch.num_params()
    logits = model(torch.randint(0, arch.vocab_size, (2, 16)))
    assert logits.shape == (2, 16, arch.vocab_size)


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    model = Transformer(Architecture(family="llama", **SMALL), max_seq_length=12).eval()
    tokens = torch.randint(0, 97, (1, 12))
    changed = tokens.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 97
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_loss_of_a_fresh_model_is_near_uniform() -> None:
    torch.manual_seed(0)
    arch = Architecture(family="llama", **SMALL)
    model = Transformer(arch, max_seq_length=16)
    tokens = torch.randint(0, arch.vocab_size, (4, 17))
    loss = model(tokens[:, :-1], tokens[:, 1:])
    assert abs(loss.item() - math.log(arch.vocab_size)) < 0.1


def test_moe_is_refused_with_a_fix() -> None:
    arch = get_model("qwen3_30b_a3b").arch
    with pytest.raises(ValueError, match="nemo backend"):
        Transformer(arch, max_seq_length=8)


def test_llama31_scaling_slows_only_long_wavelengths() -> None:
    arch = get_model("llama31_8b").arch
    plain = rope_frequencies(arch.model_copy(update=dict(llama31_rope_scaling=False)))
    scaled = rope_frequencies(arch)
    wavelen = 2 * math.pi / plain
    assert torch.equal(scaled[wavelen < 8192 / 4], plain[wavelen < 8192 / 4])
    torch.testing.assert_close(scaled[wavelen > 8192], plain[wavelen > 8192] / 8)


def test_lr_schedule_is_nemo_cosine_annealing() -> None:
    opt = Optimizer(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(0, opt, 110) == pytest.approx(1e-3 / 11)  # NeMo warms up from (k+1)/(W+1)
    assert lr_at(10, opt, 110) == pytest.approx(1e-3)
    assert lr_at(60, opt, 110) == pytest.approx((1e-3 + 1e-4) / 2)  # half way through the decay
    assert lr_at(110, opt, 110) == pytest.approx(1e-4)
    assert lr_at(500, opt, 110) == 1e-4
    values = [lr_at(k, opt, 110) for k in range(10, 111)]
    assert values == sorted(values, reverse=True)
    assert lr_at(0, Optimizer(lr=1e-3, min_lr=0, warmup_steps=0), 100) == 1e-3
