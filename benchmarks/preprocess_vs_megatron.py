"""Native preprocessing engine vs Megatron-LM's ``tools/preprocess_data.py``: wall time, rates, memory, same bytes?

    python benchmarks/preprocess_vs_megatron.py --megatron-lm ~/src/Megatron-LM \\
        [--megatron-python ~/venvs/megatron/bin/python] [--dictd debroot/usr/share/dictd] [--input shard.json.gz]

Corpora, side by side: the sample corpus (``orchestrator.data.sample``, Python documentation prose, ``--docs``
documents), the diverse corpus (``benchmarks/diverse_corpus.py`` from Debian's dictd dictionaries, when ``--dictd``
names their folder; its docstring says how to get them) and any ``--input`` C4-layout shard.

Both tools get the same decompressed JSON Lines file (Megatron's tool cannot read ``.json.gz`` without
``--partitions``, which reorders documents), the same SentencePiece model (Mixtral-8x22B-v0.1's ``tokenizer.model.v1``
from mistral-common unless ``--tokenizer-model``), the same flags and the same number of workers, with MLPerf's flags
(no EOD) and, with ``--variants plain eod``, ``--append-eod`` too. The native engine also runs on the ``.json.gz``
itself and with its word cache off (``--word-cache 0``: every document through SentencePiece whole), which separates
what the process design gains from what the cache gains. Megatron-LM's code is only run, from the checkout you name
(on ``PYTHONPATH``, so that no installed megatron-core shadows it).

Reported per command: the median wall time of ``--repeat`` runs, the runs of all commands interleaved so that a
change of the machine's load hits them alike (interpreter start-up included; Megatron's imports torch), text MB/s
(UTF-8 bytes of the ``text`` values / wall), docs/s, tokens/s, peak resident memory of the process tree and the
speed-up over Megatron's median; the tokenizing phase alone (Megatron's from its own final docs/s, ours from the
manifest); whether every ``.bin`` and ``.idx`` is byte-identical; the word-cache hit rate; the load average before
and after. Then a profile of one worker's share of the work (every other block) run in this process: CPU seconds in
JSON parsing, word split/lookups/joins, caching unseen words, batching for SentencePiece, SentencePiece itself (and
how much of it is the fixed cost per call) and writing.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import diverse_corpus  # noqa: E402  (benchmarks/ is this script's folder)

from orchestrator.data import preprocess, sample  # noqa: E402
from orchestrator.data import tokenizer as tokenizers  # noqa: E402
from orchestrator.data.stream import content_blocks, line_blocks  # noqa: E402


def mixtral_v1() -> str:
    import mistral_common

    return str(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1")


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def timed_once(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, int]:
    """Run ``argv`` once; return (wall seconds, peak tree RSS bytes). Output: ``log``."""
    with open(log, "w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        done = threading.Event()

        def sample_rss() -> None:
            nonlocal peak
            while not done.wait(0.1):
                peak = max(peak, _tree_rss(process.pid))

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        code = process.wait()
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    if code != 0:
        raise SystemExit(f"{argv[0]} ... failed with exit code {code}; see {log}:\n{log.read_text()[-3000:]}")
    return wall, peak


def machine() -> dict[str, str]:
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"
    )
    return {
        "cpu": model,
        "cores": str(len(os.sched_getaffinity(0))),
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- where one worker's time goes ---------------------------------------------------------------------------


def profile_worker(plain: Path, model: str, append_eod: bool) -> dict[str, Any]:
    """CPU seconds per phase for one worker's share (every other block), in this process, the worker's own code.

    Phases are timed by wrapping the functions that do them, so the figures add up to the total; the wrapping
    itself costs about a microsecond a call, which matters only for the SentencePiece calls (few: they are batched).
    """
    seconds: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    originals: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str) -> None:
        function = getattr(owner, name)
        originals.append((owner, name, function))

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] += time.process_time() - start
                calls[name] += 1

        setattr(owner, name, timed)

    blocks = list(line_blocks(content_blocks(plain), preprocess.BLOCK_BYTES))[::2]
    scratch = tempfile.mkdtemp(prefix="profile-")
    try:
        preprocess._init_worker(
            tokenizers.TokenizerSpec("SentencePieceTokenizer", model), ("text",), append_eod, True, scratch
        )
        tokenizer = preprocess._worker.tokenizer
        empty = time.process_time()
        for _ in range(2000):
            tokenizer.sp.encode("")
        per_call = (time.process_time() - empty) / 2000
        wrap(preprocess, "_parse_line")
        wrap(tokenizers.SentencePieceTokenizer, "encode_texts")
        wrap(tokenizers.SentencePieceTokenizer, "_learn")
        wrap(tokenizers.SentencePieceTokenizer, "_encode_items")
        wrap(tokenizer.sp, "encode")
        start = time.process_time()
        for first_line, block in blocks:
            preprocess._encode_block(first_line, block)
        total = time.process_time() - start
    finally:
        for owner, name, function in reversed(originals):
            setattr(owner, name, function)
        shutil.rmtree(scratch, ignore_errors=True)
    lookups = tokenizer.hits + tokenizer.misses
    return {
        "blocks": len(blocks),
        "total_s": total,
        "json_parsing_s": seconds["_parse_line"],
        "word_split_lookup_join_s": seconds["encode_texts"] - seconds["_learn"],
        "unseen_words_cached_s": seconds["_learn"] - seconds["_encode_items"],
        "batching_for_sentencepiece_s": seconds["_encode_items"] - seconds["encode"],
        "sentencepiece_s": seconds["encode"],
        "sentencepiece_calls": calls["encode"],
        "sentencepiece_per_call_overhead_s": calls["encode"] * per_call,
        "writing_and_rest_s": total - seconds["_parse_line"] - seconds["encode_texts"],
        "word_cache_hit_rate": tokenizer.hits / lookups if lookups else None,
        "unseen_words": tokenizer.misses,
    }


PHASES = [
    ("JSON parsing", "json_parsing_s"),
    ("split, cache lookups, joins", "word_split_lookup_join_s"),
    ("unseen words into the cache (Python)", "unseen_words_cached_s"),
    ("batching for SentencePiece (Python)", "batching_for_sentencepiece_s"),
    ("SentencePiece calls", "sentencepiece_s"),
    ("  of which fixed cost per call", "sentencepiece_per_call_overhead_s"),
    ("writing, byte counts, the rest", "writing_and_rest_s"),
]


# --- one corpus ----------------------------------------------------------------------------------------------


def corpus_stats(plain: Path) -> dict[str, Any]:
    """How open a corpus's vocabulary is: words (split at whitespace), distinct words, share holding a digit."""
    import orjson

    words = digits = 0
    distinct: set[str] = set()
    with open(plain, "rb") as handle:
        for line in handle:
            split = orjson.loads(line)["text"].split()
            words += len(split)
            distinct.update(split)
            digits += sum(1 for w in split if not w.isalpha() and any(c.isdigit() for c in w))
    return {"words": words, "distinct_words": len(distinct), "words_with_a_digit": digits}


