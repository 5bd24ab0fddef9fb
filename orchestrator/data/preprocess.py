"""Tokenize JSON Lines into Megatron indexed datasets: the native engine, and NeMo's reference command.

For each ``--json-keys`` key the native engine writes ``<output-prefix>_<key>_document.bin/.idx``, byte-identical to
Megatron-LM's ``tools/preprocess_data.py`` given the same input, tokenizer and flags (one sequence per document,
EOD only after documents that have tokens, uint16 below 65500 tokens of vocabulary), then
``<output-prefix>.manifest.json``. The manifest is written last and is what marks the run complete: a rerun with the
same input and flags skips, a crash leaves no manifest, and a changed input, tokenizer or flag redoes the work.

Why it is fast. Megatron's tool pickles every document's ids back to one process, which converts and writes them
one by one; that process caps it. Here:

- the parent only reads: it decompresses, cuts the input into blocks of whole lines (``--block-bytes``) and hands
  them out, a bounded number at a time, so memory does not grow with the input;
- each worker parses a block with orjson, tokenizes all its documents at once (see
  :mod:`orchestrator.data.tokenizer` for the exact word cache), and appends the tokens, already in the output
  dtype, to its own partial file in one write;
- the parent merges blocks in input order as they finish: it copies each block's bytes from the worker's file and
  appends its lengths to the index. The result is that of a sequential run, whatever ``--workers`` is.

Bad records (invalid JSON, a missing key, a value that is not a string, invalid UTF-8) stop the run with
``file:line`` and publish nothing; ``--on-bad-record skip`` leaves them out, counts them and names the first ones.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import multiprocessing
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

import orchestrator
from orchestrator.atomic import atomic_write_json, locked, remove_stale_siblings
from orchestrator.data import indexed
from orchestrator.data.preprocess_job import (
    MANIFEST_KIND,
    MANIFEST_VERSION,
    PreprocessConfig,
    PreprocessError,
    add_arguments,
    config_from_args,
    file_identity,
    is_complete,
    read_manifest,
)
from orchestrator.data.progress import RateProgress
from orchestrator.data.stream import (
    JSONL_SUFFIXES,
    CorruptInput,
    content_blocks,
    line_blocks,
    parse_record,
)
from orchestrator.data.tokenizer import HUGGINGFACE_TYPES, Tokenizer, TokenizerError, TokenizerSpec

BAD_EXAMPLES_KEPT = 20
NEMO_SCRIPT = "/opt/NeMo/scripts/nlp_language_modeling/preprocess_data_for_megatron.py"


@dataclass
class BlockResult:
    """What a worker reports for one block of lines; the tokens themselves are in its partial files."""

    documents: int = 0
    text_bytes: int = 0
    tokens: int = 0
    parts: dict[str, tuple[str, int, int, bytes]] = field(default_factory=dict)  # key -> (file, offset, size, lengths)
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    cache_hits: int = 0
    cache_misses: int = 0


class _Worker:
    tokenizer: Tokenizer
    keys: tuple[str, ...]
    append_eod: bool
    stop_at_bad: bool
    files: dict[str, tuple[str, int]]


_worker = _Worker()


def _init_worker(spec: TokenizerSpec, keys: tuple[str, ...], append_eod: bool, stop_at_bad: bool, scratch: str) -> None:
    _worker.tokenizer = spec.build()
    _worker.keys = keys
    _worker.append_eod = append_eod
    _worker.stop_at_bad = stop_at_bad
    _worker.files = {}
    for i, key in enumerate(keys):
        path = os.path.join(scratch, f"worker-{os.getpid()}-{i}.bin")
        _worker.files[key] = (path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))


def _encode_block(first_line: int, block: bytes) -> BlockResult:
    """Parse and tokenize one block of lines; append its tokens to this worker's partial files."""
    worker = _worker
    lines = block.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    result = BlockResult()
    texts: list[list[str]] = [[] for _ in worker.keys]
    for number, line in enumerate(lines, first_line):
        if line.endswith(b"\r"):
            line = line[:-1]
        values, reason = parse_record(line, worker.keys)
        if values is None:
            result.bad.append((number, reason))
            if worker.stop_at_bad:
                return result
            continue
        for column, value in zip(texts, values):
            column.append(value)
    result.documents = len(texts[0]) if texts else 0
    tokenizer = worker.tokenizer
    hits, misses = getattr(tokenizer, "hits", 0), getattr(tokenizer, "misses", 0)
    for key, column in zip(worker.keys, texts):
        result.text_bytes += sum(len(t) if t.isascii() else len(t.encode("utf-8")) for t in column)
        data, lengths = tokenizer.encode_documents(column, worker.append_eod)
        path, fd = worker.files[key]
        offset = os.lseek(fd, 0, os.SEEK_END)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        result.tokens += int(lengths.sum())
        result.parts[key] = (path, offset, len(data), lengths.astype(np.int32).tobytes())
    result.cache_hits = getattr(tokenizer, "hits", 0) - hits
    result.cache_misses = getattr(tokenizer, "misses", 0) - misses
    return result


# --- parent side ---------------------------------------------------------------------------------------------


