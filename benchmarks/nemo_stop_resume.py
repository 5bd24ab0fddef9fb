"""The nemo trainer's stop/resume contract on one GPU, end to end.

A small Llama 3.1 (4 layers, hidden 1024, 300 steps of 32 x 2048 tokens on synthetic Megatron data) goes through
``python -m orchestrator.train.nemo`` five times in one run directory:

    a  chain.steps_per_job=50        -> exit 0 at step 50, no DONE (the step quota)
    b  SIGUSR2 after step 80's line  -> exit 0 one step later, no DONE (the driver's signal)
    c  ORCHESTRATOR_DEADLINE passed  -> exit 0 after one step, no DONE (the deadline)
    d  no limit                      -> exit 0 at step 300, DONE written
    e  again                         -> exit 0 at once (already done)

and checks the exit codes, ``latest_step`` after each job, the seeds' log line, the data position and the
validation cadence across resumes. It prints one line per job and exits 1 if an expectation fails.

    python benchmarks/nemo_stop_resume.py --work /tmp/nemo-check                      # in the nemo:25.09 container
    python benchmarks/nemo_stop_resume.py --work /tmp/nemo-check --outside-container  # torch + NeMo wheels only

``--outside-container`` adapts to an image without Transformer Engine and apex and with numpy 2: RoPE fusion, the
persistent LayerNorm and the fused masked softmax are off, megatron-core's distributed optimizer (which resumes only
with TE's or apex's Adam) is replaced by the plain one, and ``numpy.product`` (gone in numpy 2, called by
megatron-core 0.14's checkpoint validation) is aliased. Seen on one H100 that way: all five jobs as expected (when
a saved stop still exited 75; it exits 0 since, as the driver requires).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STEP = re.compile(r"global_step: (\d+)")
MAX_STEPS, VAL_INTERVAL = 300, 50


def make_data(work: Path) -> None:
    """Arithmetic token sequences (learnable: the loss falls from ~10.6 towards 0) as Megatron .bin/.idx."""
    from orchestrator.data.indexed import IndexedDatasetWriter

    rng = np.random.default_rng(0)
    for name, count in (("train", 6000), ("valid", 300)):
        with IndexedDatasetWriter(work / "data" / name, np.uint16) as writer:
            for _ in range(count):
                length, start, stride = (
                    int(rng.integers(300, 1500)),
                    int(rng.integers(0, 5000)),
                    int(rng.integers(1, 5)),
                )
                writer.add_document((100 + (start + np.arange(length) * stride) % 5000).astype(np.uint16))


def write_plan(work: Path, tokenizer: str, outside_container: bool, **extra: object) -> Path:
    from orchestrator.plan import build_plan

    cluster = work / "one-gpu.yaml"
    cluster.write_text("scheduler: local\ngpus_per_node: 1\ngpu_memory_gb: 80\nsignal_grace_s: 60\n")
    overrides = {
        "layout.nodes": 1, "layout.tp": 1, "layout.cp": 1, "layout.pp": 1, "layout.sequence_parallel": False,
        "layout.micro_batch_size": 4, "layout.distributed_optimizer": not outside_container,
        "model.arch.num_layers": 4, "model.arch.hidden_size": 1024, "model.arch.ffn_hidden_size": 3072,
        "model.arch.num_attention_heads": 16, "model.arch.num_query_groups": 4, "model.arch.vocab_size": 32000,
        "model.tokenizer.library": "sentencepiece", "model.tokenizer.model": tokenizer, "model.tokenizer.vocab_size": 32000,
        "train.seq_length": 2048, "train.global_batch_size": 32, "train.max_steps": MAX_STEPS, "train.ckpt_interval": 100,
        "train.val_interval": VAL_INTERVAL, "train.val_batches": 2,
        "train.optim.lr": 1e-3, "train.optim.min_lr": 1e-4, "train.optim.warmup_steps": 20,
        "data.source": "preprocessed", "data.train_prefixes": [str(work / "data" / "train")],
        "data.validation_prefixes": [str(work / "data" / "valid")], "data.index_cache_dir": str(work / "npy"),
        **extra,
    }  # fmt: skip
    run_dir = work / "run"
    plan = build_plan("llama31_8b", cluster, overrides, run_id="stop-resume", run_dir=run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.json").write_text(plan.to_json())
    return run_dir


def train(run_dir: Path, name: str, outside_container: bool, env: dict[str, str] | None = None,
          signal_after: int | None = None) -> tuple[int, str]:  # fmt: skip
    """One job; returns its exit status and output (also written to ``<work>/<name>.log``)."""
    cmd = [sys.executable, __file__, "--train", str(run_dir)] + (["--outside-container"] if outside_container else [])
    lines = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            found = STEP.search(line)
            if signal_after is not None and found and int(found.group(1)) >= signal_after:
                proc.send_signal(signal.SIGUSR2)
                signal_after = None
    text = "".join(lines)
    (run_dir.parent / f"{name}.log").write_text(text)
    return proc.returncode, text


def report(name: str, rc: int, text: str, run_dir: Path) -> dict[str, object]:
    from orchestrator.train.nemo_checkpoint import latest_step

    steps = [int(s) for s in STEP.findall(text)]
    validated, last = [], None
    for line in text.splitlines():
        found = STEP.search(line)
        last = int(found.group(1)) + 1 if found else last
        if line.startswith("Validation: iteration 1/"):
            validated.append(last)
    tps = [float(x) for x in re.findall(r"tokens_per_sec_per_gpu: ([0-9.e+-]+)", text)]
    loss = re.findall(r"reduced_train_loss: ([0-9.e+-]+)", text)
    result = {
        "rc": rc,
        "first": steps[0] if steps else None,
        "last": steps[-1] if steps else None,
        "validated": validated,
        "latest": latest_step(run_dir / "checkpoints"),
        "done": (run_dir / "DONE").exists(),
        "loss": (loss[0], loss[-1]) if loss else None,
        "tokens_per_sec_per_gpu": float(np.median(tps)) if tps else None,
    }
    print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in result.items()), flush=True)
    return result


def check(work: Path, tokenizer: str, outside_container: bool) -> int:
    make_data(work)
    run_dir = write_plan(work, tokenizer, outside_container, **{"chain.steps_per_job": 50})
    a = report("a", *train(run_dir, "a", outside_container), run_dir)
    write_plan(work, tokenizer, outside_container)
    b = report("b", *train(run_dir, "b", outside_container, signal_after=80), run_dir)
    deadline = {"ORCHESTRATOR_DEADLINE": str(time.time() + 20)}  # passed before the model is up: one step, then save
    c = report("c", *train(run_dir, "c", outside_container, env=deadline), run_dir)
    d = report("d", *train(run_dir, "d", outside_container), run_dir)
    e = report("e", *train(run_dir, "e", outside_container), run_dir)
    expectations = {
        "a stops at the step quota": (a["rc"], a["latest"], a["done"]) == (0, 50, False),
        "b resumes at 50 and stops on SIGUSR2": (b["rc"], b["first"], b["done"]) == (0, 50, False)
        and 80 < (b["latest"] or 0) < 90,
        "c stops one step after resuming": (c["rc"], c["done"]) == (0, False) and c["latest"] == (b["latest"] or 0) + 1,
        "d finishes with DONE": (d["rc"], d["latest"], d["done"]) == (0, MAX_STEPS, True),
        "d validates every 50 completed steps": d["validated"] == list(range(100, MAX_STEPS + 1, VAL_INTERVAL)),
        "e starts nothing": e["rc"] == 0 and e["first"] is None,
    }
    for what, ok in expectations.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    return 0 if all(expectations.values()) else 1


def train_entry(run_dir: str, outside_container: bool) -> int:
    """The trainer, as ``python -m orchestrator.train.nemo`` runs it (adapted with ``--outside-container``)."""
    from orchestrator.train import nemo, nemo_recipe

    if outside_container:
        build = nemo_recipe.build_recipe

        def build_without_te(plan, **kwargs):
            recipe = build(plan, **kwargs)
            config = recipe.model.config
            config.apply_rope_fusion = config.persist_layer_norm = config.masked_softmax_fusion = False
            return recipe

        nemo_recipe.build_recipe = build_without_te
    return nemo.main(["--run-dir", run_dir])


if "--outside-container" in sys.argv and not hasattr(np, "product"):
    np.product = (
        np.prod
    )  # megatron-core 0.14 under numpy 2; also in the async checkpoint writer, which imports this file

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/nemo-stop-resume"), help="scratch directory (emptied)")
    parser.add_argument(
        "--tokenizer", default="mistral-common:tokenizer.model.v1", help="a sentencepiece model, vocab 32000"
    )
    parser.add_argument("--outside-container", action="store_true", help="no Transformer Engine/apex, numpy 2")
    parser.add_argument("--train", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train:
        raise SystemExit(train_entry(args.train, args.outside_container))
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    raise SystemExit(check(args.work, args.tokenizer, args.outside_container))
