"""The reference training loop: data-parallel AdamW over the Llama-style model, under the trainers' contract.

- Ranks: RANK/WORLD_SIZE/LOCAL_RANK (torchrun, ``orchestrator.launch``, the Slurm step script), else srun's
  SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, else one process. MASTER_ADDR/MASTER_PORT come from the environment.
  gloo on CPU, nccl on CUDA (one GPU per local rank).
- Step ``k`` (0-based ``global_step``): ``GBS / (micro_batch_size * world)`` micro-batches per rank, each loss the
  mean token cross-entropy of its micro-batch divided by the micro-batch count, gradients averaged over ranks by
  DDP (synchronised on the last micro-batch only), clipped to ``clip_grad``, one AdamW step at :func:`lr_at`.
  ``reduced_train_loss`` is that loss summed over micro-batches and averaged over ranks: the global batch's mean.
- Stops between steps only: SIGUSR2/SIGTERM set a flag on any rank; ``ORCHESTRATOR_DEADLINE`` (unix seconds) is
  checked against the longest step seen (plus the last validation's time when the next step validates) plus one
  checkpoint save (the last one's time; before any, the state's size at 200 MB/s plus a second); all ranks agree
  on the flags with one all-reduce per step. A stop saves and exits 0, as does reaching ``chain.steps_per_job``;
  ``max_steps`` saves, writes ``<run_dir>/DONE`` and exits 0: the driver tells them apart by ``DONE``. (A
  distinct code for "stopped" would be a non-zero task exit, on which ``srun --kill-on-bad-exit`` kills the
  other ranks mid-exit.)
- Resume: the newest complete checkpoint (model, optimizer, RNG states, consumed samples) or, if none,
  ``train.init_from`` (its weights, or with ``init_mode=full`` everything at ``init_step``), or a seeded fresh model.
  Runs on CPU are bitwise reproducible across a stop and resume.
- Rank 0 prints NeMo's log line every step, plus ``[orchestrator]`` lines for the banner, checkpoints and stops.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import pickle
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from orchestrator import logline
from orchestrator.contract import JobEnvironment, deadline
from orchestrator.mlperf.checkpoints import check_start
from orchestrator.mlperf.hyperparameters import run_hyperparameters
from orchestrator.mlperf.mllog import MlperfLogger, Submission, open_job_log
from orchestrator.mlperf.schedule import cosine_annealing_lr
from orchestrator.plan import RunPlan, check_trainer
from orchestrator.profiles import Optimizer
from orchestrator.rundir import MAX_STEPS_REASON, RunDir, target_reason
from orchestrator.train import checkpoint, stopping
from orchestrator.train.reference import data as datamod
from orchestrator.train.reference.model import Transformer

EXIT_STOPPED = 0  # stopped early with a checkpoint (no DONE): the chain continues


# ------------------------------------------------------------------------------------------------- ranks


def init_distributed(ranks: JobEnvironment) -> torch.device:
    """Pick the device, join the process group (world > 1), and keep CPU ranks from oversubscribing cores."""
    if torch.cuda.is_available():
        device = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        if "OMP_NUM_THREADS" not in os.environ:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            torch.set_num_threads(max(1, cores // ranks.local_world_size))
    if ranks.world_size > 1:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise RuntimeError(
                f"{ranks.world_size} ranks ({ranks.launcher}) but {' and '.join(missing)} not set; the step script "
                "exports them (first host of the node list, a port derived from the job id)"
            )
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            rank=ranks.global_rank,
            world_size=ranks.world_size,
            timeout=dt.timedelta(minutes=10),
            device_id=device if device.type == "cuda" else None,
        )
    return device


# --------------------------------------------------------------------------------------------- schedule


def lr_at(step: int, optim: Optimizer, max_steps: int) -> float:
    """The LR the optimizer uses for 0-based step ``step`` and the ``lr`` printed on its line: NeMo's schedule
    (:func:`~orchestrator.mlperf.schedule.cosine_annealing_lr`) of the plan's optimizer, ending at ``max_steps``."""
    return cosine_annealing_lr(step, optim.lr, optim.min_lr, optim.warmup_steps, max_steps)


# ------------------------------------------------------------------------------------------------ trainer


