"""The Hugging Face import stage: where it writes, that it runs once, and that the token never leaks."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest
from nemo_stack import fdl, llm

from orchestrator.plan import build_plan
from orchestrator.train import nemo_import
from orchestrator.train.nemo_recipe import model_config

pytestmark = pytest.mark.nemo
TOKEN = "hf_FAKEtoken0123456789abcdefGHIJKLmnop"


def make_plan(tmp_path: Path, **overrides: Any):
    base = {
        "data.source": "preprocessed",
        "data.train_prefixes": ["/d/a"],
        "train.hf_model_id": "meta-llama/Llama-3.1-8B",
    }
    plan = build_plan("llama31_8b", "h100-pyxis", {**base, **overrides}, run_dir=tmp_path / "run")
    Path(plan.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(plan.run_dir) / "plan.json").write_text(plan.to_json())
    return plan


class FakeImporter:
    """Stands in for ``llm.import_ckpt`` (no network here): records what it was given, writes a NeMo-shaped output."""

    def __init__(self, fail_with: str | None = None):
        self.calls: list[dict[str, Any]] = []
        self.fail_with = fail_with

    def __call__(self, model: Any, source: str, output_path: Path) -> Path:
        self.calls.append(
            {
                "model": model,
                "source": source,
                "output_path": output_path,
                **{k: os.environ.get(k) for k in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")},
            }
        )
        if self.fail_with:
            raise RuntimeError(self.fail_with)
        (output_path / "weights").mkdir(parents=True)
        (output_path / "context").mkdir()
        (output_path / "context" / "model.yaml").write_text("_target_: LlamaModel\n")
        return output_path


@pytest.fixture(autouse=True)
def cpu_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the real model class on a CPU: only RoPE fusion needs Transformer Engine, which the container has."""

    def build(plan):
        config = model_config(plan)
        config.config.apply_rope_fusion = False
        return fdl.build(config)

    monkeypatch.setattr(nemo_import, "build_model", build)
    for name in ("HF_TOKEN", "HF_TOKEN_FILE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def files_containing(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_token_from_a_file_reaches_the_hub_client_only_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = make_plan(tmp_path)
    token_file = tmp_path / "secrets" / "hf_token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("HF_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")  # the cluster profile's setting for training
    importer = FakeImporter()

    output = nemo_import.import_checkpoint(plan, importer=importer)

    call = importer.calls[0]
    assert call["source"] == "hf://meta-llama/Llama-3.1-8B"
    assert (call["HF_TOKEN"], call["HF_HUB_OFFLINE"], call["TRANSFORMERS_OFFLINE"]) == (TOKEN, "0", "0")
    assert type(call["model"]).__name__ == "LlamaModel" and type(call["model"].config).__name__ == "Llama31Config8B"
    assert output == tmp_path / "run" / "imported" / "meta-llama--Llama-3.1-8B"
    assert (output / "weights").is_dir() and not list(output.parent.glob(".*tmp*"))
    assert "HF_TOKEN" not in os.environ and os.environ["TRANSFORMERS_OFFLINE"] == "1"  # restored afterwards
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err
    assert files_containing(tmp_path / "run", TOKEN) == []


def test_a_failure_message_never_shows_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = make_plan(tmp_path)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    importer = FakeImporter(
        fail_with=f"401 Client Error for url https://huggingface.co/... (Authorization: Bearer {TOKEN})"
    )
    monkeypatch.setattr(llm, "import_ckpt", importer)  # what the stage calls when run as a job

    assert nemo_import.run(argparse.Namespace(run_dir=plan.run_dir)) == 1

    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err
    assert "401 Client Error" in out.out and "<HF_TOKEN>" in out.out and "Traceback" in out.out
    output = tmp_path / "run" / "imported" / "meta-llama--Llama-3.1-8B"
    assert not output.exists() and not list(output.parent.glob(".*tmp*"))  # nothing half-written stays
    assert files_containing(tmp_path / "run", TOKEN) == []


def test_import_runs_once(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    importer = FakeImporter()
    first = nemo_import.import_checkpoint(plan, importer=importer)
    assert nemo_import.import_checkpoint(plan, importer=importer) == first
    assert len(importer.calls) == 1


def test_a_leftover_that_is_not_a_checkpoint_is_not_taken_as_one(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, **{"train.init_from": str(tmp_path / "ckpt" / "llama")})
    (tmp_path / "ckpt" / "llama" / "weights").mkdir(parents=True)  # no context/: an interrupted copy
    with pytest.raises(nemo_import.ImportStageError, match="remove it"):
        nemo_import.import_checkpoint(plan, importer=FakeImporter())


def test_a_local_model_folder_is_imported_without_going_online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "models" / "Llama-3.1-8B"
    folder.mkdir(parents=True)
    plan = make_plan(tmp_path, **{"train.hf_model_id": str(folder)})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    importer = FakeImporter()
    nemo_import.import_checkpoint(plan, importer=importer)
    assert importer.calls[0]["source"] == f"hf://{folder}"
    assert importer.calls[0]["HF_HUB_OFFLINE"] == "1" and importer.calls[0]["HF_TOKEN"] is None
    assert (Path(plan.run_dir) / "imported" / "Llama-3.1-8B").is_dir()


def test_an_unreadable_token_file_is_named_in_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(nemo_import.ImportStageError, match="HF_TOKEN_FILE"):
        nemo_import.read_hf_token()
