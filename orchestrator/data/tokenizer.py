"""Tokenizers of the preprocessing engine, with Megatron-LM's semantics as ``tools/preprocess_data.py`` uses them.

``tools/preprocess_data.py`` builds its tokenizer with ``build_tokenizer(args)`` and then uses three things:
``tokenize(text)`` for the ids of one document, ``eod`` for ``--append-eod`` and ``vocab_size`` for the token dtype
(``DType.optimal_dtype``: uint16 below 65500, else int32). What each type means there (Megatron-LM
``megatron/core/tokenizers/text/libraries``):

- ``SentencePieceTokenizer`` (also ``GPTSentencePieceTokenizer``, ``Llama2Tokenizer``): ``encode_as_ids(text)`` of
  the model file, no BOS, no EOS; ``eod`` is the model's ``eos_id()``; ``vocab_size`` is ``get_piece_size()``.
  (The extra-whitespace and legacy special-token branches are off under the default flags and not offered here.)
- ``HuggingFaceTokenizer``: ``AutoTokenizer.from_pretrained(path, use_fast=not --tokenizer-hf-no-use-fast)``; ids are
  ``tokenizer(text).input_ids`` (BOS included for Llama/Mistral) unless ``--tokenizer-hf-no-include-special-tokens``,
  then ``convert_tokens_to_ids(tokenize(text))``, which is also what NeMo's ``preprocess_data_for_megatron.py`` (the
  MLPerf reference) computes; ``eod`` is the id of ``eos_token``; ``vocab_size`` is ``len(tokenizer)``. For the slow
  legacy ``LlamaTokenizer`` (MLPerf's Mixtral folder) without special tokens, texts that spell no added token take
  the SentencePiece route below, which gives the same ids.

Speed. SentencePiece's BPE encodes about 3 MB/s per core. :class:`SentencePieceTokenizer` adds an exact cache:
SentencePiece BPE only merges adjacent symbols whose concatenation is a piece, so where no piece can span a position
the text can be cut there and the halves encoded apart. For models whose pieces never hold a space after another
character (checked on the vocabulary at load time), a document cut before each space that follows a word gives
"words" whose ids can be cached; only unseen words reach SentencePiece. The unseen words of a whole block go to it
together, joined by spaces into a few texts (a call per word nearly doubles the cost of encoding it), and the
ids are cut back at the words' byte boundaries. The cache is bounded, and it is only used when the normalizer is
the identity (no NFKC, no whitespace folding) and the model is BPE; otherwise every document goes to SentencePiece
whole. Tests compare the two paths id for id on real text, diverse text, edge cases and random strings.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.data.indexed import optimal_dtype
from orchestrator.data.stream import file_digest

SENTENCEPIECE_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer")
HUGGINGFACE_TYPES = ("HuggingFaceTokenizer",)
TOKENIZER_TYPES = SENTENCEPIECE_TYPES + HUGGINGFACE_TYPES

SPACE_SYMBOL = "\u2581"  # SentencePiece's escaped space
DEFAULT_CACHE_ENTRIES = 1 << 20  # ~150 MB per worker at most; C4's frequent words fit many times over
_WORD_END = re.compile(r"(?<=[^ ]) ")  # a space that follows a non-space character
_RUN = "\x00"  # stands for a space inside a run of spaces, in cache keys only
_BATCH_ITEMS = 64  # unseen words per SentencePiece call: as fast from 8 to 64 here, slower on much longer texts


class TokenizerError(ValueError):
    """A tokenizer cannot be built or cannot do what the flags ask (message says which and the fix)."""


@dataclass(frozen=True)
class TokenizerSpec:
    """What to build, in Megatron's flag vocabulary; picklable, so each worker builds its own copy."""

    tokenizer_type: str
    tokenizer_model: str
    hf_use_fast: bool = True
    hf_include_special_tokens: bool = True
    cache_entries: int = DEFAULT_CACHE_ENTRIES

    def build(self) -> Tokenizer:
        if self.tokenizer_type in SENTENCEPIECE_TYPES:
            return SentencePieceTokenizer(self.tokenizer_model, cache_entries=self.cache_entries)
        if self.tokenizer_type in HUGGINGFACE_TYPES:
            return HuggingFaceTokenizer(
                self.tokenizer_model, self.hf_use_fast, self.hf_include_special_tokens, cache_entries=self.cache_entries
            )
        raise TokenizerError(f"--tokenizer-type {self.tokenizer_type!r} is not supported; use one of {TOKENIZER_TYPES}")


