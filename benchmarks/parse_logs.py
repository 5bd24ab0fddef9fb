"""How fast ``collect`` reads training logs, and how much memory it needs: MB/s and peak RSS.

Two kinds of log, written to a temporary directory (page cache warm, so this measures the parser, not the disk):

- ``noisy``: a long run's srun stdout, a fixed number of steps with the noise of many ranks between the metric
  lines (NCCL INFO, PyTorch and NeMo warnings, some ANSI-coloured, look-alikes such as ``Validation: iteration``
  and lines mentioning ``global_step``). Scaling the noise at a fixed step count shows memory stays flat in the
  log size.
- ``metrics``: nothing but metric lines, one per step: the worst case per byte, and the memory cost per step.

Each measurement runs in a fresh Python process (``collect_logs``: parse, merge, metrics) and reports the best of
``--repeat`` runs, since this machine is shared; "MB/CPU-s" divides by the process's CPU time instead of wall time
(the cost on a core of its own); "load" is the 1-minute load average as each case ends. Usage::

    python benchmarks/parse_logs.py                                  # the default cases, best of 3
    python benchmarks/parse_logs.py --case noisy:2048:5000 --case metrics:64 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.logline import format_log_line  # noqa: E402

MB = 1_000_000
NOISE = [
    "node-a{n:03d}:{p}:{p2} [{r}] NCCL INFO Channel {c:02d}/0 : {r}[{r}] -> {r2}[{r2}] via P2P/IPC/read",
    "[NeMo W 2025-11-20 14:55:{s:02d} nemo_logging:405] /usr/local/lib/python3.12/dist-packages/torch/distributed/"
    "c10d_logger.py:83: FutureWarning: `torch.distributed._all_gather_base` is a private function and will be "
    "deprecated. Please use `torch.distributed.all_gather_into_tensor` instead.",
    "  warnings.warn(",
    "[rank{r}]:[W1120 14:55:{s:02d}.{p} ProcessGroupNCCL.cpp:4115] Warning: TORCH_NCCL_AVOID_RECORD_STREAMS=1 has "
    "no effect for point-to-point collectives. (function operator())",
    "\x1b[33m[NeMo W 2025-11-20T14:55:{s:02d} nemo_logging:405]\x1b[0m Could not find the global_step in the "
    "checkpoint name; Training from scratch",
    "Validation: iteration {c}/32",
    "Running garbage collection at train global_step: {p}",
    "[2025-11-20T14:55:{s:02d}+08:00] retraining/{r} node-a{n:03d}:{p}:{p2} [{r}] NCCL INFO comm 0x55d{p} rank {r} "
    "nRanks 512 nNodes 64 localRanks 8 localRank {r2} MNNVL 0 - Init COMPLETE",
]


def noise_block(lines: int, seed: int) -> str:
    out = []
    for i in range(lines):
        k = seed * 7919 + i * 104729
        r, c = k % 512, k % 32
        fields = dict(n=k % 64, p=1000 + k % 90000, p2=2000 + k % 7000, r=r, r2=(r + 1) % 8, c=c, s=k % 60)
        out.append(NOISE[k % len(NOISE)].format(**fields))
    return "\n".join(out) + "\n"


def metric_line(step: int, max_steps: int) -> str:
    fields = {
        "lr": 3e-4 * min(1.0, (step + 1) / 2000),
        "global_batch_size": 128,
        "global_step": step,
        "reduced_train_loss": 11.9 * 0.9995**step + 2.0,
        "train_step_timing in s": 12.2 + (step % 7) * 0.01,
        "tokens_per_sec_per_gpu": 1.073e4 - (step % 5),
        "consumed_samples": (step + 1) * 128,
    }
    if step >= 500:
        fields["val_loss"] = 3.0 + 1.0 / (1 + step // 500)
    return "[2025-11-20T14:55:23+08:00] retraining/0 " + format_log_line(0, step, max_steps, fields) + "\n"


def write_noisy(path: Path, size: int, steps: int) -> int:
    """``steps`` metric lines with the noise between them filling ``size`` bytes."""
    per_step = max(size // steps - 300, 0)
    blocks = [noise_block(per_step // 40 + 1, seed).encode() for seed in range(16)]  # more than enough lines
    blocks = [b[: b.rfind(b"\n", 0, per_step) + 1] for b in blocks]
    with open(path, "wb") as out:
        for step in range(steps):
            out.write(blocks[step % len(blocks)])
            out.write(metric_line(step, steps).encode())
    return steps


def write_metrics(path: Path, size: int) -> int:
    step = 0
    with open(path, "wb") as out:
        written = 0
        while written < size:
            chunk = "".join(metric_line(s, 10**7) for s in range(step, step + 10_000)).encode()
            out.write(chunk)
            written += len(chunk)
            step += 10_000
    return step


def peak_rss() -> int:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it starts afresh at exec, not at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(path: str) -> None:
    """One measurement, in its own process so that its peak RSS is the parser's."""
    from orchestrator.collect import collect_logs

    before = peak_rss()
    start, cpu_start = time.perf_counter(), time.process_time()
    metrics = collect_logs([path], model="bench")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = peak_rss()
    size = os.path.getsize(path)
    print(
        json.dumps(
            dict(
                seconds=seconds,
                cpu_seconds=cpu_seconds,
                bytes=size,
                steps=metrics.num_steps,
                rss_before=before,
                rss_peak=peak,
            )
        )
    )


def measure(path: Path, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(path)], capture_output=True, text=True, check=True
        )
        runs.append(json.loads(out.stdout))
    best = min(runs, key=lambda r: r["seconds"])
    best["mb_per_s"] = best["bytes"] / MB / best["seconds"]
    best["mb_per_cpu_s"] = best["bytes"] / MB / min(r["cpu_seconds"] for r in runs)
    best["mb_per_s_all"] = [round(r["bytes"] / MB / r["seconds"], 1) for r in runs]
    return best


DEFAULT_CASES = ["noisy:128:5000", "noisy:1024:5000", "noisy:128:50000", "metrics:256"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--case",
        action="append",
        metavar="KIND:MB[:STEPS]",
        help=f"noisy:MB:STEPS or metrics:MB; repeatable (default: {' '.join(DEFAULT_CASES)})",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the logs (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(
        f"{'log':<18} {'MB':>6} {'steps':>9} {'metric bytes':>12} {'MB/s (best)':>12} {'all runs':>22} "
        f"{'MB/CPU-s':>9} {'RSS MiB: start':>15} {'peak':>6} {'load':>5}"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for case in args.case or DEFAULT_CASES:
            kind, mb, *rest = case.split(":")
            path = Path(tmp) / f"{case.replace(':', '-')}.out"
            if kind == "noisy":
                steps = int(rest[0]) if rest else 5000
                write_noisy(path, int(mb) * MB, steps)
            elif kind == "metrics":
                write_metrics(path, int(mb) * MB)
            else:
                parser.error(f"--case {case}: kind must be noisy or metrics")
            r = measure(path, args.repeat)
            share = min(r["steps"] * len(metric_line(r["steps"] // 2, r["steps"])) / r["bytes"], 1.0)
            print(
                f"{case:<18} {r['bytes'] / MB:>6.0f} {r['steps']:>9,} {share:>12.1%} {r['mb_per_s']:>12.1f} "
                f"{str(r['mb_per_s_all']):>22} {r['mb_per_cpu_s']:>9.1f} {r['rss_before'] / 2**20:>15.0f} "
                f"{r['rss_peak'] / 2**20:>6.0f} {os.getloadavg()[0]:>5.2f}"
            )
            path.unlink()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
