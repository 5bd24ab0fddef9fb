"""The data-index stage: Megatron's sample index for a NeMo run, built on one node before any training job starts.

``python -m orchestrator.train.nemo_index --run-dir DIR``

Megatron's datasets keep their document, sample and shuffle indices in ``data.index_cache_dir`` (NeMo's
``index_mapping_dir``, MLPerf's ``TMP_NPY_INDEX``). A training job that finds them missing builds them on global
rank 0 while every other rank of the allocation waits: for the 405B benchmark's default cap that is 1.38e9 training
samples, inside MLPerf's timed initialisation, once per seed. So, as the reference does with its
``build_data_index`` job, this stage builds them first, with many threads on one node, for every seed of the run
(MLPerf's ``SEEDS`` share one index stage), and training jobs only load them (:func:`check_ready`).

Each seed's index is what the trainer's data module builds: the same recipe, the same sample counts (from the
trainer's ``max_steps``, validation interval and batches, :func:`sample_counts`). It is built into a temporary folder
inside the cache; its files then move into the cache and the manifest ``orchestrator-index/<key>.json`` (the files
and their sizes) is written last. So the cache never holds half-written index files under the names Megatron takes
as complete, and :func:`is_complete` (no NeMo needed: the login node asks it to skip the stage) trusts only a
manifest whose files are all there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.atomic import atomic_write_json
from orchestrator.plan import RunPlan

MODULE = "orchestrator.train.nemo_index"
MANIFEST_DIR = "orchestrator-index"
MANIFEST_KIND = "orchestrator.nemo-index"


def seeds(plan: RunPlan) -> list[int]:
    """The seeds this run's index stage builds: all of an MLPerf run's (they share one stage), else the plan's."""
    listed = list(plan.mlperf.seeds) if plan.mlperf else []
    return sorted({plan.train.seed, *listed})


def _prefix_identity(prefix: str) -> list[Any]:
    out = []
    for ext in (".bin", ".idx"):
        try:
            stat = os.stat(prefix + ext)
        except OSError:
            return [prefix, None]
        out.append([stat.st_size, stat.st_mtime_ns])
    return [prefix, out]


def index_key(plan: RunPlan, seed: int) -> str:
    """What the index depends on: the datasets (and their files' sizes and times), the sequence, the batch, the steps
    and validation that size it, the seed, and the dataset class (MLPerf plans read validation in file order)."""
    d, t = plan.data, plan.train
    body = {
        "train": [[w, _prefix_identity(p)] for w, p in zip(d.train_weights, d.train_prefixes)],
        "validation": [_prefix_identity(p) for p in d.validation_prefixes],
        "split": None if d.validation_prefixes else d.split,
        "seq_length": t.seq_length,
        "global_batch_size": t.global_batch_size,
        "counts": sample_counts(plan),
        "seed": seed,
        "reference_order": plan.mlperf is not None,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]


def sample_counts(plan: RunPlan) -> tuple[int, int, int, float]:
    """``PreTrainingDataModule.build``'s arguments as the trainer passes them: max steps, the validation interval,
    validation batches, test batches (Lightning's default 1.0)."""
    schedule = plan.mlperf_schedule()
    t = plan.train
    if schedule is not None:
        return t.max_steps, schedule.eval_interval_steps, schedule.eval_batches, 1.0
    if t.val_interval and t.val_batches:
        return t.max_steps, t.val_interval, t.val_batches, 1.0
    return t.max_steps, t.max_steps, 0, 1.0


def cache_dir(plan: RunPlan) -> Path:
    if not plan.data.index_cache_dir:
        raise ValueError("data.index_cache_dir is not set: the index stage needs a folder every job can read")
    return Path(plan.data.index_cache_dir)


def manifest_path(plan: RunPlan, seed: int) -> Path:
    return cache_dir(plan) / MANIFEST_DIR / f"{index_key(plan, seed)}.json"


def is_complete(plan: RunPlan, seed: int) -> bool:
    """The index of ``seed`` is in the cache: its manifest exists and every file it lists has its size."""
    try:
        manifest = json.loads(manifest_path(plan, seed).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("kind") != MANIFEST_KIND:
        return False
    root = cache_dir(plan)
    try:
        return all((root / name).stat().st_size == size for name, size in manifest["files"].items())
    except OSError:
        return False


def complete_reason(plan: RunPlan) -> str | None:
    """Why the stage need not run (every seed's index is complete), or None."""
    built = seeds(plan)
    if all(is_complete(plan, seed) for seed in built):
        return f"the data index of seed(s) {', '.join(map(str, built))} is complete in {cache_dir(plan)}"
    return None


def check_ready(plan: RunPlan) -> None:
    """For a training job of a plan with the index stage: its seed's index must be complete (else the job would
    build it on rank 0 with the whole allocation waiting). Raises naming the manifest and the fix."""
    if "index" in plan.stages and not is_complete(plan, plan.train.seed):
        raise RuntimeError(
            f"the data index of seed {plan.train.seed} is not complete ({manifest_path(plan, plan.train.seed)} is "
            f"missing or lists files that are not there); the index stage builds it: run `python -m {MODULE} "
            f"--run-dir {plan.run_dir}` on a node, or submit the run again"
        )


def build(plan: RunPlan, seed: int, threads: int) -> dict[str, Any]:
    """Build one seed's index into the cache (the trainer's data module, the trainer's counts); return the manifest."""
    import fiddle as fdl

    from orchestrator.train.nemo_recipe import build_recipe

    root = cache_dir(plan)
    scratch = root / f".build-{index_key(plan, seed)}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    seeded = plan.model_copy(update={"train": plan.train.model_copy(update={"seed": seed})})
    config = build_recipe(seeded).data
    config.index_mapping_dir = str(scratch)
    config.num_dataset_builder_threads = threads
    start = time.monotonic()
    try:
        fdl.build(config).build(*sample_counts(plan))
        files = {}
        for path in sorted(scratch.iterdir()):
            os.replace(path, root / path.name)
            files[path.name] = (root / path.name).stat().st_size
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    manifest = {
        "kind": MANIFEST_KIND,
        "key": index_key(plan, seed),
        "seed": seed,
        "counts": sample_counts(plan),
        "files": files,
        "seconds": round(time.monotonic() - start, 1),
    }
    atomic_write_json(manifest_path(plan, seed), manifest)
    return manifest


def _init_single_process_group() -> None:
    """Megatron builds indices on rank 0 of a process group: a group of one, on this host (as NeMo's
    ``build_pretraining_datamodule`` does)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="run directory holding plan.json")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="Megatron's dataset-builder threads (default: the cores this task may use)",
    )


def run(args: argparse.Namespace) -> int:
    plan = RunPlan.load(args.run_dir)
    todo = [seed for seed in seeds(plan) if not is_complete(plan, seed)]
    if not todo:
        print(complete_reason(plan), flush=True)
        return 0
    cache_dir(plan).mkdir(parents=True, exist_ok=True)
    _init_single_process_group()
    for seed in todo:
        manifest = build(plan, seed, args.threads)
        size = sum(manifest["files"].values())
        print(
            f"data index of seed {seed}: {len(manifest['files'])} files, {size / 2**20:.1f} MiB in "
            f"{manifest['seconds']} s -> {cache_dir(plan)} ({manifest_path(plan, seed).name})",
            flush=True,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