class _Merger:
    """Appends finished blocks, in input order, to the final datasets."""

    def __init__(self, config: PreprocessConfig, dtype: np.dtype) -> None:
        self.config = config
        self.writers = {key: indexed.IndexedDatasetWriter(config.output(key), dtype.type) for key in config.json_keys}
        self.dtype = dtype
        self.documents = self.text_bytes = self.tokens = self.cache_hits = self.cache_misses = 0
        self.bad: list[tuple[int, str]] = []
        self.bad_count = 0
        self._sources: dict[str, int] = {}

    def add(self, result: BlockResult) -> None:
        if result.bad:
            self.bad_count += len(result.bad)
            self.bad.extend(result.bad[: max(0, BAD_EXAMPLES_KEPT - len(self.bad))])
            if self.config.on_bad_record == "fail":
                line, reason = result.bad[0]
                raise PreprocessError(
                    f"{self.config.input}:{line}: {reason}. Nothing was written; fix the record, or pass "
                    "--on-bad-record skip to leave such records out"
                )
        for key, (path, offset, size, lengths) in result.parts.items():
            fd = self._sources.get(path)
            if fd is None:
                fd = self._sources[path] = os.open(path, os.O_RDONLY)
            data = os.pread(fd, size, offset)
            if len(data) != size:
                raise PreprocessError(f"{path}: partial file shorter than reported ({len(data)} < {size} bytes)")
            self.writers[key].add_documents(
                np.frombuffer(data, dtype=self.dtype), np.frombuffer(lengths, dtype=np.int32)
            )
        self.documents += result.documents
        self.text_bytes += result.text_bytes
        self.tokens += result.tokens
        self.cache_hits += result.cache_hits
        self.cache_misses += result.cache_misses

    def close_sources(self) -> None:
        for fd in self._sources.values():
            os.close(fd)
        self._sources.clear()

    def abort(self) -> None:
        self.close_sources()
        for writer in self.writers.values():
            writer.abort()

    def finalize(self) -> dict[str, dict[str, Any]]:
        self.close_sources()
        outputs = {}
        for key, writer in self.writers.items():
            writer.finalize()
            prefix = self.config.output(key)
            dataset = indexed.IndexedDataset(prefix)
            outputs[key] = {
                "prefix": str(Path(prefix).resolve()),
                "bin_bytes": indexed.bin_path(prefix).stat().st_size,
                "idx_bytes": indexed.idx_path(prefix).stat().st_size,
                "documents": len(dataset.document_indices) - 1,
                "sequences": len(dataset),
                "tokens": dataset.num_tokens,
                "dtype": dataset.dtype.name,
            }
        return outputs


def _check(config: PreprocessConfig) -> None:
    if not config.input.is_file():
        raise PreprocessError(f"--input {config.input}: no such file")
    if not config.input.name.endswith(JSONL_SUFFIXES):
        raise PreprocessError(f"--input {config.input}: expected JSON Lines named {', '.join(JSONL_SUFFIXES)}")
    if not config.json_keys:
        raise PreprocessError("--json-keys: give at least one key")
    if config.workers < 1:
        raise PreprocessError(f"--workers {config.workers}: give at least 1")
    if config.on_bad_record not in ("fail", "skip"):
        raise PreprocessError(f"--on-bad-record {config.on_bad_record!r}: use fail or skip")


