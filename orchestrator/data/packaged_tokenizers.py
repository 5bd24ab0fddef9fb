"""Tokenizers that Python packages ship, written out as files a job can read.

A plan may name its tokenizer by the package that ships it instead of by a path, because no hub is reachable from
the cluster and the packages carry the real files:

- ``mistral-common:<file>``: a SentencePiece model in mistral-common's ``data/`` folder (``tokenizer.model.v1`` is
  Mixtral-8x22B's, MLPerf Llama 3.1 405B's tokenizer). Materialised as ``<dest>/<file>``.
- ``llama-models:llama3`` and ``llama-models:llama3.1``: Meta's Llama 3 BPE ranks (tiktoken format), the one
  ``tokenizer.model`` that llama-models ships for every Llama 3.x model, converted by ``transformers`` into a Hugging
  Face tokenizer folder with Meta-Llama-3's, or Llama-3.1's, 256 special tokens (``<dest>/llama3``,
  ``<dest>/llama3.1``). Their ids differ only for text that spells a special token (docs/data.md).

Jobs run in containers that have neither package, so the submitting side calls :func:`materialise` to put the files
where the job can read them. It is atomic (written beside the target, then renamed) and idempotent (a target whose
checksums match is left alone).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator.atomic import atomic_output, publish_dir, remove_stale_siblings, temporary_sibling

MANIFEST = "packaged-tokenizer.json"
_BOS, _EOS = "<|begin_of_text|>", "<|end_of_text|>"
_HEADERS = ["<|start_header_id|>", "<|end_header_id|>"]


def _reserved(first: int, last: int) -> list[str]:
    return [f"<|reserved_special_token_{i}|>" for i in range(first, last + 1)]


#: The 256 special tokens after the 128000 BPE ranks (ids 128000-128255), as Meta's Hugging Face folders name them.
LLAMA3_SPECIAL_TOKENS = {
    "llama3": [
        _BOS,
        _EOS,
        *_reserved(0, 3),
        *_HEADERS,
        "<|reserved_special_token_4|>",
        "<|eot_id|>",
        *_reserved(5, 250),
    ],
    "llama3.1": [
        _BOS,
        _EOS,
        *_reserved(0, 1),
        "<|finetune_right_pad_id|>",
        "<|reserved_special_token_2|>",
        *_HEADERS,
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
        *_reserved(3, 247),
    ],
}
#: Context lengths the Hugging Face folders record (only a warning threshold for tokenizing).
LLAMA3_MAX_LENGTH = {"llama3": 8192, "llama3.1": 131072}


class PackagedTokenizerError(RuntimeError):
    """A packaged tokenizer cannot be materialised; the message names the package to install or the bad reference."""


@dataclass(frozen=True)
class _Source:
    reference: str
    package: str  # the PyPI name
    module: str
    relative: str  # the file inside the installed module
    target: str  # the name under dest_dir
    flavour: str | None = None  # Llama 3 special-token set; None: copy the file as it is


def _parse(reference: str) -> _Source:
    package, sep, name = reference.partition(":")
    if not sep or not name:
        raise PackagedTokenizerError(f"{reference!r} is not a packaged tokenizer (expected <package>:<name>)")
    if package == "mistral-common" and "/" not in name:
        return _Source(reference, package, "mistral_common", f"data/{name}", name)
    if package == "llama-models" and name in LLAMA3_SPECIAL_TOKENS:
        return _Source(reference, package, "llama_models", "llama3/tokenizer.model", name, flavour=name)
    known = ", ".join(
        ["mistral-common:<file in mistral_common/data>"] + [f"llama-models:{n}" for n in LLAMA3_SPECIAL_TOKENS]
    )
    raise PackagedTokenizerError(f"{reference!r}: unknown packaged tokenizer; known: {known}")


def is_packaged(reference: str) -> bool:
    """Does ``reference`` name a tokenizer shipped by a package (rather than a path or a hub id)?"""
    try:
        _parse(reference)
    except PackagedTokenizerError:
        return False
    return True


def location(reference: str, dest_dir: Path) -> Path:
    """Where :func:`materialise` puts ``reference`` in ``dest_dir`` (no package needed to know it)."""
    return Path(dest_dir) / _parse(reference).target


def materialise(reference: str, dest_dir: Path) -> Path:
    """Write the tokenizer ``reference`` names into ``dest_dir`` and return its path (a SentencePiece ``.model`` file,
    or a Hugging Face tokenizer folder), unless it is there already with matching checksums."""
    source = _parse(reference)
    origin = _package_file(source)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / source.target
    remove_stale_siblings(target)
    if source.flavour is None:
        if not (target.is_file() and _sha256(target) == _sha256(origin)):
            with atomic_output(target) as out, origin.open("rb") as src:
                shutil.copyfileobj(src, out)
        return target
    wanted = {"reference": reference, "source_sha256": _sha256(origin)}
    if _folder_is_current(target, wanted):
        return target
    staging = temporary_sibling(target)
    try:
        files = _write_llama3_folder(origin, source.flavour, staging)
        (staging / MANIFEST).write_text(json.dumps({**wanted, "files": files}, indent=2, sort_keys=True) + "\n")
        if target.exists():  # a folder of another version: out of the way first (a rename cannot replace it)
            old = temporary_sibling(target)
            os.replace(target, old)
            shutil.rmtree(old)
        publish_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _package_file(source: _Source) -> Path:
    try:
        module = importlib.import_module(source.module)
    except ImportError:
        raise PackagedTokenizerError(
            f"{source.reference} needs the {source.package} package, which ships the tokenizer: "
            f"pip install {source.package}"
        ) from None
    path = Path(module.__file__).parent / source.relative
    if not path.is_file():
        raise PackagedTokenizerError(f"{source.reference}: {path} is not in the installed {source.package}")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_is_current(folder: Path, wanted: dict[str, str]) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if any(manifest.get(key) != value for key, value in wanted.items()):
        return False
    files = manifest.get("files") or {}
    return bool(files) and all(
        (folder / name).is_file() and _sha256(folder / name) == sha for name, sha in files.items()
    )


@contextlib.contextmanager
def _tiktoken_cache_off() -> Iterator[None]:
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


def _write_llama3_folder(model_file: Path, flavour: str, folder: Path) -> dict[str, str]:
    """The Hugging Face fast tokenizer of Meta's conversion: tiktoken's ranks as byte-level BPE with Llama 3's
    pre-split pattern, the flavour's special tokens, BOS prepended by the post-processor. Returns {file: sha256}."""
    try:
        import blobfile  # noqa: F401 - tiktoken 0.7 reads local files through it
        from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
        from tokenizers import processors
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter
    except ImportError as exc:
        raise PackagedTokenizerError(
            f"llama-models:{flavour} is converted by transformers, which reads it with tiktoken and blobfile: "
            f"pip install transformers tiktoken blobfile ({exc})"
        ) from None
    special = LLAMA3_SPECIAL_TOKENS[flavour]
    converter = TikTokenConverter(
        vocab_file=str(model_file), pattern=MetaTokenizer.pat_str, additional_special_tokens=special
    )
    with (
        _tiktoken_cache_off()
    ):  # tiktoken caches by path, not content: another llama-models at this path would be stale
        backend = converter.converted()
    bos_id = backend.token_to_id(_BOS)
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{_BOS}:0 $A:0", pair=f"{_BOS}:0 $A:0 {_BOS}:1 $B:1", special_tokens=[(_BOS, bos_id)]
            ),
        ]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=_BOS,
        eos_token=_EOS,
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=LLAMA3_MAX_LENGTH[flavour],
        clean_up_tokenization_spaces=True,
    )
    folder.mkdir(parents=True)
    tokenizer.save_pretrained(str(folder))
    return {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
