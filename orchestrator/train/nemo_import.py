"""Import a Hugging Face checkpoint into NeMo format, the first stage of continual pretraining.

``python -m orchestrator.train.nemo_import --run-dir DIR`` (one task, as a Slurm job of its own) runs NeMo's
``llm.import_ckpt`` with the plan's model class and configuration (``LlamaModel(Llama31Config8B)`` for
``llama31_8b``) on ``hf://<train.hf_model_id>`` (a hub id, or an absolute path to a downloaded model folder) and
publishes the result at :func:`~orchestrator.train.nemo_checkpoint.init_checkpoint` (``train.init_from``, else
``<run_dir>/imported/<org>--<name>``), where the train stage restores the weights from. The output appears under its
final name only once complete (written beside it, then renamed), so a rerun after success does nothing and a rerun
after a crash starts over.

The Hugging Face token comes from ``HF_TOKEN`` or from the file named by ``HF_TOKEN_FILE``. It is handed to
``huggingface_hub`` through this process's environment only: never an argument, never written to a file, and
removed from any error message before it is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from orchestrator.atomic import publish_dir, remove_stale_siblings, temporary_sibling
from orchestrator.plan import RunPlan
from orchestrator.train.nemo_checkpoint import init_checkpoint, is_local_model, is_nemo_checkpoint

TOKEN_ENV = "HF_TOKEN"
TOKEN_FILE_ENV = "HF_TOKEN_FILE"
OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class ImportStageError(RuntimeError):
    """The import stage cannot finish; the message says why and how to fix it (and never holds the token)."""


def read_hf_token() -> str | None:
    """``HF_TOKEN``, else the first line of the file ``HF_TOKEN_FILE`` names; None when neither is set."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = os.environ.get(TOKEN_FILE_ENV, "").strip()
    if not path:
        return None
    try:
        text = Path(path).expanduser().read_text()
    except OSError as exc:
        raise ImportStageError(
            f"{TOKEN_FILE_ENV}={path}: cannot read it ({exc.strerror}); "
            "fix: point it at a readable file holding the token, or unset it"
        ) from None
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else None


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "<HF_TOKEN>") if secret else text


@contextlib.contextmanager
def hf_environment(token: str | None, online: bool) -> Iterator[None]:
    """The token (and, for hub downloads, online mode) in this process's environment for the duration; then restored."""
    changes: dict[str, str] = {}
    if token:
        changes[TOKEN_ENV] = token
    if online:
        changes.update({name: "0" for name in OFFLINE_ENVS})
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def import_source(plan: RunPlan) -> str:
    """``hf://<id>`` for a hub model, ``hf:///abs/path`` for a local folder (NeMo's importer takes both)."""
    model_id = plan.train.hf_model_id
    if not model_id:
        raise ImportStageError(
            "train.hf_model_id is not set: nothing to import; fix: --set train.hf_model_id=meta-llama/Llama-3.1-8B"
        )
    if not is_local_model(model_id):
        return f"hf://{model_id}"
    local = Path(model_id).expanduser().resolve()
    if not local.is_dir():
        raise ImportStageError(
            f"train.hf_model_id={model_id}: no such model folder; "
            "fix: a hub id (org/name) or a folder holding config.json and the weights"
        )
    return f"hf://{local}"


def build_model(plan: RunPlan) -> Any:
    """The NeMo model the checkpoint is converted into: the recipe's model class with the plan's configuration."""
    import fiddle as fdl

    from orchestrator.train.nemo_recipe import model_config

    return fdl.build(model_config(plan))


def without_te_if_missing() -> contextlib.AbstractContextManager[None]:
    """NeMo's importers assume Transformer Engine; on a machine without it (a lent GPU, a CPU) they are adapted."""
    from orchestrator.train.nemo_local_spec import have_transformer_engine, importing_without_te

    return contextlib.nullcontext() if have_transformer_engine() else importing_without_te()


def import_checkpoint(plan: RunPlan, importer: Callable[..., Any] | None = None) -> Path:
    """Import once: skip when the output is complete, otherwise convert into a sibling and rename it into place."""
    start = init_checkpoint(plan)
    if start is None or "://" in start:
        raise ImportStageError(
            f"train.init_from={plan.train.init_from!r}: the import stage writes to a directory; "
            "fix: unset it (the run directory is used) or name a directory"
        )
    output = Path(start)
    if is_nemo_checkpoint(output):
        print(f"{output}: already imported, nothing to do", flush=True)
        return output
    if output.exists():
        raise ImportStageError(
            f"{output} exists but is not a complete NeMo checkpoint (no weights/ and context/); "
            "fix: remove it and run the import stage again"
        )
    source = import_source(plan)
    token = read_hf_token()
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(output)  # left by an import that was killed
    staging = temporary_sibling(output)
    if importer is None:
        from nemo.collections import llm

        importer = llm.import_ckpt
    print(f"importing {source} into {output}", flush=True)
    try:
        with hf_environment(token, online=not source.startswith("hf:///")), without_te_if_missing():
            importer(model=build_model(plan), source=source, output_path=staging)
        if not is_nemo_checkpoint(staging):
            raise ImportStageError(f"the importer finished but {staging} has no weights/ and context/")
        publish_dir(staging, output)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, redacted, as one error
        shutil.rmtree(staging, ignore_errors=True)
        details = redact("".join(traceback.format_exception(exc)), token)  # tracebacks quote messages, urls, headers
        raise ImportStageError(f"importing {source} failed:\n{details}") from None
    print(f"imported {source} into {output}", flush=True)
    return output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="run directory holding plan.json")


def run(args: argparse.Namespace) -> int:
    plan = RunPlan.load(args.run_dir)
    try:
        import_checkpoint(plan)
    except ImportStageError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.train.nemo_import", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