class Tokenizer:
    """Common surface: ids of documents, the EOD id, the vocabulary size and the token dtype it implies."""

    vocab_size: int
    eod: int | None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(optimal_dtype(self.vocab_size))

    def identity(self) -> dict[str, Any]:
        """What decides the ids (recorded in manifests, so outputs of another tokenizer are never taken as done)."""
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, exactly as Megatron's ``tokenize``."""
        raise NotImplementedError

    def check_eod(self) -> int:
        if self.eod is None or self.eod < 0:
            raise TokenizerError(
                f"{self.identity()['model']}: the tokenizer has no end-of-document token; drop --append-eod"
            )
        return self.eod

    def encode_documents(self, texts: Sequence[str], append_eod: bool) -> tuple[bytes, np.ndarray]:
        """All documents' tokens back to back in :attr:`dtype`, and each document's token count.

        As in ``preprocess_data.py``, EOD is appended only to documents that have tokens.
        """
        ids = self.encode(texts)
        if append_eod:
            eod = self.check_eod()
            ids = [doc + [eod] if doc else doc for doc in ids]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=int(lengths.sum()))
        return flat.tobytes(), lengths


def _join_documents(docs: list[bytes], tokenizer: Tokenizer, append_eod: bool) -> tuple[bytes, np.ndarray]:
    """Documents' token bytes back to back (EOD after those with tokens) and their token counts."""
    if append_eod:
        eod = np.asarray([tokenizer.check_eod()], dtype=tokenizer.dtype).tobytes()
        docs = [d + eod if d else d for d in docs]
    lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs)) // tokenizer.dtype.itemsize
    return b"".join(docs), lengths


# --- SentencePiece ---------------------------------------------------------------------------------------------


