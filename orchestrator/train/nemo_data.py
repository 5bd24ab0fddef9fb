"""Validation data as the MLPerf reference reads it: the first sequences of the validation file, in file order.

The reference patches megatron-core inside its container (``mcore.patch``: ``shuffle = index_split == Split.train``
in ``gpt_dataset.py``), so every evaluation of every seed scores the same first 5,760 sequences of
``c4-validation-91205-samples``. Stock megatron-core shuffles validation documents and samples with the run's seed:
each seed would evaluate a different random draw, not comparable with the reference's log-perplexity or with the
reference convergence points. :class:`ReferenceOrderGPTDataset` gives the reference's order without patching
anything: training splits are Megatron's own, unchanged; validation and test splits put the documents in file order
and sample ``i`` at token ``i * seq_length`` of their concatenation, as the patched code does. NeMo's validation
sampler starts every evaluation at sample 0 (``consumed_samples=0``), so each evaluation reads samples
``0 .. eval_batches * GBS - 1``.

The in-order indices are computed, not stored: Megatron sizes validation by the trainer's whole horizon (4.3e8
samples at GBS 1152 for 405B, tens of GiB of index arrays), while a document's start is one binary search over the
file's document lengths. Megatron's own ``__getitem__`` assembles each sample from them (tokens, labels, masks).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.utils import Split


class _Repeated:
    """The document index of ``epochs`` passes over ``documents`` in order, without materialising it."""

    def __init__(self, documents: np.ndarray, epochs: int):
        self.documents = documents
        self.shape = (len(documents) * epochs,)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> int:
        return int(self.documents[int(i) % len(self.documents)])


class _InOrderSamples:
    """Megatron's sample index for documents in order: entry ``i`` is ``(position in the document index, offset)`` of
    token ``i * seq_length`` of the concatenated documents (the start of sample ``i``, and the last token of
    sample ``i - 1``, which reads one extra token)."""

    def __init__(self, lengths: np.ndarray, seq_length: int, samples: int):
        self.starts = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))  # token offset of each document
        self.per_epoch = int(self.starts[-1])
        self.documents = len(lengths)
        self.seq_length = seq_length
        self.shape = (samples + 1, 2)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        epoch, token = divmod(int(i) * self.seq_length, self.per_epoch)
        document = int(np.searchsorted(self.starts, token, side="right")) - 1  # the one that holds the token
        return np.array([epoch * self.documents + document, token - int(self.starts[document])], dtype=np.int64)


class _Identity:
    def __init__(self, size: int):
        self.shape = (size,)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> int:
        return int(i)


class ReferenceOrderGPTDataset(GPTDataset):
    """Megatron's GPT dataset; validation and test in file order, as the MLPerf reference reads them."""

    def _build_document_sample_shuffle_indices(self) -> tuple[Any, Any, Any]:
        if self.index_split == Split.train:
            return super()._build_document_sample_shuffle_indices()
        tokens = self._get_num_tokens_per_epoch()
        epochs = self._get_num_epochs(tokens)
        extra = self.config.add_extra_token_to_sequence
        total = epochs * tokens - extra
        drop_last = self.config.drop_last_partial_validation_sequence if self.index_split == Split.valid else True
        samples = total // self.config.sequence_length if drop_last else -(-total // self.config.sequence_length)
        lengths = self.dataset.sequence_lengths[self.indices]
        return (
            _Repeated(self.indices, epochs),
            _InOrderSamples(lengths, self.config.sequence_length, samples),
            _Identity(samples),
        )
