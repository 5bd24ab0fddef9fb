"""The import stage on a real Hugging Face checkpoint: NeMo's own ``llm.import_ckpt`` converts a Llama 3.1 made with
``transformers``, and every weight arrives unchanged, in NeMo's fused layout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nemo_stack import llm  # noqa: F401 - first: a missing stack fails this test with the fix

from orchestrator.data.packaged_tokenizers import materialise
from orchestrator.plan import build_plan
from orchestrator.train.nemo_checkpoint import init_checkpoint

pytestmark = pytest.mark.nemo
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import small_llama  # noqa: E402

#: Runs ``python -m orchestrator.train.nemo_import`` with the CUDA stand-ins a CPU needs (Megatron's checkpoint
#: writer synchronises CUDA after copying tensors to the host).
ON_CPU = REPO / "benchmarks" / "on_cpu.py"


def fused_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int) -> torch.Tensor:
    """Megatron's QKV rows: per query group, its query heads, then its key head, then its value head."""
    q, k, v = (t.reshape(groups, -1, t.shape[-1]) for t in (q, k, v))
    return torch.cat([q, k, v], dim=1).reshape(-1, q.shape[-1])


def test_a_real_llama_checkpoint_imports_tensor_for_tensor(tmp_path: Path) -> None:
    tokenizer = materialise("llama-models:llama3.1", tmp_path / "tokenizers")
    hf = small_llama.build(seed=3)
    source = small_llama.save(hf, tokenizer, tmp_path / "Llama-3.1-small")
    plan = build_plan(
        "llama31_8b",
        "h100-pyxis",
        {
            "data.source": "preprocessed",
            "data.train_prefixes": ["/d/a"],
            "train.hf_model_id": str(source),
            "model.tokenizer.model": str(source),
            "layout.tp": 1,
            "layout.nodes": 1,
            "layout.tasks_per_node": 1,
            "train.global_batch_size": 8,
            **small_llama.PLAN_ARCH,
        },
        run_dir=tmp_path / "run",
    )
    assert plan.stages == ("index", "import", "train")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "plan.json").write_text(plan.to_json())
    command = [sys.executable, str(ON_CPU), "orchestrator.train.nemo_import", "--run-dir", str(tmp_path / "run")]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1"),
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    imported = Path(init_checkpoint(plan))
    assert "Llama31Config" in (imported / "context" / "model.yaml").read_text()  # Llama 3.1's RoPE scaling kept

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(imported / "weights", tmp_path / "weights.pt")
    nemo = {
        k.removeprefix("module."): v for k, v in torch.load(tmp_path / "weights.pt").items() if "_extra_state" not in k
    }
    want = hf.state_dict()
    expected = {
        "embedding.word_embeddings.weight": want["model.embed_tokens.weight"],
        "output_layer.weight": want["lm_head.weight"],
        "decoder.final_layernorm.weight": want["model.norm.weight"],
    }
    per_layer = {
        "self_attention.linear_qkv.layer_norm_weight": [],
        "self_attention.linear_qkv.weight": [],
        "self_attention.linear_proj.weight": [],
        "mlp.linear_fc1.layer_norm_weight": [],
        "mlp.linear_fc1.weight": [],
        "mlp.linear_fc2.weight": [],
    }
    for i in range(2):
        layer = lambda name, i=i: want[f"model.layers.{i}.{name}.weight"]  # noqa: E731
        per_layer["self_attention.linear_qkv.layer_norm_weight"].append(layer("input_layernorm"))
        per_layer["self_attention.linear_qkv.weight"].append(
            fused_qkv(layer("self_attn.q_proj"), layer("self_attn.k_proj"), layer("self_attn.v_proj"), groups=2)
        )
        per_layer["self_attention.linear_proj.weight"].append(layer("self_attn.o_proj"))
        per_layer["mlp.linear_fc1.layer_norm_weight"].append(layer("post_attention_layernorm"))
        per_layer["mlp.linear_fc1.weight"].append(torch.cat([layer("mlp.gate_proj"), layer("mlp.up_proj")]))
        per_layer["mlp.linear_fc2.weight"].append(layer("mlp.down_proj"))
    expected |= {f"decoder.layers.{name}": torch.stack(tensors) for name, tensors in per_layer.items()}
    assert sorted(nemo) == sorted(expected)  # TE's names, as an import inside NeMo's container writes them
    for name, tensor in expected.items():
        assert nemo[name].dtype == torch.bfloat16 and torch.equal(nemo[name], tensor), name
