"""Run mlperf-logging's compliance checker on a log, as a submitter would.

The checker (``python -m mlperf_logging.compliance_checker``) is pure Python and runs on a CPU. It is run in a
subprocess: it keeps module-level state (a queue of rule files) and evaluates the rule files' code with ``eval``,
so it does not belong in the caller's process, and a different interpreter (a container's) can be named.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from orchestrator.mlperf.mllog import read_runs
from orchestrator.mlperf.rules import BENCHMARKS, LLAMA31_405B, Rules

#: Every ruleset some benchmark here has, for the command line.
ALL_RULESETS = tuple(sorted({r for rules in BENCHMARKS.values() for r in rules.rulesets}))


def rules_file(ruleset: str, benchmark: str = LLAMA31_405B.benchmark) -> Path | None:
    """The installed checker's rules for this benchmark and ruleset, if both exist."""
    spec = importlib.util.find_spec("mlperf_logging")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "compliance_checker" / f"training_{ruleset}" / f"closed_{benchmark}.yaml"
    return path if path.is_file() else None


def log_rules(log: Path) -> Rules:
    """The rules of the benchmark a log names (``submission_benchmark``); 405B's if it names none."""
    named = {run.params.get("submission_benchmark") for run in read_runs(log)} - {None}
    if len(named) > 1 or not named <= BENCHMARKS.keys():
        raise ValueError(
            f"{log}: submission_benchmark {', '.join(map(str, sorted(named)))} is not one of {', '.join(BENCHMARKS)}"
        )
    return BENCHMARKS[named.pop()] if named else LLAMA31_405B


def check_compliance(
    log_path: str | os.PathLike[str],
    ruleset: str | None = None,
    *,
    python: str | None = None,
    werror: bool = False,
    timeout: float = 300,
) -> tuple[bool, str]:
    """``(passed, checker output)`` for one log file (one run), against ``closed_<benchmark>`` of ``ruleset``
    (default: the newest that has the benchmark the log names).

    ``python`` defaults to this interpreter, which then must have the ``mlperf`` extra
    (``pip install 'orchestrator[mlperf]'``). ``werror`` makes warnings (e.g. a key logged twice with the same
    value) failures too.
    """
    log = Path(log_path)
    if not log.is_file():
        raise FileNotFoundError(f"{log}: no such MLPerf log")
    rules = log_rules(log)
    ruleset = ruleset or rules.latest_ruleset
    if python is None:
        python = sys.executable
        if importlib.util.find_spec("mlperf_logging") is None:
            raise RuntimeError(
                f"{python} has no mlperf_logging: pip install 'orchestrator[mlperf]' (mlperf-logging), "
                f"or pass python= an interpreter that has it"
            )
        if rules_file(ruleset, rules.benchmark) is None:
            raise ValueError(
                f"the installed mlperf-logging has no training_{ruleset}/closed_{rules.benchmark}.yaml; "
                f"rulesets with {rules.benchmark}: {', '.join(rules.rulesets)}"
            )
    with tempfile.TemporaryDirectory(prefix="mlperf-compliance-") as scratch:
        command = [
            python,
            "-m",
            "mlperf_logging.compliance_checker",
            "--usage",
            "training",
            "--ruleset",
            ruleset,
            "--log_output",
            os.path.join(scratch, "compliance_checker.log"),
            *(["--werror"] if werror else []),
            str(log.resolve()),
        ]
        done = subprocess.run(command, check=False, cwd=scratch, capture_output=True, text=True, timeout=timeout)
    return done.returncode == 0, done.stdout + done.stderr


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("logs", nargs="+", type=Path, help="MLPerf logs (one run each)")
    parser.add_argument(
        "--ruleset", choices=ALL_RULESETS, help="compliance ruleset (default: the newest with the log's benchmark)"
    )
    parser.add_argument("--werror", action="store_true", help="treat the checker's warnings as failures")


def run(args: argparse.Namespace) -> int:
    """Summarise each log and run the checker on it; 0 only if every log passes."""
    failed = 0
    for log in args.logs:
        runs = read_runs(log)
        for result in runs:
            minutes = "no run_stop" if result.run_minutes is None else f"{result.run_minutes:.1f} min"
            curve = ", ".join(f"{samples}: {value:.4f}" for samples, value in result.evals) or "no evaluation"
            print(f"{log}: status {result.status}, {minutes}, eval log-ppl by samples {curve}")
        ok, output = check_compliance(log, args.ruleset, werror=args.werror)
        print(f"{log}: compliance {args.ruleset or log_rules(log).latest_ruleset} {'PASSED' if ok else 'FAILED'}")
        if not ok:
            failed += 1
            print("\n".join(line for line in output.splitlines() if "CHECK" in line or "failed" in line.lower()))
    return 1 if failed else 0
