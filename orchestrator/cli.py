"""``python -m orchestrator``: plan, render, submit, watch and collect LLM pretraining runs on Slurm."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator import __version__
from orchestrator.plan import PlanError, RunPlan, explain_overrides_help, parse_assignment, validate
from orchestrator.profiles import MODELS, cluster_names, load_cluster
from orchestrator.settings import RunRequest, RunSettings

# Wide tables when output goes to a file or a pipe (logs, CI), the terminal's width otherwise.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EPILOG = """\
The flow: profiles -> plan -> render -> submit -> drive (in the job) -> collect.

First steps:
  python -m orchestrator profiles                                  # what models and clusters exist
  python -m orchestrator plan --profile 405b --cluster h100-pyxis  # the resolved plan, validated
  python -m orchestrator submit --profile tiny --cluster local --wait   # the whole pipeline on this machine
  python -m orchestrator status runs/<run-id>                     # where a run stands
  python -m orchestrator collect runs/<run-id> --baseline base.json   # metrics, plots, verdict

MLPerf style: source config.sh && bash run_llama31.sh   (the same as: submit --from-env)
"""


def _add_plan_arguments(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = p.add_argument_group("what to run")
    g.add_argument(
        "--profile", "-p", required=required, help="model profile or alias (see `profiles`), e.g. tiny, 8b, 405b"
    )
    g.add_argument("--cluster", "-c", default="local", help="cluster profile name or YAML path (default: local)")
    g.add_argument(
        "--preset",
        help="a named set of overrides applied before --set, e.g. cpt-llama31-8b "
        "(continual pretraining from Hugging Face, seed 003); see orchestrator/train/presets.py",
    )
    g.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=explain_overrides_help()
    )
    g.add_argument("--nodes", type=int, help="shorthand for --set layout.nodes=N")
    g.add_argument("--chain", type=int, help="training jobs chained with afterany (MLPerf's NPAR)")
    g.add_argument("--time", help="each training job's time limit (Slurm format, e.g. 1 or 04:00:00)")
    g.add_argument("--max-steps", type=int, help="steps of the whole run")
    g.add_argument(
        "--stages", help="run only these of the plan's stages, comma-separated, e.g. consolidate (default: all)"
    )
    g.add_argument("--run-id", help="run id (default: <model>-<date>-<time>)")
    g.add_argument("--run-dir", type=Path, help="run directory (default: <cluster runs_root>/<run id>)")


def _request_from_args(args: argparse.Namespace) -> RunRequest:
    if getattr(args, "from_env", False):
        return RunSettings.from_env().to_request()
    overrides: dict[str, Any] = {}
    if getattr(args, "preset", None):
        from orchestrator.train import presets

        overrides.update(presets.get(args.preset))
    for item in args.overrides:
        key, value = parse_assignment(item)
        overrides[key] = value
    for flag, key in (
        ("nodes", "layout.nodes"),
        ("chain", "chain.jobs"),
        ("time", "chain.time_limit"),
        ("max_steps", "train.max_steps"),
    ):
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    if getattr(args, "stages", None):
        overrides["stages"] = [name.strip() for name in args.stages.split(",")]
    req = RunRequest(profile=args.profile, cluster=args.cluster, overrides=overrides, run_id=args.run_id)
    if args.run_dir is not None:
        req.runs_root = str(args.run_dir.parent)
        req.run_id = args.run_dir.name
    return req


def _plans(args: argparse.Namespace, check: bool = True) -> list[RunPlan]:
    return _request_from_args(args).build(check=check)


# ------------------------------------------------------------------------------------------------ commands


def cmd_profiles(args: argparse.Namespace) -> int:
    table = Table(title="Model profiles", title_justify="left")
    for col in ("name", "aliases", "params", "layers", "hidden", "GPUs", "GBS", "seq", "steps", "layout", "backend"):
        table.add_column(col)
    for m in MODELS:
        p = m.parallel
        layout = f"TP{p.tp} PP{p.pp} CP{p.cp}" + (f" VP{p.vp}" if p.vp else "") + (f" EP{p.ep}" if p.ep > 1 else "")
        params = m.arch.num_params() / 1e9
        table.add_row(
            m.name,
            ",".join(m.aliases),
            f"{params:.2f}B" if params >= 0.1 else f"{params * 1e3:.0f}M",
            str(m.arch.num_layers),
            str(m.arch.hidden_size),
            str(m.bench.gpus),
            str(m.bench.global_batch_size),
            str(m.bench.seq_length),
            str(m.bench.max_steps),
            layout,
            m.backend,
        )
    console.print(table)
    ctable = Table(title="Cluster profiles (cluster_profiles/*.yaml, or pass a path)", title_justify="left")
    for col in ("name", "scheduler", "GPUs/node", "GPU", "time limit", "container", "description"):
        ctable.add_column(col)
    for name in cluster_names():
        c = load_cluster(name)
        ctable.add_row(
            name, c.scheduler, str(c.gpus_per_node), c.gpu_name or "-", c.time_limit, c.container.runtime, c.description
        )
    console.print(ctable)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from orchestrator.stages import check_inputs

    plans = _plans(args, check=False)
    worst = 0
    for plan in plans:
        problems = validate(plan) + check_inputs(plan)
        if args.json:
            body = json.loads(plan.to_json())
            body["problems"] = [p.model_dump() for p in problems]
            console.print_json(json.dumps(body))
        else:
            _print_plan(plan)
            for p in problems:
                (err if p.severity == "error" else console).print(
                    f"[{'red' if p.severity == 'error' else 'yellow'}]{escape(str(p))}[/]"
                )
        if any(p.severity == "error" for p in problems):
            worst = 2
    return worst


def _print_plan(plan: RunPlan) -> None:
    a, L, t, d = plan.model.arch, plan.layout, plan.train, plan.derived()
    mem = d["memory_gib_per_gpu"]
    rows = [
        ("run", f"{plan.run_id}  ->  {plan.run_dir}"),
        (
            "model",
            f"{plan.model.name}: {a.num_layers} layers, hidden {a.hidden_size}, ffn {a.ffn_hidden_size}, "
            f"{a.num_attention_heads} heads / {a.num_query_groups} KV groups, vocab {a.vocab_size}, "
            f"{d['parameters'] / 1e9:.2f}B params"
            + (f" ({d['active_parameters'] / 1e9:.2f}B active)" if a.is_moe else ""),
        ),
        (
            "cluster",
            f"{plan.cluster.name} ({plan.cluster.scheduler}), {L.nodes} nodes x {L.tasks_per_node} tasks = {plan.world_size}",
        ),
        (
            "layout",
            f"TP {L.tp}  PP {L.pp}  CP {L.cp}  VP {L.vp or '-'}  EP {L.ep}  DP {plan.data_parallel}  "
            f"SP {'on' if L.sequence_parallel else 'off'}  recompute {L.recompute}",
        ),
        (
            "batch",
            f"global {t.global_batch_size} x seq {t.seq_length} = {plan.tokens_per_step:,} tokens/step; "
            f"micro {L.micro_batch_size}, {plan.grad_accumulation} micro-batches per rank",
        ),
        (
            "train",
            f"{t.backend} backend, {t.max_steps} steps, seed {t.seed}, lr {t.optim.lr:g} -> {t.optim.min_lr:g}, "
            f"warm-up {t.optim.warmup_steps}",
        ),
        (
            "chain",
            f"{plan.chain.jobs} job(s) of {plan.chain.time_limit}, stop signal {plan.cluster.signal_grace_s}s "
            f"before the limit, max strikes {plan.chain.max_strikes}",
        ),
        ("stages", " -> ".join(plan.stages)),
        (
            "memory",
            f"~{mem['total']} GiB per {'GPU' if plan.cluster.gpus_per_node else 'task'} "
            f"(weights {mem['weights']}, grads {mem['gradients']}, optimizer {mem['optimizer']}, "
            f"activations {mem['activations']})",
        ),
    ]
    rows += _mlperf_rows(plan)
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    schedule = plan.mlperf_schedule()
    for note in schedule.warnings if schedule else ():
        console.print(f"[yellow]note: {escape(note)}[/]")


def _mlperf_rows(plan: RunPlan) -> list[tuple[str, str]]:
    """An MLPerf plan's schedule as the compliance checker will read it from the run's log."""
    schedule = plan.mlperf_schedule()
    if schedule is None or plan.mlperf is None:
        return []
    from orchestrator.mlperf.hyperparameters import run_hyperparameters

    s, m, gbs = schedule, plan.mlperf, plan.train.global_batch_size
    logged = run_hyperparameters(plan, start_step=plan.train.init_step)
    rows = [
        (
            "evaluation",
            f"first after {s.first_eval_step} steps ({s.samples(s.first_eval_step):,} samples), then every "
            f"{s.eval_interval_steps} steps ({s.samples(s.eval_interval_steps):,} samples); {s.eval_batches} "
            f"batches of {gbs} = {s.eval_sequences:,} sequences each (eval_samples {logged['eval_samples']}), "
            "the first sequences of the validation file in file order",
        ),
        (
            "LR",
            f"opt_base_learning_rate {logged['opt_base_learning_rate']:.10g}, warm-up "
            f"{logged['opt_learning_rate_warmup_steps']:,} steps, decay {logged['opt_learning_rate_decay_steps']:,} "
            f"steps to {logged['opt_end_learning_rate']:g} at step {plan.lr_horizon_steps:,} "
            f"({logged['opt_learning_rate_decay_schedule']})",
        ),
        (
            "stop",
            f"at an evaluation with log-perplexity <= {s.target_log_ppl} (DONE), or after {plan.train.max_steps:,} steps "
            f"(train.max_steps); a step slower than {m.step_time_atol_s} s fails the job",
        ),
        (
            "start",
            f"init_checkpoint_step {logged['init_checkpoint_step']}"
            + (
                f", resuming {plan.train.init_from} in full"
                if plan.train.init_mode == "full" and plan.train.init_from
                else f", weights of {plan.train.init_from}"
                if plan.train.init_from
                else ", random weights"
            ),
        ),
    ]
    if "index" in plan.stages:
        rows.append(
            (
                "data index",
                f"{plan.train.max_steps * gbs:,} training samples per seed for seed(s) "
                f"{', '.join(map(str, sorted({plan.train.seed, *m.seeds})))}, built once by the index "
                f"stage in {plan.data.index_cache_dir} (lower train.max_steps to shrink it)",
            )
        )
    return rows


def cmd_render(args: argparse.Namespace) -> int:
    from orchestrator.atomic import atomic_write_text
    from orchestrator.render import render_all

    plans = _plans(args)
    for plan in plans:
        out = args.out if len(plans) == 1 else args.out / plan.run_id
        scripts = render_all(plan)
        for script in scripts:
            path = out / f"{script.stage}.sbatch"
            atomic_write_text(path, script.text)
            path.chmod(0o755)
            console.print(f"wrote {path}")
        atomic_write_text(out / "plan.json", plan.to_json())
        console.print(f"wrote {out / 'plan.json'}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from orchestrator.render import render_stage
    from orchestrator.stages import check_inputs, stage_specs
    from orchestrator.submit import SubmitError, sbatch_command, submit_run

    request = _request_from_args(args)
    dry_run = args.dry_run or request.dry_run
    plans = request.build()
    shared: dict[str, str] = {}  # stages the runs of this submission share (the data index of their seeds)
    worst = 0
    for plan in plans:
        if dry_run:
            console.print(f"[bold]# dry run: {plan.run_id} -> {plan.run_dir} (nothing written, nothing queued)[/]")
            _print_plan(plan)
            for i, spec in enumerate(stage_specs(plan)):
                console.rule(f"{spec.name}.sbatch")
                console.print(render_stage(plan, spec).text, markup=False)
                if plan.cluster.scheduler == "slurm":
                    console.print(
                        "# would run: " + " ".join(sbatch_command(plan, spec, "<dependency>" if i else None)),
                        markup=False,
                    )
            for problem in check_inputs(plan):
                err.print(f"[red]{escape(str(problem))}[/]")
                worst = 2 if problem.severity == "error" else worst
            continue
        try:
            sub = submit_run(plan, say=lambda m: console.print(m, markup=False), shared=shared)
        except SubmitError as exc:  # an existing run, a failed sbatch: nothing (more) was queued
            err.print(f"error: {exc}", markup=False)
            return 2
        console.print(f"run directory: {sub.run_dir}")
        if args.wait and plan.cluster.scheduler == "slurm":
            from orchestrator.status import wait_for_run

            rc = wait_for_run(sub.run_dir, console)
            if rc:
                return rc
        if plan.cluster.scheduler == "local" or args.wait:
            rc = _collect_and_report(sub.run_dir)
            if rc:
                return rc
    return worst


def _collect_and_report(run_dir: Path) -> int:
    from orchestrator.collect.cli import collect_run_dir

    return collect_run_dir(run_dir, console)


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.status import print_status, run_status

    status = run_status(args.run)
    if args.json:
        console.print_json(json.dumps(status))
    else:
        print_status(status, console)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from orchestrator.slurm import SlurmError
    from orchestrator.status import cancel_run

    try:
        ids = cancel_run(args.run)
    except SlurmError as exc:
        err.print(
            f"cancel: nothing cancelled: Slurm cannot say which jobs of the run are queued or running ({exc}); "
            "try again once it answers",
            markup=False,
        )
        return 1
    console.print(f"cancelled: {', '.join(ids) if ids else 'nothing was queued or running'}")
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    from orchestrator.smoke import run_smoke

    return run_smoke(args.cluster, args.nodes, console, runs_root=args.runs_root)


def cmd_nightly(args: argparse.Namespace) -> int:
    from orchestrator.nightly import main as nightly_main

    return nightly_main(args, console)


# ---------------------------------------------------------------------------------------------- the parser


def _mount(sub: Any, name: str, module: str, help_text: str) -> None:
    """A subcommand implemented by a module exposing add_arguments(parser) and run(args)."""

    def run(args: argparse.Namespace) -> int:
        mod = __import__(module, fromlist=["run"])
        return int(mod.run(args) or 0)

    try:
        mod = __import__(module, fromlist=["add_arguments"])
    except ImportError as exc:  # an optional dependency (numpy, sentencepiece, matplotlib) is missing
        p = sub.add_parser(name, help=f"{help_text} (unavailable: {exc.name} is not installed)")
        p.set_defaults(func=lambda a, e=exc: _missing(name, e))
        return
    p = sub.add_parser(
        name, help=help_text, description=mod.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mod.add_arguments(p)
    p.set_defaults(func=run)


def _missing(name: str, exc: ImportError) -> int:
    err.print(f"[red]`{name}` needs {exc.name}: pip install 'orchestrator[all]'[/]")
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="Run LLM pretraining on Slurm end to end: data, training chains, nightly runs, verdicts.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("profiles", help="list model and cluster profiles", formatter_class=fmt)
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser(
        "plan",
        help="resolve and validate a plan; print it (--json for plan.json)",
        formatter_class=fmt,
        description="Resolve profile + cluster + overrides into the plan every stage reads, and "
        "validate it (parallel layout, batch divisibility, memory per GPU). Exit 2 on errors.",
    )
    _add_plan_arguments(p)
    p.add_argument("--json", action="store_true", help="print plan.json (with derived numbers and problems)")
    p.add_argument("--from-env", action="store_true", help="read config.sh variables from the environment")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("render", help="write the stage scripts of a plan into a directory", formatter_class=fmt)
    _add_plan_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="directory for <stage>.sbatch and plan.json")
    p.add_argument("--from-env", action="store_true", help="read config.sh variables from the environment")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "submit",
        help="create a run and queue (or, locally, run) its stages",
        formatter_class=fmt,
        description=textwrap.dedent("""\
                       Create the run directory (plan.json, scripts, ledger) and queue consolidate -> preprocess ->
                       train (a chain of --chain jobs) on Slurm, skipping stages whose outputs are complete. With
                       --cluster local the stages run here, one after the other, and the run is collected at the end."""),
    )
    _add_plan_arguments(p, required=False)
    p.add_argument("--dry-run", action="store_true", help="render, validate and print; write and queue nothing")
    p.add_argument("--wait", action="store_true", help="block with a live status line until the run ends, then collect")
    p.add_argument("--from-env", action="store_true", help="read config.sh (MLPerf) variables from the environment")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="jobs of a run: state, steps trained, how each ended", formatter_class=fmt)
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--json", action="store_true", help="machine-readable (a list `jobs` with steps_start/steps_end)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel a run's queued and running jobs", formatter_class=fmt)
    p.add_argument("run", type=Path, help="run directory")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser(
        "smoke", help="test a cluster profile: a tiny multi-node job checks ranks, hosts, GPUs", formatter_class=fmt
    )
    p.add_argument("--cluster", "-c", required=True, help="cluster profile name or YAML path")
    p.add_argument("--nodes", type=int, default=2, help="nodes to use (default 2)")
    p.add_argument(
        "--runs-root", type=Path, default=None, help="where to put the smoke run (default: the profile's runs_root)"
    )
    p.set_defaults(func=cmd_smoke)

    p = sub.add_parser(
        "nightly", help="idempotent: continue an incomplete idle run, or start a fresh one", formatter_class=fmt
    )
    from orchestrator.nightly import add_arguments as nightly_arguments

    nightly_arguments(p)
    p.set_defaults(func=cmd_nightly)

    _mount(sub, "collect", "orchestrator.collect.cli", "metrics, plots and a verdict from training logs")
    _mount(sub, "consolidate", "orchestrator.data.consolidate", "merge C4 shards into MLPerf's files (resumable)")
    _mount(
        sub, "preprocess", "orchestrator.data.preprocess", "tokenize JSONL into a Megatron .bin/.idx (Megatron's flags)"
    )
    _mount(
        sub, "mlperf-fixup", "orchestrator.mlperf.layout", "repair the layout of MLPerf's downloaded preprocessed data"
    )
    _mount(
        sub,
        "mlperf-check",
        "orchestrator.mlperf.compliance",
        "MLPerf logs: each run's evaluations, and mlperf-logging's verdict",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command == "submit" and not args.from_env and not args.profile:
        parser.error("submit needs --profile (or --from-env to read config.sh variables)")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except PlanError as exc:
        err.print("[red]the plan is not valid; nothing was written or queued:[/]")
        for problem in exc.problems:
            err.print(f"[red]{escape(str(problem))}[/]")
        return 2
    except OSError as exc:  # "error: 2" once: the errno alone
        where = f": {exc.filename}" if exc.filename else ""
        err.print(f"[red]error:[/] {escape((exc.strerror or str(exc)) + where)}")
        return 2
    except (KeyError, ValueError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc.args[0] if exc.args else exc))}")
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
