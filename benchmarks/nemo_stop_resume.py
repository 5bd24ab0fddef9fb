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

    python benchmarks/nemo_stop_resume.py --work /tmp/nemo-check

On a machine without Transformer Engine and apex and with numpy 2 (torch + NeMo wheels only), the trainer adapts
itself (``orchestrator.train.nemo_local_spec``: Megatron's local layer spec, no TE fusions, the plain optimizer;
``numpy.product`` aliased). Seen on one H100 that way: all five jobs as expected (with the adaptation then made here
by an ``--outside-container`` flag, and when a saved stop still exited 75; it exits 0 since, as the driver requires).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

STEP = re.compile(r"global_step: (\d+)")
MAX_STEPS, VAL_INTERVAL = 300, 50
#: Sees each output line of a job with its process; returns True once it has acted (then it sees no more).
Watch = Callable[[str, "subprocess.Popen[str]"], bool]


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


def write_plan(work: Path, tokenizer: str, **extra: object) -> Path:
    from orchestrator.plan import build_plan

    cluster = work / "one-gpu.yaml"
    cluster.write_text("scheduler: local\ngpus_per_node: 1\ngpu_memory_gb: 80\nsignal_grace_s: 60\n")
    overrides = {
        "layout.nodes": 1,
        "layout.tp": 1,
        "layout.cp": 1,
        "layout.pp": 1,
        "layout.sequence_parallel": False,
        "layout.micro_batch_size": 4,
        "model.arch.num_layers": 4,
        "model.arch.hidden_size": 1024,
        "model.arch.ffn_hidden_size": 3072,
        "model.arch.num_attention_heads": 16,
        "model.arch.num_query_groups": 4,
        "model.arch.vocab_size": 32000,
        "model.tokenizer.library": "sentencepiece",
        "model.tokenizer.model": tokenizer,
        "model.tokenizer.vocab_size": 32000,
        "train.seq_length": 2048,
        "train.global_batch_size": 32,
        "train.max_steps": MAX_STEPS,
        "train.ckpt_interval": 100,
        "train.val_interval": VAL_INTERVAL,
        "train.val_batches": 2,
        "train.optim.lr": 1e-3,
        "train.optim.min_lr": 1e-4,
        "train.optim.warmup_steps": 20,
        "data.source": "preprocessed",
        "data.train_prefixes": [str(work / "data" / "train")],
        "data.validation_prefixes": [str(work / "data" / "valid")],
        "data.index_cache_dir": str(work / "npy"),
        **extra,
    }
    run_dir = work / "run"
    plan = build_plan("llama31_8b", cluster, overrides, run_id="stop-resume", run_dir=run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.json").write_text(plan.to_json())
    return run_dir


def train(
    run_dir: Path,
    name: str,
    env: dict[str, str] | None = None,
    watch: Watch | None = None,
    command: list[str] | None = None,
) -> tuple[int, str]:
    """One job of ``python -m orchestrator.train.nemo`` (or ``command``) in its own session; returns its exit status
    and output (also written to ``<work>/<name>.log``)."""
    cmd = [*(command or [sys.executable, "-m", "orchestrator.train.nemo"]), "--run-dir", str(run_dir)]
    lines = []
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if watch is not None and watch(line, proc):
                watch = None
    text = "".join(lines)
    (run_dir.parent / f"{name}.log").write_text(text)
    return proc.returncode, text


def index(run_dir: Path, log: Path) -> tuple[int, float]:
    """The run's index stage (no GPU): Megatron's sample index, before any training job."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.train.nemo_index", "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
    )
    log.write_text(done.stdout + done.stderr)
    return done.returncode, time.monotonic() - start


def at_step(pattern: re.Pattern[str], step: int, act: Callable[[subprocess.Popen[str]], object]) -> Watch:
    """A watch that calls ``act(process)`` on the first line where ``pattern``'s step number is ``step`` or more."""

    def watch(line: str, proc: subprocess.Popen[str]) -> bool:
        found = pattern.search(line)
        if found and int(found.group(1)) >= step:
            act(proc)
            return True
        return False

    return watch


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


def check(work: Path, tokenizer: str) -> int:
    make_data(work)
    run_dir = write_plan(work, tokenizer, **{"chain.steps_per_job": 50})
    rc, seconds = index(run_dir, work / "index.log")
    print(f"index stage: exit {rc} in {seconds:.0f} s", flush=True)
    a = report("a", *train(run_dir, "a"), run_dir)
    write_plan(work, tokenizer)
    b = report(
        "b", *train(run_dir, "b", watch=at_step(STEP, 80, lambda proc: proc.send_signal(signal.SIGUSR2))), run_dir
    )
    deadline = {"ORCHESTRATOR_DEADLINE": str(time.time() + 20)}  # passed before the model is up: one step, then save
    c = report("c", *train(run_dir, "c", env=deadline), run_dir)
    d = report("d", *train(run_dir, "d"), run_dir)
    e = report("e", *train(run_dir, "e"), run_dir)
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/nemo-stop-resume"), help="scratch directory (emptied)")
    parser.add_argument(
        "--tokenizer", default="mistral-common:tokenizer.model.v1", help="a sentencepiece model, vocab 32000"
    )
    args = parser.parse_args()
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    raise SystemExit(check(args.work, args.tokenizer))
