"""Hostile values never reach a shell: every string field of the plan (the model profile's and the cluster
profile's included) and every string option of the CLI, given newlines, ``$(...)``, backticks, quotes and
``#SBATCH`` text, is either refused with an error naming it or rendered into scripts that, when bash runs them,
never run the value."""

from __future__ import annotations

import argparse
import subprocess
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator import cli
from orchestrator.container import MountError
from orchestrator.nightly import render_nightly
from orchestrator.plan import IDENTITY, ModelSpec, PlanError, RunPlan, build_plan, parse_assignment
from orchestrator.profiles import ClusterProfile
from orchestrator.render import render_all

PROFILE, CLUSTER = "405b", "h100-pyxis"  # slurm + pyxis: #SBATCH header, container flags, four stages


def hostile_values(marker: Path) -> list[str]:
    """Each would create ``marker`` if a shell ran it as code."""
    return [
        f"x\ntouch {marker}\n#",
        f"/srv/$(touch {marker})",
        f"`touch {marker}`",
        f"x'; touch {marker}; '\"; touch {marker}; \"",
        f"x\n#SBATCH --wrap='touch {marker}'\ntouch {marker}",
    ]


def _has_str(annotation: Any) -> bool:
    if annotation is str:
        return True
    if typing.get_origin(annotation) is typing.Literal:
        return False
    return any(_has_str(a) for a in typing.get_args(annotation))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if found := _model_in(arg):
            return found
    return None


def string_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted paths of every field of ``model`` (nested models included) that holds text, with its annotation."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = _model_in(info.annotation)
        if nested is not None:
            yield from string_fields(nested, f"{path}.")
        elif _has_str(info.annotation):
            yield path, info.annotation


def _as_override(annotation: Any, value: str) -> list[Any]:
    """The shapes a field can take the hostile text in: itself, a list item, a dict value and a dict key."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        return [{"ODD_VALUE": value}, {value: "1"}]
    if origin is tuple or (origin in (typing.Union, types.UnionType) and _tuple_in(annotation)):
        return [[value]]
    return [value]


def _tuple_in(annotation: Any) -> bool:
    return any(typing.get_origin(a) is tuple for a in typing.get_args(annotation))


def run_in_sandbox(script: Path, cwd: Path, array_index: int | None) -> list[str]:
    """Run ``script`` with bash in both phases, with ``exec``, ``srun``, ``module``, ``source``, ``sbatch`` and
    ``scontrol`` replaced by stand-ins that only print; returns what each phase's ``exec`` stand-in reached."""
    stand_ins = (
        'exec() { printf "REACHED-EXEC %s\\n" "$1"; exit 0; }; module() { :; }; source() { :; }; '
        "srun() { :; }; sbatch() { :; }; scontrol() { echo node1; }; "
    )
    reached = []
    for phase in ("driver", "step"):
        env = {"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node1", "HOME": str(cwd)}
        env["ORCHESTRATOR_PHASE"] = phase
        if array_index is not None:
            env["SLURM_ARRAY_TASK_ID"] = str(array_index)
        done = subprocess.run(
            ["bash", "-c", stand_ins + '. "$1"', "sandbox", str(script.absolute())],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
            timeout=30,
        )
        assert done.returncode == 0, f"{script.name} ({phase}): {done.stderr[-2000:]}"
        reached += [line for line in done.stdout.splitlines() if line.startswith("REACHED-EXEC")]
    return reached


def sbatch_header(text: str) -> list[str]:
    """The lines sbatch reads options from: comments and blank lines up to the first command."""
    lines = []
    for line in text.splitlines()[1:]:
        if line.strip() and not line.startswith("#"):
            break
        lines.append(line)
    return lines


def check_scripts(texts: dict[str, tuple[str, int | None]], where: Path, marker: Path, case: str) -> bool:
    """Write, ``bash -n`` and run every script; the marker never appears. True when a script holds the value."""
    where.mkdir(parents=True, exist_ok=True)
    holds = False
    for name, (text, index) in texts.items():
        path = where / f"{name}.sbatch"
        path.write_text(text)
        syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{case}: {name}: {syntax.stderr}"
        for line in sbatch_header(text):
            assert not (line.startswith("#SBATCH") and "touch" in line), f"{case}: {name}: sbatch reads {line!r}"
        holds = holds or str(marker) in text
        reached = run_in_sandbox(path, where, index)
        assert len(reached) == 2, f"{case}: {name} did not run to its exec in both phases: {reached}"
        assert not marker.exists(), f"{case}: running {name}.sbatch ran the hostile value"
    return holds