def _remove_leftovers(config: PreprocessConfig) -> None:
    """Scratch folders and temporary outputs of a killed run of this job (called under the prefix's lock)."""
    prefix = Path(config.output_prefix).resolve()
    for leftover in prefix.parent.glob(f".{prefix.name}.partial-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for key in config.json_keys:
        for ext in ("bin", "idx"):
            remove_stale_siblings(Path(f"{config.output(key)}.{ext}").resolve())


def preprocess(config: PreprocessConfig, force: bool = False, live_progress: bool | None = None) -> dict[str, Any]:
    """Run the native engine; return the manifest (that of the earlier run when it is complete and not forced).

    Writers of one output prefix take turns (a lock file next to it): a second one waits, then finds the first
    one's output complete and skips, instead of deleting the first one's temporary files."""
    _check(config)

    def waiting() -> None:
        print(f"{config.lock_path}: another preprocessing of this output is running; waiting for it", file=sys.stderr)

    with locked(config.lock_path, waiting):
        return _preprocess(config, force, live_progress)


def _preprocess(config: PreprocessConfig, force: bool, live_progress: bool | None) -> dict[str, Any]:
    # Here only for its identity, end-of-document id and dtype: without the word cache, whose exactness check walks
    # the whole vocabulary (each worker builds its own, with the cache).
    tokenizer = replace(config.tokenizer, cache_entries=0).build()
    if config.append_eod:
        tokenizer.check_eod()
    identity = tokenizer.identity()
    if not force and is_complete(config, identity):
        print(
            f"{config.manifest_path}: complete for this input and flags; skipping (--force redoes it)", file=sys.stderr
        )
        manifest = read_manifest(config)
        assert manifest is not None
        return manifest
    # The outputs are about to change: first make the old ones unreadable as complete (manifest, then index and
    # data), so that a redo that fails never leaves the old dataset looking finished.
    config.manifest_path.unlink(missing_ok=True)
    for key in config.json_keys:
        indexed.remove(config.output(key))
    out_dir = Path(config.output_prefix).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(config)
    scratch = tempfile.mkdtemp(prefix=f".{Path(config.output_prefix).name}.partial-", dir=out_dir)

    digest = hashlib.sha256()
    raw_read = 0

    def on_raw(raw: bytes) -> None:
        nonlocal raw_read
        digest.update(raw)
        raw_read += len(raw)

    merger = _Merger(config, tokenizer.dtype)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    window = 2 * config.workers + 1
    try:
        with context.Pool(
            config.workers,
            initializer=_init_worker,
            initargs=(config.tokenizer, config.json_keys, config.append_eod, config.on_bad_record == "fail", scratch),
        ) as pool:
            progress = RateProgress(
                f"tokenize {config.input.name}",
                config.input.stat().st_size,
                {"documents": "docs/s", "text_bytes": "B/s text", "tokens": "tokens/s"},
                live=live_progress,
            )
            pending: collections.deque[tuple[int, Any]] = collections.deque()
            merged_raw = 0

            def merge_oldest() -> None:
                nonlocal merged_raw
                raw_mark, handle = pending.popleft()
                result = handle.get()
                merger.add(result)
                progress.update(
                    raw_mark - merged_raw,
                    documents=result.documents,
                    text_bytes=result.text_bytes,
                    tokens=result.tokens,
                )
                merged_raw = raw_mark

            try:
                for first_line, block in line_blocks(content_blocks(config.input, on_raw), config.block_bytes):
                    pending.append((raw_read, pool.apply_async(_encode_block, (first_line, block))))
                    while len(pending) >= window:
                        merge_oldest()
                while pending:
                    merge_oldest()
            finally:
                seconds = progress.close()
    except CorruptInput as exc:
        merger.abort()
        raise PreprocessError(f"{exc}. Nothing was written; re-fetch or re-consolidate the input") from None
    except BaseException:
        merger.abort()
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    outputs = merger.finalize()
    lookups = merger.cache_hits + merger.cache_misses
    manifest = {
        "kind": MANIFEST_KIND,
        "version": MANIFEST_VERSION,
        "engine": "native",
        "orchestrator_version": orchestrator.__version__,
        "input": file_identity(config.input) | {"sha256": "sha256:" + digest.hexdigest()},
        "flags": config.flags(),
        "tokenizer": identity,
        "outputs": outputs,
        "documents": merger.documents,
        "text_bytes": merger.text_bytes,
        "tokens": merger.tokens,
        "bad_records": merger.bad_count,
        "bad_examples": [f"{config.input}:{line}: {reason}" for line, reason in merger.bad],
        "workers": config.workers,
        "seconds": round(seconds, 3),
        "word_cache_hit_rate": round(merger.cache_hits / lookups, 4) if lookups else None,
    }
    atomic_write_json(config.manifest_path, manifest)
    rate = max(seconds, 1e-9)
    print(
        f"{config.input.name}: {merger.documents} documents, {merger.tokens} tokens in {seconds:.1f} s "
        f"({merger.documents / rate:,.0f} docs/s, {merger.text_bytes / rate / 1e6:.2f} MB/s of text, "
        f"{merger.tokens / rate:,.0f} tokens/s) -> {', '.join(config.output(k) for k in config.json_keys)}",
        file=sys.stderr,
    )
    if merger.bad_count:
        print(f"skipped {merger.bad_count} bad records, first: {manifest['bad_examples'][0]}", file=sys.stderr)
    return manifest


# --- NeMo's reference tool -----------------------------------------------------------------------------------


def nemo_command(config: PreprocessConfig, script: str = NEMO_SCRIPT, python: str = "python3") -> list[str]:
    """The same job as NeMo's ``preprocess_data_for_megatron.py`` command line (what MLPerf's ``preprocess.sh`` runs).

    NeMo's Hugging Face path is the slow tokenizer with ``convert_tokens_to_ids(tokenize(text))``: no BOS.
    """
    argv = [python, script, "--input", str(config.input), "--output-prefix", config.output_prefix]
    argv += ["--json-keys", *config.json_keys, "--dataset-impl", "mmap", "--workers", str(config.workers)]
    if config.tokenizer.tokenizer_type in HUGGINGFACE_TYPES:
        argv += ["--tokenizer-library", "huggingface", "--tokenizer-type", config.tokenizer.tokenizer_model]
    else:
        argv += ["--tokenizer-library", "sentencepiece", "--tokenizer-model", config.tokenizer.tokenizer_model]
    if config.append_eod:
        argv.append("--append-eod")
    return argv


# --- command line --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        if args.engine == "nemo":
            print(shlex.join(nemo_command(config)))
            return 0
        if args.partitions != 1:
            print(
                "note: --partitions is not needed by the native engine; documents keep their input order",
                file=sys.stderr,
            )
        preprocess(config, force=args.force)
    except (PreprocessError, TokenizerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.data.preprocess", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
