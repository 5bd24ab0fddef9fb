"""Rendered scripts: valid bash, shellcheck-clean for every profile x cluster, values reach programs literally."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from orchestrator.plan import build_plan
from orchestrator.profiles import MODELS, cluster_names, profiles_dir
from orchestrator.render import render_all, sbatch_value

HOSTILE = """a b "c" $(touch PWNED) `touch PWNED2` ; 'd' \\ $HOME"""


def _render_all_pairs(tmp_path: Path) -> list[Path]:
    paths = []
    for model in MODELS:
        for cluster in cluster_names():
            plan = build_plan(model.name, cluster, run_dir=tmp_path / f"{model.name}-{cluster}", check=False)
            for script in render_all(plan):
                path = tmp_path / "scripts" / f"{model.name}-{cluster}-{script.stage}.sbatch"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(script.text)
                paths.append(path)
    return paths


def test_every_profile_cluster_pair_renders_clean_bash_and_shellcheck(tmp_path):
    paths = _render_all_pairs(tmp_path)
    assert len(paths) >= len(MODELS) * len(cluster_names()) * 3
    for path in paths:
        syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{path.name}: {syntax.stderr}"
    lint = subprocess.run(["shellcheck", "--severity=style", *map(str, paths)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout[-4000:]


def test_render_405b_on_the_pyxis_site_writes_the_four_stage_scripts(tmp_path):
    out = tmp_path / "out"
    done = run_cli(
        "render", "--profile", "405b", "--cluster", "h100-pyxis", "--out", str(out), "--run-dir", str(tmp_path / "run")
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "consolidate.sbatch",
        "index.sbatch",
        "plan.json",
        "preprocess.sbatch",
        "train.sbatch",
    ]
    train = (out / "train.sbatch").read_text()
    assert (
        "#SBATCH --nodes=288" in train
        and "#SBATCH --ntasks-per-node=8" in train
        and "#SBATCH --gpus-per-node=8" in train
    )
    assert (
        "#SBATCH --signal=B:USR2@600" in train
        and "#SBATCH --requeue" in train
        and "#SBATCH --open-mode=append" in train
    )
    assert "--container-image=nvcr.io/nvidia/nemo:25.09.00" in train
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in train
    assert "-m orchestrator.train.nemo" in train
    preprocess = (out / "preprocess.sbatch").read_text()
    assert "#SBATCH --array=0-2" in preprocess, "the two training files (en_6, en_7) and the validation file"
    assert "#SBATCH --array=6-8" in (out / "consolidate.sbatch").read_text(), "merged outputs 6, 7 and validation (8)"
    assert "--gpus-per-node" not in preprocess, "tokenization needs no GPU"
    index = (out / "index.sbatch").read_text()
    assert (
        "#SBATCH --nodes=1" in index and "--gpus-per-node" not in index and "-m orchestrator.train.nemo_index" in index
    )


def _hostile_cluster(tmp_path: Path) -> Path:
    body = yaml.safe_load((profiles_dir() / "local.yaml").read_text())
    body["env"] = {"ODD_VALUE": HOSTILE}
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_hostile_values_reach_the_environment_literally(tmp_path):
    plan = build_plan("tiny", str(_hostile_cluster(tmp_path)), run_dir=tmp_path / "run $(x) 'q'")
    (train,) = [s for s in render_all(plan) if s.stage == "train"]
    export = next(line for line in train.text.splitlines() if line.startswith("export ODD_VALUE="))
    shown = subprocess.run(
        ["bash", "-c", f'{export}; printf %s "$ODD_VALUE"'], capture_output=True, text=True, cwd=tmp_path
    )
    assert shown.stdout == HOSTILE
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()
    run_dir_line = next(line for line in train.text.splitlines() if line.startswith("export ORCHESTRATOR_RUN_DIR="))
    shown = subprocess.run(
        ["bash", "-c", f'{run_dir_line}; printf %s "$ORCHESTRATOR_RUN_DIR"'], capture_output=True, text=True
    )
    assert shown.stdout == str(tmp_path / "run $(x) 'q'")


def test_sbatch_lines_refuse_values_sbatch_would_misread():
    assert sbatch_value("gpu-h100") == "gpu-h100"
    with pytest.raises(ValueError, match="sbatch would misread"):
        sbatch_value("batch queue")
    with pytest.raises(ValueError, match="cluster.partition"):
        sbatch_value("gpu\n", "partition")  # `$` once accepted a trailing newline


def test_an_environment_name_with_a_trailing_newline_is_refused(tmp_path):
    """``^...$`` matched ``"gpu\n"``, which rendered ``export gpu`` and then ``=1`` as a command."""
    plan = build_plan("tiny", "local", {"env": {"gpu\n": "1"}}, run_dir=tmp_path / "run")
    with pytest.raises(ValueError, match="not a valid environment variable name"):
        render_all(plan)


# Stand-ins shaped like real tokens (the prefixes Hugging Face, GitHub, OpenAI and W&B use); none is a real one.
FAKE_TOKENS = {
    "hf": "hf_" + "A1b2" * 9,
    "github": "ghp_" + "Zz09" * 9,
    "github fine-grained": "github_pat_" + "11AB" * 8,
    "openai": "sk-" + "proj" * 8,
    "slack": "xoxb-" + "1234-" * 4,
    "wandb": "0123456789abcdef" * 2 + "01234567",
}


@pytest.mark.parametrize("kind", sorted(FAKE_TOKENS))
@pytest.mark.parametrize("name", ["WANDB_KEY", "HF_AUTH", "GH_PAT", "HFTOKEN", "MY_SETTING"])
def test_secrets_are_never_rendered_into_scripts(tmp_path, kind, name):
    """By name or by value, in the environment or in srun's --export: rendering refuses, naming the variable and the
    fix, and never shows the value."""
    secret = FAKE_TOKENS[kind]
    for overrides in (
        {"env": {name: secret}},
        {"cluster.container.extra_srun_args": [f"--export=ALL,{name}={secret}"]},
    ):
        plan = build_plan("tiny", "slurm-lab-container", overrides, run_dir=tmp_path / "run")
        with pytest.raises(ValueError) as exc:
            render_all(plan)
        assert name in str(exc.value) and "*_FILE" in str(exc.value) and secret not in str(exc.value)


def test_secret_names_need_a_secret_value_or_a_secret_name(tmp_path):
    """A *_FILE variable holds a path (what the refusal recommends), and 40-hex commit ids in paths are not keys."""
    commit = "0123456789abcdef" * 2 + "01234567"
    overrides = {
        "env": {"HF_TOKEN_FILE": "/secrets/hf", "TOKENIZERS_PARALLELISM": "false"},
        "model.tokenizer.model": f"/hf/models--x/snapshots/{commit}/",
    }
    plan = build_plan("tiny", "local", overrides, run_dir=tmp_path / "run")
    (train,) = [s for s in render_all(plan) if s.stage == "train"]
    assert "export HF_TOKEN_FILE=/secrets/hf" in train.text
    with pytest.raises(ValueError, match="HF_TOKEN looks like a secret by its name"):
        render_all(build_plan("tiny", "local", {"env": {"HF_TOKEN": "x"}}, run_dir=tmp_path / "run2"))
