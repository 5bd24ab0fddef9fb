"""Render the plan into stage scripts (Jinja templates in ``templates/``).

Templates render text only: loops and conditionals. Everything computed (sbatch options, argv lists) is computed
here, and every value that reaches the shell passes the ``q`` filter (POSIX quoting), so a profile value with
spaces, quotes or ``$(...)`` reaches the program literally. Undefined template variables are errors.

Each script has two phases. Slurm runs it as the batch script (phase ``driver``): it ``exec``s the Python driver,
which receives Slurm's signals. The driver runs the same file again with ``ORCHESTRATOR_PHASE=step`` to launch
the work (one ``srun`` step over all nodes for training). So the file in ``scripts/`` is exactly what ran.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

import orchestrator
from orchestrator import container, contract
from orchestrator.plan import RunPlan
from orchestrator.rundir import RunDir
from orchestrator.stages import StageSpec, stage_specs, step_mounts

# Full matches only (re.fullmatch): ``$`` would also accept a trailing newline.
_SBATCH_VALUE = re.compile(r"[A-Za-z0-9_@%:/.,=+\-\[\]]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_NAME = re.compile(
    r"(^|_)(SECRET|PASSWORD|PASSWD|KEY|CREDENTIALS?|AUTH|PAT)(_|$)|TOKEN(_|$)",  # KEY covers API_KEY, ACCESS_KEY...
    re.IGNORECASE,
)
#: Values shaped like access tokens: Hugging Face, GitHub (classic and fine-grained), OpenAI-style, Slack.
_TOKEN_VALUE = re.compile(
    r"(?<![A-Za-z0-9])(hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|sk-[A-Za-z0-9_-]{20,}|xox[abposr]-[A-Za-z0-9-]{10,})"
)
#: A W&B API key: 40 hex digits as a whole value (paths may hold 40-hex commit ids, so only whole values count).
_WANDB_KEY = re.compile(r"[0-9a-fA-F]{40}")


@dataclass(frozen=True)
class ShellVar:
    """A reference to a shell variable inside an argv list: rendered ``"${NAME}"``, not quoted away."""

    name: str


def quote(value: Any) -> str:
    if isinstance(value, ShellVar):
        return f'"${{{value.name}}}"'
    return shlex.quote(str(value))


def quote_join(values: Iterable[Any]) -> str:
    return " ".join(quote(v) for v in values)


#: Where each ``#SBATCH`` option's value comes from, for error messages.
_SBATCH_SOURCE = {
    "job-name": "run_id",
    "account": "cluster.account",
    "partition": "cluster.partition",
    "qos": "cluster.qos",
    "reservation": "cluster.reservation",
    "mem": "cluster.mem",
    "time": "chain.time_limit",
    "output": "run_dir (the log folder's path)",
}


def sbatch_value(value: Any, option: str = "") -> str:
    """#SBATCH lines are parsed by sbatch, not by a shell: allow only plain tokens there."""
    text = str(value)
    if not _SBATCH_VALUE.fullmatch(text):
        source = _SBATCH_SOURCE.get(option, f"the --{option} value")
        raise ValueError(
            f"{source} = {text!r} would be the #SBATCH --{option} value, and it has characters sbatch would "
            f"misread (spaces, quotes, '#', newlines); use only letters, digits and _@%:/.,=+-[]"
        )
    return text


def templates_dir() -> Path:
    packaged = Path(orchestrator.__file__).parent / "_templates"
    return packaged if packaged.is_dir() else Path(orchestrator.__file__).resolve().parent.parent / "templates"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(q=quote, qjoin=quote_join, sbatch=sbatch_value, comment=comment)
    return env


