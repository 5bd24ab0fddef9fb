"""What one task sees inside the lab's container; run by tests/lab_container_proof.sh (one task per node).

    python3 lab_container_probe.py info OUT_DIR     facts about this task as JSON (OUT_DIR/info-<rank>.json), then a
                                                    gloo all-reduce of rank + 1 over all tasks
    python3 lab_container_probe.py signal OUT_DIR   wait for SIGUSR2 (OUT_DIR/ready-<rank>, then OUT_DIR/usr2-<rank>)

Standard library only, apart from what the image is for (torch, and the orchestrator modules through the mount).
Paths to prove absent come in PROBE_ABSENT (colon-separated host paths that exist outside the container).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

IN_JOB_MODULES = ("orchestrator.train.reference.trainer", "orchestrator.data.consolidate", "orchestrator.data.preprocess")


def rank() -> int:
    return int(os.environ["SLURM_PROCID"])


def imports() -> dict[str, str]:
    found = {}
    for name in IN_JOB_MODULES:
        try:
            importlib.import_module(name)
            found[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised: the checker names what failed
            found[name] = f"{type(exc).__name__}: {exc}"
    try:
        importlib.import_module("mistral_common")
        found["mistral_common"] = "present"
    except ImportError:
        found["mistral_common"] = "absent"
    orchestrator = sys.modules.get("orchestrator")
    found["orchestrator_from"] = getattr(orchestrator, "__file__", None) or "-"
    return found


def all_reduce() -> dict[str, float | int]:
    import torch
    import torch.distributed as dist

    world = int(os.environ["SLURM_NTASKS"])
    t0 = time.monotonic()
    dist.init_process_group("gloo", init_method="env://", rank=rank(), world_size=world)
    value = torch.tensor([float(rank() + 1)])
    dist.all_reduce(value)
    dist.destroy_process_group()
    return {"world": world, "sum": value.item(), "expected": world * (world + 1) / 2, "seconds": round(time.monotonic() - t0, 2)}


def info(out: Path) -> None:
    ppid = os.getppid()
    facts = {
        "rank": rank(),
        "node": os.environ.get("SLURMD_NODENAME"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "parent": Path(f"/proc/{ppid}/comm").read_text().strip() if Path(f"/proc/{ppid}/comm").exists() else None,
        "python": sys.executable,
        "python_version": sys.version.split()[0],
        "cwd": os.getcwd(),
        "image": dict(line.split("=", 1) for line in Path("/etc/orchestrator-image").read_text().split()),
        "os_release": Path("/etc/os-release").read_text().splitlines()[0],
        "absent": {p: not os.path.lexists(p) for p in filter(None, os.environ.get("PROBE_ABSENT", "").split(":"))},
        "orchestrator_in_image": any(Path(p, "orchestrator").exists() for p in sys.path if p.startswith("/usr")),
        "env": {k: os.environ.get(k) for k in ("PROBE_FROM_BATCH", "PROBE_FROM_SETENV", "PATH", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_JOB_ID", "SLURM_STEP_ID")},
        "imports": imports(),
    }
    # Read-write through the same-path bind, and a relative path lands in the working directory.
    (out / f"written-by-rank-{rank()}").write_text(f"{facts['node']}\n")
    Path(f"cwd-marker-{rank()}").write_text("here\n")
    facts["all_reduce"] = all_reduce()
    (out / f"info-{rank()}.json").write_text(json.dumps(facts, indent=1) + "\n")
    print(f"rank {rank()} on {facts['node']}: all_reduce sum {facts['all_reduce']['sum']}", flush=True)


def wait_for_signal(out: Path) -> None:
    def on_usr2(signum: int, _frame: object) -> None:
        (out / f"usr2-{rank()}").write_text(f"{signal.Signals(signum).name} pid {os.getpid()}\n")
        print(f"rank {rank()}: got {signal.Signals(signum).name}", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGUSR2, on_usr2)
    (out / f"ready-{rank()}").write_text(f"{os.getpid()}\n")
    time.sleep(120)
    print(f"rank {rank()}: no SIGUSR2 within 120 s", flush=True)
    sys.exit(3)


if __name__ == "__main__":
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    {"info": info, "signal": wait_for_signal}[mode](out_dir)
