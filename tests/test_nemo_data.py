"""What NeMo's data module yields, read back against megatron-core's own IndexedDataset on this project's real data.

MLPerf plans evaluate as the reference (``mcore.patch``) does: every evaluation and every seed scores the first
sequences of the validation file in file order. Training data stays Megatron's: shuffled by the seed. The data-index
stage builds the training index into the cache, publishing it whole, and a training job's data module loads it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import REPO
from megatron.core import parallel_state
from megatron.core.datasets import helpers
from megatron.core.datasets.indexed_dataset import IndexedDataset
from mlperf_helpers import SMALL_405B
from nemo_stack import fdl

from orchestrator.atomic import atomic_write_text
from orchestrator.plan import RunPlan, build_plan
from orchestrator.train import nemo_index
from orchestrator.train.nemo_data import ReferenceOrderGPTDataset, _InOrderSamples
from orchestrator.train.nemo_recipe import data_config

pytestmark = pytest.mark.nemo
SEQ, GBS = 64, 8
# evaluations of 40 sequences: 5 batches
MLPERF = {**SMALL_405B, "train.max_steps": 40, "mlperf.eval_samples": 40}


@pytest.fixture(scope="module")
def one_process_group(tmp_path_factory: pytest.TempPathFactory):
    """Megatron's datasets and samplers ask the parallel state for their rank: one CPU process (gloo)."""
    if not dist.is_initialized():
        store = tmp_path_factory.mktemp("dist") / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    yield
    parallel_state.destroy_model_parallel()


def mlperf_plan(tmp_path: Path, lab_data: dict[str, Any], seed: int, **more: Any) -> RunPlan:
    return build_plan(
        "llama31_405b",
        "h100-pyxis",
        {**lab_data, **MLPERF, "train.seed": seed, "data.index_cache_dir": str(tmp_path / "index"), **more},
        run_dir=tmp_path / f"run-{seed}",
    )


def datasets(plan: RunPlan) -> Any:
    data = fdl.build(data_config(plan))
    data.build(*nemo_index.sample_counts(plan))
    return data


def tokens_in_file_order(prefix: str) -> np.ndarray:
    """Every document of the validation prefix, concatenated in file order, as megatron-core reads them."""
    ds = IndexedDataset(prefix)
    return np.concatenate([ds[i] for i in range(len(ds))]).astype(np.int64)


@pytest.mark.usefixtures("one_process_group")
def test_every_evaluation_of_every_seed_reads_the_first_validation_sequences_in_file_order(
    tmp_path: Path, lab_data: dict[str, Any]
) -> None:
    stream = tokens_in_file_order(lab_data["data.validation_prefixes"][0])
    seen = {}
    for seed in (1234, 4321):
        data = datasets(mlperf_plan(tmp_path, lab_data, seed))
        valid = data._validation_ds
        assert isinstance(valid, ReferenceOrderGPTDataset)
        for i in range(5 * GBS):  # all 5 batches of one evaluation
            sample = valid[i]
            start = i * SEQ
            assert torch.equal(sample["tokens"], torch.from_numpy(stream[start : start + SEQ])), (seed, i)
            assert torch.equal(sample["labels"], torch.from_numpy(stream[start + 1 : start + SEQ + 1])), (seed, i)
        # NeMo's validation sampler starts every evaluation at sample 0: two evaluations read the same batches
        data.trainer = type("T", (), {"global_step": 24})()
        loaders = [data.data_sampler.transform_dataloader(data.val_dataloader()) for _ in range(2)]
        firsts = [next(iter(loader))["tokens"] for loader in loaders]
        assert torch.equal(firsts[0], firsts[1]) and torch.equal(firsts[0][0], torch.from_numpy(stream[:SEQ]))
        seen[seed] = data._train_ds[0]["tokens"]
    assert not torch.equal(seen[1234], seen[4321]), "training data is still shuffled by the seed"


def test_the_in_order_sample_index_is_megatrons_own_on_the_same_documents(lab_data: dict[str, Any]) -> None:
    """megatron-core's C++ ``build_sample_idx`` over the documents in file order (what ``mcore.patch`` makes it
    do), several epochs deep, entry for entry against the computed index, sample boundaries between documents and
    across the epoch boundary included."""
    dataset = IndexedDataset(lab_data["data.validation_prefixes"][0])  # kept: its arrays are views of its mmap
    lengths = dataset.sequence_lengths.astype(np.int32)
    epochs, tokens = 3, int(lengths.sum())
    samples = (epochs * tokens - 1) // SEQ
    documents = np.tile(np.arange(len(lengths), dtype=np.int32), epochs)
    megatron = helpers.build_sample_idx(lengths, documents, SEQ, epochs, tokens, True, 1)
    ours = _InOrderSamples(lengths, SEQ, samples)
    assert megatron.shape == ours.shape
    for i in range(megatron.shape[0]):
        assert tuple(ours[i]) == tuple(megatron[i]), i


def test_the_index_stage_publishes_the_training_index_and_a_training_job_only_loads_it(
    tmp_path: Path, lab_data: dict[str, Any]
) -> None:
    plan = mlperf_plan(tmp_path, lab_data, 1234, **{"mlperf.seeds": [1234, 4321]})
    Path(plan.run_dir).mkdir(parents=True)
    atomic_write_text(Path(plan.run_dir) / "plan.json", plan.to_json())
    assert "index" in plan.stages and nemo_index.seeds(plan) == [1234, 4321]
    with pytest.raises(RuntimeError, match="data index of seed 1234 is not complete"):
        nemo_index.check_ready(plan)
    done = subprocess.run(
        [sys.executable, "-m", nemo_index.MODULE, "--run-dir", plan.run_dir, "--threads", "2"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert all(nemo_index.is_complete(plan, seed) for seed in (1234, 4321)) and nemo_index.complete_reason(plan)
    cache = Path(plan.data.index_cache_dir)
    published = {p.name: p.stat().st_mtime_ns for p in cache.iterdir() if p.is_file()}
    assert published and not [p for p in cache.iterdir() if p.name.startswith(".build-")]
    nemo_index.check_ready(plan)  # a training job of this seed starts
    again = subprocess.run(
        [sys.executable, "-m", nemo_index.MODULE, "--run-dir", plan.run_dir],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=600,
    )
    assert again.returncode == 0 and "is complete" in again.stdout  # skipped: nothing rebuilt
    # what a training job's data module does with the cache: loads every index, writes nothing
    datasets(plan)
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir() if p.is_file()} == published
    # an index with a file gone is not complete, and the training job says so before it builds anything
    listed = json.loads(nemo_index.manifest_path(plan, 1234).read_text())["files"]
    (cache / next(iter(listed))).unlink()
    assert not nemo_index.is_complete(plan, 1234) and nemo_index.is_complete(plan, 4321)
    with pytest.raises(RuntimeError, match="not complete"):
        nemo_index.check_ready(plan)
