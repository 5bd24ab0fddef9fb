"""Every seed model's proxy on one GPU through the rendered train step and ``collect`` (issue 15).

``seeds`` mode: for each of the nine seed models, its own profile (architecture, width, vocabulary, sequence length;
the MoE with all 128 experts at EP 1) with the layers cut to fit one GPU (4; 2 for the 72B models; 1 for 405B),
bf16, global batch 8, micro-batch 1, no checkpoints, ``--steps`` steps: planned against a local cluster profile of
this machine, the train stage rendered, its step script run (``orchestrator.launch`` -> ``orchestrator.train.nemo``),
the log read by ``python -m orchestrator collect``. Per model it prints and writes (``summary.json``, ``table.md``):
tokens/s/GPU by the seeds' rule (the collector's: the mean leaving out the first and last 10 steps), mean step time
over the same steps, MFU (the collector's FLOPs per token: for the MoE the *active* parameters, top-8 of 128
experts), peak GPU memory (``nvidia-smi``'s memory.used, sampled every second: what the process held, allocator
cache included), loss first -> last, exit status, and the error of a model that failed (the next one still runs).

No hub is reachable from the GPU machine, so every model reads the proxy data tokenized with Mixtral's v1
SentencePiece tokenizer (32000 ids, as gpu_proxy.py) while keeping its own vocabulary (128256, 151936, 152064; the
405B profile's own is Mixtral's): the data's ids are a subset, and the model, its logits and the FLOPs counted are
the model's own.

``cpt`` mode (continual pretraining from a real checkpoint, seeds 002/003): a small Llama 3.1 made with
``transformers`` (``small_llama.py``) is trained ``--hf-steps`` steps on Llama-3-tokenized data and saved with Llama
3.1's tokenizer; the plan's import stage (NeMo's ``llm.import_ckpt``) converts it and the train stage continues from
it. Its first step's loss must be the Hugging Face model's (measured on the same data), not a fresh model's
~ln(128256) = 11.76.

``--dry`` runs either mode on this machine's CPU at tiny widths (hidden 64, sequence 64), each step script's trainer
swapped for ``tests/nemo_cpu_trainer.py`` (the same trainer with CUDA calls answered on the CPU), to prove the
plumbing before GPU time is spent. docs/benchmarks.md, "Seed models on one GPU", has the commands.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from gpu_proxy import PEAK_TFLOPS, _stop, collect, job_record, run_job, software  # the issue-6 harness

from orchestrator.atomic import atomic_write_text
from orchestrator.plan import RunPlan, build_plan
from orchestrator.render import render_all, write_scripts
from orchestrator.rundir import RunDir
from orchestrator.stages import stage_spec

REPO = Path(__file__).resolve().parent.parent
CPU_TRAINER = REPO / "tests" / "nemo_cpu_trainer.py"
ON_CPU = REPO / "benchmarks" / "on_cpu.py"
#: The seed models and the layers each keeps on one 141 GB GPU.
LAYERS = {
    "llama3_8b": 4,
    "llama3_70b": 4,
    "qwen3_8b": 4,
    "qwen25_7b": 4,
    "qwen3_30b_a3b": 4,
    "qwen2_72b": 2,
    "qwen25_72b": 2,
    "llama31_8b": 4,
    "llama31_405b": 1,
}
#: --dry: widths a CPU runs in seconds (each model keeps its vocabulary, experts and top-k).
DRY_ARCH = {
    "model.arch.hidden_size": 64,
    "model.arch.ffn_hidden_size": 128,
    "model.arch.num_attention_heads": 4,
    "model.arch.num_query_groups": 2,
}
DRY_SEQ = 64
CLUSTER_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "TOKENIZERS_PARALLELISM": "false",
}


def cluster_profile(path: Path, runs_root: Path, dry: bool) -> Path:
    """One node with this machine's GPU (its name, memory, dense BF16 peak); ``dry``: one CPU declared as a GPU
    (the nemo backend's requirement), which the CPU trainer runs on."""
    profile: dict[str, Any] = {
        "scheduler": "local",
        "gpus_per_node": 1,
        "max_nodes": 1,
        "time_limit": "01:00:00",
        "signal_grace_s": 60,
        "runs_root": str(runs_root),
        "env": CLUSTER_ENV,
    }
    if dry:
        profile.update(description="this machine's CPU standing in for one GPU (dry run)", gpu_memory_gb=141)
    else:
        import torch

        props = torch.cuda.get_device_properties(0)
        profile.update(
            description=f"this machine: 1 x {props.name}, no scheduler",
            gpu_name=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            gpu_peak_tflops=PEAK_TFLOPS,
        )
    atomic_write_text(path, yaml.safe_dump(profile, sort_keys=False))
    return path


def one_gpu(steps: int) -> dict[str, Any]:
    """The layout and schedule every proxy shares: one GPU, GBS 8 of MBS 1, bf16, no checkpoints or validation."""
    return {
        "train.backend": "nemo",
        "train.global_batch_size": 8,
        "train.max_steps": steps,
        "train.optim.warmup_steps": 5,
        "train.save_checkpoints": False,
        "train.val_interval": None,
        "chain.steps_per_job": None,
        "layout.nodes": 1,
        "layout.tasks_per_node": 1,
        "layout.tp": 1,
        "layout.pp": 1,
        "layout.cp": 1,
        "layout.ep": 1,
        "layout.vp": None,
        "layout.sequence_parallel": False,
        "layout.micro_batch_size": 1,
        "layout.recompute": "none",
        "data.source": "preprocessed",
        "data.train_weights": [1.0],
    }


def seed_overrides(model: str, args: argparse.Namespace) -> dict[str, Any]:
    layers = dict(LAYERS, **dict(pair.split("=") for pair in args.layers or []))
    overrides = {
        **one_gpu(args.steps),
        "model.arch.num_layers": int(layers[model]),
        "model.tokenizer.library": "sentencepiece",
        "model.tokenizer.model": str(args.tokenizer.absolute()),
        "model.tokenizer.vocab_size": 32000,
        "data.train_prefixes": [str(Path(args.data).absolute())],
        "data.index_cache_dir": str(args.work.absolute() / "index-cache"),
    }
    if model == "llama31_405b":  # an MLPerf plan: the rules' evaluation schedule (none falls in this run) and data
        del overrides["train.val_interval"], overrides["train.optim.warmup_steps"]  # the rules decide both
        overrides |= {"data.validation_prefixes": [str(Path(args.data).absolute())], "mlperf.allow_new_rcp": True}
    if args.dry:
        overrides |= DRY_ARCH | {"train.seq_length": DRY_SEQ}
        if model.startswith("qwen3"):
            overrides["model.arch.kv_channels"] = 16
        if model == "qwen3_30b_a3b":
            overrides["model.arch.moe_ffn_hidden_size"] = 32
    return overrides


def prepare(
    model: str, overrides: dict[str, Any], run_id: str, cluster: Path, work: Path, stages: tuple[str, ...], dry: bool
) -> RunPlan:
    """Plan, render and write the run directory; ``dry``: the step scripts' trainers are the CPU trainer."""
    run_dir = work.absolute() / "runs" / run_id
    if run_dir.exists():
        shutil.rmtree(run_dir)
    plan = build_plan(model, cluster, overrides, run_id=run_id, run_dir=run_dir)
    rd = RunDir.of(run_dir)
    rd.logs.mkdir(parents=True)
    atomic_write_text(rd.plan, plan.to_json())
    write_scripts(plan, render_all(plan, [stage_spec(plan, stage) for stage in stages]))
    if dry:
        for stage in stages:
            script = rd.script(stage)
            text = script.read_text()
            swapped = text.replace("-m orchestrator.train.nemo ", f"{CPU_TRAINER} ").replace(
                "-m orchestrator.train.nemo_import ", f"{ON_CPU} orchestrator.train.nemo_import "
            )
            assert swapped != text, f"{script}: no trainer command found to run on the CPU"
            script.write_text(swapped)
    return plan


class PeakMemory:
    """Highest ``memory.used`` of GPU 0 by ``nvidia-smi``, sampled every second while the job runs (None on a CPU)."""

    def __init__(self) -> None:
        self.peak_mib: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _sample(self) -> None:
        query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        while not self._stop.wait(1.0):
            out = subprocess.run(query, capture_output=True, text=True).stdout.strip()
            if out.isdigit():
                self.peak_mib = max(self.peak_mib or 0, int(out))


def error_of(log: Path) -> str | None:
    """The last exception line of a failed job's log, with the line before it (Fiddle's context often follows)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    picked = [line for line in lines if "Error" in line or "error:" in line or "Exception" in line]
    return (picked[-1] if picked else (lines[-1] if lines else "no output"))[:600]


def run_stage(plan: RunPlan, stage: str, timeout_s: float) -> dict[str, Any]:
    rd = RunDir.of(plan.run_dir)
    log = rd.logs / f"{stage}-1.out"
    with PeakMemory() as memory:
        rc, seconds = run_job(rd.script(stage), log, timeout_s)
    return {
        "stage": stage,
        "exit": rc,
        "seconds": round(seconds, 1),
        "peak_gpu_memory_gib": None if memory.peak_mib is None else round(memory.peak_mib / 1024, 1),
        "log": str(log),
        "error": None if rc == 0 else error_of(log),
    }


def model_row(model: str, plan: RunPlan, job: dict[str, Any]) -> dict[str, Any]:
    """One table row: the collector's figures over the job's log and what the plan says of the model."""
    log = Path(job["log"])
    metrics = collect(plan, log) if log.exists() else {"error": "no log"}
    record = job_record(log, metrics) if log.exists() else {}
    derived = plan.derived()
    arch = plan.model.arch
    return {
        "model": model,
        "layers": arch.num_layers,
        "hidden": arch.hidden_size,
        "seq": plan.train.seq_length,
        "vocab": arch.vocab_size,
        "experts": arch.num_experts,
        "top_k": arch.moe_top_k,
        "parameters": derived["parameters"],
        "active_parameters": derived["active_parameters"],
        "exit": job["exit"],
        "seconds": job["seconds"],
        "error": job["error"] or metrics.get("error"),
        "tokens_per_s_per_gpu": metrics.get("throughput_tokens_per_sec_per_gpu"),
        "window": metrics.get("throughput_window"),
        "step_time_s": metrics.get("mean_step_time_s"),
        "mfu": metrics.get("mfu"),
        "tflops_per_gpu": metrics.get("model_tflops_per_gpu"),
        "peak_gpu_memory_gib": job["peak_gpu_memory_gib"],
        "first_loss": record.get("first_loss"),
        "last_loss": record.get("last_loss"),
        "steps": record.get("steps"),
    }


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | layers | seq | vocab | params (active) | exit | tokens/s/GPU | step (s) | MFU | TFLOP/s | "
        "peak mem (GiB) | loss first -> last | error |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        params = f"{r['parameters'] / 1e9:.2f}B" + (f" ({r['active_parameters'] / 1e9:.2f}B)" if r["experts"] else "")
        loss = f"{fmt(r['first_loss'], '.2f')} -> {fmt(r['last_loss'], '.2f')}"
        lines.append(
            f"| {r['model']} | {r['layers']} | {r['seq']} | {r['vocab']} | {params} | {r['exit']} | "
            f"{fmt(r['tokens_per_s_per_gpu'], ',.0f')} | {fmt(r['step_time_s'], '.3f')} | {fmt(r['mfu'], '.3f')} | "
            f"{fmt(r['tflops_per_gpu'], '.0f')} | {fmt(r['peak_gpu_memory_gib'], '.1f')} | {loss} | "
            f"{(r['error'] or '').replace('|', '/')[:160]} |"
        )
    return head + "\n".join(lines) + "\n"


def seeds(args: argparse.Namespace, cluster: Path, summary: dict[str, Any]) -> bool:
    deadline = time.monotonic() + args.budget
    for model in args.models or list(LAYERS):
        left = deadline - time.monotonic()
        if left < args.min_model_s:
            summary["rows"].append({"model": model, "skipped": f"{left:.0f} s of the budget left"})
            print(f"{model}: skipped, {left:.0f} s of the budget left", flush=True)
            continue
        overrides = {**seed_overrides(model, args), "stages": ["train"]}  # the trainer builds the small index itself
        plan = prepare(model, overrides, f"seed-{model}", cluster, args.work, ("train",), args.dry)
        row = model_row(model, plan, run_stage(plan, "train", min(args.job_timeout, left)))
        summary["rows"].append(row)
        publish(args, summary)
        print(
            f"{model}: exit {row['exit']} in {row['seconds']:.0f} s, "
            f"tokens/s/GPU {fmt(row['tokens_per_s_per_gpu'], ',.0f')}, step {fmt(row['step_time_s'], '.3f')} s, "
            f"MFU {fmt(row['mfu'], '.3f')}, peak {fmt(row['peak_gpu_memory_gib'], '.1f')} GiB, "
            f"loss {fmt(row['first_loss'], '.2f')} -> {fmt(row['last_loss'], '.2f')}"
            + (f", error: {row['error']}" if row["error"] else ""),
            flush=True,
        )
    rows = [r for r in summary["rows"] if "skipped" not in r]
    return all(r["exit"] == 0 for r in rows)


def cpt(args: argparse.Namespace, cluster: Path, summary: dict[str, Any]) -> bool:
    """Train a small Hugging Face Llama 3.1, import it through the import stage, continue with the train stage."""
    import small_llama
    import torch

    device = "cpu" if args.dry else "cuda"
    seq = DRY_SEQ if args.dry else args.cpt_seq
    hf = small_llama.build(seed=1)
    data = small_llama.batches(str(args.cpt_data), seq, 8, seed=1)
    start = time.monotonic()
    hf_losses = small_llama.pretrain(hf, data, args.hf_steps, device)
    hf_loss = small_llama.mean_loss(hf, small_llama.batches(str(args.cpt_data), seq, 8, seed=2), 4, device)
    source = small_llama.save(hf.to("cpu"), args.cpt_tokenizer, args.work.absolute() / "Llama-3.1-small")
    summary["hf"] = {
        "steps": args.hf_steps,
        "first_loss": hf_losses[0],
        "last_loss": hf_losses[-1],
        "eval_loss": hf_loss,
        "seconds": round(time.monotonic() - start, 1),
        "device": device,
    }
    print(
        f"Hugging Face model: {args.hf_steps} steps, loss {hf_losses[0]:.2f} -> {hf_losses[-1]:.2f}, "
        f"evaluated {hf_loss:.3f}",
        flush=True,
    )
    del hf
    if device == "cuda":
        torch.cuda.empty_cache()
    overrides = {
        **one_gpu(args.cpt_steps),
        **small_llama.PLAN_ARCH,
        "train.seq_length": seq,
        "train.hf_model_id": str(source),
        "model.tokenizer.library": "huggingface",
        "model.tokenizer.model": str(source),
        "model.tokenizer.vocab_size": 128256,
        "train.optim.lr": 3e-5,
        "train.optim.min_lr": 3e-6,
        "train.optim.warmup_steps": 2,
        "data.train_prefixes": [str(Path(args.cpt_data).absolute())],
        "data.index_cache_dir": str(args.work.absolute() / "index-cache"),
    }
    overrides["stages"] = ["import", "train"]  # the trainer builds the small index itself
    plan = prepare("llama31_8b", overrides, "cpt-llama31-small", cluster, args.work, ("import", "train"), args.dry)
    imported = run_stage(plan, "import", args.job_timeout)
    summary["import"] = imported
    failure = f", error: {imported['error']}" if imported["error"] else ""
    print(f"import: exit {imported['exit']} in {imported['seconds']:.0f} s{failure}", flush=True)
    if imported["exit"] != 0:
        return False
    row = model_row("llama31_8b (cpt, small)", plan, run_stage(plan, "train", args.job_timeout))
    fresh = math.log(128256)
    first = row["first_loss"]
    row["restored"] = first is not None and abs(first - hf_loss) < 0.5 and first < fresh - 1.0
    summary["rows"].append(row)
    print(
        f"train from the import: exit {row['exit']}, loss {fmt(first, '.3f')} -> {fmt(row['last_loss'], '.3f')} "
        f"(Hugging Face model {hf_loss:.3f}, a fresh model ~{fresh:.2f}): "
        + ("the imported weights were trained from" if row["restored"] else "NOT the imported model's loss"),
        flush=True,
    )
    return row["exit"] == 0 and row["restored"]


def publish(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    atomic_write_text(args.work / "summary.json", json.dumps(summary, indent=2, default=str))
    atomic_write_text(args.work / "table.md", table([r for r in summary["rows"] if "skipped" not in r]))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "table.md"):
            shutil.copy(args.work / name, args.out / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["seeds", "cpt"])
    parser.add_argument("--work", type=Path, required=True, help="runs, cluster profile, index cache, summary")
    parser.add_argument("--out", type=Path, help="also copy summary.json and table.md here")
    parser.add_argument("--dry", action="store_true", help="this machine's CPU, tiny widths (proves the plumbing)")
    parser.add_argument("--data", help="seeds: Megatron prefix tokenized with --tokenizer")
    parser.add_argument("--tokenizer", type=Path, help="seeds: Mixtral's tokenizer.model.v1 (32000 ids)")
    parser.add_argument("--models", nargs="+", choices=list(LAYERS), help="seeds: these only (default: all nine)")
    parser.add_argument("--layers", nargs="+", metavar="MODEL=N", help="seeds: another layer count for a model")
    parser.add_argument(
        "--steps", type=int, default=24, help="seeds: steps per model (the rule's window: steps 10..steps-11)"
    )
    parser.add_argument(
        "--budget", type=float, default=540, help="seeds: seconds for all models; later ones are skipped"
    )
    parser.add_argument("--min-model-s", type=float, default=60, help="seeds: do not start a model with less left")
    parser.add_argument("--cpt-data", type=Path, help="cpt: Megatron prefix tokenized with Llama 3's tokenizer")
    parser.add_argument(
        "--cpt-tokenizer", type=Path, help="cpt: the llama-models:llama3.1 folder (packaged_tokenizers)"
    )
    parser.add_argument("--hf-steps", type=int, default=150, help="cpt: steps the Hugging Face model trains first")
    parser.add_argument("--cpt-steps", type=int, default=30, help="cpt: steps NeMo trains from the import")
    parser.add_argument("--cpt-seq", type=int, default=2048, help="cpt: sequence length (GPU)")
    parser.add_argument("--job-timeout", type=float, default=300.0, help="seconds before one job is stopped")
    args = parser.parse_args(argv)
    signal_stop()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        str(Path(p).absolute()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p
    )
    cluster = cluster_profile(args.work / "cluster.yaml", args.work / "runs", args.dry)
    summary: dict[str, Any] = {
        "mode": args.mode,
        "dry": args.dry,
        "software": software(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": [],
    }
    print(json.dumps(summary["software"]), flush=True)
    ok = seeds(args, cluster, summary) if args.mode == "seeds" else cpt(args, cluster, summary)
    publish(args, summary)
    print(table([r for r in summary["rows"] if "skipped" not in r]), flush=True)
    return 0 if ok else 1


def signal_stop() -> None:
    import signal

    signal.signal(signal.SIGTERM, _stop)  # unwind through run_job's cleanup


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
