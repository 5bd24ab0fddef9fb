"""A second benchmark corpus, more diverse than ``orchestrator.data.sample``: Debian's dictd dictionaries as C4 JSONL.

The sample corpus is Python documentation, a narrow vocabulary on which the word cache hits ~98% of words. Web text
(C4) has far more distinct words: names, places, dates, numbers, URLs, foreign words. No web text is on the machine,
but four Debian packages ship large bodies of real English reference prose written by many hands, in one plain
format (dictd's ``.index`` + gzip-compatible ``.dict.dz``):

- ``dict-gcide`` (0.48.5+nmu2): GCIDE, Webster's 1913 with later additions: every English word, etymologies in Latin,
  Greek, French and German, quotations with their authors, dates (40 MB);
- ``dict-wn`` (1:3.0-37): WordNet 3.0 glosses: people with their years, places, species, example sentences (31 MB);
- ``dict-foldoc`` (20230119-1): the computing dictionary: product and company names, URLs, e-mail addresses,
  citations with page numbers, version numbers, dates (5.6 MB);
- ``dict-jargon`` (4.4.7-3.1): the Jargon File, informal prose (1.4 MB).

Get them without installing a dict server::

    apt-get download dict-gcide dict-wn dict-foldoc dict-jargon
    for deb in dict-*.deb; do dpkg-deb -x "$deb" debroot; done
    python benchmarks/diverse_corpus.py --dictd debroot/usr/share/dictd --out diverse --docs 20000

Each dictionary's entries are taken in their file order, reflowed (dictd's line wrapping and ``{link}`` braces
removed, one paragraph per line as in C4) and strung into documents of C4-like length (the sample corpus's
log-normal law, mean ~2.2 KB); the documents of all four are shuffled together with a fixed seed and the first
``--docs`` are written as one C4-layout shard. No entry is used twice, so the text never repeats. The same package
versions and seed give the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import math
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.data import sample  # noqa: E402
from orchestrator.data.consolidate import shard_name  # noqa: E402

DICTIONARIES = ("gcide", "wn", "foldoc", "jargon")
_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
_LINK_BRACES = str.maketrans("", "", "{}")


def _b64(number: str) -> int:
    """dictd's base-64 numbers (offsets and lengths in the ``.index``)."""
    value = 0
    for ch in number:
        value = value * 64 + _B64[ch]
    return value


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # a few GCIDE entries are Windows-1252 (curly quotes)
        return raw.decode("cp1252", errors="replace")


def _reflow(entry: str) -> str:
    """One line per paragraph (blank lines separate paragraphs in dictd text), wrapping and link braces removed."""
    paragraphs, current = [], []
    for line in entry.translate(_LINK_BRACES).splitlines():
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n".join(paragraphs)


def entries(dictd: Path, name: str) -> list[tuple[str, str]]:
    """(headword, reflowed text) of every entry of one dictionary, in file order, the database's own notes left out."""
    with gzip.open(dictd / f"{name}.dict.dz") as handle:
        data = handle.read()
    spans: dict[tuple[int, int], str] = {}
    for line in (dictd / f"{name}.index").read_text(encoding="utf-8", errors="replace").splitlines():
        headword, offset, length = line.split("\t")[:3]
        if headword.startswith(("00-database", "00database")):
            continue
        spans.setdefault((_b64(offset), _b64(length)), headword)
    out = []
    for (offset, length), headword in sorted(spans.items()):
        text = _reflow(_decode(data[offset : offset + length]))
        if text:
            out.append((headword, text))
    return out


def documents(dictd: Path, seed: int = 1234) -> list[dict[str, str]]:
    """C4-style records from all four dictionaries, shuffled together; every entry appears once."""
    rng = random.Random(seed)
    mu = math.log(sample.MEAN_DOCUMENT_CHARS) - sample.LENGTH_SIGMA**2 / 2  # mean length MEAN_DOCUMENT_CHARS
    records = []
    for name in DICTIONARIES:
        pending: list[str] = []
        first = ""
        target = rng.lognormvariate(mu, sample.LENGTH_SIGMA)
        size = 0
        for headword, text in entries(dictd, name):
            first = first or headword
            pending.append(text)
            size += len(text) + 1
            if size >= target:
                records.append(
                    {
                        "text": "\n".join(pending),
                        "timestamp": sample.c4_timestamp(rng),
                        "url": f"dict://localhost/d:{first}:{name}",
                    }
                )
                pending, first, size = [], "", 0
                target = rng.lognormvariate(mu, sample.LENGTH_SIGMA)
        if pending:
            records.append(
                {
                    "text": "\n".join(pending),
                    "timestamp": sample.c4_timestamp(rng),
                    "url": f"dict://localhost/d:{first}:{name}",
                }
            )
    rng.shuffle(records)
    return records


def build(dictd: Path, out_dir: Path, docs: int = 0, seed: int = 1234) -> Path:
    """Write the first ``docs`` documents (0: all) as ``c4-train.00000-of-01024.json.gz`` in ``out_dir``."""
    missing = [n for n in DICTIONARIES if not (dictd / f"{n}.index").is_file()]
    if missing:
        raise SystemExit(
            f"--dictd {dictd}: no {', '.join(missing)} dictionaries there; see benchmarks/diverse_corpus.py"
        )
    records = documents(dictd, seed)
    chosen = records[:docs] if docs else records
    path = out_dir / shard_name("train", 0)
    sample.write_shard(path, chosen)
    text = sum(len(r["text"].encode("utf-8")) for r in chosen)
    print(f"wrote {path}: {len(chosen)} of {len(records)} documents, {text / 1e6:.1f} MB of text", file=sys.stderr)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dictd", type=Path, default=Path("/usr/share/dictd"), help="folder with the .index/.dict.dz files"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the shard into")
    parser.add_argument("--docs", type=int, default=20000, help="documents to write (0: all, 26,811)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    build(args.dictd, args.out, args.docs, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