def comment(value: Any) -> str:
    """Text for a ``#`` comment line: one line, control characters shown escaped, so a value never starts a
    command or an ``#SBATCH`` line of its own."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", str(value))


def _secret_refused(where: str, name: str, why: str) -> ValueError:
    return ValueError(
        f"{where}: {name} {why} and would be written into the job script and plan.json (the value is not shown); "
        "export it in the shell you submit from (sbatch passes your environment to the job) or set a *_FILE "
        "variable to a file that holds it"
    )


def _looks_like_token(value: str) -> bool:
    return bool(_TOKEN_VALUE.search(value) or _WANDB_KEY.fullmatch(value.strip()))


def check_env(env: dict[str, str], where: str) -> None:
    """Environment the scripts export: valid names, and never a secret, by name or by value (secrets come from the
    submitting shell). ``*_FILE`` names hold a path to a secret, so their names pass."""
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(
                f"{where}: {name!r} is not a valid environment variable name; use letters, digits and '_', "
                "not starting with a digit"
            )
        if not name.upper().endswith("_FILE") and _SECRET_NAME.search(name):
            raise _secret_refused(where, name, "looks like a secret by its name")
        if _looks_like_token(str(value)):
            raise _secret_refused(where, name, "has a value shaped like an access token")


def check_secrets(plan: RunPlan) -> None:
    """Refuse a plan that would write a secret into its scripts: the environment (names and values), ``--export``
    assignments in ``container.extra_srun_args``, and any plan value shaped like an access token."""
    check_env(plan.cluster.env, f"cluster profile {plan.cluster.name!r} env")
    check_env(plan.env, "plan env")
    for i, arg in enumerate(plan.cluster.container.extra_srun_args):
        where = f"cluster.container.extra_srun_args[{i}]"
        if arg.startswith("--export="):
            pairs = [item.split("=", 1) for item in arg.removeprefix("--export=").split(",") if "=" in item]
            check_env({k: v for k, v in pairs if _ENV_NAME.fullmatch(k)}, where)
    for field, value in plan.text_values():
        if _TOKEN_VALUE.search(value):
            raise _secret_refused("plan", field, "has a value shaped like an access token")


# ------------------------------------------------------------------------------------------------ stages


def job_name(plan: RunPlan, stage: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"orch-{plan.run_id}-{stage}")


def array_spec(indices: Sequence[int]) -> str:
    """Slurm's --array value: ``0-8`` when contiguous, else ``6,7,8``."""
    if list(indices) == list(range(indices[0], indices[0] + len(indices))):
        return f"{indices[0]}-{indices[-1]}" if len(indices) > 1 else str(indices[0])
    return ",".join(str(i) for i in indices)


def sbatch_options(plan: RunPlan, spec: StageSpec) -> list[tuple[str, Any]]:
    """The ``#SBATCH`` lines of a stage's script, in order."""
    site = plan.cluster
    opts: list[tuple[str, Any]] = [("job-name", job_name(plan, spec.name))]
    for key in ("account", "partition", "qos", "reservation"):
        if getattr(site, key):
            opts.append((key, getattr(site, key)))
    opts += [("nodes", spec.nodes), ("ntasks-per-node", spec.tasks_per_node)]
    if spec.cpus_per_task or site.cpus_per_task:
        opts.append(("cpus-per-task", spec.cpus_per_task or site.cpus_per_task))
    if spec.gpus and site.gpus_per_node:
        opts.append(("gpus-per-node", site.gpus_per_node))
    if site.exclusive:
        opts.append(("exclusive", None))
    if site.mem is not None:
        opts.append(("mem", site.mem))
    opts.append(("time", spec.time_limit))
    if spec.array:
        opts.append(("array", array_spec(spec.array)))
    opts.append(("output", str(RunDir.of(plan.run_dir).log_pattern(spec.name, bool(spec.array)))))
    opts.append(("open-mode", "append"))
    # USR2 to the batch shell (the exec'd driver) before the limit; never USR1 (NCCL and Lightning use it).
    opts.append(("signal", f"B:USR2@{site.signal_grace_s}"))
    opts.append(("requeue" if spec.requeue else "no-requeue", None))
    return opts


def python_for_driver(plan: RunPlan) -> str:
    """The interpreter the batch host runs the driver with: the profile's, else the one submitting."""
    return plan.cluster.python or sys.executable


def package_root() -> Path:
    """The folder that holds the ``orchestrator`` package a step imports (mounted at its own path in a container)."""
    return Path(orchestrator.__file__).resolve().parent.parent


def step_env_names(plan: RunPlan) -> list[str]:
    """Every variable the batch script and the driver set for the step (pyxis passes only these over the image's)."""
    contract_names = [
        contract.RUN_DIR_ENV,
        contract.PHASE_ENV,
        contract.TASK_INDEX_ENV,
        contract.DEADLINE_ENV,
        contract.CHAIN_INDEX_ENV,
    ]
    return sorted(
        {
            *plan.cluster.env,
            *plan.env,
            *contract_names,
            "PYTHONUNBUFFERED",
            "PYTHONPATH",
            "MASTER_ADDR",
            "MASTER_PORT",
            "WORLD_SIZE",
        }
    )


