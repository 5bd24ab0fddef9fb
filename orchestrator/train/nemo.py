"""Train with NeMo: ``python -m orchestrator.train.nemo --run-dir DIR``, one task per GPU under ``srun``.

Lightning's ``SLURMEnvironment`` reads the ranks from ``SLURM_*`` (no automatic requeue), ``MASTER_ADDR`` and
``MASTER_PORT`` come from the step script, and the process environment gets NeMo's performance settings
(``PerfEnvPlugin``) before CUDA starts, unless the cluster profile already set them.

Exit status, read by the in-job driver:

* 0 - ``max_steps`` reached (now, or by an earlier job), or, in an MLPerf plan, an evaluation met the target
  log-perplexity: the final checkpoint is complete and global rank 0 has written ``<run_dir>/DONE`` (JSON:
  ``final_step``, ``consumed_samples``, ``time``, ``reason``);
* 0 - stopped early at a step boundary (SIGTERM/SIGUSR2, ``ORCHESTRATOR_DEADLINE`` near, ``chain.steps_per_job``)
  with a finished ``*last`` checkpoint and no ``DONE``: the next job resumes. The driver tells the two apart by
  ``DONE``; a distinct non-zero code for a stop would make ``srun --kill-on-bad-exit`` kill the other ranks while
  they exit;
* anything else - a failure (an exception, or training ended early without a saved checkpoint; in an MLPerf plan
  also a step slower than ``mlperf.step_time_atol_s``).

An MLPerf plan's job writes its compliance log under ``<run_dir>/mlperf/`` (see ``orchestrator.train.nemo_mlperf``),
opened at process start so that everything up to the first step counts as initialisation.
"""

from __future__ import annotations

from orchestrator.train import stopping

if __name__ == "__main__":
    stopping.install()  # first, before the imports below: a stop signal while they load is remembered, not fatal

import argparse
import json
import os
import sys

import numpy as np

from orchestrator.contract import JobEnvironment, deadline
from orchestrator.mlperf.mllog import open_job_log
from orchestrator.plan import RunPlan
from orchestrator.rundir import MAX_STEPS_REASON, RunDir, target_reason
from orchestrator.train import nemo_index
from orchestrator.train.nemo_checkpoint import init_checkpoint, latest_step

if not hasattr(np, "product"):
    # megatron-core 0.14's checkpointing calls numpy.product, gone in numpy 2 (NeMo's container has numpy 1.26, a
    # plain PyTorch image numpy 2). Set on import, so that the asynchronous checkpoint writer, a process that
    # multiprocessing's spawn starts by importing this module again, has it too.
    np.product = np.prod

EXIT_DONE = 0
EXIT_STOPPED = 0  # stopped early with a finished checkpoint, no DONE: the chain continues
EXIT_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="run directory holding plan.json")
    parser.add_argument(
        "--print-recipe",
        action="store_true",
        help="print the configured NeMo recipe (summary and environment) as JSON and exit; no GPU needed",
    )


def run(args: argparse.Namespace) -> int:
    if not args.print_recipe:
        stopping.install()  # as early as a caller of main() can (the module entry installs it before its imports)
    plan = RunPlan.load(args.run_dir)
    if plan.train.backend != "nemo":
        print(f"{args.run_dir}: train.backend is {plan.train.backend!r}; run orchestrator.train.{plan.train.backend}")
        return EXIT_FAILED
    if not args.print_recipe and already_done(plan):
        return EXIT_DONE
    # MLPerf plans: the compliance log starts now (init_start), before NeMo's import, model build and checkpoint load
    job = JobEnvironment.current()
    mllog = None if args.print_recipe else open_job_log(plan, job)
    # NeMo takes ~20 s to import; importing it here keeps --help fast and the signal handlers above in force.
    import fiddle as fdl

    from orchestrator.train.nemo_local_spec import (
        announcement,
        have_transformer_engine,
        skip_attention_masks,
        use_local_spec,
    )
    from orchestrator.train.nemo_mlperf import MlperfControl
    from orchestrator.train.nemo_recipe import build_recipe, perf_env, summarize
    from orchestrator.train.nemo_stop import StopControl

    if not args.print_recipe:
        nemo_index.check_ready(plan)  # the index stage built this seed's sample index: load it, never build it here
    recipe = build_recipe(plan, deadline=deadline())
    local_spec = not have_transformer_engine()
    if local_spec:  # a machine without Transformer Engine: Megatron's local layer spec, flash attention by SDPA
        use_local_spec(recipe)
    env = perf_env(plan, recipe)
    if args.print_recipe:
        print(json.dumps({"recipe": summarize(recipe), "environment": env}, indent=2, default=str))
        return EXIT_DONE
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if job.global_rank == 0:
        print(describe_start(plan), flush=True)
        if local_spec:
            print(announcement(recipe), flush=True)
    task = fdl.build(recipe)
    if local_spec:
        skip_attention_masks(task.keywords["data"])
    trainer = task.keywords["trainer"]
    stop = next(cb for cb in trainer.callbacks if isinstance(cb, StopControl))
    mlperf = next((cb for cb in trainer.callbacks if isinstance(cb, MlperfControl)), None)
    if mlperf is not None:
        mlperf.mllog = mllog  # after fdl.build: NeMo's Trainer deep-copies its callbacks' arguments, not open files
    task()
    reached = mlperf is not None and mlperf.reached
    return finish(plan, trainer.global_step, trainer.global_rank, stop.reason, stop.saved_step, reached)


