"""Training and validation samples over Megatron indexed datasets, with megatron-core's GPTDataset semantics.

One *component* is one ``.bin/.idx`` prefix restricted to a range of its documents (the split). Its samples:

1. Epoch ``e`` orders the component's documents by a permutation drawn from
   ``numpy.random.RandomState([seed, component, e])`` (RandomState: numpy guarantees its stream forever).
   Each document contributes its tokens as written; with ``--append-eod`` the EOD is already among them and
   nothing is added here.
2. The epoch's documents are concatenated and cut into samples of ``seq_length + 1`` tokens at a stride of
   ``seq_length`` (consecutive samples share one token, as Megatron's sample index does); the tail that does not
   fill a sample is dropped. Inputs are ``tokens[:-1]``, labels ``tokens[1:]``, every label counts in the loss.
3. The epoch's samples are visited in a permutation drawn from the same generator.

Sample ``k`` of a component is sample ``k % S`` of epoch ``k // S`` (``S`` samples per epoch), so the stream is
infinite, a pure function of (seed, k), and independent of ``max_steps``: a run resumed with a larger
``max_steps`` sees the same data. (Megatron shuffles all epochs it needs together, with a separate last epoch;
this is the "separate epoch" rule applied to every epoch. Not byte-identical to Megatron's index files.)

Several training prefixes are blended like megatron-core's BlendedDataset: sample ``i`` of the blend comes from
the component whose share lags its weight most, ``argmax_d(w_d * max(i, 1) - taken_d)`` (first on ties), and is
that component's next sample. Deterministic, prefix-stable (the first n choices do not depend on how many are
drawn), and every prefix of the stream holds each component within about one sample of its weight.

The position in the stream is the number of samples consumed; global batch ``t`` is samples
``[t*GBS, (t+1)*GBS)``, and within it micro-batch ``m`` of rank ``r`` is the ``mbs`` samples starting at
``t*GBS + (m*world + r)*mbs`` (Megatron's pretraining sampler), so resuming needs nothing but
``consumed_samples``.

Splits: with ``data.validation_prefixes`` set, training uses every document of the training prefixes. Without,
each training prefix's documents are split by ``data.split`` ("969,30,1": train, validation, test, in document
order, Megatron's rounding) and validation reads the second part of every prefix.

Validation samples are built the same way but unshuffled (documents and samples in file order, one epoch, as
MLPerf evaluates), components concatenated in the order given; an evaluation reads the same first samples each
time, so successive ``val_loss`` values measure one fixed set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.data.indexed import IndexedDataset, exists
from orchestrator.plan import RunPlan


def parse_split(split: str) -> list[float]:
    """``"969,30,1"`` (or ``"969/30/1"``, or fractions) -> normalised [train, validation, test]."""
    try:
        parts = [float(p) for p in split.replace("/", ",").split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"data.split={split!r}: expected numbers like '969,30,1'") from None
    parts = (parts + [0.0, 0.0, 0.0])[:3]
    total = sum(parts)
    if total <= 0 or any(p < 0 for p in parts):
        raise ValueError(f"data.split={split!r}: weights must be non-negative with a positive sum, e.g. '969,30,1'")
    return [p / total for p in parts]


def split_bounds(num_documents: int, split: Sequence[float]) -> list[int]:
    """Document boundaries of the train/validation/test parts, rounded as megatron-core does."""
    bounds = [0]
    for part in split:
        bounds.append(bounds[-1] + int(round(part * num_documents)))
    excess = bounds[-1] - num_documents
    return [bounds[0]] + [b - excess for b in bounds[1:]]


class Component:
    """The samples of one prefix's document range (see the module docstring)."""

    def __init__(
        self,
        dataset: IndexedDataset,
        first_doc: int,
        last_doc: int,
        seq_length: int,
        seed: int,
        salt: int,
        shuffle: bool,
    ) -> None:
        self.dataset, self.seq_length, self.shuffle = dataset, seq_length, shuffle
        self._seed = [seed & 0xFFFFFFFF, salt]
        docs = dataset.document_indices
        self._doc_first = np.asarray(docs[first_doc:last_doc], dtype=np.int64)  # first sequence of each document
        self._doc_count = np.asarray(docs[first_doc + 1 : last_doc + 1], dtype=np.int64) - self._doc_first
        tokens = int(dataset.sequence_lengths[docs[first_doc] : docs[last_doc]].sum(dtype=np.int64))
        self.num_documents = last_doc - first_doc
        self.samples_per_epoch = max(tokens - 1, 0) // seq_length
        if self.samples_per_epoch == 0:
            raise ValueError(
                f"{dataset.prefix}: documents {first_doc}..{last_doc} hold {tokens} tokens, fewer than one sample "
                f"of {seq_length + 1}; use more data, a shorter train.seq_length, or another data.split"
            )
        self._epoch = -1

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _load_epoch(self, epoch: int) -> None:
        rng = np.random.RandomState(self._seed + [epoch])
        order = np.arange(self.num_documents)
        if self.shuffle:
            rng.shuffle(order)
        counts = self._doc_count[order]
        seqs = np.repeat(self._doc_first[order] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        self._sequences = seqs  # sequence ids in this epoch's order
        self._offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(self.dataset.sequence_lengths[seqs], out=self._offsets[1:])
        self._samples = np.arange(self.samples_per_epoch)
        if self.shuffle:
            rng.shuffle(self._samples)
        self._epoch = epoch

    def __getitem__(self, k: int) -> np.ndarray:
        """Sample ``k`` of the infinite stream: ``seq_length + 1`` tokens."""
        epoch, j = divmod(int(k), self.samples_per_epoch)
        if epoch != self._epoch:
            self._load_epoch(epoch)
        start = int(self._samples[j]) * self.seq_length
        stop = start + self.seq_length + 1
        pieces = []
        i = int(np.searchsorted(self._offsets, start, side="right")) - 1
        while start < stop:
            seq = int(self._sequences[i])
            offset = start - int(self._offsets[i])
            take = min(stop - start, int(self._offsets[i + 1]) - start)
            pieces.append(self.dataset.get(seq, offset, take))
            start += take
            i += 1
        return np.concatenate(pieces).astype(np.int64)


class Blend:
    """Megatron's BlendedDataset choice over components, extended lazily (see the module docstring)."""

    def __init__(self, components: Sequence[Component], weights: Sequence[float]) -> None:
        if len(components) != len(weights):
            raise ValueError(f"{len(components)} data prefixes but {len(weights)} weights")
        total = float(sum(weights))
        if total <= 0 or any(w < 0 for w in weights):
            raise ValueError(f"data.train_weights={list(weights)}: need non-negative weights with a positive sum")
        self.components = list(components)
        self.weights = [w / total for w in weights]
        self._choice = np.zeros(0, dtype=np.int32)  # component of blend sample i
        self._inner = np.zeros(0, dtype=np.int64)  # index of blend sample i within its component
        self._taken = [0] * len(components)

    def _extend(self, n: int) -> None:
        start = len(self._choice)
        if n <= start:
            return
        n = max(n, 2 * start, 1024)
        choice = np.empty(n - start, dtype=np.int32)
        inner = np.empty(n - start, dtype=np.int64)
        weights, taken = self.weights, self._taken
        for i in range(start, n):
            scale = max(i, 1)
            best = max(range(len(weights)), key=lambda d: (weights[d] * scale - taken[d], -d))
            choice[i - start], inner[i - start] = best, taken[best]
            taken[best] += 1
        self._choice = np.concatenate([self._choice, choice])
        self._inner = np.concatenate([self._inner, inner])

    def source(self, i: int) -> tuple[int, int]:
        """(component, index within it) of blend sample ``i``."""
        if len(self.components) == 1:
            return 0, i
        self._extend(i + 1)
        return int(self._choice[i]), int(self._inner[i])

    def __getitem__(self, i: int) -> np.ndarray:
        component, k = self.source(i)
        return self.components[component][k]


class Concat:
    """Components one after the other, in order, wrapping around at the end (validation)."""

    def __init__(self, components: Sequence[Component]) -> None:
        self.components = list(components)
        self._ends = np.cumsum([len(c) for c in self.components])

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        i = i % len(self)
        c = int(np.searchsorted(self._ends, i, side="right"))
        return self.components[c][i - (int(self._ends[c - 1]) if c else 0)]


@dataclass(frozen=True)
class Batches:
    """Which samples a rank reads: Megatron's pretraining sampler over a sample stream."""

    samples: Blend | Concat
    micro_batch_size: int
    world_size: int
    rank: int

    def micro_batch(self, start: int, micro: int) -> np.ndarray:
        """(micro_batch_size, seq_length + 1) tokens of micro-batch ``micro`` of the batch that starts at sample
        ``start`` (consumed samples)."""
        first = start + (micro * self.world_size + self.rank) * self.micro_batch_size
        return np.stack([self.samples[first + j] for j in range(self.micro_batch_size)])


def _open(prefix: str, field: str) -> IndexedDataset:
    if not exists(prefix):
        raise FileNotFoundError(
            f"{field}: {prefix}.bin/.idx not found; run the preprocess stage first or fix the prefix in the plan"
        )
    return IndexedDataset(prefix)


def train_samples(plan: RunPlan) -> Blend:
    """The training stream of a plan: a blend of its training prefixes (split applied when needed)."""
    data, train = plan.data, plan.train
    if not data.train_prefixes:
        raise ValueError("data.train_prefixes is empty; the plan names no training data")
    split = None if data.validation_prefixes else parse_split(data.split)
    components = []
    for k, prefix in enumerate(data.train_prefixes):
        ds = _open(prefix, f"data.train_prefixes[{k}]")
        docs = len(ds.document_indices) - 1
        last = split_bounds(docs, split)[1] if split else docs
        components.append(Component(ds, 0, last, train.seq_length, train.seed, salt=k, shuffle=True))
    weights = data.train_weights or [1.0] * len(components)
    return Blend(components, weights)


def validation_samples(plan: RunPlan) -> Concat | None:
    """Validation samples in file order, or None when the plan has no validation data."""
    data, seq = plan.data, plan.train.seq_length
    components = []
    if data.validation_prefixes:
        for k, prefix in enumerate(data.validation_prefixes):
            ds = _open(prefix, f"data.validation_prefixes[{k}]")
            components.append(Component(ds, 0, len(ds.document_indices) - 1, seq, 0, salt=k, shuffle=False))
    else:
        split = parse_split(data.split)
        for k, prefix in enumerate(data.train_prefixes):
            ds = _open(prefix, f"data.train_prefixes[{k}]")
            lo, hi = split_bounds(len(ds.document_indices) - 1, split)[1:3]
            if hi > lo:
                components.append(Component(ds, lo, hi, seq, 0, salt=k, shuffle=False))
    return Concat(components) if components else None