@dataclass(frozen=True)
class Launch:
    """How the step starts: the launcher (``srun`` with its flags, or the local one) and what precedes the program
    inside it (a container runtime's command), and what the log's first lines say about it."""

    launcher: list[Any]
    prefix: list[Any]
    describe: list[str]


def step_launch(plan: RunPlan, spec: StageSpec) -> Launch:
    """``srun`` over the stage's nodes, inside the cluster's container runtime if it has one; the local launcher."""
    site = plan.cluster
    if site.scheduler == "local":
        return Launch(
            [sys.executable, "-m", "orchestrator.launch", "--nproc-per-node", spec.tasks_per_node, "--"],
            [],
            [f"echo {quote('[orchestrator] step on this machine, interpreter ' + python_for_driver(plan))}"],
        )
    args: list[Any] = [
        f"--nodes={spec.nodes}",
        f"--ntasks-per-node={spec.tasks_per_node}",
        "--kill-on-bad-exit=1",
        "--unbuffered",
    ]
    if spec.cpus_per_task or site.cpus_per_task:
        args.append(f"--cpus-per-task={spec.cpus_per_task or site.cpus_per_task}")
    runtime = container.RUNTIMES.get(site.container.runtime)
    if runtime is None:
        describe = [
            f"echo {quote('[orchestrator] step on the nodes (no container), interpreter ' + python_for_driver(plan))}"
        ]
        return Launch(["srun", *args], [], describe)
    image = site.container.image or ""
    mounts = step_mounts(plan, spec)
    names = step_env_names(plan)
    workdir = site.container.workdir or plan.run_dir
    args += runtime.srun_args(image, mounts, names, workdir)
    args += list(site.container.extra_srun_args)
    shown = " ".join(
        f"{m.source}{'' if m.target == m.source else ':' + m.target}{':ro' if m.read_only else ''}" for m in mounts
    )
    describe = [
        f"echo {quote(f'[orchestrator] step in a container: runtime {runtime.name}, image {image}')}",
        f"echo \"[orchestrator] image id: $( ({runtime.image_id(image)}) | tr '\\n' ' ')\"",
        f"echo {quote(f'[orchestrator] mounts (same path inside): {shown}')}",
        f"echo {quote('[orchestrator] interpreter: the image' + chr(39) + 's python3, workdir ' + workdir)}",
    ]
    return Launch(["srun", *args], runtime.prefix(image, mounts, names, workdir), describe)


def step_python(plan: RunPlan) -> str:
    """A container runs its own Python; elsewhere the step runs the driver's interpreter."""
    return "python3" if plan.cluster.container.runtime != "none" else python_for_driver(plan)


@dataclass(frozen=True)
class StageScript:
    stage: str
    text: str
    array: tuple[int, ...] | None = None  # array task indices (data stages)


def render_stage(plan: RunPlan, spec: StageSpec) -> StageScript:
    """The batch script of one stage: what Slurm runs as the batch script and, in phase ``step``, as the step."""
    check_secrets(plan)
    site = plan.cluster
    text = (
        environment()
        .get_template("stage.sbatch.j2")
        .render(
            plan=plan,
            spec=spec,
            cluster=site,
            env={**site.env, **plan.env},
            run_dir=plan.run_dir,
            version=orchestrator.__version__,
            sbatch=sbatch_options(plan, spec) if site.scheduler == "slurm" else [],
            driver=[
                python_for_driver(plan),
                "-u",
                "-m",
                "submitit.core._submit",
                str(RunDir.of(plan.run_dir).submitit),
            ],
            launch=step_launch(plan, spec),
            container=site.container.runtime != "none",
            package_root=str(package_root()),
            program=[step_python(plan), "-u", *spec.command],
            names={
                "phase": contract.PHASE_ENV,
                "step": contract.STEP_PHASE,
                "task": contract.TASK_INDEX_ENV,
                "run_dir": contract.RUN_DIR_ENV,
            },
        )
    )
    return StageScript(stage=spec.name, text=text, array=spec.array)


def render_all(plan: RunPlan, specs: Sequence[StageSpec] | None = None) -> list[StageScript]:
    """Every stage's script (or those of ``specs``)."""
    return [render_stage(plan, spec) for spec in (stage_specs(plan) if specs is None else specs)]


def write_scripts(plan: RunPlan, scripts: Sequence[StageScript]) -> list[Path]:
    from orchestrator.atomic import atomic_write_text

    paths = []
    for script in scripts:
        path = RunDir.of(plan.run_dir).script(script.stage)
        atomic_write_text(path, script.text)
        path.chmod(0o755)
        paths.append(path)
    return paths
