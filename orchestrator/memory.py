"""Per-GPU memory estimate of a Megatron-style training layout, to refuse plans that cannot fit before they queue.

An estimate, not a measurement: it counts the large terms and adds a fixed allowance for the CUDA context, NCCL
buffers and fragmentation. Terms, all in bytes per GPU:

- weights: bf16 (2 B/param) of the parameters this rank holds: transformer layers / (TP x PP), experts also / EP,
  embedding and output layer / TP (first and last stage; counted once, on the fuller stage).
- gradients: the contiguous grad buffer, fp32 (4 B/param) with ``grad_reduce_in_fp32``, else bf16.
- optimizer: fp32 master weights + Adam's two moments = 12 B/param, sharded over DP x CP by the distributed
  optimizer.
- activations: per layer and token, with flash attention (no s^2 term) and SwiGLU,
  ``12h + 4*kv*d + 6f`` bytes: the inputs and outputs of both norms, Q, K and V, the attention output, the gate
  and up projections and the SwiGLU output (Korthikanti et al. 2022, adapted to GQA and SwiGLU), divided by TP
  when sequence parallel, tokens divided by CP. Full recompute keeps only each layer's input (2h bytes/token)
  plus one layer's working set. The first pipeline stage holds ``PP`` micro-batches in flight under 1F1B, and
  interleaving with VP virtual stages holds ``PP + (PP-1)/VP`` (Narayanan et al. 2021), each over its share of
  the layers.
- logits: fp32 ``vocab / TP`` per token on the last stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.profiles import Architecture, Parallelism

GIB = 1024**3
#: CUDA context, NCCL buffers, allocator fragmentation: a fixed allowance plus a fraction of the rest.
GPU_OVERHEAD_BYTES = 3 * GIB
#: A CPU task's Python and PyTorch runtime.
CPU_OVERHEAD_BYTES = GIB // 2
FRAGMENTATION = 0.10


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.overhead

    def as_gib(self) -> dict[str, float]:
        parts = dict(
            weights=self.weights,
            gradients=self.gradients,
            optimizer=self.optimizer,
            activations=self.activations,
            logits=self.logits,
            overhead=self.overhead,
            total=self.total,
        )
        return {k: round(v / GIB, 2) for k, v in parts.items()}

    def describe(self) -> str:
        g = self.as_gib()
        return ", ".join(f"{k} {v:.1f}" for k, v in g.items() if k != "total") + f" (GiB), total {g['total']:.1f} GiB"


def params_per_rank(arch: Architecture, par: Parallelism) -> float:
    """Parameters held by the fullest rank (a first or last pipeline stage carries an embedding)."""
    h = arch.hidden_size
    dense_layer = arch.layer_params() if not arch.is_moe else arch.layer_params() - _expert_params(arch)
    expert_layer = _expert_params(arch)
    layers_per_stage = arch.num_layers / par.pp
    per_layer = dense_layer / par.tp + expert_layer / (par.ep * par.etp)
    embedding = arch.vocab_size * h / par.tp  # input embedding on stage 0; output layer on the last stage
    if par.pp == 1:
        embedding *= 1 if arch.tie_embeddings else 2
    return layers_per_stage * per_layer + embedding


def _expert_params(arch: Architecture) -> int:
    if not arch.is_moe:
        return 0
    return (arch.num_experts or 0) * 3 * arch.hidden_size * (arch.moe_ffn_hidden_size or arch.ffn_hidden_size)


def estimate(
    arch: Architecture,
    par: Parallelism,
    *,
    seq_length: int,
    data_parallel: int,
    num_microbatches: int,
    bytes_per_param: int = 2,
    fixed_overhead: float = GPU_OVERHEAD_BYTES,
) -> MemoryEstimate:
    """Bytes per GPU for one training step of this layout (see the module docstring for the terms)."""
    params = params_per_rank(arch, par)
    weights = params * bytes_per_param
    gradients = params * (4 if par.grad_reduce_in_fp32 else bytes_per_param)
    optimizer = params * 12 / (data_parallel * par.cp if par.distributed_optimizer else 1)

    h, d, f = arch.hidden_size, arch.head_dim, arch.moe_ffn_hidden_size or arch.ffn_hidden_size
    if arch.is_moe:
        f = f * (arch.moe_top_k or 1)
    tokens = seq_length / par.cp * par.micro_batch_size
    shard = par.tp if par.sequence_parallel else 1
    per_layer_token = (12 * h + 4 * arch.num_query_groups * d + 6 * f) / shard
    layers_per_stage = arch.num_layers / par.pp
    in_flight = min(par.pp, num_microbatches)
    if par.vp and par.pp > 1:
        in_flight += (par.pp - 1) / par.vp
    if par.recompute == "full":
        stored = 2 * h / shard * layers_per_stage * in_flight * tokens
        activations = stored + per_layer_token * tokens
    else:
        factor = 0.85 if par.recompute == "selective" else 1.0
        activations = factor * per_layer_token * tokens * layers_per_stage * in_flight
    logits = 4 * arch.vocab_size / par.tp * tokens
    subtotal = weights + gradients + optimizer + activations + logits
    overhead = fixed_overhead + FRAGMENTATION * subtotal
    return MemoryEstimate(weights, gradients, optimizer, activations, logits, overhead)
