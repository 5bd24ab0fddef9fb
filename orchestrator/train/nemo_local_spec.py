"""NeMo on a machine without Transformer Engine: Megatron's local layer spec, with flash attention through SDPA.

NeMo's containers carry Transformer Engine (TE), and its recipes assume it. Where it is missing (a plain PyTorch
machine: TE's PyTorch extension has no binary wheel and its library wheel alone is 186 MB), NeMo falls back to
megatron-core's *local* layer spec, whose ``DotProductAttention`` materialises the ``s x s`` score matrix: at sequence
8192 with 32 heads that is 4 GiB per layer and micro-batch, and NeMo's data module then builds an explicit causal mask
for every sample (64 MiB of booleans each) because it assumes that attention needs one. :func:`use_local_spec`
switches a recipe to that spec with :class:`SDPAttention` as the core attention (``softmax(QK^T)V`` by
``torch.nn.functional.scaled_dot_product_attention``: flash or cuDNN kernels on a GPU, the causal mask applied inside
the kernel, as TE does), turns off the fusions that need TE (RoPE) and sequence parallelism (the local spec's norms are
plain ``torch.nn`` norms, which Megatron refuses under it), and keeps the data module from building masks. Megatron's
optimizer then falls back to ``torch.optim.AdamW`` (multi-tensor, not fused), and without Apex its distributed
variant cannot resume, so the plain one is used. Mixture-of-experts models (Qwen3 30B-A3B) also lose TE's fused token
permutation and router kernels and its grouped GEMM: the experts become Megatron's ``SequentialMLP`` (one GEMM per
expert), with the recipe's token dispatcher and load-balancing loss in plain PyTorch. Everything else (the model, the
layout, the schedule) stays NeMo's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec
from nemo.collections.llm.gpt.model.base import gpt_forward_step
from nemo.collections.llm.gpt.model.base import local_layer_spec as nemo_local_layer_spec


def have_transformer_engine() -> bool:
    """Is Transformer Engine installed (looked up, not imported: importing it initialises CUDA)?"""
    return importlib.util.find_spec("transformer_engine") is not None


def have_apex() -> bool:
    return importlib.util.find_spec("apex") is not None


class SDPAttention(DotProductAttention):
    """Megatron's core attention (same constructor, inputs and output) computed by PyTorch's fused SDPA.

    Inputs ``[s, b, heads or groups, d]``, output ``[s, b, heads * d]`` per tensor-parallel rank. With a causal
    mask type the kernel masks (``is_causal``) and ``attention_mask`` is ignored, as Transformer Engine does; with
    the padding or no-mask types an explicit mask (True = masked, Megatron's convention) is honoured.
    """

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("SDPAttention: packed sequences and attention bias need Transformer Engine")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        causal = mask_type == AttnMaskType.causal
        mask = None if causal or attention_mask is None else ~attention_mask
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, n, s, d]
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.attention_dropout.p if self.training else 0.0,
            is_causal=causal,
            scale=self._scale(),
            enable_gqa=k.shape[1] != q.shape[1],
        )
        seq, batch = query.shape[0], query.shape[1]
        return context.permute(2, 0, 1, 3).reshape(seq, batch, self.hidden_size_per_partition)

    def _scale(self) -> float:
        """The scale the scores get in total: Megatron divides ``softmax_scale`` by the layer number under
        ``apply_query_key_layer_scaling`` and multiplies it back inside its softmax."""
        return self.softmax_scale * (self.layer_number if self.config.apply_query_key_layer_scaling else 1)


def local_layer_spec(config: Any) -> ModuleSpec:
    """NeMo's fallback layer spec (megatron-core's local modules) with :class:`SDPAttention` as core attention."""
    spec = nemo_local_layer_spec(config)
    attention = spec.submodules.self_attention
    attention = dataclasses.replace(
        attention, submodules=dataclasses.replace(attention.submodules, core_attention=SDPAttention)
    )
    return dataclasses.replace(spec, submodules=dataclasses.replace(spec.submodules, self_attention=attention))


def skip_attention_masks(data: Any) -> None:
    """Keep a built ``PreTrainingDataModule`` from making the per-sample causal mask it makes whenever TE is missing.

    Its ``__init__`` forces ``create_attention_mask`` on without TE (the local spec's own attention needs the mask);
    :class:`SDPAttention` masks inside the kernel, so the mask would only cost host time and a 64 MiB copy per
    sample at sequence 8192. Set after construction (before ``setup`` builds the datasets): a subclass would change
    the class that NeMo records in every checkpoint's context.
    """
    if hasattr(data, "create_attention_mask"):
        data.create_attention_mask = False


def forward_step_without_mask(model: Any, batch: dict[str, Any]) -> Any:
    """NeMo's GPT forward step for batches without ``attention_mask`` (:func:`skip_attention_masks`).

    NeMo's own step asserts that Transformer Engine is installed when a batch has no mask; :class:`SDPAttention`
    masks inside the kernel, so the model gets ``attention_mask=None`` instead (seen on an H100: the assertion
    stopped the first step)."""
    return gpt_forward_step(model, batch if "attention_mask" in batch else {**batch, "attention_mask": None})


#: What megatron-core 0.14's ``moe_utils`` imports from TE and, without TE, leaves undefined although its callers test
#: each against None (the router's gating GEMM raises NameError on every forward; seen on a CPU).
MOE_TE_KERNELS = (
    "fused_compute_score_for_moe_aux_loss",
    "fused_moe_aux_loss",
    "fused_permute",
    "fused_permute_with_probs",
    "fused_sort_chunks_by_index",
    "fused_sort_chunks_by_index_with_probs",
    "fused_topk_with_score_function",
    "fused_unpermute",
    "te_general_gemm",
)


def declare_missing_moe_kernels() -> None:
    """Define the TE kernels ``moe_utils`` lacks as None, so that its own non-TE branches run."""
    from megatron.core.transformer.moe import moe_utils

    for name in MOE_TE_KERNELS:
        if not hasattr(moe_utils, name):
            setattr(moe_utils, name, None)


def is_moe(recipe: Any) -> bool:
    return bool(getattr(recipe.model.config, "num_moe_experts", None))


def announcement(recipe: Any) -> str:
    """The log line that says what :func:`use_local_spec` changed in this recipe."""
    line = (
        "nemo: Transformer Engine is not installed: Megatron's local layer spec with SDPA attention "
        "(orchestrator.train.nemo_local_spec), no sequence parallelism, no distributed optimizer without Apex"
    )
    if is_moe(recipe):
        line += (
            "; MoE: SequentialMLP experts (no grouped GEMM), token permutation and router unfused "
            f"({recipe.model.config.moe_token_dispatcher_type} dispatcher and load-balancing loss in PyTorch)"
        )
    return line


def use_local_spec(recipe: Any) -> None:
    """Make a configured NeMo recipe trainable without Transformer Engine (see the module docstring); after
    ``fdl.build``, :func:`skip_attention_masks` on its data module."""
    config = recipe.model.config
    config.transformer_layer_spec = local_layer_spec
    config.forward_step_fn = forward_step_without_mask
    config.apply_rope_fusion = False  # TE's fused RoPE; NeMo refuses to build the config otherwise
    config.gradient_accumulation_fusion = False  # needs TE or Apex kernels
    config.masked_softmax_fusion = False  # Megatron's fused softmax is never reached with SDPAttention
    config.persist_layer_norm = False  # the local spec's norms are torch.nn.RMSNorm/LayerNorm, which refuse these
    if is_moe(recipe):
        # Each needs TE: megatron-core refuses the permutation fusion at config time (ImportError of fused_permute,
        # seen on an H200), and the router fusion's kernels are TE's. Grouped GEMM without TE is the legacy
        # GroupedMLP over the separate grouped_gemm package (source only on PyPI: a CUDA build).
        config.moe_permute_fusion = False
        config.moe_router_fusion = False
        config.moe_grouped_gemm = False
        declare_missing_moe_kernels()
    recipe.trainer.strategy.sequence_parallel = False
    if not have_apex():
        # megatron-core 0.14's distributed optimizer resumes only over TE's or Apex's Adam: over torch's AdamW its
        # state_dict() asserts on optimizer state not created yet (seen on an H100 with this stack, see
        # docs/nemo-backend.md). The plain Megatron optimizer resumes; at DP 1 it holds the same state.
        recipe.optim.config.use_distributed_optimizer = False


#: Fusions NeMo's model configs default to on that megatron-core refuses, or cannot build, without TE.
TE_FUSIONS = ("apply_rope_fusion", "persist_layer_norm", "gradient_accumulation_fusion")


@contextlib.contextmanager
def importing_without_te() -> Iterator[None]:
    """Let NeMo's Hugging Face importers (``llm.import_ckpt``) run without TE, for the duration.

    They assume TE twice: the configuration they make from the checkpoint's ``config.json`` keeps the class defaults
    of :data:`TE_FUSIONS` (megatron-core refuses it), and their weight maps name TE's fused layer norms
    (``self_attention.linear_qkv.layer_norm_weight``), which Megatron's local spec holds as ``input_layernorm``. So every
    Megatron config made meanwhile has those fusions off, and the maps' targets are renamed by megatron-core's own key
    map of the local spec. That map also names the saved tensors, so the checkpoint is written with TE's names, as
    an import with TE writes it, in the configuration's ``params_dtype``.
    """
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig
    from nemo.lightning import io

    te_to_local = {te: local for local, te in get_gpt_layer_local_spec().submodules.sharded_state_dict_keys_map.items()}
    post_init, apply_transforms = TransformerConfig.__post_init__, io.apply_transforms

    def post_init_without_fusions(config: TransformerConfig) -> None:
        for name in TE_FUSIONS:
            setattr(config, name, False)
        post_init(config)

    def apply_to_local_names(source: Any, target: Any, mapping: dict[str, str], *args: Any, **kwargs: Any) -> Any:
        renamed = {}
        for key, value in mapping.items():
            for te, local in te_to_local.items():
                value = value.replace(f".{te}", f".{local}")
            renamed[key] = value
        # The local norms are torch.nn norms, made in float32 whatever params_dtype says; TE's follow it. Cast the
        # model to it, as an import with TE has it (NeMo checks the dtypes did not change, otherwise).
        kwargs.setdefault("cast_dtype", target.config.params_dtype)
        return apply_transforms(source, target, renamed, *args, **kwargs)

    TransformerConfig.__post_init__ = post_init_without_fusions
    io.apply_transforms = apply_to_local_names
    try:
        yield
    finally:
        TransformerConfig.__post_init__ = post_init
        io.apply_transforms = apply_transforms
