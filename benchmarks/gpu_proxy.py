"""A proxy of Llama 3 8B on this machine's GPUs, trained through the train stage's rendered command (issue 6).

For each backend: build the plan (``llama3_8b`` with fewer layers, sequence 8192, MBS 1, on a preprocessed Megatron
prefix) against a local cluster profile written for this machine, render the train stage, and run its step
(``bash <run>/scripts/train.sbatch``: ``orchestrator.launch`` starting one task per GPU, as on one node without
sbatch) job after job until the trainer writes ``DONE``. With ``chain.steps_per_job`` below ``max_steps`` the first
job saves and stops and the next one resumes from its checkpoint. Each job's output is ``<run>/logs/train-<n>.out``,
so ``python -m orchestrator collect <run>`` applies the seeds' rules (tokens/s/GPU: the mean leaving out the first
and last 10 steps) and MFU against the profile's peak (989 TFLOP/s, dense BF16).

    PYTHONPATH=. python3 benchmarks/gpu_proxy.py --data DIR/c4-train.en_0_text_document \\
        --tokenizer DIR/tokenizer.model.v1 --work /tmp/proxy --gpus 1 --backend nemo --backend reference

Prints one summary line per run and writes ``<work>/summary.json`` (and copies it to ``--out``).
docs/benchmarks.md, "NeMo backend on a GPU (issue 6)", has the commands, the machine and the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from orchestrator.atomic import atomic_write_text
from orchestrator.collect.flops import architecture_flops_per_token
from orchestrator.plan import RunPlan, build_plan
from orchestrator.render import render_all, write_scripts
from orchestrator.rundir import RunDir
from orchestrator.stages import TRAIN, stage_spec

#: H100 SXM / H200 SXM dense BF16 peak, TFLOP/s (NVIDIA datasheets; the issue's MFU denominator).
PEAK_TFLOPS = 989
#: NVLink multicast stays off on shared hosts (the device notes); NeMo's profile default for the allocator.
CLUSTER_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "TOKENIZERS_PARALLELISM": "false",
}
RESUME = re.compile(r"resum|Restoring states|restored", re.IGNORECASE)


def cluster_profile(path: Path, gpus: int, runs_root: Path) -> Path:
    """A local (no Slurm) cluster profile for this machine: its GPU's name and memory, the dense BF16 peak.
    Without CUDA (a dry run of this script on a CPU machine) ``gpus`` CPU tasks instead."""
    import torch

    profile: dict[str, Any] = {"scheduler": "local"}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        profile.update(
            description=f"this machine: {gpus} x {props.name}, no scheduler",
            gpus_per_node=gpus,
            gpu_name=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            gpu_peak_tflops=PEAK_TFLOPS,
        )
    else:
        profile.update(
            description=f"this machine: {gpus} CPU tasks (no CUDA)", gpus_per_node=0, cpu_tasks_per_node=gpus
        )
    profile.update(
        {
            "max_nodes": 1,
            "time_limit": "01:00:00",
            "signal_grace_s": 60,
            "runs_root": str(runs_root),
            "env": CLUSTER_ENV,
        }
    )
    atomic_write_text(path, yaml.safe_dump(profile, sort_keys=False))
    return path


def proxy_overrides(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    """``llama3_8b`` at full width with ``--layers`` layers, on one node of ``--gpus`` GPUs (data parallel)."""
    return {
        "train.backend": backend,
        "model.arch.num_layers": args.layers,
        "model.arch.vocab_size": args.vocab,
        "model.tokenizer.library": "sentencepiece",
        "model.tokenizer.model": str(Path(args.tokenizer).absolute()),
        "model.tokenizer.vocab_size": 32000,
        "train.seq_length": args.seq,
        "train.global_batch_size": args.gbs,
        "train.max_steps": args.steps if backend == "nemo" else args.reference_steps,
        "train.optim.warmup_steps": 10,
        # NeMo: stop, checkpoint and resume (the proof); the reference: one job, throughput only
        "train.save_checkpoints": backend == "nemo",
        "chain.steps_per_job": (args.steps_per_job or None) if backend == "nemo" else None,
        "layout.nodes": 1,
        "layout.tasks_per_node": args.gpus,
        "layout.tp": 1,
        "layout.cp": 1,
        "layout.micro_batch_size": args.micro_batch,
        "data.source": "preprocessed",
        "data.train_prefixes": [str(Path(args.data).absolute())],
        "data.train_weights": [1.0],
        "data.index_cache_dir": str(Path(args.work).absolute() / "index-cache"),
        # one GPU, a small index: the trainer builds it on rank 0 (no index stage, whose NeMo start costs GPU time)
        "stages": [TRAIN],
    }


def prepare(args: argparse.Namespace, backend: str, cluster: Path) -> RunPlan:
    """Plan, render and write the run directory (plan.json, scripts/train.sbatch, logs/)."""
    run_id = (
        f"proxy-{backend}-{args.gpus}gpu"
        + (f"-vocab{args.vocab}" if args.vocab != 32000 else "")
        + (f"-mbs{args.micro_batch}" if args.micro_batch != 1 else "")
    )
    run_dir = Path(args.work).absolute() / "runs" / run_id
    if run_dir.exists():
        shutil.rmtree(run_dir)
    plan = build_plan("llama3_8b", cluster, proxy_overrides(args, backend), run_id=run_id, run_dir=run_dir)
    rd = RunDir.of(run_dir)
    rd.logs.mkdir(parents=True)
    atomic_write_text(rd.plan, plan.to_json())
    write_scripts(plan, render_all(plan, [stage_spec(plan, TRAIN)]))
    return plan


def run_job(script: Path, log: Path, timeout_s: float) -> tuple[int, float]:
    """Run the rendered step once; its output goes to ``log``. Returns (exit status, seconds); 124 on timeout.

    The step runs in its own session; if it outlives its time, or this script is stopped (``timeout``'s SIGTERM),
    the whole session gets SIGTERM (the trainers save and stop on it), then SIGKILL, so no task keeps the GPUs."""
    start = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", str(script)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = 124
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    return rc, time.monotonic() - start


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def job_record(log: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """One job's steps, as the collector read them from ``log`` (the first with its loss, the last with the final
    loss), and the log's resume lines."""
    resumed = [line.strip()[:300] for line in log.read_text(errors="replace").splitlines() if RESUME.search(line)][:4]
    steps = metrics.get("steps") or []
    if not steps:
        return {"steps": 0, "resume_lines": resumed}
    return {
        "steps": metrics["num_steps"],
        "first_step": metrics["first_step"],
        "first_loss": steps[0].get("reduced_train_loss"),
        "last_step": metrics["final_step"],
        "last_loss": metrics["final_loss"],
        "resume_lines": resumed,
    }


