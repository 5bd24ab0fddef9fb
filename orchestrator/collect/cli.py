"""collect: metrics, plots and a verdict from training logs; the exit code gates nightly jobs and CI.

    collect RUN                          a run directory: its training logs in chain order, plan.json
    collect --log FILE... --model NAME   log files in chain order; outputs only with --out DIR
    collect --suite DIR                  one row per model over the runs in DIR; writes DIR/suite.md

Exit codes: 0 the verdict is pass or none (no baseline), 1 a verdict is fail, 2 bad arguments,
3 unusable input (no log files, no metric line in them, an unreadable baseline file).
Rules, metrics.json schema and the FLOPs formula: docs/metrics.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from orchestrator.atomic import atomic_write_text
from orchestrator.collect.baseline import DEFAULT_THRESHOLD, Baseline, BaselineError, load_baselines
from orchestrator.collect.flops import architecture_flops_per_token
from orchestrator.collect.metrics import RunMetrics
from orchestrator.collect.parse import total_bytes
from orchestrator.collect.report import summary_rows, write_metrics_json, write_outputs
from orchestrator.collect.run import RunInfo, collect_info, run_info
from orchestrator.collect.suite import COLUMNS, row_cells, suite_json, suite_markdown, summarise

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_UNUSABLE = 3
SUITE_MD = "suite.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", nargs="?", metavar="RUN", help="run directory (logs/train-<jobid>.out or ledger.sqlite, plan.json)"
    )
    parser.add_argument(
        "--log",
        dest="logs",
        nargs="+",
        action="extend",
        type=Path,
        metavar="FILE",
        help="training log files of one run, first job first (a later record of a step wins)",
    )
    parser.add_argument("--model", help="model name (the baseline key); with RUN, overrides plan.json")
    parser.add_argument("--suite", type=Path, metavar="DIR", help="summarise every run under DIR, one row per model")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="FILE",
        help='JSON: {"<model>": {"final_loss": x, "throughput": y}}; adds the verdict',
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="largest |final - baseline| / baseline that passes (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print metrics.json (suite: the rows) instead of a table")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where to write metrics.json, metrics.csv, plots, report.md (default: RUN; --suite: DIR)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--flops-per-token",
        type=float,
        help="model FLOPs per token for MFU (default: from the plan, or the model profile named by --model)",
    )
    parser.add_argument("--peak-tflops", type=float, help="GPU peak dense TFLOP/s for MFU (default: from the plan)")


def _fail(message: str) -> int:
    print(f"collect: {message}", file=sys.stderr)
    return EXIT_UNUSABLE


def _progress(paths: Sequence[Path]) -> tuple[AbstractContextManager, Callable[[int], None] | None]:
    """A byte progress bar with rates on a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        return nullcontext(), None
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    bar = Progress(
        "parsing logs",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("parse", total=total_bytes(paths))
    return bar, lambda n: bar.advance(task, n)


def _profile_flops(model: str) -> tuple[float | None, str | None]:
    """FLOPs per token from the built-in model profile of that name, at its benchmark sequence length."""
    try:
        from orchestrator.profiles import get_model

        profile = get_model(model)
    except (ImportError, KeyError):
        return None, None
    seq = profile.bench.seq_length
    return (
        architecture_flops_per_token(profile.arch, seq),
        f"FLOPs per token from the {profile.name} profile at sequence length {seq} (override: --flops-per-token)",
    )


def _print_table(m: RunMetrics, written: list[Path], console: Console) -> None:
    from rich.table import Table

    colour = {"pass": "green", "fail": "bold red"}.get(m.verdict, "")
    table = Table(show_header=False, title=f"collect: {m.model}", title_justify="left")
    table.add_column(style="bold", overflow="fold")
    table.add_column(overflow="fold")
    for label, value in summary_rows(m):
        table.add_row(label, f"[{colour}]{value}[/]" if label == "verdict" and colour else value, end_section=False)
    console.print(table, markup=True, highlight=False)
    for note in m.notes:
        console.print(f"- {note}", markup=False, highlight=False)
    for path in written:
        console.print(f"wrote {path}", markup=False, highlight=False)


def _run_info(args: argparse.Namespace) -> RunInfo:
    """The run to collect, from RUN or from --log/--model, with the command line's MFU numbers on top."""
    if args.run is not None:
        info = run_info(args.run, model=args.model)
    else:
        missing = [str(p) for p in args.logs if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"no such log file: {', '.join(missing)}")
        flops, note = _profile_flops(args.model)
        info = RunInfo(model=args.model, logs=tuple(args.logs), flops_per_token=flops, notes=(note,) if note else ())
    if args.flops_per_token:
        info = replace(info, flops_per_token=args.flops_per_token)
    if args.peak_tflops:
        info = replace(info, peak_flops_per_gpu=args.peak_tflops * 1e12)
    return info


def _collect_one(args: argparse.Namespace, baselines: dict[str, Baseline] | None, console: Console) -> int:
    try:
        info = _run_info(args)
    except OSError as exc:
        return _fail(str(exc))
    bar, progress = _progress(info.logs)
    with bar:
        metrics = collect_info(info, baselines=baselines, threshold=args.threshold, progress=progress)
    if not metrics.records:
        skipped = sum(s.skipped for s in metrics.sources)
        example = next((s.skipped_examples[0] for s in metrics.sources if s.skipped_examples), None)
        return _fail(
            f"no metric line in {', '.join(map(str, info.logs))}: expected lines like 'Training epoch 0, "
            "iteration 0/99 | ... | global_step: 0 | reduced_train_loss: ...'"
            + (f"; {skipped} line(s) looked close but did not parse, first: {example}" if skipped else "")
        )
    if baselines is not None and metrics.baseline is None:
        print(f"collect: warning: {metrics.verdict_reason}", file=sys.stderr)

    out = args.out or info.run_dir
    written = write_outputs(metrics, out, plots=not args.no_plots) if out is not None else []
    if args.json:
        write_metrics_json(metrics, sys.stdout)
    else:
        _print_table(metrics, written, console)
    return EXIT_FAIL if metrics.verdict == "fail" else EXIT_OK


def _collect_suite(args: argparse.Namespace, baselines: dict[str, Baseline] | None, console: Console) -> int:
    if not args.suite.is_dir():
        return _fail(f"{args.suite}: not a directory")
    try:
        rows = summarise(args.suite, baselines=baselines, threshold=args.threshold)
    except OSError as exc:
        return _fail(str(exc))
    if not rows:
        return _fail(f"{args.suite}: no runs (directories with metrics.json or training logs) here or one level down")
    markdown = suite_markdown(rows, args.threshold)
    out = args.out or args.suite
    atomic_write_text(out / SUITE_MD, markdown)
    code = EXIT_FAIL if any(r.verdict == "fail" for r in rows) else EXIT_OK
    if args.json:
        sys.stdout.write(suite_json(rows))
        return code
    if console.is_terminal:
        from rich.table import Table

        table = Table(title=f"suite: {args.suite}", title_justify="left")
        for header in COLUMNS:
            table.add_column(header, overflow="fold")  # wrap a number rather than cut its digits
        for row in rows:
            table.add_row(*row_cells(row))
        console.print(table, markup=False, highlight=False)
        for row in rows:
            if row.reason:
                console.print(f"- {row.model}: {row.verdict}: {row.reason}", markup=False, highlight=False)
    else:  # a CI log or a pipe: the markdown, whose lines are never cut to 80 columns
        console.print(markdown, markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {out / SUITE_MD}", markup=False, highlight=False)
    return code


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    """The ``collect`` command; ``console`` (default: stdout) receives the tables."""
    console = console or Console()
    modes = [name for name, given in (("RUN", args.run), ("--log", args.logs), ("--suite", args.suite)) if given]
    if len(modes) != 1:
        print("collect: give exactly one of RUN, --log FILE..., --suite DIR", file=sys.stderr)
        return EXIT_USAGE
    if args.logs and not args.model:
        print("collect: --log needs --model NAME (the baseline key and the report's title)", file=sys.stderr)
        return EXIT_USAGE
    if not 0 < args.threshold < 1:
        print(f"collect: --threshold {args.threshold}: give a fraction, e.g. 0.05 for 5%", file=sys.stderr)
        return EXIT_USAGE
    try:
        baselines = load_baselines(args.baseline) if args.baseline else None
    except BaselineError as exc:
        return _fail(str(exc))
    if args.suite:
        return _collect_suite(args, baselines, console)
    return _collect_one(args, baselines, console)


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="collect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv), console)


if __name__ == "__main__":
    raise SystemExit(main())


def collect_run_dir(run_dir: str | os.PathLike[str], console: Console | None = None) -> int:
    """``collect RUN`` after a run ends (``submit --wait``, local runs): outputs into the run directory, the table
    on ``console``, and the command's exit code."""
    return main([str(run_dir)], console=console)
