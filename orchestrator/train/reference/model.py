"""A Llama-style decoder in plain PyTorch, shaped exactly by ``plan.model.arch``.

Pre-norm blocks of RMSNorm -> grouped-query attention with rotary embeddings -> residual, RMSNorm -> SwiGLU MLP
-> residual; a final RMSNorm and an output layer (untied unless ``tie_embeddings``). The family switches are the ones
Megatron's configs carry: ``qkv_bias`` (Qwen2), ``qk_layernorm`` (Qwen3: RMSNorm over each head's query and key,
before the rotation) and ``llama31_rope_scaling`` (Llama 3.1's frequency scaling, factor 8 over 8192 positions).
Rotary embeddings rotate the two halves of each head (Megatron's and Hugging Face's non-interleaved form).
Attention is ``scaled_dot_product_attention(is_causal=True)``, flash attention on a GPU.

Initialisation follows Megatron: normal(0, 0.02) for every matrix, scaled by ``1/sqrt(2 * num_layers)`` for the two
projections that write into the residual stream, zero biases, unit norm weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.profiles import Architecture

INIT_STD = 0.02


def rope_frequencies(arch: Architecture) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding, one per pair of channels (fp32)."""
    dim = arch.head_dim
    inv_freq = 1.0 / (arch.rotary_base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if arch.llama31_rope_scaling:
        inv_freq = _llama31_scaling(inv_freq)
    return inv_freq.float()


def _llama31_scaling(
    inv_freq: torch.Tensor,
    factor: float = 8.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_context: int = 8192,
) -> torch.Tensor:
    """Llama 3.1: long wavelengths slowed by ``factor``, short ones kept, a smooth blend in between."""
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = original_context / low_freq_factor
    high_freq_wavelen = original_context / high_freq_factor
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(medium, blended, scaled)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` (batch, heads, seq, head_dim), computed in fp32."""
    half = x.shape[-1] // 2
    x32 = x.float()
    x1, x2 = x32[..., :half], x32[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x32 * cos + rotated * sin).type_as(x)


class Attention(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.num_heads = arch.num_attention_heads
        self.num_groups = arch.num_query_groups
        self.head_dim = arch.head_dim
        h, d = arch.hidden_size, arch.head_dim
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=arch.qkv_bias)
        self.k_proj = nn.Linear(h, self.num_groups * d, bias=arch.qkv_bias)
        self.v_proj = nn.Linear(h, self.num_groups * d, bias=arch.qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=False)
        self.q_norm = nn.RMSNorm(d, eps=arch.norm_eps) if arch.qk_layernorm else None
        self.k_norm = nn.RMSNorm(d, eps=arch.norm_eps) if arch.qk_layernorm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(batch, seq, self.num_groups, self.head_dim)
        v = self.v_proj(x).view(batch, seq, self.num_groups, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.num_groups != self.num_heads)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim))


class FeedForward(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(arch.hidden_size, arch.ffn_hidden_size, bias=False)
        self.up_proj = nn.Linear(arch.hidden_size, arch.ffn_hidden_size, bias=False)
        self.down_proj = nn.Linear(arch.ffn_hidden_size, arch.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(arch.hidden_size, eps=arch.norm_eps)
        self.attention = Attention(arch)
        self.mlp_norm = nn.RMSNorm(arch.hidden_size, eps=arch.norm_eps)
        self.mlp = FeedForward(arch)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, arch: Architecture, max_seq_length: int) -> None:
        super().__init__()
        if arch.is_moe:
            raise ValueError(
                f"model.arch.num_experts={arch.num_experts}: the reference backend trains dense models only; "
                "use the nemo backend for MoE profiles (--set train.backend=nemo)"
            )
        self.arch = arch
        self.embed = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.layers = nn.ModuleList(Block(arch) for _ in range(arch.num_layers))
        self.norm = nn.RMSNorm(arch.hidden_size, eps=arch.norm_eps)
        self.output = None if arch.tie_embeddings else nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)
        angles = torch.outer(torch.arange(max_seq_length, dtype=torch.float32), rope_frequencies(arch))
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        residual_std = INIT_STD / math.sqrt(2 * self.arch.num_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if name.endswith(("o_proj", "down_proj")) else INIT_STD
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, seq, vocab) for token ids (batch, seq); with ``labels``, the mean token cross-entropy
        in fp32 instead (the loss goes through ``forward`` so DistributedDataParallel sees it)."""
        seq = tokens.shape[1]
        if seq > self.cos.shape[0]:
            raise ValueError(f"sequence of {seq} tokens, the model was built for at most {self.cos.shape[0]}")
        cos, sin = self.cos[:seq], self.sin[:seq]
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        x = self.norm(x)
        logits = F.linear(x, self.embed.weight if self.output is None else self.output.weight)
        if labels is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