def collect(plan: RunPlan, log: Path | None = None) -> dict[str, Any]:
    """``python -m orchestrator collect RUN --json`` (the project's collector), parsed, its per-step records included;
    with ``log``, that one job's log alone, with the plan's FLOPs per token and peak."""
    command = [sys.executable, "-m", "orchestrator", "collect", "--json", "--no-plots"]
    if log is None:
        command.append(plan.run_dir)
    else:
        flops = architecture_flops_per_token(plan.model.arch, plan.train.seq_length)
        command += [
            "--log",
            str(log),
            "--model",
            plan.model.name,
            "--flops-per-token",
            str(flops),
            "--peak-tflops",
            str(plan.cluster.gpu_peak_tflops or PEAK_TFLOPS),
        ]
    proc = subprocess.run(command, capture_output=True, text=True)
    try:
        body = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"error": f"collect exited {proc.returncode}: {proc.stderr[-2000:]}"}
    return body


def train(args: argparse.Namespace, backend: str, cluster: Path) -> dict[str, Any]:
    plan = prepare(args, backend, cluster)
    rd = RunDir.of(plan.run_dir)
    jobs = []
    for n in range(1, args.max_jobs + 1):
        log = rd.logs / f"train-{n}.out"
        rc, seconds = run_job(rd.script("train"), log, args.job_timeout)
        ckpts = (
            sorted(p.name for p in Path(plan.train.ckpt_dir).glob("*")) if Path(plan.train.ckpt_dir).is_dir() else []
        )
        metrics = collect(plan, log)
        jobs.append(
            {
                "job": n,
                "exit": rc,
                "seconds": round(seconds, 1),
                **job_record(log, metrics),
                "checkpoints": ckpts,
                "metrics": _headline(metrics),
            }
        )
        print(f"{plan.run_id} job {n}: exit {rc} after {seconds:.0f} s, {jobs[-1]['steps']} steps", flush=True)
        if rc != 0 or rd.done() is not None:
            break
    result = {
        "run": plan.run_id,
        "backend": backend,
        "gpus": args.gpus,
        "derived": plan.derived(),
        "jobs": jobs,
        "done": rd.done(),
        "metrics": {k: v for k, v in collect(plan).items() if k != "steps"},
    }
    if (
        not args.keep_checkpoints
    ):  # ~14 bytes a parameter: four or five runs filled a lent machine's disk (seen: a failed save)
        shutil.rmtree(plan.train.ckpt_dir, ignore_errors=True)
    return result


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "throughput_tokens_per_sec_per_gpu",
        "throughput_window",
        "mean_step_time_s",
        "model_tflops_per_gpu",
        "mfu",
        "final_loss",
        "notes",
        "error",
    )
    return {k: metrics[k] for k in keys if k in metrics}


