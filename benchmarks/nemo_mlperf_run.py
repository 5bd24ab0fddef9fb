"""The MLPerf rules in the nemo trainer on one GPU: the evaluation schedule across resumes, the log, the target stop.

The small Llama 3.1 of ``nemo_stop_resume.py`` (its data, plan and job runner are reused) as an MLPerf plan at
GBS 32 (``mlperf.allow_new_rcp``), evaluating after 4 steps, then every 2, on 1 batch, with checkpoints every 3
steps. Four jobs of ``python -m orchestrator.train.nemo``:

    a  chain.steps_per_job=6                    -> exit 0 at step 6; evaluations 4, 6 (the stop evaluates first)
    b  killed (SIGKILL) once the in-step checkpoint of step 9 is finalized: a crash
    c  resumes from that checkpoint, max_steps 16 -> evaluations every 2 steps after the resumed one (Lightning's own
       cadence would run them one step late from a checkpoint written inside the step); DONE "max_steps reached"
    d  a new run, target log-perplexity 11 (above the untrained loss) -> stops after the first evaluation (step 4),
       saves, DONE with the reason, log status success

Evaluations are read from each job's compliance log (``<run_dir>/mlperf/``). Prints one line per job and exits 1 if
an expectation fails; ``--out DIR`` gets the logs (to run mlperf-logging's checker elsewhere).

Not run yet: written when this session's GPU time was spent; the CPU tests (tests/test_nemo_mlperf.py) cover the
same behaviour through Lightning without Megatron.

    python benchmarks/nemo_mlperf_run.py --work /tmp/nemo-mlperf --tokenizer tokenizer.model.v1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
from pathlib import Path

import nemo_stop_resume as base

FINALIZED = re.compile(r"save for step (\d+).*finalized", re.IGNORECASE)
GBS = 32
MLPERF = {
    "train.global_batch_size": GBS, "mlperf.allow_new_rcp": True, "mlperf.eval_every_samples": 2 * GBS,
    "mlperf.eval_samples": GBS, "mlperf.start_eval_at_samples": 4 * GBS, "train.val_interval": 2,
    "train.val_batches": 1, "train.ckpt_interval": 3, "train.max_steps": 16,
}  # fmt: skip


def job(run_dir: Path, name: str, kill_after_save: int | None = None) -> tuple[int, str]:
    """One trainer process (its log in ``<work>/<name>.log``); SIGKILL once a checkpoint of ``kill_after_save`` or
    later is finalized."""
    kill = None if kill_after_save is None else base.at_step(
        FINALIZED, kill_after_save, lambda proc: os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its async writer
    )  # fmt: skip
    return base.train(run_dir, name, env={"SUBMITIT_LOCAL_JOB_ID": name}, watch=kill)


def summary(name: str, rc: int, text: str, run_dir: Path) -> dict[str, object]:
    from orchestrator.mlperf.mllog import read_mllog
    from orchestrator.train.nemo_checkpoint import latest_step

    steps = [int(s) for s in base.STEP.findall(text)]
    logs = sorted((run_dir / "mlperf").glob(f"*_{name}.log"))
    run = read_mllog(logs[0]) if logs else None
    done = run_dir / "DONE"
    result = {
        "rc": rc,
        "first": steps[0] if steps else None,
        "last": steps[-1] if steps else None,
        "evaluated": [samples // GBS for samples, _ in run.evals] if run else None,
        "eval_loss": [round(value, 3) for _, value in run.evals] if run else None,
        "status": run.status if run else None,
        "init_checkpoint_step": run.params.get("init_checkpoint_step") if run else None,
        "latest": latest_step(run_dir / "checkpoints"),
        "done": json.loads(done.read_text()).get("reason") if done.exists() else None,
    }
    print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in result.items()), flush=True)
    return result


def check(args: argparse.Namespace) -> int:
    work = args.work
    base.make_data(work)
    run_dir = base.write_plan(work, args.tokenizer, **MLPERF, **{"chain.steps_per_job": 6})
    a = summary("a", *job(run_dir, "a"), run_dir)
    base.write_plan(work, args.tokenizer, **MLPERF)
    b = summary("b", *job(run_dir, "b", kill_after_save=9), run_dir)
    start = b["latest"] or 0
    c = summary("c", *job(run_dir, "c"), run_dir)

    target = work / "target"
    target.mkdir()
    (target / "data").symlink_to(work / "data")
    target_dir = base.write_plan(target, args.tokenizer, **MLPERF, **{"mlperf.target_log_ppl": 11.0})
    d = summary("d", *job(target_dir, "d"), target_dir)
    expectations = {
        "a evaluates after 4 and 6, stops at 6": (a["rc"], a["evaluated"], a["latest"], a["done"]) == (0, [4, 6], 6, None),
        "b resumed at 6 and was killed after an in-step checkpoint": b["first"] == 6 and b["rc"] == -signal.SIGKILL
        and start >= 9,
        "c resumes there and evaluates on the schedule": (c["first"], c["init_checkpoint_step"]) == (start, start)
        and c["evaluated"] == [s for s in range(start + 1, 17) if s % 2 == 0],
        "c ends at max_steps with DONE": (c["rc"], c["latest"], c["done"]) == (0, 16, "max_steps reached"),
        "d stops at its first evaluation, saved, DONE with the reason": (d["rc"], d["evaluated"], d["latest"])
        == (0, [4], 4) and d["status"] == "success" and d["done"] == "MLPerf target log-perplexity 11.0 reached",
    }  # fmt: skip
    for what, ok in expectations.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for log in [*(run_dir / "mlperf").glob("*.log"), *(target_dir / "mlperf").glob("*.log")]:
            shutil.copy(log, args.out / log.name)
    return 0 if all(expectations.values()) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/nemo-mlperf"), help="scratch directory (emptied)")
    parser.add_argument("--tokenizer", default="mistral-common:tokenizer.model.v1", help="sentencepiece, vocab 32000")
    parser.add_argument("--out", type=Path, help="copy the compliance logs here")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    raise SystemExit(check(args))
