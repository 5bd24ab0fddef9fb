"""``python tests/nemo_cpu_trainer.py --run-dir DIR``: the NeMo trainer, ``orchestrator.train.nemo``, on a CPU.

Everything that runs is the product's and NeMo's own code: the recipe ``build_recipe(plan)`` makes, NeMo's
``nl.Trainer`` with ``MegatronStrategy``, ``llm.pretrain`` (its ``NoValOnRestartTrainingLoop``, ``AutoResume``,
``NeMoLogger``), the Megatron GPT model (the local layer spec the trainer switches to without Transformer Engine),
Megatron's optimizer, ``PreTrainingDataModule`` with Megatron's datasets and samplers, NeMo's ``ModelCheckpoint``
with its asynchronous distributed checkpoint writer, and the orchestrator's callbacks.

The stand-ins, all here and only what a machine without a GPU needs (the GPU benchmarks run without them):

* CUDA on the CPU: tensors that Megatron and NeMo create with ``device="cuda"`` (or ``torch.cuda.current_device()``)
  are made on the CPU, ``.cuda()`` returns the tensor, ``Tensor.type()`` answers ``torch.cuda.*Tensor`` (Megatron's
  mixed-precision optimizer checks it), CUDA streams and ``synchronize`` are no-ops, and CUDA counts as initialised;
* the recipe's trainer gets ``accelerator="cpu"`` and the model ``use_cpu_initialization=True``.

Guarded by ``__main__``: NeMo's asynchronous checkpoint writer is a spawned process that imports this file again.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

REPO = Path(__file__).resolve().parent.parent


def _on_cpu(device: Any) -> Any:
    if isinstance(device, torch.device):
        return torch.device("cpu") if device.type == "cuda" else device
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return torch.device("cpu")
    return device


class CudaOnCpu(TorchFunctionMode):
    """Stand-in: every torch call that asks for a CUDA device gets the CPU."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if "device" in kwargs:
            kwargs["device"] = _on_cpu(kwargs["device"])
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if name == "cuda":
            return args[0]
        if name == "to":
            args = tuple(_on_cpu(a) if isinstance(a, (str, torch.device)) else a for a in args)
        if name == "type" and len(args) == 1 and not kwargs:
            out = func(*args)
            return out.replace("torch.", "torch.cuda.", 1) if isinstance(out, str) and ".cuda." not in out else out
        return func(*args, **kwargs)


class _Done:
    """Stand-in for a CUDA stream or event: on the CPU, all work is done when it is issued."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:  # wait_stream, record_event, synchronize, wait_event, record, wait ...
        return lambda *args, **kwargs: _Done() if name == "record_event" else None

    def query(self) -> bool:
        return True


def install_cpu_stand_ins() -> None:
    torch.cuda.Stream = _Done  # type: ignore[assignment,misc]
    torch.cuda.Event = _Done  # type: ignore[assignment,misc]
    torch.cuda.stream = lambda stream=None: contextlib.nullcontext()  # type: ignore[assignment]
    torch.cuda.current_stream = lambda *a, **k: _Done()  # type: ignore[assignment]
    torch.cuda.current_device = lambda: 0  # type: ignore[assignment]  # device=0 becomes the CPU, as above
    torch.cuda.is_initialized = lambda: True  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    CudaOnCpu().__enter__()


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(REPO))
    install_cpu_stand_ins()
    from orchestrator.train import nemo as entry
    from orchestrator.train import nemo_recipe

    product_recipe = nemo_recipe.build_recipe

    def cpu_recipe(plan: Any, **kwargs: Any) -> Any:
        recipe = product_recipe(plan, **kwargs)
        recipe.trainer.accelerator = "cpu"
        recipe.model.config.use_cpu_initialization = True
        return recipe

    nemo_recipe.build_recipe = cpu_recipe
    return entry.main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
