"""A preprocessing job as data: its config in Megatron's flag vocabulary, its argv both ways, and whether it is complete.

The engine (:mod:`orchestrator.data.preprocess`) runs a job; this module is what the login node needs to render a
stage's command and to skip a job whose outputs are complete, without the engine's dependencies. A job is complete
when ``<output-prefix>.manifest.json`` (written last by the engine) describes this input (path, size, modification
time), these flags and this tokenizer (its model files' SHA-256), and the ``.bin``/``.idx`` have the sizes it records.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.data import indexed
from orchestrator.data.consolidate import stem
from orchestrator.data.stream import file_digest
from orchestrator.data.tokenizer import DEFAULT_CACHE_ENTRIES, TOKENIZER_TYPES, TokenizerSpec

#: The program that runs a job (``python -m``).
MODULE = "orchestrator.data.preprocess"
MANIFEST_KIND = "orchestrator.preprocess"
MANIFEST_VERSION = 1
BLOCK_BYTES = 2 << 20


class PreprocessError(RuntimeError):
    """The run cannot complete; the message names the file (and line) and the fix."""


def document_prefix(output_prefix: str, key: str = "text") -> str:
    """Megatron's dataset name for one JSON key: ``{output_prefix}_{key}_document`` (``.bin``/``.idx`` follow)."""
    return f"{output_prefix}_{key}_document"


def dataset_prefix(folder: str | os.PathLike[str], merged_file: str) -> str:
    """The dataset that tokenizing a merged C4 file writes into ``folder`` (``c4-train.en_6_text_document``)."""
    return document_prefix(str(Path(folder) / stem(merged_file)))


def available_cpus() -> int:
    """Cores this process may use (Slurm's cpuset included), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class PreprocessConfig:
    """One preprocessing job, in the flag vocabulary of ``tools/preprocess_data.py``."""

    input: Path
    output_prefix: str
    tokenizer: TokenizerSpec
    json_keys: tuple[str, ...] = ("text",)
    append_eod: bool = False
    workers: int = field(default_factory=available_cpus)
    on_bad_record: str = "fail"
    block_bytes: int = BLOCK_BYTES

    def output(self, key: str) -> str:
        return document_prefix(self.output_prefix, key)

    @property
    def manifest_path(self) -> Path:
        return Path(f"{self.output_prefix}.manifest.json")

    @property
    def lock_path(self) -> Path:
        """Writers of this job's outputs take turns on it; it stays (removing a lock file others wait on is racy)."""
        prefix = Path(self.output_prefix)
        return prefix.with_name(f".{prefix.name}.lock")

    def to_argv(self) -> list[str]:
        """The command-line flags of exactly this job (:func:`config_from_argv` reads them back)."""
        tok = self.tokenizer
        argv = [
            "--input",
            str(self.input),
            "--output-prefix",
            self.output_prefix,
            "--json-keys",
            *self.json_keys,
            "--tokenizer-type",
            tok.tokenizer_type,
            "--tokenizer-model",
            tok.tokenizer_model,
        ]
        if not tok.hf_use_fast:
            argv.append("--tokenizer-hf-no-use-fast")
        if not tok.hf_include_special_tokens:
            argv.append("--tokenizer-hf-no-include-special-tokens")
        if self.append_eod:
            argv.append("--append-eod")
        argv += ["--workers", str(self.workers), "--on-bad-record", self.on_bad_record]
        if self.block_bytes != BLOCK_BYTES:
            argv += ["--block-bytes", str(self.block_bytes)]
        if tok.cache_entries != DEFAULT_CACHE_ENTRIES:
            argv += ["--word-cache", str(tok.cache_entries)]
        return argv

    def flags(self) -> dict[str, Any]:
        """Everything that decides the output bytes (and nothing that only decides speed)."""
        spec = asdict(self.tokenizer)
        spec.pop("cache_entries")
        return {
            "json_keys": list(self.json_keys),
            "append_eod": self.append_eod,
            "on_bad_record": self.on_bad_record,
            "tokenizer": spec,
        }