def _protobuf_fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; enough to read SentencePiece's model header."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, varint()
        elif wire == 1:
            yield number, wire, data[pos : pos + 8]
            pos += 8
        elif wire == 2:
            size = varint()
            yield number, wire, data[pos : pos + size]
            pos += size
        elif wire == 5:
            yield number, wire, data[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


@dataclass(frozen=True)
class SentencePieceModelInfo:
    """The parts of a SentencePiece ``ModelProto`` that decide whether the word cache is exact."""

    model_type: int = 1  # UNIGRAM=1, BPE=2
    treat_whitespace_as_suffix: bool = False
    has_charsmap: bool = False
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True

    @classmethod
    def parse(cls, model: bytes) -> SentencePieceModelInfo:
        fields: dict[str, Any] = {}
        for number, _, value in _protobuf_fields(model):
            if number == 2:  # TrainerSpec
                for sub, _, v in _protobuf_fields(value):
                    if sub == 3:
                        fields["model_type"] = v
                    elif sub == 24:
                        fields["treat_whitespace_as_suffix"] = bool(v)
            elif number == 3:  # NormalizerSpec
                for sub, _, v in _protobuf_fields(value):
                    if sub == 2:
                        fields["has_charsmap"] = len(v) > 0
                    elif sub == 3:
                        fields["add_dummy_prefix"] = bool(v)
                    elif sub == 4:
                        fields["remove_extra_whitespaces"] = bool(v)
                    elif sub == 5:
                        fields["escape_whitespaces"] = bool(v)
        return cls(**fields)


class SentencePieceTokenizer(Tokenizer):
    """Megatron's ``SentencePieceTokenizer`` under default flags: ``encode_as_ids(text)``, eod = ``eos_id()``."""

    def __init__(self, model_path: str | os.PathLike[str], cache_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        import sentencepiece

        path = Path(model_path)
        if not path.is_file():
            raise TokenizerError(f"--tokenizer-model {path}: no such file (a SentencePiece .model file is expected)")
        blob = path.read_bytes()
        self.path = path
        self.sha256 = "sha256:" + hashlib.sha256(blob).hexdigest()
        self.info = SentencePieceModelInfo.parse(blob)
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=blob)
        self.vocab_size = self.sp.get_piece_size()
        self.eod = self.sp.eos_id()
        self.cache_entries = cache_entries
        self._spans = np.zeros(0, dtype=np.int64)  # bytes of text each id stands for
        self.fast_path_blocker = self._fast_path_blocker()
        self._cache: dict[str, bytes] = {}  # word -> ids of (space symbol + word)
        self.hits = 0
        self.misses = 0
        if self.fast_path_blocker is None:
            self._reset_cache()

    def identity(self) -> dict[str, Any]:
        return {
            "type": "SentencePieceTokenizer",
            "model": str(self.path),
            "model_sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "eod": self.eod,
        }

    def _fast_path_blocker(self) -> str | None:
        """Why the word cache would not be exact for this model, or None when it is (then note what each id spans)."""
        info = self.info
        if self.cache_entries <= 0:
            return "word cache disabled"
        if info.model_type != 2:
            return "not a BPE model"
        if info.has_charsmap or not info.escape_whitespaces or info.remove_extra_whitespaces:
            return "normalizer is not the identity with escaped spaces"
        if not info.add_dummy_prefix or info.treat_whitespace_as_suffix:
            return "model does not prefix words with the space symbol"
        sp = self.sp
        space_id = sp.piece_to_id(SPACE_SYMBOL)
        if space_id == sp.unk_id() or sp.is_control(space_id):
            return "the space symbol is not a piece"
        # Ordinary pieces (user-defined included: SentencePiece matches those in text too) as the text they stand for.
        ids = [i for i in range(self.vocab_size) if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))]
        texts = [piece.replace(SPACE_SYMBOL, " ") for piece in sp.id_to_piece(ids)]
        for i, text in zip(ids, texts):
            if _WORD_END.search(text):
                return f"piece {i} {sp.id_to_piece(i)!r} spans a word boundary"
        spans = np.full(self.vocab_size, 1 << 40, dtype=np.int64)  # unknown and control ids: never a boundary
        spans[[i for i in range(self.vocab_size) if sp.is_byte(i)]] = 1
        spans[ids] = [len(t.encode("utf-8")) for t in texts]
        self._spans = spans
        return None

    def _reset_cache(self) -> None:
        self._cache.clear()
        # "" stands for the lone space symbol (a trailing space); SentencePiece gives [] for an empty string.
        self._cache[""] = np.asarray([self.sp.piece_to_id(SPACE_SYMBOL)], dtype=self.dtype).tobytes()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        if self.fast_path_blocker is not None:
            return self.sp.encode(list(texts), num_threads=1)  # workers are the parallelism
        return [np.frombuffer(ids, dtype=self.dtype).tolist() for ids in self.encode_texts(texts)]

    def encode_documents(self, texts: Sequence[str], append_eod: bool) -> tuple[bytes, np.ndarray]:
        if self.fast_path_blocker is not None:
            return super().encode_documents(texts, append_eod)
        return _join_documents(self.encode_texts(texts), self, append_eod)

    def encode_texts(self, texts: Sequence[str]) -> list[bytes]:
        """Each text's ids as bytes of :attr:`dtype`, through the word cache when the model allows it.

        Words are looked up document by document; the words none of ``texts`` had seen go to SentencePiece
        together, after the lookups, in a few long calls (a call per word nearly doubles the cost of encoding it).
        The cache is emptied before a call that finds it full, so it holds at most ``cache_entries`` plus what
        one call adds.
        """
        dtype = self.dtype
        if self.fast_path_blocker is not None:
            return [np.asarray(ids, dtype=dtype).tobytes() for ids in self.sp.encode(list(texts), num_threads=1)]
        if len(self._cache) > self.cache_entries:
            self._reset_cache()
        lookup = self._cache.get
        out: list[bytes] = []
        pending: list[tuple[int, list[str], list[bytes | None], list[int]]] = []  # texts with unseen words:
        # (position in out, words, their cached ids or None, where the Nones are)
        unseen: dict[str, None] = {}
        for text in texts:
            if not text:
                out.append(b"")
                continue
            if SPACE_SYMBOL in text or _RUN in text:  # a literal space symbol merges like a space; _RUN is ours
                self.misses += 1
                out.append(np.asarray(self.sp.encode(text), dtype=dtype).tobytes())
                continue
            words = _words(text)
            parts = list(map(lookup, words))
            self.hits += len(words)
            try:
                out.append(b"".join(parts))  # type: ignore[arg-type]
            except TypeError:  # some words are not cached yet
                holes = list(itertools.compress(range(len(parts)), map(operator.not_, parts)))
                unseen.update(zip(map(words.__getitem__, holes), itertools.repeat(None)))
                pending.append((len(out), words, parts, holes))
                out.append(b"")
        if pending:
            self.hits -= len(unseen)  # a miss is a distinct word the cache lacked, however often the texts repeat it
            self.misses += len(unseen)
            self._learn(list(unseen))
            cache = self._cache
            for position, words, parts, holes in pending:
                for k in holes:
                    parts[k] = cache[words[k]]
                out[position] = b"".join(parts)  # type: ignore[arg-type]
        return out

    def _learn(self, words: list[str]) -> None:
        """Cache the ids of words not seen yet.

        A word stands for the space symbol followed by the word, which is what SentencePiece encodes when it adds
        its dummy prefix to the word alone.
        """
        self._cache.update(zip(words, self._encode_items([w.replace(_RUN, " ") for w in words])))

    def _encode_items(self, items: list[str]) -> list[bytes]:
        """The ids SentencePiece gives each of ``items`` alone (space symbol first), from few calls.

        Items are joined by spaces, _BATCH_ITEMS at a time, which cuts nothing SentencePiece would merge (each
        space follows a non-space); the ids are then cut back at the items' byte boundaries, found from the bytes
        of text each id stands for. An item that is empty or ends in a space would merge with the next space, so
        it is encoded alone, and so is any batch whose boundaries do not fall between ids.
        """
        dtype = self.dtype
        size = dtype.itemsize
        encode = self.sp.encode
        out = [b""] * len(items)
        alone = [k for k, item in enumerate(items) if item[-1:] in ("", " ")]
        for k in alone:
            out[k] = np.asarray(encode(items[k]), dtype=dtype).tobytes()
        joinable = (
            list(itertools.filterfalse(set(alone).__contains__, range(len(items)))) if alone else range(len(items))
        )
        for start in range(0, len(joinable), _BATCH_ITEMS):
            batch = joinable[start : start + _BATCH_ITEMS]
            texts = list(map(items.__getitem__, batch))
            ids = np.asarray(encode(" ".join(texts)), dtype=np.int64)
            ends = np.cumsum(np.fromiter(map(len, map(str.encode, texts)), dtype=np.int64, count=len(texts)) + 1)
            reached = np.cumsum(self._spans[ids])
            cuts = np.searchsorted(reached, ends)
            if cuts[-1] >= len(reached) or not np.array_equal(reached[cuts], ends):
                for k, text in zip(batch, texts):
                    out[k] = np.asarray(encode(text), dtype=dtype).tobytes()
                continue
            data = ids.astype(dtype).tobytes()
            bounds = ((cuts + 1) * size).tolist()
            pieces = map(data.__getitem__, map(slice, [0, *bounds[:-1]], bounds))
            if alone:
                for k, piece in zip(batch, pieces):
                    out[k] = piece
            else:
                out[start : start + len(batch)] = pieces
        return out


