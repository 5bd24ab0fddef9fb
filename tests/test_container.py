"""The container boundary without a cluster: which host paths a stage's step sees, how each runtime is told, and what
is refused before submission (a path no mount shows at its own place, one inside the image's folders)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from mlperf_helpers import mlperf_site

from orchestrator import container
from orchestrator.container import Mount, MountError
from orchestrator.plan import PlanError, build_plan
from orchestrator.stages import check_inputs

CLUSTER = "slurm-lab-container"


def test_every_folder_is_mounted_at_its_own_path_after_the_sites_mounts(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tok.model").write_text("x")
    got = container.mounts(
        [f"{tmp_path / 'site'}:{tmp_path / 'site'}:ro"],
        reads=[str(tmp_path / "data" / "tok.model"), str(tmp_path / "site" / "pre")],
        writes=[str(tmp_path / "run"), str(tmp_path / "run" / "ckpt")],
    )
    assert got == [
        Mount(str(tmp_path / "site"), str(tmp_path / "site"), True),  # the site's, first
        Mount(str(tmp_path / "data"), str(tmp_path / "data"), True),  # a file: its folder, read-only
        Mount(str(tmp_path / "run"), str(tmp_path / "run"), False),
    ]  # ckpt is inside the run: covered
    with pytest.raises(MountError, match="relative path"):
        container.mounts([], reads=["data/x"], writes=[])
    with pytest.raises(MountError, match="inside a Python installation"):
        container.mounts(
            [], reads=["/venv/lib/python3.11/site-packages/mistral_common/data/tokenizer.model.v1"], writes=[]
        )
    with pytest.raises(MountError, match="is written by the step but the site mount"):
        container.mounts([f"{tmp_path}:{tmp_path}:ro"], reads=[], writes=[str(tmp_path / "run")])


def test_each_runtime_gets_mounts_env_and_workdir_in_its_own_syntax() -> None:
    mounts = [Mount("/lustre", "/lustre"), Mount("/pkg/orchestrator", "/pkg/orchestrator", True)]
    pyxis = container.Pyxis().srun_args(
        "nvcr.io/nvidia/nemo:25.09.00", mounts, ["HF_HOME", "WORLD_SIZE"], "/lustre/run"
    )
    assert pyxis == [
        "--container-image=nvcr.io/nvidia/nemo:25.09.00",
        "--container-mounts=/lustre:/lustre,/pkg/orchestrator:/pkg/orchestrator:ro",
        "--container-workdir=/lustre/run",
        "--container-env=HF_HOME,WORLD_SIZE",
    ]
    bwrap = container.Bubblewrap().prefix("/img", mounts, ["HF_HOME"], "/lustre/run")
    assert bwrap[:3] == ["env", "--ignore-signal=HUP,INT,TERM,USR1,USR2", "bwrap"]
    assert ["--bind", "/lustre", "/lustre"] == bwrap[bwrap.index("/lustre") - 1 : bwrap.index("/lustre") + 2]
    assert ["--ro-bind", "/pkg/orchestrator", "/pkg/orchestrator"] == bwrap[bwrap.index("/pkg/orchestrator") - 1 :][:3]
    assert bwrap[bwrap.index("--chdir") + 1] == "/lustre/run" and bwrap[-1] == "--default-signal=HUP,INT,TERM,USR1,USR2"


def test_a_path_no_mount_can_show_at_its_place_is_refused_before_submission(tmp_path: Path) -> None:
    """A site mount that shows the data's folder elsewhere inside, and data inside the image's own folders: both
    refused, with the path and a fix, before anything is written or queued."""
    data = tmp_path / "site" / "pre"
    data.mkdir(parents=True)
    profile = tmp_path / "shifted.yaml"
    body = yaml.safe_load((REPO / "cluster_profiles" / f"{CLUSTER}.yaml").read_text())
    body["container"]["mounts"] = [f"{tmp_path / 'site'}:/data"]
    profile.write_text(yaml.safe_dump(body))
    overrides = {
        "data.source": "preprocessed",
        "data.preprocessed_path": str(data),
        "data.train_prefixes": [str(data / "a_text_document")],
    }
    plan = build_plan("tiny", profile, overrides, run_dir=tmp_path / "run")
    problems = [p for p in check_inputs(plan) if p.field == "cluster.container"]
    assert problems and f"site mount {tmp_path / 'site'}:/data shows it at /data/pre" in problems[0].message
    assert f"{tmp_path / 'site'}:{tmp_path / 'site'}" in problems[0].fix
    image_owned = build_plan(
        "tiny",
        CLUSTER,
        {
            **overrides,
            "data.preprocessed_path": "/usr/share/pre",
            "data.train_prefixes": ["/usr/share/pre/a_text_document"],
        },
        run_dir=tmp_path / "run2",
    )
    with pytest.raises(PlanError, match="/usr/share/pre belongs to the container image"):
        from orchestrator.submit import submit_run

        submit_run(image_owned, say=print)
    assert not (tmp_path / "run2").exists()


def test_the_405b_plan_with_the_references_config_sh_mounts_all_five_paths(tmp_path: Path) -> None:
    """The MLPerf reference's config.sh (its variables and defaults, tests/fixtures/mlperf/config.sh) with IMAGE,
    PREPROCESSED_PATH, TOKENIZER_PATH, MODEL_CKPT, CONTINUAL_CKPT, TMP_NPY_INDEX filled in, as a new user would:
    each path is mounted into the training step at its own path, and the dry run shows the index stage and the
    evaluation schedule."""
    paths = {name: Path(path) for name, path in mlperf_site(tmp_path).items()}
    filled = "\n".join(f"export {k}={v}" for k, v in paths.items())
    script = (
        f"set -e; source {REPO / 'tests/fixtures/mlperf/config.sh'}\n{filled}\nexport IMAGE=nvcr.io/nvidia/nemo:25.09.00 "
        f"USE_CKPT=1 JOB_DIR={tmp_path / 'jobs'} DRY_RUN=1 PYTHON={sys.executable}\nbash {REPO / 'run_llama31.sh'}"
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    train = done.stdout[done.stdout.index("train.sbatch") :]
    mounts = (
        next(line for line in train.splitlines() if "--container-mounts=" in line)
        .split("--container-mounts=")[1]
        .split()[0]
    )
    pairs = [m.split(":")[:2] for m in mounts.split(",")]
    for name, path in paths.items():  # the path, a folder above it, or (CONTINUAL_CKPT) the run's folder in it
        assert any(
            src == dst and (Path(src) == path or path in Path(src).parents or Path(src) in path.parents)
            for src, dst in pairs
        ), (name, mounts)
    assert "site-packages" not in done.stdout
    assert "stages      index -> train" in done.stdout and "index.sbatch" in done.stdout
    assert "evaluation  first after 224 steps (258,048 samples), then every 16 steps" in done.stdout
    assert "not the rules'" in done.stdout  # the reference's START_EVAL_AT=258048 is one evaluation early
    assert math.isclose(float(done.stdout.split("opt_base_learning_rate ")[1].split(",")[0]), 8e-5)
    assert not (tmp_path / "jobs").exists()  # a dry run writes nothing
