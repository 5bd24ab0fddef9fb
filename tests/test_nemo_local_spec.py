"""NeMo without Transformer Engine: SDPA core attention computes Megatron's attention; the recipe switch, on a CPU."""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig
from nemo.collections.llm.gpt.model.base import local_layer_spec as nemo_local_layer_spec
from nemo_stack import fdl, llm  # first: a missing stack fails these tests with the fix

from orchestrator.data.indexed import IndexedDatasetWriter
from orchestrator.plan import build_plan
from orchestrator.train.nemo_local_spec import (
    SDPAttention,
    announcement,
    local_layer_spec,
    skip_attention_masks,
    use_local_spec,
)
from orchestrator.train.nemo_recipe import build_recipe

pytestmark = pytest.mark.nemo
HEADS, GROUPS, HEAD_DIM = 4, 2, 16


@pytest.fixture(scope="module")
def model_parallel(tmp_path_factory: pytest.TempPathFactory):
    """Megatron's parallel state for one CPU process (gloo), as its modules expect at construction."""
    if not dist.is_initialized():
        store = tmp_path_factory.mktemp("dist") / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    yield
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def attention(mask_type: AttnMaskType, **config: object) -> SDPAttention:
    cfg = TransformerConfig(
        num_layers=2,
        hidden_size=HEADS * HEAD_DIM,
        num_attention_heads=HEADS,
        num_query_groups=GROUPS,
        use_cpu_initialization=True,
        attention_dropout=0.0,
        **config,
    )
    return SDPAttention(cfg, layer_number=2, attn_mask_type=mask_type, attention_type="self")


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d), masked -> -inf) V in float64, each query group's K/V shared by its heads."""
    s, b = q.shape[:2]
    q64 = q.double().permute(1, 2, 0, 3)
    k64, v64 = (t.double().repeat_interleave(HEADS // GROUPS, dim=2).permute(1, 2, 0, 3) for t in (k, v))
    scores = (q64 @ k64.transpose(-1, -2) / math.sqrt(HEAD_DIM)).masked_fill(masked, float("-inf"))
    return (scores.softmax(-1) @ v64).permute(2, 0, 1, 3).reshape(s, b, HEADS * HEAD_DIM)


def qkv(s: int = 24, b: int = 3) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(7)
    shapes = [(s, b, HEADS, HEAD_DIM), (s, b, GROUPS, HEAD_DIM), (s, b, GROUPS, HEAD_DIM)]
    return tuple(torch.randn(shape, generator=gen, requires_grad=True) for shape in shapes)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def test_causal_attention_is_megatrons(model_parallel: None) -> None:
    q, k, v = qkv()
    s = q.shape[0]
    causal = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)
    # A padding mask passed with the causal type is ignored, as Transformer Engine ignores it.
    ignored = torch.ones(q.shape[1], 1, s, s, dtype=torch.bool)
    out = attention(AttnMaskType.causal)(q, k, v, ignored)
    ref = reference(q, k, v, causal)
    assert out.shape == (s, q.shape[1], HEADS * HEAD_DIM)
    assert relative_error(out, ref) < 1e-5

    out.backward(torch.ones_like(out))
    grads = [t.grad.clone() for t in (q, k, v)]
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    reference(q64, k64, v64, causal).backward(torch.ones_like(ref))
    for got, want in zip(grads, (q64.grad, k64.grad, v64.grad)):
        assert relative_error(got, want) < 1e-5


def test_padding_mask_is_honoured(model_parallel: None) -> None:
    q, k, v = qkv()
    s, b = q.shape[:2]
    masked = torch.zeros(b, 1, s, s, dtype=torch.bool)
    masked[:, :, :, s - 5 :] = True  # the last 5 keys are padding (Megatron: True = masked out)
    out = attention(AttnMaskType.padding)(q, k, v, masked)
    assert relative_error(out, reference(q, k, v, masked)) < 1e-5


def test_query_key_layer_scaling_keeps_the_scale(model_parallel: None) -> None:
    """Megatron divides the scale by the layer number and multiplies it back in its softmax: no net change."""
    q, k, v = qkv()
    s = q.shape[0]
    out = attention(AttnMaskType.causal, apply_query_key_layer_scaling=True, fp16=True)(q, k, v, None)
    assert relative_error(out, reference(q, k, v, torch.triu(torch.ones(s, s, dtype=torch.bool), 1))) < 1e-5


def test_only_the_core_attention_changes(model_parallel: None) -> None:
    config = llm.Llama3Config8B(apply_rope_fusion=False)
    ours, nemos = local_layer_spec(config), nemo_local_layer_spec(config)
    assert ours.submodules.self_attention.submodules.core_attention is SDPAttention
    ours.submodules.self_attention.submodules.core_attention = nemos.submodules.self_attention.submodules.core_attention
    assert repr(ours) == repr(nemos)


def test_switched_recipe_builds_sdpa_attention(
    model_parallel: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The llama3_8b proxy's recipe, switched: the model NeMo builds from it uses SDPA, no fusion needs TE, and its
    forward step runs on batches without an attention mask."""
    plan = build_plan(
        "llama3_8b",
        "h100-pyxis",
        {
            "data.source": "preprocessed",
            "data.train_prefixes": ["/d/a"],
            "model.arch.num_layers": 2,
            "layout.cp": 1,
            "layout.tp": 2,
            "layout.sequence_parallel": True,
            "train.global_batch_size": 8,
        },
        run_dir=tmp_path / "run",
    )
    recipe = build_recipe(plan)
    use_local_spec(recipe)
    assert recipe.trainer.strategy.sequence_parallel is False  # torch.nn norms refuse it
    assert recipe.optim.config.use_distributed_optimizer is False  # cannot resume over torch's AdamW
    config = fdl.build(recipe.model.config)  # NeMo refuses apply_rope_fusion without TE at this point
    assert config.transformer_layer_spec is local_layer_spec
    assert not (config.apply_rope_fusion or config.gradient_accumulation_fusion or config.persist_layer_norm)

    small = copy.deepcopy(recipe.model.config)
    for name, value in dict(
        hidden_size=64,
        ffn_hidden_size=128,
        num_attention_heads=HEADS,
        num_query_groups=GROUPS,
        vocab_size=256,
        use_cpu_initialization=True,
        bf16=False,
        params_dtype=torch.float32,
    ).items():
        setattr(small, name, value)
    model = llm.GPTModel(fdl.build(small))
    model.configure_model()
    kinds = [type(m) for m in model.modules() if "Attention" in type(m).__name__ and "Self" not in type(m).__name__]
    assert kinds == [SDPAttention] * 2

    # a step on a batch without attention_mask (the data module no longer makes one): the per-token losses
    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")  # Megatron's RoPE moves its table there
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    batch = {"tokens": tokens, "labels": tokens.roll(-1, 1), "position_ids": torch.arange(16).expand(2, 16)}
    losses = model.config.forward_step_fn(model, batch)
    assert losses.shape == (2, 16) and torch.isfinite(losses).all()


class CpuStreams:
    """Stands in for CUDA streams and events on a CPU: Megatron's alltoall dispatcher copies its token counts to the
    host on a side stream and waits on an event; on a CPU every copy is already done."""

    def wait_stream(self, other: object) -> None:
        pass

    def record_event(self) -> CpuStreams:
        return self

    def synchronize(self) -> None:
        pass


def test_switched_moe_recipe_trains_all_128_experts_on_a_cpu(
    model_parallel: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """qwen3_30b_a3b without TE: the recipe's config builds (it raised ImportError of fused_permute before), and a
    2-layer model with all 128 experts, top-8 routing, the recipe's alltoall dispatcher and load-balancing loss runs a
    forward and backward pass (hidden 64 and no recomputation, which needs CUDA's RNG, so that it fits a CPU test)."""
    plan = build_plan(
        "qwen3_30b_a3b",
        "h100-pyxis",
        {
            "data.source": "preprocessed",
            "data.train_prefixes": ["/d/a"],
            "model.arch.num_layers": 2,
            "layout.tp": 1,
            "layout.pp": 1,
            "layout.ep": 1,
            "train.global_batch_size": 8,
        },
        run_dir=tmp_path / "run",
    )
    recipe = build_recipe(plan)
    use_local_spec(recipe)
    config = fdl.build(recipe.model.config)
    assert (config.num_moe_experts, config.moe_router_topk, config.moe_token_dispatcher_type) == (128, 8, "alltoall")
    assert not (config.moe_permute_fusion or config.moe_router_fusion or config.moe_grouped_gemm)
    assert config.moe_router_load_balancing_type == "aux_loss" and config.moe_aux_loss_coeff > 0
    assert "MoE: SequentialMLP experts" in announcement(recipe)

    small = copy.deepcopy(recipe.model.config)
    for name, value in dict(
        hidden_size=64,
        ffn_hidden_size=128,
        moe_ffn_hidden_size=32,
        num_attention_heads=HEADS,
        num_query_groups=GROUPS,
        kv_channels=HEAD_DIM,
        vocab_size=256,
        recompute_granularity=None,
        recompute_method=None,
        recompute_num_layers=None,
        use_cpu_initialization=True,
        bf16=False,
        params_dtype=torch.float32,
    ).items():
        setattr(small, name, value)
    streams = CpuStreams()
    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")  # RoPE's table and the router's weight go there
    monkeypatch.setattr(torch.cuda, "Stream", lambda *args, **kwargs: streams)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *args, **kwargs: streams)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    model = llm.GPTModel(fdl.build(small))
    model.configure_model()
    experts = [m for m in model.modules() if type(m).__name__ == "SequentialMLP"]
    assert [len(e.local_experts) for e in experts] == [128, 128]

    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(5))
    batch = {"tokens": tokens, "labels": tokens.roll(-1, 1), "position_ids": torch.arange(32).expand(2, 32)}
    losses = model.config.forward_step_fn(model, batch)
    assert losses.shape == (2, 32) and torch.isfinite(losses).all()
    losses.mean().backward()
    params = dict(model.named_parameters())
    assert all(p.grad is not None for p in params.values())
    routers = [p for name, p in params.items() if name.endswith("router.weight")]
    assert len(routers) == 2 and all(r.grad.abs().sum() > 0 for r in routers)
    used = [p for name, p in params.items() if "local_experts" in name and p.grad.abs().sum() > 0]
    assert len(used) > 2 * 2 * 8  # top-8 of 64 tokens per layer reach many experts, each with fc1 and fc2


def test_data_module_skips_the_mask(tmp_path: Path) -> None:
    prefix = tmp_path / "doc"
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_document(np.arange(1, 300))
    data = llm.PreTrainingDataModule(
        paths=[str(prefix)],
        seq_length=128,
        global_batch_size=8,
        micro_batch_size=1,
        tokenizer=SimpleNamespace(eod=0, vocab_size=300),
    )  # no download in __init__
    assert data.create_attention_mask  # NeMo's default without TE
    skip_attention_masks(data)
    assert not data.create_attention_mask