def bench_corpus(name: str, shard: Path, args: argparse.Namespace, model: str, work: Path) -> dict[str, Any]:
    plain = work / "input.json"
    with gzip.open(shard, "rb") as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst, 16 << 20)
    tool = args.megatron_lm / "tools" / "preprocess_data.py"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    megatron_env = dict(os.environ, PYTHONPATH=str(args.megatron_lm.resolve()))
    common = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", model, "--workers", str(args.workers)]
    stats = corpus_stats(plain)
    print(
        f"\n=== {name}: {shard} ({plain.stat().st_size / 1e6:.1f} MB of JSON), {args.workers} workers, median of {args.repeat}"
    )
    print(
        f"  {stats['distinct_words']:,} distinct words in {stats['words']:,} ({100 * stats['distinct_words'] / stats['words']:.1f}%), "
        f"{100 * stats['words_with_a_digit'] / stats['words']:.1f}% of words hold a digit"
    )
    out: dict[str, Any] = {"corpus": name, "input": str(shard), "stats": stats, "variants": []}
    for variant in args.variants:
        extra = ["--append-eod"] if variant == "eod" else []
        mega_prefix = work / f"megatron-{variant}"
        commands: dict[str, tuple[list[str], Path, dict[str, str], Path]] = {
            "Megatron-LM preprocess_data.py": (
                [
                    args.megatron_python,
                    str(tool),
                    "--input",
                    str(plain),
                    "--output-prefix",
                    str(mega_prefix),
                    *common,
                    *extra,
                ],
                args.megatron_lm,
                megatron_env,
                mega_prefix,
            ),
        }
        for label, source, tag, more in (
            ("native (same .json)", plain, "native", []),
            ("native (.json.gz input)", shard, "native-gz", []),
            ("native, word cache off (.json)", plain, "native-nocache", ["--word-cache", "0"]),
        ):
            prefix = work / f"{tag}-{variant}"
            argv = [
                sys.executable,
                "-m",
                "orchestrator.data.preprocess",
                "--force",
                *common,
                *extra,
                *more,
                "--input",
                str(source),
                "--output-prefix",
                str(prefix),
            ]
            commands[label] = (argv, REPO, env, prefix)
        load_before = load()
        runs: dict[str, list[tuple[float, int]]] = {label: [] for label in commands}
        for _ in range(args.repeat):  # interleaved: a change of load hits every command alike
            for label, (argv, cwd, run_env, prefix) in commands.items():
                runs[label].append(timed_once(argv, cwd, run_env, work / f"{prefix.name}.log"))
        load_after = load()
        wall = {label: statistics.median(w for w, _ in r) for label, r in runs.items()}
        peak = {label: max(p for _, p in r) for label, r in runs.items()}
        ours = work / f"native-{variant}"
        manifest = json.loads(Path(f"{ours}.manifest.json").read_text())
        identical = all(
            Path(f"{mega_prefix}_text_document{ext}").read_bytes() == Path(f"{prefix}_text_document{ext}").read_bytes()
            for label, (_, _, _, prefix) in commands.items()
            if prefix != mega_prefix
            for ext in (".bin", ".idx")
        )
        docs, text, tokens = manifest["documents"], manifest["text_bytes"], manifest["tokens"]
        reported = [
            line for line in (work / f"{mega_prefix.name}.log").read_text().splitlines() if line.startswith("Processed")
        ]
        mega_phase = docs / float(reported[-1].split("(")[1].split()[0]) if reported else float("nan")
        mega = wall["Megatron-LM preprocess_data.py"]
        print(
            f"\n{variant} ({'--append-eod' if extra else 'MLPerf flags'}): {docs} documents, {text / 1e6:.1f} MB of text, "
            f"{tokens} tokens; load average {load_before} before, {load_after} after"
        )
        print(
            f"  {'engine':<34} {'wall s':>8} {'runs':>20} {'text MB/s':>10} {'docs/s':>8} {'peak RSS MB':>12} {'speed-up':>9}"
        )
        for label in commands:
            each = "/".join(f"{w:.2f}" for w, _ in runs[label])
            print(
                f"  {label:<34} {wall[label]:8.2f} {each:>20} {text / wall[label] / 1e6:10.2f} {docs / wall[label]:8.0f} "
                f"{peak[label] / 2**20:12.0f} {mega / wall[label]:8.2f}x"
            )
        print(
            f"  tokenizing phase only (start-up excluded): Megatron {mega_phase:.2f} s by its own docs/s, native "
            f"{manifest['seconds']:.2f} s ({mega_phase / manifest['seconds']:.2f}x)"
        )
        print(
            f"  byte-identical .bin and .idx (all native runs): {'yes' if identical else 'NO'}; "
            f"word-cache hit rate {manifest['word_cache_hit_rate']}"
        )
        out["variants"].append(
            {
                "variant": variant,
                "documents": docs,
                "text_bytes": text,
                "tokens": tokens,
                "identical": identical,
                "wall_s": wall,
                "runs_s": {label: [w for w, _ in r] for label, r in runs.items()},
                "peak_rss_bytes": peak,
                "tokenizing_phase_s": {"megatron": mega_phase, "native": manifest["seconds"]},
                "word_cache_hit_rate": manifest["word_cache_hit_rate"],
                "load_average": [load_before, load_after],
            }
        )
    if args.profile:
        before = load()
        profile = profile_worker(plain, model, append_eod=False)
        profile["load_average"] = [before, load()]
        out["profile"] = profile
        print(
            f"\n  one worker's share ({profile['blocks']} blocks), CPU seconds, in-process, load {before} -> {profile['load_average'][1]}:"
        )
        for label, key in PHASES:
            print(f"    {label:<38} {profile[key]:7.3f}  {100 * profile[key] / profile['total_s']:5.1f}%")
        print(
            f"    {'total':<38} {profile['total_s']:7.3f}   ({profile['sentencepiece_calls']} SentencePiece calls, "
            f"{profile['unseen_words']} unseen words, hit rate {profile['word_cache_hit_rate']:.4f})"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--megatron-lm", required=True, type=Path, help="a Megatron-LM checkout (tools/preprocess_data.py)"
    )
    parser.add_argument("--megatron-python", default=sys.executable, help="interpreter with Megatron-LM's dependencies")
    parser.add_argument("--dictd", type=Path, help="folder of the dictd dictionaries: also run the diverse corpus")
    parser.add_argument(
        "--input", type=Path, action="append", default=[], help="a C4-layout .json.gz shard (repeatable)"
    )
    parser.add_argument("--no-sample", action="store_true", help="leave the sample corpus out")
    parser.add_argument("--docs", type=int, default=20000, help="documents in each built shard (~2.2 KB each)")
    parser.add_argument("--tokenizer-model", default=None, help="SentencePiece model (default: Mixtral-8x22B v1)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the median wall time is shown")
    parser.add_argument(
        "--variants", nargs="+", choices=("plain", "eod"), default=["plain"], help="plain: MLPerf flags"
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the per-phase profile")
    parser.add_argument("--work", type=Path, default=Path("benchmark-work"), help="scratch folder")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    if not (args.megatron_lm / "tools" / "preprocess_data.py").is_file():
        raise SystemExit(f"--megatron-lm {args.megatron_lm}: no tools/preprocess_data.py there")
    model = args.tokenizer_model or mixtral_v1()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    corpora: list[tuple[str, Callable[[Path], Path]]] = []
    if not args.no_sample:
        corpora.append(("sample (Python docs)", lambda d: sample.build_corpus(d, 1, 0, args.docs)[0]))
    if args.dictd:
        corpora.append(("diverse (dictd)", lambda d: diverse_corpus.build(args.dictd, d, args.docs)))
    corpora += [(f"--input {p.name}", lambda d, p=p: p) for p in args.input]
    commit = subprocess.run(
        ["git", "-C", str(args.megatron_lm), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    results: dict[str, Any] = {
        "machine": machine(),
        "megatron_lm_commit": commit or "?",
        "workers": args.workers,
        "corpora": [],
    }
    print(f"machine: {results['machine']}; Megatron-LM {results['megatron_lm_commit']}")
    for index, (name, make) in enumerate(corpora):
        folder = work / f"corpus-{index}"
        folder.mkdir()
        results["corpora"].append(bench_corpus(name, make(folder), args, model, folder))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(v["identical"] for c in results["corpora"] for v in c["variants"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