def _scripts(plan: RunPlan, run_dir: Path) -> dict[str, tuple[str, int | None]]:
    scripts = {s.stage: (s.text, s.array[0] if s.array else None) for s in render_all(plan)}
    if plan.cluster.scheduler == "slurm":
        scripts["nightly"] = (render_nightly(plan, run_dir, "02:30"), None)
    return scripts


def _named(message: str, field: str, value: str) -> bool:
    """A refusal says what to change: the field, or the value itself (escaped, on one line)."""
    return any(part in message for part in (field, field.split(".")[-1], repr(value)))


def test_every_string_field_is_refused_or_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    fields = [(path, ann) for path, ann in string_fields(RunPlan) if path not in IDENTITY]
    exercised, rendered, holding, refused = set(), 0, set(), set()
    for path, annotation in fields:
        for i, value in enumerate(hostile_values(marker)):
            for j, override in enumerate(_as_override(annotation, value)):
                case = f"{path} value {i} shape {j}"
                run_dir = tmp_path / "runs" / f"{path}-{i}-{j}"
                try:
                    plan = build_plan(PROFILE, CLUSTER, {path: override}, run_dir=run_dir, check=False)
                    scripts = _scripts(plan, run_dir)
                except (PlanError, MountError, ValueError) as exc:
                    assert _named(str(exc), path, value), f"{case}: refused without naming the field: {exc}"
                    refused.add(path)
                    exercised.add(path)
                    continue
                rendered += 1
                exercised.add(path)
                if check_scripts(scripts, run_dir / "scripts", marker, case):
                    holding.add(path)
    # Not vacuous: every text field of both profile kinds went through, and the values did reach scripts.
    profile_fields = {f"cluster.{p}" for p, _ in string_fields(ClusterProfile)} | {
        f"model.{p}" for p, _ in string_fields(ModelSpec)
    }
    assert profile_fields <= exercised, profile_fields - exercised
    assert exercised == {p for p, _ in fields} and len(fields) > len(profile_fields)
    assert rendered >= 50 and len(holding) >= 10, (rendered, sorted(holding))
    assert {"cluster.env", "env", "train.ckpt_dir", "cluster.venv"} <= holding, sorted(holding)
    assert {"model.name", "cluster.name", "cluster.partition"} <= refused, sorted(refused)


def test_identity_fields_are_refused_by_set():
    for name, fix in IDENTITY.items():
        with pytest.raises(PlanError) as exc:
            parse_assignment(f"{name}=x")
        assert exc.value.problems[0].field == name and exc.value.problems[0].fix == fix


def _string_options(parser: argparse.ArgumentParser) -> list[str]:
    """The render command's options that take text (not flags, not integers)."""
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    render = sub.choices["render"]
    return [
        max(a.option_strings, key=len)
        for a in render._actions
        if a.option_strings and a.nargs is None and a.type in (None, str, Path) and a.const is None
    ]


def test_every_cli_string_option_is_refused_or_never_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out lands here
    marker = tmp_path / "PWNED"
    options = _string_options(cli.build_parser())
    assert {"--profile", "--cluster", "--set", "--run-id", "--run-dir", "--time", "--out", "--stages"} <= set(options)
    outcomes: dict[str, set[str]] = {}
    for option in options:
        for i, value in enumerate(hostile_values(marker)):
            values = {"--set": [value, f"train.ckpt_dir={value}"], "--run-dir": [value, f"{value}/run-1"]}.get(
                option, [value]
            )
            for j, given in enumerate(values):
                out = tmp_path / "out" / f"{option.strip('-')}-{i}-{j}"
                args = {"--profile": "tiny", "--cluster": "slurm-lab", "--out": str(out)}
                args["--run-dir"] = str(tmp_path / "runs" / f"{option.strip('-')}-{i}-{j}")
                args[option] = given
                if option == "--run-id":
                    del args["--run-dir"]  # which names the run itself
                out = Path(args["--out"])
                rc = cli.main(["render", *[x for kv in args.items() for x in kv]])
                printed = capsys.readouterr()
                case = f"{option} value {i}.{j}"
                if rc:
                    assert rc == 2 and "error" in printed.err and "Traceback" not in printed.err, case
                    outcomes.setdefault(option, set()).add("refused")
                    continue
                outcomes.setdefault(option, set()).add("rendered")
                plan = RunPlan.from_json((out / "plan.json").read_text())
                first = {s.stage: s.array[0] for s in render_all(plan) if s.array}
                texts = {p.stem: (p.read_text(), first.get(p.stem)) for p in out.glob("*.sbatch")}
                assert len(texts) >= 3, f"{case}: rendered {sorted(texts)}"
                check_scripts(texts, out / "check", marker, case)
    assert set(outcomes) == set(options)
    assert "rendered" in outcomes["--out"] and "rendered" in outcomes["--set"], outcomes
    assert outcomes["--run-id"] == {"refused"}, outcomes
