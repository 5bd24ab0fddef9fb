"""Entry point: ``python -m orchestrator.train.reference --run-dir DIR``.

Exit codes: 0 the run reached ``max_steps`` (``DIR/DONE`` written) or stopped early with a checkpoint (signal,
deadline, ``chain.steps_per_job``; no ``DONE``): the next job resumes; anything else is an error (traceback on
stderr).
"""

from __future__ import annotations

import argparse

from orchestrator.train import stopping


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="run directory holding plan.json")


def run(args: argparse.Namespace) -> int:
    # A stop signal during the seconds torch takes to import must not kill the task: remember it, stop at step 0.
    stopping.install()
    from orchestrator.train.reference import trainer

    return trainer.run(args.run_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.train.reference", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
