"""``srun`` for one machine: start N copies of a command with torch-style rank variables, as the local scheduler's step.

Each task gets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT. USR2, TERM and INT
are forwarded to every task (so a trainer saves and stops as under Slurm); if one task fails the others are
terminated (srun's ``--kill-on-bad-exit``). The exit code is the first failure's, else the largest.

    python -m orchestrator.launch --nproc-per-node 2 -- python -m orchestrator.train.reference --run-dir RUN
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

FORWARDED = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(command: Sequence[str], nproc: int, master_port: int | None = None) -> int:
    port = master_port or free_port()
    procs: list[subprocess.Popen[bytes]] = []
    for rank in range(nproc):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(nproc),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(subprocess.Popen(list(command), env=env))

    def forward(signum: int, frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    first_failure: int | None = None
    while any(p.poll() is None for p in procs):
        for proc in procs:
            rc = proc.poll()
            if rc not in (None, 0) and first_failure is None:
                first_failure = rc
                for other in procs:
                    if other.poll() is None:
                        other.terminate()
        time.sleep(0.1)
    codes = [p.returncode for p in procs]
    return first_failure if first_failure is not None else max(codes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.launch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nproc-per-node", type=int, default=1, help="tasks to start (default 1)")
    parser.add_argument("--master-port", type=int, default=None, help="rendezvous port (default: a free one)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command each task runs")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    return launch(command, args.nproc_per_node, args.master_port)


if __name__ == "__main__":
    sys.exit(main())
