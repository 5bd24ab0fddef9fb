"""Megatron-style samples: windows of the document stream, seeded shuffles, blends, splits, resumable positions."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from reference_helpers import make_plan, markov_documents, write_dataset

from orchestrator.data.indexed import IndexedDataset
from orchestrator.train.reference import data

SEQ = 16


def numbered_dataset(tmp_path: Path, lengths: list[int], start: int = 0, name: str = "numbered") -> IndexedDataset:
    """Documents whose tokens are their global positions, so every sample shows where it came from."""
    docs, pos = [], start
    for n in lengths:
        docs.append(np.arange(pos, pos + n))
        pos += n
    return IndexedDataset(write_dataset(tmp_path / name, docs, dtype=np.int32))


def test_unshuffled_samples_are_overlapping_windows_of_the_file(tmp_path: Path) -> None:
    ds = numbered_dataset(tmp_path, [5, 40, 1, 23, 17])  # 86 tokens
    comp = data.Component(ds, 0, 5, SEQ, seed=0, salt=0, shuffle=False)
    assert len(comp) == (86 - 1) // SEQ
    for k in range(len(comp)):
        np.testing.assert_array_equal(comp[k], np.arange(k * SEQ, k * SEQ + SEQ + 1))  # nothing added between docs


def test_an_epoch_is_a_permutation_of_documents_cut_into_windows(tmp_path: Path) -> None:
    lengths = [7, 30, 12, 3, 25, 9, 40, 11]
    ds = numbered_dataset(tmp_path, lengths)
    comp = data.Component(ds, 0, len(lengths), SEQ, seed=5, salt=0, shuffle=True)
    samples = [comp[k] for k in range(len(comp))]
    inputs = np.concatenate([s[:-1] for s in samples])
    assert len(np.unique(inputs)) == len(inputs) == len(comp) * SEQ  # each token once per epoch
    starts = np.cumsum([0] + lengths[:-1])
    # Each document appears whole and in order inside the epoch's stream: a token's successor within a sample is
    # the next token of its document, or the first token of another document after the last one of this.
    last_tokens = set(starts + np.array(lengths) - 1)
    for s in samples:
        for a, b in itertools.pairwise(s):
            assert b == a + 1 or (a in last_tokens and b in set(starts))
    assert [int(s[0]) for s in samples] != sorted(int(s[0]) for s in samples)  # samples are shuffled


def test_stream_is_a_function_of_seed_and_position(tmp_path: Path) -> None:
    ds = numbered_dataset(tmp_path, [13, 29, 31, 8, 50, 21])
    a = data.Component(ds, 0, 6, SEQ, seed=7, salt=0, shuffle=True)
    b = data.Component(ds, 0, 6, SEQ, seed=7, salt=0, shuffle=True)
    c = data.Component(ds, 0, 6, SEQ, seed=8, salt=0, shuffle=True)
    n = 4 * len(a)  # several epochs
    forward = [a[k] for k in range(n)]
    backward = [b[k] for k in reversed(range(n))][::-1]  # random access, as a resumed run reads
    for x, y in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, c[k]) for k, x in enumerate(forward))
    epochs = [np.concatenate(forward[e * len(a) : (e + 1) * len(a)]) for e in range(4)]
    assert not all(np.array_equal(epochs[0], e) for e in epochs[1:])  # each epoch reshuffles


def test_blend_follows_weights_in_every_prefix_and_is_deterministic(tmp_path: Path) -> None:
    comps = [
        data.Component(numbered_dataset(tmp_path, [200] * 3, start=0, name=f"p{i}"), 0, 3, SEQ, 1, salt=i, shuffle=True)
        for i in range(3)
    ]
    weights = [50.0, 30.0, 20.0]
    blend = data.Blend(comps, weights)
    n = 2000
    choices = np.array([blend.source(i)[0] for i in range(n)])
    for d, w in enumerate(np.array(weights) / sum(weights)):
        counts = np.cumsum(choices == d)
        assert np.all(np.abs(counts - w * np.arange(1, n + 1)) <= 1.5)
    # each component's samples are taken in its own order, once each
    for d in range(3):
        inner = [blend.source(i)[1] for i in range(n) if choices[i] == d]
        assert inner == list(range(len(inner)))
    again = data.Blend(comps, weights)
    assert [again.source(i) for i in reversed(range(n))][::-1] == [blend.source(i) for i in range(n)]


def test_split_bounds_round_as_megatron() -> None:
    assert data.parse_split("969,30,1") == pytest.approx([0.969, 0.03, 0.001])
    assert data.parse_split("8/2") == pytest.approx([0.8, 0.2, 0.0])
    assert data.split_bounds(1000, data.parse_split("969,30,1")) == [0, 969, 999, 1000]
    assert data.split_bounds(10, data.parse_split("80,20,0")) == [0, 8, 10, 10]
    with pytest.raises(ValueError, match="data.split"):
        data.parse_split("a,b")


def test_split_gives_disjoint_train_and_validation_documents(tmp_path: Path) -> None:
    docs = [np.full(20, i + 1) for i in range(10)]  # document i is all token i+1
    prefix = write_dataset(tmp_path / "ds", docs)
    plan = make_plan(
        tmp_path / "run",
        tmp_path / "data",
        **{
            "data.train_prefixes": [prefix],
            "data.train_weights": [1.0],
            "data.validation_prefixes": [],
            "data.split": "80,20,0",
        },
    )
    train, valid = data.train_samples(plan), data.validation_samples(plan)
    assert valid is not None
    train_tokens = set(np.concatenate([train[i] for i in range(200)]).tolist())
    valid_tokens = set(np.concatenate([valid[i] for i in range(len(valid))]).tolist())
    assert train_tokens == set(range(1, 9)) and valid_tokens == {9, 10}


def test_micro_batches_partition_the_global_batch_across_ranks(tmp_path: Path) -> None:
    ds = IndexedDataset(write_dataset(tmp_path / "m", markov_documents(30, seed=3)))
    stream = data.Blend([data.Component(ds, 0, 30, SEQ, 1, 0, shuffle=True)], [1.0])
    gbs, mbs, world = 8, 2, 2
    single = data.Batches(stream, mbs, 1, 0)
    ranks = [data.Batches(stream, mbs, world, r) for r in range(world)]
    consumed = 3 * gbs
    whole = np.concatenate([single.micro_batch(consumed, m) for m in range(gbs // mbs)])
    micros = range(gbs // (mbs * world))
    split = np.concatenate([ranks[r].micro_batch(consumed, m) for m in micros for r in range(world)])
    np.testing.assert_array_equal(whole, split)  # same samples, same order, whatever the world size
    np.testing.assert_array_equal(whole[0], stream[consumed])


def test_missing_prefix_names_the_field(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path / "run",
        tmp_path / "data",
        **{"data.train_prefixes": [str(tmp_path / "nope")], "data.train_weights": [1.0]},
    )
    with pytest.raises(FileNotFoundError, match=r"data.train_prefixes\[0\].*preprocess"):
        data.train_samples(plan)
