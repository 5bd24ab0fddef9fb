"""Native preprocessing engine vs Megatron-LM's ``tools/preprocess_data.py``: wall time, rates, memory, same bytes?

    python benchmarks/preprocess_vs_megatron.py --megatron-lm ~/src/Megatron-LM \\
        [--megatron-python ~/venvs/megatron/bin/python] [--input c4-train.00000-of-01024.json.gz] [--workers 2]

Both tools get the same decompressed JSON Lines file (Megatron's tool cannot read ``.json.gz`` without
``--partitions``, which reorders documents), the same SentencePiece model (Mixtral-8x22B-v0.1's ``tokenizer.model.v1``
from mistral-common unless ``--tokenizer-model``), the same flags and the same number of workers; each variant runs
with MLPerf's flags (no EOD) and with ``--append-eod``. The native engine also runs on the ``.json.gz`` itself and
with its word cache off (``--word-cache 0``: every document through SentencePiece whole), which separates what the
process design gains from what the cache gains. Without ``--input`` a real-text C4-layout shard is built with
``orchestrator.data.sample`` (``--docs`` documents). Megatron-LM's code is only run, from the checkout you name.

Reported per command (median of ``--repeat`` runs): wall time of the whole command (interpreter start-up included;
Megatron's imports torch), text MB/s (UTF-8 bytes of the ``text`` values / wall), docs/s, tokens/s, peak resident
memory of the process tree (summed over the tool's processes, sampled every 0.1 s) and the speed-up over Megatron's
wall time; then the tokenizing phase alone (Megatron's from its own final docs/s, ours from the manifest) and
whether every ``.bin`` and ``.idx`` is byte-identical.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.data import sample  # noqa: E402


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


def timed(argv: list[str], cwd: Path, env: dict[str, str], log: Path, repeat: int = 1) -> tuple[float, int]:
    """Run ``argv`` ``repeat`` times; return (median wall seconds, highest peak tree RSS bytes). Output: ``log``."""
    runs = [_timed_once(argv, cwd, env, log) for _ in range(repeat)]
    return statistics.median(w for w, _ in runs), max(p for _, p in runs)


def _timed_once(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, int]:
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
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cpu": model, "cores": str(len(os.sched_getaffinity(0))), "python": platform.python_version(), "os": platform.platform()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megatron-lm", required=True, type=Path, help="a Megatron-LM checkout (tools/preprocess_data.py)")
    parser.add_argument("--megatron-python", default=sys.executable, help="interpreter with Megatron-LM's dependencies")
    parser.add_argument("--input", type=Path, help="a C4-layout .json.gz shard (default: build one from real prose)")
    parser.add_argument("--docs", type=int, default=20000, help="documents in the built shard (~2 KB each)")
    parser.add_argument("--tokenizer-model", default=None, help="SentencePiece model (default: Mixtral-8x22B v1)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the median wall time is shown")
    parser.add_argument("--work", type=Path, default=Path("benchmark-work"), help="scratch folder")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    tool = args.megatron_lm / "tools" / "preprocess_data.py"
    if not tool.is_file():
        raise SystemExit(f"--megatron-lm {args.megatron_lm}: no tools/preprocess_data.py there")
    model = args.tokenizer_model or mixtral_v1()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shard = args.input
    if shard is None:
        shard = sample.build_corpus(work / "c4", train_shards=1, validation_shards=0, docs_per_shard=args.docs)[0]
    plain = work / "input.json"
    with gzip.open(shard, "rb") as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst, 16 << 20)

    env = dict(os.environ, PYTHONPATH=str(REPO))
    megatron_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    commit = subprocess.run(["git", "-C", str(args.megatron_lm), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    common = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", model, "--workers", str(args.workers)]
    results = {"machine": machine(), "megatron_lm_commit": commit or "?", "input": str(shard), "workers": args.workers, "runs": []}
    print(f"input {shard} ({plain.stat().st_size / 1e6:.1f} MB of JSON), {args.workers} workers, median of {args.repeat} runs")
    print(f"machine: {results['machine']}; Megatron-LM {results['megatron_lm_commit']}")
    for variant, extra in (("mlperf flags", []), ("--append-eod", ["--append-eod"])):
        tag = "eod" if extra else "plain"
        mega_prefix, ours_prefix, ours_gz_prefix = work / f"megatron-{tag}", work / f"native-{tag}", work / f"native-gz-{tag}"
        mega = timed([args.megatron_python, str(tool), "--input", str(plain), "--output-prefix", str(mega_prefix), *common, *extra],
                     args.megatron_lm, megatron_env, work / f"megatron-{tag}.log", args.repeat)
        ours_argv = [sys.executable, "-m", "orchestrator.data.preprocess", "--force", *common, *extra]
        runs = {"Megatron-LM preprocess_data.py": mega}
        for name, source, prefix, more in (
            ("native (same .json)", plain, ours_prefix, []),
            ("native (.json.gz input)", shard, ours_gz_prefix, []),
            ("native, word cache off (.json)", plain, work / f"native-nocache-{tag}", ["--word-cache", "0"]),
        ):
            argv = [*ours_argv, *more, "--input", str(source), "--output-prefix", str(prefix)]
            runs[name] = timed(argv, REPO, env, work / f"{Path(prefix).name}.log", args.repeat)
        manifest = json.loads(Path(f"{ours_prefix}.manifest.json").read_text())
        identical = all(
            Path(f"{mega_prefix}_text_document{ext}").read_bytes() == Path(f"{prefix}_text_document{ext}").read_bytes()
            for prefix in (ours_prefix, ours_gz_prefix, work / f"native-nocache-{tag}")
            for ext in (".bin", ".idx")
        )
        docs, text, tokens = manifest["documents"], manifest["text_bytes"], manifest["tokens"]
        reported = [line for line in (work / f"megatron-{tag}.log").read_text().splitlines() if line.startswith("Processed")]
        mega_phase = docs / float(reported[-1].split("(")[1].split()[0]) if reported else float("nan")
        print(f"\n{variant}: {docs} documents, {text / 1e6:.1f} MB of text, {tokens} tokens")
        print(f"  {'engine':<34} {'wall s':>8} {'text MB/s':>10} {'docs/s':>9} {'tokens/s':>11} {'peak RSS MB':>12} {'speed-up':>9}")
        for name, (wall, peak) in runs.items():
            print(f"  {name:<34} {wall:8.2f} {text / wall / 1e6:10.2f} {docs / wall:9.0f} {tokens / wall:11.0f} {peak / 2**20:12.0f} {mega[0] / wall:8.2f}x")
        print(f"  tokenizing phase only (start-up excluded): Megatron {mega_phase:.2f} s by its own docs/s, native {manifest['seconds']:.2f} s "
              f"({mega_phase / manifest['seconds']:.2f}x)")
        print(f"  byte-identical .bin and .idx (all native runs): {'yes' if identical else 'NO'}; word-cache hit rate {manifest['word_cache_hit_rate']}")
        results["runs"].append({
            "variant": variant, "documents": docs, "text_bytes": text, "tokens": tokens, "identical": identical,
            "wall_s": {name: wall for name, (wall, _) in runs.items()},
            "peak_rss_bytes": {name: peak for name, (_, peak) in runs.items()},
            "tokenizing_phase_s": {"megatron": mega_phase, "native": manifest["seconds"]},
            "word_cache_hit_rate": manifest["word_cache_hit_rate"],
        })
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(run["identical"] for run in results["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
