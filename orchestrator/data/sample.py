"""A small C4-layout corpus of real English prose, built offline and deterministically.

Tests, the demo and the benchmark need real text (a tokenizer's speed and its corner cases depend on it) without a
download. Every Python installation carries some: the Python Language Reference (``pydoc_data.topics``, the text
``help()`` shows) and the docstrings of the standard library's modules. This module cuts that prose into paragraphs and
strings consecutive paragraphs into documents of C4-like length (about 2 KB on average, log-normally spread), then
writes them in C4 en 3.0.1's layout::

    c4-train.00000-of-01024.json.gz ...      {"text": ..., "timestamp": ..., "url": ...} one document per line
    c4-validation.00000-of-00008.json.gz ...

What the text is, honestly: technical documentation in English, about 1.5 MB of distinct paragraphs, so large
shards repeat paragraphs (in new combinations). It is not web text: its vocabulary is narrower than C4's, which
flatters any tokenizer that caches words (see docs/benchmarks.md). The same seed on the same Python version gives
the same bytes; another Python version ships other docs and gives other text.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import inspect
import json
import math
import random
import re
import sys
import sysconfig
from pathlib import Path

from orchestrator.data.consolidate import shard_name

#: Parts of the standard library whose strings are not documentation prose.
SKIPPED_STDLIB_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo"})
TRIPLE_QUOTED = re.compile(r'"""(.*?)"""', re.S)

MEAN_DOCUMENT_CHARS = 2200  # C4 en: ~2.2 KB of text per document
LENGTH_SIGMA = 0.8  # spread of the log-normal number of paragraphs per document


def _paragraphs_of(text: str) -> list[str]:
    """Prose paragraphs of a reStructuredText-ish block: reflowed to one line, code and tables dropped."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if not lines or block.startswith((" ", "\t")) or lines[0].startswith((">>>", "...", "*", "=", "-", "+")):
            continue
        paragraph = " ".join(lines)
        letters = sum(ch.isalpha() or ch == " " for ch in paragraph)
        if len(paragraph) >= 60 and letters >= 0.8 * len(paragraph):
            out.append(paragraph)
    return out


@functools.lru_cache(maxsize=1)
def paragraphs() -> tuple[tuple[str, str], ...]:
    """(source, paragraph) pairs in a fixed order: the language reference, then standard-library docstrings."""
    import pydoc_data.topics

    found: list[tuple[str, str]] = []
    for topic in sorted(pydoc_data.topics.topics):
        found += [(f"reference/{topic}", p) for p in _paragraphs_of(pydoc_data.topics.topics[topic])]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for source in sorted(stdlib.rglob("*.py")):
        relative = source.relative_to(stdlib)
        if SKIPPED_STDLIB_DIRS.intersection(relative.parts):
            continue
        try:
            code = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        name = relative.with_suffix("").as_posix()
        for match in TRIPLE_QUOTED.finditer(code):  # docstrings, found without the cost of parsing every module
            found += [(f"library/{name}", p) for p in _paragraphs_of(inspect.cleandoc(match.group(1)))]
    return tuple(found)


def c4_timestamp(rng: random.Random) -> str:
    """A time stamp in C4's format and range (its crawl of April 2019)."""
    return (
        f"2019-04-{rng.randint(18, 26):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
    )


def documents(rng: random.Random, count: int) -> list[dict[str, str]]:
    """``count`` C4-style records: runs of consecutive paragraphs joined by newlines, as web pages are in C4."""
    pool = paragraphs()
    mean_paragraphs = MEAN_DOCUMENT_CHARS / (sum(len(p) for _, p in pool) / len(pool))
    mu = math.log(mean_paragraphs) - LENGTH_SIGMA**2 / 2  # so that the mean count is mean_paragraphs
    records = []
    for _ in range(count):
        n = max(1, round(rng.lognormvariate(mu, LENGTH_SIGMA)))
        start = rng.randrange(len(pool))
        chosen = pool[start : start + n] or pool[start:]
        source = chosen[0][0]
        records.append(
            {
                "text": "\n".join(p for _, p in chosen),
                "timestamp": c4_timestamp(rng),
                "url": f"https://docs.python.org/3/{source}.html#p{start}",
            }
        )
    return records


def write_shard(path: Path, records: list[dict[str, str]]) -> None:
    """One gzip member, no name or time stamp in the header, so the bytes depend only on the records."""
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(payload)


def build_corpus(
    out_dir: str | Path,
    train_shards: int = 4,
    validation_shards: int = 1,
    docs_per_shard: int = 500,
    seed: int = 1234,
) -> list[Path]:
    """Write a C4 en 3.0.1-layout corpus (train shards 0.., validation shards 0..) and return the shard paths."""
    out = Path(out_dir)
    written = []
    for split, count in (("train", train_shards), ("validation", validation_shards)):
        for index in range(count):
            rng = random.Random(f"{seed}/{split}/{index}")
            path = out / shard_name(split, index)
            write_shard(path, documents(rng, docs_per_shard))
            written.append(path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="directory to write the shards into")
    parser.add_argument("--train-shards", type=int, default=4, help="train shards c4-train.00000.. (default 4)")
    parser.add_argument("--validation-shards", type=int, default=1, help="validation shards (default 1)")
    parser.add_argument("--docs-per-shard", type=int, default=500, help="documents per shard, ~2 KB each (default 500)")
    parser.add_argument("--seed", type=int, default=1234)


def run(args: argparse.Namespace) -> int:
    paths = build_corpus(args.out, args.train_shards, args.validation_shards, args.docs_per_shard, args.seed)
    size = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} shards ({size / 1e6:.1f} MB gzip) to {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.data.sample", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