def software() -> dict[str, Any]:
    """Versions that decide the figures: driver, CUDA, torch, and the NeMo stack as imported here."""
    import importlib.metadata as md

    import torch

    versions: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    for name in (
        "nemo_toolkit",
        "megatron_core",
        "nemo_run",
        "lightning",
        "transformers",
        "numpy",
        "transformer_engine",
    ):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit"
        versions["nvidia_smi"] = (
            subprocess.run([smi, query, "--format=csv,noheader"], capture_output=True, text=True)
            .stdout.strip()
            .splitlines()
        )
    return versions


def summary_line(result: dict[str, Any]) -> str:
    m = result["metrics"]
    if "error" in m:
        return f"{result['run']}: no metrics ({m['error'][:200]})"
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    return (
        f"{result['run']}: tokens/s/GPU {fmt(m.get('throughput_tokens_per_sec_per_gpu'), ',.0f')}, step {fmt(m.get('mean_step_time_s'), '.3f')} s, "
        f"MFU {fmt(m.get('mfu'), '.3f')}, TFLOP/s/GPU {fmt(m.get('model_tflops_per_gpu'), '.0f')}, "
        f"steps {m.get('first_step')}..{m.get('final_step')}, final loss {m.get('final_loss')}, jobs "
        + ", ".join(f"{j['exit']}:{j.get('first_step', '-')}-{j.get('last_step', '-')}" for j in result["jobs"])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", required=True, help="Megatron prefix (without .bin/.idx) made by `orchestrator preprocess`"
    )
    parser.add_argument(
        "--tokenizer", required=True, help="the SentencePiece model that made --data (tokenizer.model.v1)"
    )
    parser.add_argument("--work", type=Path, required=True, help="runs, cluster profile and index cache go here")
    parser.add_argument("--out", type=Path, help="also copy summary.json here")
    parser.add_argument("--backend", action="append", choices=["nemo", "reference"], help="repeat for several")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs of this machine to use (data parallel)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000, help="model vocabulary (the data's tokenizer has 32000)")
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--gbs", type=int, default=8, help="global batch (sequences per step)")
    parser.add_argument("--micro-batch", type=int, default=1, help="sequences per forward pass")
    parser.add_argument("--steps", type=int, default=70, help="nemo: max_steps of the run")
    parser.add_argument("--reference-steps", type=int, default=40, help="reference: max_steps of its one job")
    parser.add_argument(
        "--steps-per-job", type=int, default=40, help="nemo: stop and resume after this many steps (0: never)"
    )
    parser.add_argument("--max-jobs", type=int, default=3)
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoints once collected")
    parser.add_argument("--job-timeout", type=float, default=420.0, help="seconds before a job is stopped")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)  # unwind through run_job's cleanup
    args.work.mkdir(parents=True, exist_ok=True)
    # The jobs run from wherever this runs: a relative PYTHONPATH (``PYTHONPATH=.``) must still find the package.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        str(Path(p).absolute()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p
    )
    cluster = cluster_profile(args.work / "cluster.yaml", args.gpus, args.work / "runs")
    summary: dict[str, Any] = {"software": software(), "args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    print(json.dumps(summary["software"]), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for backend in args.backend or ["nemo"]:
        summary["runs"].append(train(args, backend, cluster))
        atomic_write_text(args.work / "summary.json", json.dumps(summary, indent=2, default=str))
        if args.out:
            shutil.copy(args.work / "summary.json", args.out / "summary.json")
    for result in summary["runs"]:
        print(summary_line(result), flush=True)
    return 0 if all(r["done"] for r in summary["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
