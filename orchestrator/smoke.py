"""The smoke test of a cluster profile: every task reports who it is, and the reports are checked.

Each task of a small multi-node job writes ``<report-dir>/rank-<R>.json`` with its host, rank, world size,
MASTER_ADDR/PORT and visible GPUs, after a real all-reduce over torch.distributed when torch is there (gloo on
CPU nodes, NCCL on GPU nodes), so the rank wiring a training job relies on is exercised end to end.
:func:`check_reports` then verifies them against what the plan asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.atomic import atomic_write_json
from orchestrator.contract import JobEnvironment


def visible_gpus() -> list[str]:
    ids = os.environ.get("CUDA_VISIBLE_DEVICES")
    if ids:
        return [i for i in ids.split(",") if i]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def all_reduce_check(rank: int, world: int) -> dict[str, Any]:
    """Sum of ranks over torch.distributed; proves MASTER_ADDR/PORT, ranks and the network work."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return {"all_reduce": "skipped: torch is not installed in the step's environment"}
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")
    value = torch.tensor([float(rank)], device=device)
    dist.all_reduce(value)
    dist.destroy_process_group()
    return {"all_reduce": value.item(), "backend": backend}


def report(report_dir: Path) -> dict[str, Any]:
    env, job = os.environ, JobEnvironment.current()
    rank, world = job.global_rank, job.world_size
    record: dict[str, Any] = {
        "host": job.host,
        "rank": rank,
        "local_rank": job.local_rank,
        "world_size": world,
        "master_addr": env.get("MASTER_ADDR"),
        "master_port": env.get("MASTER_PORT"),
        "visible_gpus": visible_gpus(),
        "slurm_job_id": job.job_id if job.scheduler == "slurm" else None,
        # what the step runs in: a container's own interpreter, the package from its mount, the working directory
        "python": f"{sys.executable} {sys.version.split()[0]}",
        "package": str(Path(__file__).resolve().parent),
        "cwd": os.getcwd(),
    }
    record.update(all_reduce_check(rank, world))
    atomic_write_json(report_dir / f"rank-{rank}.json", record)
    return record


def check_reports(
    report_dir: Path, *, world_size: int, nodes: int, gpus_per_node: int, first_host: str | None = None
) -> list[str]:
    """Problems found in the reports (empty: the cluster wiring is right)."""
    reports = [json.loads(p.read_text()) for p in sorted(report_dir.glob("rank-*.json"))]
    problems = []
    ranks = sorted(r["rank"] for r in reports)
    if ranks != list(range(world_size)):
        problems.append(f"ranks reported {ranks}, expected 0..{world_size - 1}")
    if {r["world_size"] for r in reports} != {world_size}:
        problems.append(f"world sizes {sorted({r['world_size'] for r in reports})}, expected {world_size}")
    hosts = {r["host"] for r in reports}
    if len(hosts) != nodes:
        problems.append(f"{len(hosts)} distinct hosts ({', '.join(sorted(hosts))}), expected {nodes}")
    masters = {r["master_addr"] for r in reports}
    if len(masters) != 1 or None in masters:
        problems.append(f"MASTER_ADDR differs or is unset across ranks: {masters}")
    elif first_host and masters != {first_host}:
        problems.append(f"MASTER_ADDR {masters.pop()} is not the first host of the allocation {first_host}")
    expected_sum = world_size * (world_size - 1) / 2
    for r in reports:
        if not isinstance(r.get("all_reduce"), float):
            problems.append(
                f"rank {r['rank']}: the all-reduce did not run ({r.get('all_reduce')}); install torch where the "
                "step runs (the container image, or cluster.venv)"
            )
        elif r["all_reduce"] != expected_sum:
            problems.append(f"rank {r['rank']}: all-reduce gave {r['all_reduce']}, expected {expected_sum}")
        if gpus_per_node and len(r["visible_gpus"]) < 1:
            problems.append(f"rank {r['rank']} on {r['host']} sees no GPU")
    for host in sorted(hosts):
        seen = [r["visible_gpus"] for r in reports if r["host"] == host]
        count = len({g for ids in seen for g in ids})
        if all(len(ids) == 1 for ids in seen):  # one GPU bound to each task (maybe renumbered to 0)
            count = max(count, len(seen))
        if count != gpus_per_node:
            problems.append(
                f"{host}: its tasks see {count} GPU(s), the cluster profile says gpus_per_node={gpus_per_node}; "
                "fix gpus_per_node in the profile, or the partition (--partition) it names"
            )
    return problems


def run_smoke(cluster: str, nodes: int, console: Any, runs_root: Path | None = None, timeout_s: float = 600) -> int:
    """Submit the smoke job on ``cluster`` over ``nodes`` nodes, wait, check the reports; 0 when all is right."""
    import datetime as dt
    import time

    from orchestrator import slurm
    from orchestrator.plan import build_plan
    from orchestrator.profiles import load_cluster
    from orchestrator.submit import submit_run

    site = load_cluster(cluster)
    run_id = f"smoke-{dt.datetime.now():%Y%m%d-%H%M%S}"
    root = Path(runs_root or site.runs_root).expanduser()
    plan = build_plan(
        "tiny",
        cluster,
        {"layout.nodes": nodes, "stages": ["smoke"], "data.source": "preprocessed"},
        run_id=run_id,
        run_dir=root / run_id,
    )
    report_dir = Path(plan.run_dir) / "smoke"
    sub = submit_run(plan, say=lambda m: console.print(m, markup=False))
    if site.scheduler == "slurm":
        job_id = sub.jobs[0][1]
        deadline = time.time() + timeout_s
        while True:
            state = slurm.liveness([job_id]).jobs[job_id]
            if not state.alive and state.records:
                record = state.records[-1]
                break
            if time.time() > deadline:
                console.print(f"[red]smoke job {job_id} did not finish within {timeout_s:.0f}s; cancelling[/]")
                slurm.cancel([job_id])
                return 1
            time.sleep(2)
        console.print(f"smoke job {job_id}: {record.state} on {record.node_list}")
        first = slurm.run(["scontrol", "show", "hostnames", record.node_list]).split()[0] if record.node_list else None
    else:
        first = "127.0.0.1"
    problems = check_reports(
        report_dir,
        world_size=plan.world_size,
        nodes=plan.layout.nodes if site.scheduler == "slurm" else 1,
        gpus_per_node=site.gpus_per_node,
        first_host=first,
    )
    for path in sorted(report_dir.glob("rank-*.json")):
        r = json.loads(path.read_text())
        console.print(
            f"rank {r['rank']}/{r['world_size']} on {r['host']}: MASTER_ADDR={r['master_addr']}:{r['master_port']} "
            f"GPUs={','.join(r['visible_gpus']) or '-'} all-reduce={r.get('all_reduce')} python={r.get('python')} "
            f"cwd={r.get('cwd')}",
            markup=False,
        )
    if problems:
        for problem in problems:
            console.print(f"[red]FAIL: {problem}[/]")
        return 1
    console.print(f"[green]smoke test passed[/]: {plan.world_size} tasks on {nodes} node(s) of {cluster}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.smoke", description=__doc__)
    parser.add_argument("--report-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    record = report(args.report_dir)
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