def fingerprint(plan: RunPlan) -> dict[str, Any]:
    """What must not change between a checkpoint and the run that resumes it (the data stream and the model)."""
    return dict(
        arch=plan.model.arch.model_dump(mode="json"),
        seq_length=plan.train.seq_length,
        global_batch_size=plan.train.global_batch_size,
        seed=plan.train.seed,
        train_prefixes=list(plan.data.train_prefixes),
        train_weights=list(plan.data.train_weights),
        validation_prefixes=list(plan.data.validation_prefixes),
        split=plan.data.split,
    )


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class Trainer:
    def __init__(
        self, plan: RunPlan, ranks: JobEnvironment, device: torch.device, mllog: MlperfLogger | None = None
    ) -> None:
        self.plan, self.ranks, self.device = plan, ranks, device
        self.mllog = mllog
        self.schedule = plan.mlperf_schedule()
        train, layout, arch = plan.train, plan.layout, plan.model.arch
        self.run_dir = Path(plan.run_dir)
        self.ckpt_dir = Path(train.ckpt_dir)
        self.is_main = ranks.global_rank == 0
        self.distributed = ranks.world_size > 1
        check_trainer(plan)  # asked at plan time too; again here for a plan.json edited since
        if ranks.world_size != plan.world_size:
            raise ValueError(
                f"launched with {ranks.world_size} ranks ({ranks.launcher}) but the plan's layout is "
                f"{plan.world_size} (layout.nodes={layout.nodes} x layout.tasks_per_node={layout.tasks_per_node}); "
                "launch as many tasks as the plan says, or re-plan"
            )
        per_micro = layout.micro_batch_size * ranks.world_size
        if train.global_batch_size % per_micro:
            raise ValueError(
                f"train.global_batch_size={train.global_batch_size} is not a multiple of "
                f"micro_batch_size x world = {per_micro}"
            )
        self.accumulation = train.global_batch_size // per_micro
        self.autocast = device.type == "cuda" and train.precision == "bf16-mixed"

        torch.manual_seed(train.seed)
        self.model = Transformer(arch, train.seq_length).to(device)
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]  # norms and biases, as Megatron
        opt = train.optim
        self.optimizer = torch.optim.AdamW(
            [dict(params=decay, weight_decay=opt.weight_decay), dict(params=no_decay, weight_decay=0.0)],
            lr=opt.lr,
            betas=(opt.beta1, opt.beta2),
            eps=opt.eps,
            fused=device.type == "cuda",
        )
        mbs = layout.micro_batch_size
        self.train_batches = datamod.Batches(datamod.train_samples(plan), mbs, ranks.world_size, ranks.global_rank)
        self.val_batches = None
        if train.val_interval and train.val_batches:
            samples = datamod.validation_samples(plan)
            if samples is None:
                raise ValueError(
                    f"train.val_interval={train.val_interval} but there is no validation data: data.split="
                    f"{plan.data.split!r} leaves no validation documents; set data.validation_prefixes or a split "
                    "with a validation part, or train.val_interval=null"
                )
            self.val_batches = datamod.Batches(samples, mbs, ranks.world_size, ranks.global_rank)
        self.step = 0
        self.consumed = 0
        self.val_loss: float | None = None
        self.saved_step = 0  # the state at step 0 is reproducible without a checkpoint
        estimate = plan.memory_estimate()  # a save's duration, until the first save of this job measures one
        self.stop = stopping.StopPolicy(
            plan.chain.steps_per_job, deadline(), stopping.save_estimate_s(estimate.weights + estimate.optimizer)
        )
        self.fingerprint_digest = _digest(fingerprint(plan))

    # ---------------------------------------------------------------------------------------- helpers

    def say(self, message: str) -> None:
        if self.is_main:
            print(f"[orchestrator] {message}", flush=True)

    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=op)
        return tensor

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _tensor(self, batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(batch).to(self.device, non_blocking=True)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------------- checkpoints

    def _rng_state(self) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state() if self.device.type == "cuda" else None
        return {"torch": torch.get_rng_state(), "cuda": cuda}

    def save(self) -> None:
        """Checkpoint ``self.step`` (every rank calls this: RNG states are gathered to rank 0, which writes)."""
        if not self.plan.train.save_checkpoints or self.saved_step == self.step:
            return
        start = time.perf_counter()
        states: list[Any] = [None] * self.ranks.world_size
        if self.distributed:
            dist.all_gather_object(states, self._rng_state())
        else:
            states[0] = self._rng_state()
        name = checkpoint.step_name(self.step)
        if self.is_main:
            tmp = checkpoint.begin(self.ckpt_dir, self.step)
            checkpoint.write_file(tmp / "model.pt", lambda handle: torch.save(self.model.state_dict(), handle))
            checkpoint.fault_injection_delay()
            checkpoint.write_file(tmp / "optimizer.pt", lambda handle: torch.save(self.optimizer.state_dict(), handle))
            checkpoint.write_file(tmp / "rng.pt", lambda handle: torch.save(states, handle))
            meta = dict(
                format=1,
                step=self.step,
                consumed_samples=self.consumed,
                scheduler=dict(name="cosine-annealing", next_step=self.step, next_lr=self._lr(self.step)),
                world_size=self.ranks.world_size,
                run_id=self.plan.run_id,
                fingerprint=fingerprint(self.plan),
                plan_fingerprint=self.fingerprint_digest,
                time=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            )
            checkpoint.publish(tmp, self.ckpt_dir, self.step, meta)
        self.barrier()
        self.saved_step = self.step
        self.stop.save_s = time.perf_counter() - start
        self.say(f"saved {name} (consumed_samples={self.consumed}, {self.stop.save_s:.2f} s)")

    def _load(self, path: Path, *, full: bool, optimizer: bool) -> dict[str, Any]:
        meta = checkpoint.read_meta(path)
        self._check_fingerprint(path, meta.get("fingerprint", {}), resuming=full)

        def read(name: str, device: torch.device | None = self.device) -> Any:
            try:
                return torch.load(path / name, map_location=device, weights_only=True)
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # "failed reading zip archive"
                what = (
                    "is missing"
                    if isinstance(exc, FileNotFoundError)
                    else f"cannot be read ({exc}): truncated or corrupt"
                )
                raise checkpoint.CheckpointError(
                    f"{path / name} {what}. Restore it, or move {path.name} out of "
                    f"{path.parent} to resume from the checkpoint before it"
                ) from exc

        self.model.load_state_dict(read("model.pt"))
        if optimizer:
            self.optimizer.load_state_dict(read("optimizer.pt"))
        if full:
            states = read("rng.pt", None)
            own = states[self.ranks.global_rank] if self.ranks.global_rank < len(states) else None
            if own is None:
                self.say(f"{path.name} holds RNG states of {len(states)} ranks; ranks beyond keep their seeded state")
            else:
                torch.set_rng_state(own["torch"])
                if own.get("cuda") is not None and self.device.type == "cuda":
                    torch.cuda.set_rng_state(own["cuda"])
            self.step, self.consumed = int(meta["step"]), int(meta["consumed_samples"])
            self.saved_step = self.step
        return meta

    def _check_fingerprint(self, path: Path, saved: Mapping[str, Any], resuming: bool) -> None:
        """A resumed run must be the same model (error) on the same data (warning); ``init_from`` may change both
        (a mismatch of shapes still fails in ``load_state_dict``)."""
        mine = fingerprint(self.plan)
        arch = sorted(k for k in mine["arch"] if k in saved.get("arch", {}) and saved["arch"][k] != mine["arch"][k])
        if arch and resuming:
            raise checkpoint.CheckpointError(
                f"{path}: saved for a different model (model.arch fields {', '.join(arch)} differ); "
                "resume with the plan that wrote it, or point train.ckpt_dir elsewhere"
            )
        differs = arch + sorted(k for k in mine if k != "arch" and k in saved and saved[k] != mine[k])
        if differs and resuming:
            self.say(
                f"warning: {path.name} was written with different {', '.join(differs)}; "
                "the data stream from here on differs from the original run's"
            )
        elif differs:
            self.say(f"{path.name} was written with different {', '.join(differs)}")

    def restore(self) -> str:
        """Resume, initialise from ``train.init_from``, or start fresh; returns what happened, for the banner."""
        if self.is_main:
            for stale in checkpoint.remove_stale(self.ckpt_dir):
                print(f"[orchestrator] removed {stale.name} (left by an interrupted write)", flush=True)
        self.barrier()
        step = checkpoint.find_resume(self.ckpt_dir)
        train = self.plan.train
        if step is not None:
            path = checkpoint.step_dir(self.ckpt_dir, step)
            self._load(path, full=True, optimizer=True)
            return f"resumed from {path.name} (consumed_samples={self.consumed})"
        if train.init_from and train.init_mode == "full":  # config.sh's FROM_HF=0: continue that run exactly
            path = checkpoint.resolve(train.init_from)
            self._load(path, full=True, optimizer=True)
            check_start(train.init_step, self.step, str(path))
            return f"resumed in full from {path} (train.init_from), step {self.step}"
        if train.init_from:
            path = checkpoint.resolve(train.init_from)
            self._load(path, full=False, optimizer=False)
            return f"initialised weights from {path} (train.init_from); step 0"
        return f"fresh start at step 0 (seed {train.seed})"

    # ------------------------------------------------------------------------------------------- steps

    def _lr(self, step: int) -> float:
        return lr_at(step, self.plan.train.optim, self.plan.lr_horizon_steps)

    def train_step(self, model: torch.nn.Module) -> tuple[float, float, float]:
        """One optimizer step over the global batch; returns (lr, reduced loss, wall seconds)."""
        start = time.perf_counter()
        lr = self._lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro in range(self.accumulation):
            tokens = self._tensor(self.train_batches.micro_batch(self.consumed, micro))
            last = micro == self.accumulation - 1
            deferred = isinstance(model, DistributedDataParallel) and not last
            with model.no_sync() if deferred else contextlib.nullcontext():
                with self._autocast():
                    loss = model(tokens[:, :-1], tokens[:, 1:])
                (loss / self.accumulation).backward()
            total += loss.detach() / self.accumulation
        clip = self.plan.train.optim.clip_grad
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        reduced = self.all_reduce(total).item() / self.ranks.world_size
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return lr, reduced, time.perf_counter() - start

    @torch.no_grad()
    def validate(self) -> float:
        """Mean loss over ``val_batches`` global batches (as NeMo's ``limit_val_batches``) of the fixed
        validation samples: each rank reads ``val_batches x accumulation`` micro-batches."""
        assert self.val_batches is not None
        self.model.eval()
        total = torch.zeros((), device=self.device)
        count = self.plan.train.val_batches * self.accumulation
        for micro in range(count):
            tokens = self._tensor(self.val_batches.micro_batch(0, micro))
            with self._autocast():
                total += self.model(tokens[:, :-1], tokens[:, 1:])
        self.model.train()
        return self.all_reduce(total).item() / (count * self.ranks.world_size)

    def log(self, lr: float, loss: float, seconds: float, first: bool) -> None:
        if not self.is_main:
            return
        train = self.plan.train
        metrics: dict[str, float] = {
            "lr": lr,
            "global_batch_size": train.global_batch_size,
            "global_step": self.step,
            "reduced_train_loss": loss,
            "train_step_timing in s": seconds,
            "tokens_per_sec_per_gpu": train.global_batch_size * train.seq_length / (self.ranks.world_size * seconds),
        }
        if not first:  # NeMo leaves consumed_samples off a run's first line
            metrics["consumed_samples"] = (self.step + 1) * train.global_batch_size
        if self.val_loss is not None:
            metrics["val_loss"] = self.val_loss
        print(logline.format_log_line(0, self.step, train.max_steps, metrics), flush=True)

    def _stop_reason(self, steps_in_job: int) -> str | None:
        """The stop policy at this step boundary, every rank's flags agreed by one all-reduce."""
        late = self.stop.late(time.time(), self._evaluates(self.step + 1))
        signalled, late = stopping.any_rank([stopping.received() is not None, late], self.device)
        return self.stop.reason(steps_in_job, signalled, late)

    def _evaluates(self, steps_done: int) -> bool:
        """Validate after this many steps? MLPerf plans follow the rules' schedule, others every val_interval."""
        if self.val_batches is None:
            return False
        if self.schedule is not None:
            return self.schedule.is_eval_step(steps_done)
        interval = self.plan.train.val_interval
        return bool(interval) and steps_done % interval == 0

    def _mlperf_start(self) -> None:
        if self.mllog is None or self.schedule is None:
            return
        plan = self.plan
        params = run_hyperparameters(plan, start_step=self.step)
        device = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        platform = f"{plan.layout.nodes}x{plan.layout.tasks_per_node}x{device}".replace(" ", "_")
        submission = Submission(
            org="orchestrator reference backend", platform=platform, benchmark=self.schedule.benchmark
        )
        self.mllog.on_train_start(self.step, params, submission)

    def _mlperf_end(self) -> None:
        if self.mllog is not None:
            self.mllog.on_train_end(self.step)

    def _describe_data(self) -> str:
        blend = self.train_batches.samples
        assert isinstance(blend, datamod.Blend)
        weights = "/".join(f"{w:.3g}" for w in blend.weights)
        text = (
            f"data: {len(blend.components)} training prefix(es), weights {weights}, "
            f"{sum(len(c) for c in blend.components)} samples per epoch"
        )
        if self.val_batches is None:
            return text + "; no validation"
        total = len(self.val_batches.samples)
        wanted = self.plan.train.val_batches * self.plan.layout.micro_batch_size * self.ranks.world_size
        wrap = f" (fewer than the {wanted} each evaluation reads: they repeat)" if total < wanted else ""
        return text + f"; validation: {total} samples in file order{wrap}, {wanted} per evaluation"

    def _finish(self, why: str = MAX_STEPS_REASON) -> int:
        self.save()
        self._mlperf_end()
        if self.is_main:
            saved = self.plan.train.save_checkpoints
            rd = RunDir.of(self.run_dir)
            rd.mark_done(
                self.step,
                self.consumed,
                why,
                checkpoint=str(checkpoint.step_dir(self.ckpt_dir, self.step)) if saved else None,
            )
            self.say(f"done: {self.step} steps, consumed_samples={self.consumed}; wrote {rd.done_marker}")
        return 0

    def fit(self) -> int:
        plan, train = self.plan, self.plan.train
        arch = plan.model.arch
        self.say(
            f"reference trainer: run {plan.run_id}, model {plan.model.name} ({arch.num_layers} layers, hidden "
            f"{arch.hidden_size}, {arch.num_params() / 1e6:.2f}M parameters), {self.ranks.world_size} rank(s) via "
            f"{self.ranks.launcher} on {self.device.type}, python {sys.version.split()[0]} at {sys.executable}"
            + (f" ({torch.get_num_threads()} thread(s) per rank)" if self.device.type == "cpu" else "")
        )
        self.say(
            f"global batch {train.global_batch_size} = micro {plan.layout.micro_batch_size} x {self.ranks.world_size} "
            f"rank(s) x {self.accumulation} accumulation, sequence {train.seq_length}, max_steps {train.max_steps}, "
            f"steps_per_job {plan.chain.steps_per_job or 'unlimited'}, checkpoints in {self.ckpt_dir}"
        )
        if self.device.type == "cpu" and train.precision == "bf16-mixed":
            self.say("precision: fp32 on CPU (bf16-mixed applies on CUDA only)")
        self.say(self._describe_data())
        self.say(self.restore())
        if self.step >= train.max_steps:
            return self._finish()
        model: torch.nn.Module = self.model
        if self.distributed:
            device_ids = [self.device] if self.device.type == "cuda" else None
            model = DistributedDataParallel(self.model, device_ids=device_ids)
        first_step = self.step
        self._mlperf_start()
        while True:
            reason = self._stop_reason(self.step - first_step)
            if reason:
                self.say(f"stopping at step {self.step}: {self.stop.describe(reason, self._evaluates(self.step + 1))}")
                self.save()
                self._mlperf_end()
                return EXIT_STOPPED
            lr, loss, seconds = self.train_step(model)
            self.log(lr, loss, seconds, first=self.step == first_step)
            if plan.mlperf and seconds > plan.mlperf.step_time_atol_s:
                raise RuntimeError(
                    f"step {self.step} took {seconds:.0f} s > mlperf.step_time_atol_s="
                    f"{plan.mlperf.step_time_atol_s}: a straggler or a hang; stopping the job"
                )
            self.stop.longest_step_s = max(self.stop.longest_step_s, seconds)
            self.step += 1
            self.consumed += train.global_batch_size
            if self._evaluates(self.step):
                start = time.perf_counter()
                if self.mllog:
                    self.mllog.on_eval_start(self.step)
                self.val_loss = self.validate()
                self.stop.validation_s = time.perf_counter() - start
                self.say(
                    f"validation after step {self.step}: val_loss {logline.format_value(self.val_loss)} "
                    f"({train.val_batches} global batches)"
                )
                if self.mllog and self.mllog.on_eval_end(self.step, self.val_loss):
                    return self._finish(target_reason(plan.mlperf.target_log_ppl))  # type: ignore[union-attr]
            if self.step >= train.max_steps:
                return self._finish()
            if train.ckpt_interval and self.step % train.ckpt_interval == 0:
                self.save()


def run(run_dir: str | os.PathLike[str]) -> int:
    """Train the plan in ``run_dir``; 0 when max_steps is reached (DONE written) or stopped with a checkpoint."""
    plan = RunPlan.load(run_dir)
    ranks = JobEnvironment.current()
    mllog = open_job_log(plan, ranks)
    device = init_distributed(ranks)
    try:
        return Trainer(plan, ranks, device, mllog).fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        sys.stdout.flush()
