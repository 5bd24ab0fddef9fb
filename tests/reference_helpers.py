"""Shared by the reference-trainer tests: small structured datasets, plans, and running the trainer."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.data.indexed import IndexedDatasetWriter
from orchestrator.plan import RunPlan, build_plan

REPO = Path(__file__).resolve().parent.parent
VOCAB = 256
EOD = 0

LINE_RE = re.compile(
    r"^Training epoch (?P<epoch>\d+), iteration (?P<iteration>\d+)/(?P<last>\d+)"
    r"(?P<fields>( \| [a-z_ ]+: (?:[-+0-9.e]+|inf|nan))+)$"
)


def markov_documents(n_docs: int, seed: int, vocab: int = VOCAB, mean_len: int = 60) -> list[np.ndarray]:
    """Documents from a sparse first-order Markov chain (two likely successors per token), each ending in EOD
    (as ``--append-eod`` writes them): structure a small model learns within a few steps."""
    rng = np.random.default_rng(seed)
    table = np.random.default_rng(1).integers(1, vocab, size=(vocab, 2))
    docs = []
    for _ in range(n_docs):
        length = int(rng.integers(mean_len // 2, mean_len * 3 // 2))
        tokens = [int(rng.integers(1, vocab))]
        for choice in rng.integers(0, 2, size=length - 1):
            tokens.append(int(table[tokens[-1], choice]))
        docs.append(np.array(tokens + [EOD]))
    return docs


def write_dataset(prefix: Path, docs: list[np.ndarray], dtype: type = np.uint16) -> str:
    with IndexedDatasetWriter(prefix, dtype) as writer:
        for doc in docs:
            writer.add_document(doc)
    return str(prefix)


def make_plan(run_dir: Path, data_dir: Path, **overrides: Any) -> RunPlan:
    """A tiny-profile plan on one CPU process over two structured training prefixes and one validation prefix."""
    if not (data_dir / "train_b.idx").exists():
        write_dataset(data_dir / "train_a", markov_documents(120, seed=11))
        write_dataset(data_dir / "train_b", markov_documents(80, seed=12))
        write_dataset(data_dir / "valid", markov_documents(40, seed=13))
    settings: dict[str, Any] = {
        "data.source": "preprocessed",
        "data.train_prefixes": [str(data_dir / "train_a"), str(data_dir / "train_b")],
        "data.train_weights": [70, 30],
        "data.validation_prefixes": [str(data_dir / "valid")],
        "model.arch.vocab_size": VOCAB,
        "model.tokenizer.vocab_size": VOCAB,  # the Markov documents are ids below VOCAB, no real tokenizer
        "model.arch.hidden_size": 64,
        "model.arch.ffn_hidden_size": 176,
        "model.arch.num_layers": 2,
        "layout.tasks_per_node": 1,
        "layout.micro_batch_size": 2,
        "train.global_batch_size": 8,
        "train.seq_length": 32,
        "train.max_steps": 12,
        "train.optim.warmup_steps": 2,
        "train.val_interval": 4,
        "train.val_batches": 2,
    }
    settings.update(overrides)
    plan = build_plan("tiny", "local", overrides=settings, run_id=run_dir.name, run_dir=run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.json").write_text(plan.to_json())
    return plan


def trainer_env(**extra: str) -> dict[str, str]:
    launcher_vars = ("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher_vars)}
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env.update(PYTHONPATH=path, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("ORCHESTRATOR_DEADLINE", None)
    env.pop("ORCHESTRATOR_CKPT_WRITE_DELAY_S", None)
    env.update(extra)
    return env


def command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "orchestrator.train.reference", "--run-dir", str(run_dir)]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[dict[str, str]]:
        return parse_lines(self.stdout)

    @property
    def losses(self) -> dict[int, str]:
        return {int(line["global_step"]): line["reduced_train_loss"] for line in self.lines}


def train(run_dir: Path, timeout: float = 120, **env: str) -> Result:
    proc = subprocess.run(command(run_dir), env=trainer_env(**env), capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def parse_lines(stdout: str) -> list[dict[str, str]]:
    """The NeMo log lines of a trainer's stdout, as ordered {field: text} dicts."""
    out = []
    for line in stdout.splitlines():
        if line.startswith("Training epoch"):
            match = LINE_RE.match(line)
            assert match, f"malformed log line: {line!r}"
            fields = dict(part.split(": ", 1) for part in match.group("fields").split(" | ")[1:])
            out.append(fields)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
