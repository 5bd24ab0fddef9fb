"""Throughput of the reference trainer on this machine: tokens/s per rank for 1..N local ranks.

Builds a small dataset of real tokens (the profile's tokenizer over Python's own standard-library sources, one
document per file, EOD appended), trains the profile for ``--steps`` steps per world size through
``orchestrator.launch`` (the local scheduler's srun), and prints the seeds' throughput figure: the mean of
tokens_per_sec_per_gpu leaving out the first 10 and the last 10 steps.

    PYTHONPATH=. python benchmarks/reference_throughput.py --profile tiny --worlds 1 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece

from orchestrator.data.indexed import IndexedDatasetWriter, optimal_dtype
from orchestrator.data.packaged_tokenizers import materialise
from orchestrator.logline import FIELD_ORDER
from orchestrator.plan import build_plan

SKIP = 10  # the seeds' rule: leave out the first and the last 10 steps


def build_dataset(prefix: Path, model_file: str, vocab_size: int, max_tokens: int) -> int:
    """Tokenize standard-library sources into ``prefix``; returns the token count."""
    sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
    total = 0
    with IndexedDatasetWriter(prefix, optimal_dtype(vocab_size)) as writer:
        for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
            tokens = sp.encode(path.read_text(errors="replace")) + [sp.eos_id()]
            writer.add_document(np.array(tokens))
            total += len(tokens)
            if total >= max_tokens:
                break
    return total


def measure(profile: str, world: int, steps: int, data: str, work: Path) -> dict[str, float]:
    run_dir = work / f"{profile}-world{world}"
    overrides = {
        "data.source": "preprocessed",
        "data.train_prefixes": [data],
        "data.train_weights": [1.0],
        "data.split": "95,5,0",
        "layout.nodes": 1,
        "layout.tasks_per_node": world,
        "train.max_steps": steps,
        "train.save_checkpoints": False,
    }
    plan = build_plan(profile, "local", overrides=overrides, run_id=run_dir.name, run_dir=run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "plan.json").write_text(plan.to_json())
    train = [sys.executable, "-m", "orchestrator.train.reference", "--run-dir", str(run_dir)]
    launch = [sys.executable, "-m", "orchestrator.launch", "--nproc-per-node", str(world), "--"]
    cmd = [*launch, *train] if world > 1 else train
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rates, times = [], []
    for line in out.splitlines():
        if line.startswith("Training epoch"):
            fields = dict(part.split(": ", 1) for part in line.split(" | ")[1:])
            assert list(fields) == [f for f in FIELD_ORDER if f in fields], line
            rates.append(float(fields["tokens_per_sec_per_gpu"]))
            times.append(float(fields["train_step_timing in s"]))
    kept = slice(SKIP, len(rates) - SKIP)
    first_loss = out.split("reduced_train_loss: ")[1].split()[0]
    last_loss = out.rsplit("reduced_train_loss: ", 1)[1].split()[0]
    return dict(
        world=world,
        per_rank=statistics.mean(rates[kept]),
        step_s=statistics.mean(times[kept]),
        total=statistics.mean(rates[kept]) * world,
        gbs=plan.train.global_batch_size,
        seq=plan.train.seq_length,
        first_loss=float(first_loss),
        last_loss=float(last_loss),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2], help="local ranks to try")
    parser.add_argument("--steps", type=int, default=40, help="steps per measurement (more than 20)")
    parser.add_argument("--max-tokens", type=int, default=2_000_000)
    parser.add_argument("--tokenizer-model", help="sentencepiece model file (default: the profile's)")
    args = parser.parse_args()
    if args.steps <= 2 * SKIP:
        parser.error(f"--steps must exceed {2 * SKIP}: the first and last {SKIP} steps are left out")
    probe = build_plan(args.profile, "local", check=False)
    with tempfile.TemporaryDirectory(prefix="reference-throughput-") as tmp:
        work = Path(tmp)
        model_file = args.tokenizer_model or str(
            materialise(probe.model.tokenizer.model, Path(probe.tokenizer_path).parent)
        )
        tokens = build_dataset(work / "stdlib", model_file, probe.model.arch.vocab_size, args.max_tokens)
        print(f"dataset: {tokens} tokens of Python's standard library, tokenizer {probe.model.tokenizer.model}")
        for world in args.worlds:
            r = measure(args.profile, world, args.steps, str(work / "stdlib"), work)
            print(
                f"{args.profile}: {r['world']} rank(s), GBS {r['gbs']} x seq {r['seq']}: step {r['step_s']:.3f} s, "
                f"{r['per_rank']:.0f} tokens/s per rank, {r['total']:.0f} tokens/s in all "
                f"(loss {r['first_loss']} -> {r['last_loss']} in {args.steps} steps)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