def already_done(plan: RunPlan) -> bool:
    """True when ``max_steps`` is behind us: ``DONE`` exists, or a finished checkpoint reached it (then write DONE)."""
    done = RunDir.of(plan.run_dir).done_marker
    if done.exists():
        print(f"{done} exists: training is complete, nothing to do", flush=True)
        return True
    step = latest_step(plan.train.ckpt_dir)
    if step is None or step < plan.train.max_steps:
        return False
    if JobEnvironment.current().global_rank == 0:
        write_done(plan, step, MAX_STEPS_REASON)
    return True


def finish(
    plan: RunPlan, step: int, rank: int, reason: str | None, saved_step: int | None, target_reached: bool = False
) -> int:
    """The exit status for a ``fit`` that returned at ``step``; rank 0 writes DONE when ``max_steps`` is reached or
    an evaluation met the MLPerf target (``target_reached``)."""
    if target_reached or step >= plan.train.max_steps:
        if rank == 0:
            write_done(
                plan,
                step,
                target_reason(plan.mlperf.target_log_ppl if plan.mlperf else None)
                if target_reached
                else MAX_STEPS_REASON,
            )
        return EXIT_DONE
    if reason and saved_step == step:
        if rank == 0:
            print(
                f"stopped at step {step} of {plan.train.max_steps} ({reason}); checkpoint saved; the next job resumes",
                flush=True,
            )
        return EXIT_STOPPED
    if rank == 0:
        why = f"stop requested ({reason}) but no checkpoint was saved" if reason else "no stop was requested"
        print(f"training ended at step {step} of {plan.train.max_steps}: {why}", flush=True)
    return EXIT_FAILED


def write_done(plan: RunPlan, step: int, reason: str) -> None:
    RunDir.of(plan.run_dir).mark_done(step, step * plan.train.global_batch_size, reason, backend="nemo")


def describe_start(plan: RunPlan) -> str:
    L, t = plan.layout, plan.train
    step = latest_step(t.ckpt_dir)
    start = init_checkpoint(plan)
    if step is not None:
        origin = f"resuming at step {step} from {t.ckpt_dir}"
    elif start and t.init_mode == "full":
        origin = f"resuming {start} in full at step {t.init_step} (train.init_mode=full)"
    elif start:
        origin = f"weights from {start}, a fresh optimizer, step 0"
    else:
        origin = "from scratch"
    text = (
        f"nemo: {plan.model.recipe} on {L.nodes} x {L.tasks_per_node} GPUs, TP{L.tp} PP{L.pp} CP{L.cp} "
        f"VP{L.vp or '-'} EP{L.ep}, global batch {t.global_batch_size}, micro batch {L.micro_batch_size}, "
        f"sequence {t.seq_length}, steps {t.max_steps}, {origin}; python {sys.version.split()[0]} at {sys.executable}"
    )
    schedule = plan.mlperf_schedule()
    if schedule is not None:
        text += (
            f"; MLPerf: evaluation after {schedule.first_eval_step} steps, then every {schedule.eval_interval_steps}, "
            f"on {schedule.eval_batches} batches, until log-perplexity <= {schedule.target_log_ppl}"
        )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.train.nemo", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