def file_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_manifest(config: PreprocessConfig) -> dict[str, Any] | None:
    try:
        manifest = json.loads(config.manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("kind") == MANIFEST_KIND else None


def is_complete(config: PreprocessConfig, tokenizer_identity: dict[str, Any] | None = None) -> bool:
    """True when a finished run of exactly this job (same input file, tokenizer and flags) is on disk.

    The input is compared by path, size and modification time (rehashing a large corpus to decide whether to skip
    would cost as much as redoing it); the outputs by existence and size.
    """
    manifest = read_manifest(config)
    if manifest is None or manifest.get("version") != MANIFEST_VERSION:
        return False
    try:
        now = file_identity(config.input)
    except OSError:
        return False
    if any(manifest["input"].get(k) != v for k, v in now.items()):
        return False
    if manifest["flags"] != config.flags():
        return False
    if tokenizer_identity is not None and manifest["tokenizer"] != tokenizer_identity:
        return False
    if tokenizer_identity is None and _manifest_tokenizer_files(manifest["tokenizer"]) != tokenizer_files(
        config.tokenizer
    ):
        return False
    for key in config.json_keys:
        out = manifest["outputs"].get(key)
        prefix = config.output(key)
        if out is None or not indexed.exists(prefix):
            return False
        if (
            indexed.bin_path(prefix).stat().st_size != out["bin_bytes"]
            or indexed.idx_path(prefix).stat().st_size != out["idx_bytes"]
        ):
            return False
        try:  # an index damaged at the same size: its counts, lengths and offsets must agree
            indexed.IndexedDataset(prefix)
        except indexed.CorruptDataset as exc:
            print(f"{exc}; tokenizing it again", file=sys.stderr)
            return False
    return True


def tokenizer_files(spec: TokenizerSpec) -> dict[str, str]:
    """SHA-256 of the tokenizer's model file, or of each file of a Hugging Face folder: what decides the ids."""
    path = Path(spec.tokenizer_model)
    if path.is_dir():
        return {p.name: file_digest(p) for p in sorted(path.iterdir()) if p.is_file()}
    return {path.name: file_digest(path)} if path.is_file() else {}


def _manifest_tokenizer_files(identity: dict[str, Any]) -> dict[str, str]:
    if "files_sha256" in identity:
        return dict(identity["files_sha256"])
    return {Path(identity.get("model", "")).name: identity.get("model_sha256", "")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Megatron-LM ``tools/preprocess_data.py``'s flag names, so a command ports by swapping the program."""
    group = parser.add_argument_group("input data")
    group.add_argument("--input", required=True, type=Path, help="JSON Lines file (.json, .jsonl, .json.gz, .jsonl.gz)")
    group.add_argument("--json-keys", nargs="+", default=["text"], help="keys to tokenize (default: text)")
    group.add_argument("--split-sentences", action="store_true", help=argparse.SUPPRESS)
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    group.add_argument(
        "--tokenizer-model", required=True, help="SentencePiece .model file, or Hugging Face tokenizer folder"
    )
    group.add_argument(
        "--tokenizer-hf-no-use-fast", action="store_true", help="Hugging Face: the slow (Python) tokenizer"
    )
    group.add_argument(
        "--tokenizer-hf-no-include-special-tokens",
        action="store_true",
        help="Hugging Face: ids of tokenize(text) without BOS/EOS, as NeMo (and MLPerf) compute them",
    )
    group.add_argument("--append-eod", action="store_true", help="append the end-of-document token to each document")
    group = parser.add_argument_group("output data")
    group.add_argument("--output-prefix", required=True, help="writes <prefix>_<key>_document.bin/.idx")
    group = parser.add_argument_group("runtime")
    group.add_argument(
        "--workers", type=int, default=available_cpus(), help="worker processes (default: the cores available)"
    )
    group.add_argument(
        "--partitions", type=int, default=1, help="accepted for compatibility; not needed (input order is kept)"
    )
    group.add_argument(
        "--keep-sequential-samples", action="store_true", help="accepted for compatibility; always true here"
    )
    group.add_argument(
        "--log-interval", type=int, default=1000, help="accepted for compatibility; progress is time-based"
    )
    group.add_argument(
        "--engine", choices=("native", "nemo"), default="native", help="nemo: print NeMo's command instead"
    )
    group.add_argument("--on-bad-record", choices=("fail", "skip"), default="fail")
    group.add_argument("--force", action="store_true", help="redo even if a complete run of this job is on disk")
    group.add_argument("--block-bytes", type=int, default=BLOCK_BYTES, help="input handed to a worker at a time")
    group.add_argument(
        "--word-cache",
        type=int,
        default=DEFAULT_CACHE_ENTRIES,
        help="SentencePiece word-cache entries per worker (0: off)",
    )


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    if args.split_sentences:
        raise PreprocessError("--split-sentences is not supported by the native engine; run Megatron-LM's tool for it")
    spec = TokenizerSpec(
        tokenizer_type=args.tokenizer_type,
        tokenizer_model=str(args.tokenizer_model),
        hf_use_fast=not args.tokenizer_hf_no_use_fast,
        hf_include_special_tokens=not args.tokenizer_hf_no_include_special_tokens,
        cache_entries=args.word_cache,
    )
    return PreprocessConfig(
        input=args.input,
        output_prefix=args.output_prefix,
        tokenizer=spec,
        json_keys=tuple(args.json_keys),
        append_eod=args.append_eod,
        workers=args.workers,
        on_bad_record=args.on_bad_record,
        block_bytes=args.block_bytes,
    )


def config_from_argv(argv: list[str]) -> PreprocessConfig:
    """The job a command line describes (the inverse of :meth:`PreprocessConfig.to_argv`)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return config_from_args(parser.parse_args([str(a) for a in argv]))