def _words(text: str) -> list[str]:
    """A text cut before each space that follows a non-space: the cache's words (their spaces are the cut ones)."""
    if text[0] == " ":  # leading spaces join the first word: cut only where a word ends
        return _WORD_END.split(text)
    if "  " in text:  # the same cut at C speed: a space after a space becomes _RUN, which is no cut point
        return text.replace("  ", " " + _RUN).replace(_RUN + " ", _RUN + _RUN).split(" ")
    return text.split(" ")


# --- Hugging Face ----------------------------------------------------------------------------------------------


class HuggingFaceTokenizer(Tokenizer):
    """Megatron's ``HuggingFaceTokenizer``: AutoTokenizer with the special-token set-up Megatron applies."""

    def __init__(
        self,
        path: str,
        use_fast: bool = True,
        include_special_tokens: bool = True,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise TokenizerError(
                "--tokenizer-type HuggingFaceTokenizer needs the transformers package (pip install transformers)"
            ) from exc
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are processes already
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, use_fast=use_fast, trust_remote_code=False)
        except Exception as exc:  # transformers raises many types for a bad folder
            raise TokenizerError(f"--tokenizer-model {path}: cannot load a Hugging Face tokenizer: {exc}") from exc
        self.path = path
        self.use_fast = use_fast
        self.include_special_tokens = include_special_tokens
        tok = self.tokenizer
        # Megatron's HuggingFaceTokenizer.__init__ (defaults): sep from eos or eos from sep, bos/cls from each other.
        special: dict[str, Any] = {}
        if tok.sep_token is None and tok.eos_token:
            special["sep_token"] = tok.eos_token
        elif tok.eos_token is None and tok.sep_token:
            special["eos_token"] = tok.sep_token
        if tok.bos_token is None and tok.cls_token:
            special["bos_token"] = tok.cls_token
        if tok.cls_token is None and tok.bos_token:
            special["cls_token"] = tok.bos_token
        special["additional_special_tokens"] = []
        tok.add_special_tokens(special)
        self.vocab_size = len(tok)
        self.eod = tok.convert_tokens_to_ids(tok.eos_token) if tok.eos_token is not None else None
        # NeMo's (MLPerf's) ids, convert_tokens_to_ids(tokenize(text)) of the slow legacy LlamaTokenizer, are
        # sp_model.encode(text) for any text that spells none of the added tokens (<s>, </s>, <unk>...): those texts
        # take the SentencePiece route with its word cache, the others the tokenizer itself.
        self._sentencepiece: SentencePieceTokenizer | None = None
        self._added = tuple(tok.added_tokens_encoder)
        if (
            not include_special_tokens
            and type(tok).__name__ == "LlamaTokenizer"
            and getattr(tok, "legacy", False)
            and not getattr(tok, "split_special_tokens", False)
            and not getattr(tok, "do_lower_case", False)
            and Path(getattr(tok, "vocab_file", "") or "").is_file()
        ):
            route = SentencePieceTokenizer(tok.vocab_file, cache_entries=cache_entries)
            if route.vocab_size == self.vocab_size:
                self._sentencepiece = route

    def identity(self) -> dict[str, Any]:
        files = sorted(p for p in Path(self.path).glob("*") if p.is_file()) if Path(self.path).is_dir() else []
        return {
            "type": "HuggingFaceTokenizer",
            "model": str(self.path),
            "class": type(self.tokenizer).__name__,
            "use_fast": self.use_fast,
            "include_special_tokens": self.include_special_tokens,
            "files_sha256": {p.name: file_digest(p) for p in files},
            "vocab_size": self.vocab_size,
            "eod": self.eod,
        }

    @property
    def sentencepiece_route(self) -> bool:
        return self._sentencepiece is not None

    @property
    def hits(self) -> int:
        return self._sentencepiece.hits if self._sentencepiece is not None else 0

    @property
    def misses(self) -> int:
        return self._sentencepiece.misses if self._sentencepiece is not None else 0

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        tok = self.tokenizer
        if self.include_special_tokens:
            return tok(list(texts)).input_ids
        if self._sentencepiece is not None:
            return [np.frombuffer(ids, dtype=self.dtype).tolist() for ids in self._route(texts)]
        return [tok.convert_tokens_to_ids(tok.tokenize(t)) for t in texts]

    def encode_documents(self, texts: Sequence[str], append_eod: bool) -> tuple[bytes, np.ndarray]:
        if self._sentencepiece is None:
            return super().encode_documents(texts, append_eod)
        return _join_documents(self._route(texts), self, append_eod)

    def _route(self, texts: Sequence[str]) -> list[bytes]:
        """Texts that spell an added token through the tokenizer itself, all others through SentencePiece at once."""
        assert self._sentencepiece is not None
        tok = self.tokenizer
        spelled = [any(token in t for token in self._added) for t in texts]
        plain = iter(self._sentencepiece.encode_texts([t for t, s in zip(texts, spelled) if not s]))
        return [
            np.asarray(tok.convert_tokens_to_ids(tok.tokenize(t)), dtype=self.dtype).tobytes() if s else next(plain)
            for t, s in zip(texts, spelled)
        ]
