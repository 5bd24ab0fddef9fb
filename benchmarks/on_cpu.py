"""``python benchmarks/on_cpu.py MODULE [ARGS...]``: ``python -m MODULE ARGS`` on a CPU, with the CUDA stand-ins of
``tests/nemo_cpu_trainer.py`` (what a machine without a GPU needs; the import stage's checkpoint writer, for one,
synchronises CUDA after copying tensors to the host). The trainer itself goes through that harness, which also puts
the recipe on the CPU.

Guarded by ``__main__``: NeMo's asynchronous checkpoint writer is a spawned process that imports this file again.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from nemo_cpu_trainer import install_cpu_stand_ins

    install_cpu_stand_ins()
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
