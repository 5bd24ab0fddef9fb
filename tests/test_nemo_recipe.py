"""The plan -> NeMo recipe mapping, built on a CPU with the NeMo 2.5.3 stack for every seed model."""

from __future__ import annotations

import importlib
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from nemo_stack import fdl, llm, serialization  # noqa: F401 - one import of the stack (~20 s)

from orchestrator.plan import build_plan, parse_assignment, validate
from orchestrator.submit import prepare_inputs
from orchestrator.train import nemo as entry
from orchestrator.train import presets
from orchestrator.train.nemo_recipe import ARCH_FIELDS, MOE_FIELDS, build_recipe, perf_env, save_estimate_s, summarize

pytestmark = pytest.mark.nemo

SEED_MODELS = [
    "llama3_8b",
    "llama3_70b",
    "llama31_8b",
    "llama31_405b",
    "qwen3_8b",
    "qwen25_7b",
    "qwen3_30b_a3b",
    "qwen2_72b",
    "qwen25_72b",
]
DATA = {
    "data.source": "preprocessed",
    "data.train_prefixes": ["/data/c4-train.en_6_text_document", "/data/c4-train.en_7_text_document"],
    "data.train_weights": [25.0, 75.0],
    "data.index_cache_dir": "/npy_index",
}


def plan_for(model: str, tmp_path: Path, overrides: dict[str, Any] | None = None, check: bool = True):
    """The model's default plan on an 8 x H100 cluster, reading two weighted prefixes (``check=False``: keep a plan
    the validator would refuse, e.g. for its memory estimate, to test the mapping alone)."""
    return build_plan(model, "h100-pyxis", {**DATA, **(overrides or {})}, run_dir=tmp_path / model, check=check)


@pytest.mark.parametrize("model", SEED_MODELS)
def test_recipe_carries_the_plan(model: str, tmp_path: Path) -> None:
    plan = plan_for(model, tmp_path)
    recipe = build_recipe(plan)
    s = summarize(recipe)
    L, train = plan.layout, plan.train

    assert (s["trainer"]["num_nodes"], s["trainer"]["devices"]) == (L.nodes, L.tasks_per_node)
    p = s["parallel"]
    assert (p["tp"], p["pp"], p["cp"]) == (L.tp, L.pp, L.cp)
    assert p["vp"] == (L.vp if L.pp > 1 else None)
    assert p["sequence_parallel"] == (L.sequence_parallel and L.tp > 1)
    assert p["pipeline_dtype"] == ("torch.bfloat16" if L.pp > 1 else None)
    if plan.model.arch.is_moe:
        assert (p["ep"], p["etp"]) == (L.ep, L.etp)

    m = s["model"]
    assert m["seq_length"] == s["data"]["seq_length"] == train.seq_length
    for ours, theirs in {**ARCH_FIELDS, **(MOE_FIELDS if plan.model.arch.is_moe else {})}.items():
        assert m[theirs] == getattr(plan.model.arch, ours), theirs
    assert m["recompute"][0] == (None if L.recompute == "none" else L.recompute)

    d = s["data"]
    assert d["paths"] == [25.0, DATA["data.train_prefixes"][0], 75.0, DATA["data.train_prefixes"][1]]
    assert d["split"] == plan.data.split
    assert (d["global_batch_size"], d["micro_batch_size"], d["seed"]) == (
        train.global_batch_size,
        L.micro_batch_size,
        train.seed,
    )
    assert d["index_mapping_dir"] == "/npy_index"

    t = s["trainer"]
    assert t["max_steps"] == train.max_steps
    assert t["log_every_n_steps"] == 1 and p["progress_interval"] == 1
    assert (
        t["callbacks"][0] == "TimingCallback" and t["log_tokens_per_sec"] is True
    )  # the seeds' tokens_per_sec_per_gpu
    assert t["callbacks"][-1] == "StopControl"
    assert t["plugins"] == ["MegatronMixedPrecision", "SLURMEnvironment"] and t["slurm_auto_requeue"] is False
    assert t["precision"] == "bf16-mixed" and t["grad_reduce_in_fp32"] == L.grad_reduce_in_fp32
    if train.val_interval:
        assert (t["val_check_interval"], t["limit_val_batches"]) == (train.val_interval, train.val_batches)
    else:
        assert t["limit_val_batches"] == 0

    o, plan_o = s["optimizer"], train.optim
    assert (o["lr"], o["min_lr"], o["warmup_steps"]) == (plan_o.lr, plan_o.min_lr, plan_o.warmup_steps)
    assert (o["weight_decay"], o["beta1"], o["beta2"], o["eps"], o["clip_grad"]) == (
        plan_o.weight_decay,
        plan_o.beta1,
        plan_o.beta2,
        plan_o.eps,
        plan_o.clip_grad,
    )

    c = s["checkpoint"]
    assert c["dir"] == train.ckpt_dir == str(tmp_path / model / "checkpoints")
    assert (c["save_last"], c["save_top_k"], c["save_optim_on_train_end"], c["train_time_interval"]) == (
        True,
        0,
        True,
        None,
    )
    assert c["save_on_train_epoch_end"] is True  # no extra save after every validation
    r = s["resume"]
    assert (r["resume_if_exists"], r["resume_ignore_no_checkpoint"], r["directory"], r["restore"]) == (
        True,
        True,
        train.ckpt_dir,
        None,
    )

    json.dumps(s)  # the summary is JSON for plan previews and records
    assert serialization.load_json(serialization.dump_json(recipe)) is not None  # NeMoLogger records it as task.json


@pytest.mark.parametrize("model", SEED_MODELS)
def test_profiles_agree_with_nemos_model_config(model: str, tmp_path: Path) -> None:
    """Applying the plan changes no architecture number of NeMo's own recipe: the profiles mirror NeMo's configs."""
    plan = plan_for(model, tmp_path)
    ours = build_recipe(plan).model.config
    theirs = importlib.import_module(f"nemo.collections.llm.recipes.{model}").pretrain_recipe().model.config
    assert fdl.get_callable(ours) is fdl.get_callable(theirs)
    for name in (*ARCH_FIELDS.values(), *MOE_FIELDS.values(), "vocab_size"):
        assert getattr(ours, name) == getattr(theirs, name), name


def test_a_vocabulary_other_than_the_tokenizers_is_the_one_trained(tmp_path: Path) -> None:
    """Llama's config takes the (padded) tokenizer vocabulary unless set: a plan at 128256 over a 32000-token
    tokenizer must train 128256, the vocabulary its FLOPs are counted with."""
    same = build_recipe(plan_for("llama3_8b", tmp_path / "a")).model.config
    assert same.vocab_size is None  # NeMo's own: the tokenizer's, padded
    wider = plan_for("llama3_8b", tmp_path / "b", {"model.tokenizer.vocab_size": 32000})
    assert build_recipe(wider).model.config.vocab_size == 128256


def test_set_overrides_flow_into_the_recipe(tmp_path: Path) -> None:
    sets = [
        "layout.tp=2",
        "layout.pp=2",
        "layout.sequence_parallel=false",
        "layout.micro_batch_size=2",
        "layout.recompute=full",
        "layout.recompute_num_layers=4",
        "train.global_batch_size=64",
        "train.seq_length=4096",
        "train.max_steps=50",
        "train.seed=42",
        "train.ckpt_interval=25",
        "train.val_interval=10",
        "train.val_batches=3",
        "train.optim.lr=1e-4",
        "model.arch.num_layers=8",
        "chain.steps_per_job=20",
    ]
    plan = plan_for("llama31_8b", tmp_path, dict(parse_assignment(a) for a in sets))
    s = summarize(build_recipe(plan, deadline=1_900_000_000.0))
    assert (s["parallel"]["tp"], s["parallel"]["pp"], s["parallel"]["sequence_parallel"]) == (2, 2, False)
    assert s["parallel"]["pipeline_dtype"] == "torch.bfloat16"
    assert (s["data"]["micro_batch_size"], s["data"]["global_batch_size"], s["data"]["seed"]) == (2, 64, 42)
    assert s["data"]["seq_length"] == s["model"]["seq_length"] == 4096
    assert s["model"]["recompute"] == ["full", "uniform", 4]
    assert s["model"]["num_layers"] == 8
    assert s["trainer"]["max_steps"] == 50 and s["checkpoint"]["every_n_train_steps"] == 25
    assert (s["trainer"]["val_check_interval"], s["trainer"]["limit_val_batches"]) == (10, 3)
    assert s["optimizer"]["lr"] == 1e-4
    assert (s["trainer"]["steps_per_job"], s["trainer"]["deadline"]) == (20, 1_900_000_000.0)
    assert s["trainer"]["save_estimate_s"] == save_estimate_s(plan) > 1.0


def test_405b_takes_the_mlperf_reference_settings(tmp_path: Path) -> None:
    plan = plan_for("llama31_405b", tmp_path, {"cluster.data_root": str(tmp_path / "site")})
    prepare_inputs(plan, say=lambda line: None)  # the packaged Mixtral tokenizer, written where jobs read it
    recipe = build_recipe(plan)
    s = summarize(recipe)
    assert (s["parallel"]["tp"], s["parallel"]["pp"], s["parallel"]["vp"], s["parallel"]["cp"]) == (8, 9, 7, 4)
    assert s["parallel"]["ddp"] == {
        "check_for_nan_in_grad": True,
        "grad_reduce_in_fp32": True,
        "overlap_grad_reduce": True,
        "overlap_param_gather": True,
    }
    # 126 layers split evenly over PP9 x VP7, but 126 + embedding + loss = 128 would not: Megatron refuses that
    assert not s["parallel"]["account_for_embedding_in_pipeline_split"]
    assert not s["parallel"]["account_for_loss_in_pipeline_split"]
    overlap = next(c for c in recipe.trainer.callbacks if fdl.get_callable(c).__name__ == "MegatronCommOverlapCallback")
    assert overlap.tp_comm_overlap and overlap.wgrad_deferral_limit == 50 and overlap.align_param_gather
    from nemo.collections.llm.recipes.tp_overlap_configs import userbuffers

    assert fdl.build(overlap.tp_comm_overlap_cfg) == userbuffers.userbuffers_bf16_h100_h16384_tp8_cp2_mbs1_seqlen8192
    assert (s["optimizer"]["lr"], s["optimizer"]["min_lr"], s["optimizer"]["warmup_steps"]) == (8e-5, 8e-7, 8000)
    assert (s["trainer"]["max_steps"], s["trainer"]["val_check_interval"], s["trainer"]["limit_val_batches"]) == (
        1_200_000,
        16,
        5,
    )
    assert s["tensorboard"] is False
    tokenizer = s["data"]["tokenizer"]
    assert tokenizer["class"] == "SentencePieceTokenizer"
    import sentencepiece

    assert sentencepiece.SentencePieceProcessor(model_file=tokenizer["model_path"]).get_piece_size() == 32000

    # NeMo's own 405B layout (PP8 x VP2) divides 128, so there the recipe's split stays (our validator, which
    # divides 126, would refuse it)
    s = summarize(build_recipe(plan_for("llama31_405b", tmp_path, {"layout.pp": 8, "layout.vp": 2}, check=False)))
    assert (
        s["parallel"]["account_for_embedding_in_pipeline_split"] and s["parallel"]["account_for_loss_in_pipeline_split"]
    )


def test_405b_on_blackwell_uses_the_b200_user_buffers(tmp_path: Path) -> None:
    cluster = tmp_path / "gb200.yaml"
    cluster.write_text("scheduler: slurm\ngpus_per_node: 4\ngpu_name: NVIDIA GB200\ngpu_memory_gb: 186\n")
    plan = build_plan("llama31_405b", cluster, {**DATA, "layout.tp": 4, "layout.nodes": 576}, run_dir=tmp_path / "b")
    recipe = build_recipe(plan)
    overlap = next(c for c in recipe.trainer.callbacks if fdl.get_callable(c).__name__ == "MegatronCommOverlapCallback")
    from nemo.collections.llm.recipes.tp_overlap_configs import userbuffers

    assert fdl.build(overlap.tp_comm_overlap_cfg) == userbuffers.userbuffers_bf16_b200_h16384_tp4_cp2_mbs1_seqlen8192
    assert perf_env(plan, recipe)["CUDA_DEVICE_MAX_CONNECTIONS"] == "32"


def test_separate_validation_prefixes_replace_the_split(tmp_path: Path) -> None:
    val = "/data/c4-validation-91205-samples.en_text_document"
    d = summarize(build_recipe(plan_for("llama31_8b", tmp_path, {"data.validation_prefixes": [val]})))["data"]
    assert d["paths"] == {
        "train": [25.0, DATA["data.train_prefixes"][0], 75.0, DATA["data.train_prefixes"][1]],
        "validation": [val],
        "test": [val],
    }
    assert d["split"] is None


def test_init_from_restores_weights_only_or_resumes_in_full(tmp_path: Path) -> None:
    r = summarize(build_recipe(plan_for("llama31_8b", tmp_path, {"train.init_from": "/ckpt/Llama-3.1-8B"})))["resume"]
    assert r["restore"] == {
        "path": "/ckpt/Llama-3.1-8B",
        "load_model_state": True,
        "load_optim_state": False,
        "load_artifacts": False,
    }
    assert r["resume_if_exists"] and r["directory"].endswith("checkpoints")  # this run's own checkpoints come first
    full = {
        "train.init_from": "/c/checkpoint-seed-1-par-0-300-steps/checkpoint",
        "train.init_mode": "full",
        "train.init_step": 300,
    }
    r = summarize(build_recipe(plan_for("llama31_8b", tmp_path, full)))["resume"]
    # config.sh's FROM_HF=0: NeMo resumes that checkpoint as its own (weights, optimizer, step, schedule, data)
    assert r["restore"] is None and r["path"] == full["train.init_from"]


def test_continual_pretraining_preset(tmp_path: Path) -> None:
    plan = plan_for(presets.PRESET_PROFILES["cpt-llama31-8b"], tmp_path, presets.get("cpt-llama31-8b"))
    s = summarize(build_recipe(plan))
    o = s["optimizer"]
    assert (o["lr"], o["warmup_steps"], o["min_lr"], o["weight_decay"], o["beta1"], o["beta2"], o["clip_grad"]) == (
        2.5e-5,
        15,
        2.5e-6,
        0.1,
        0.9,
        0.95,
        1.0,
    )
    assert s["model"]["rotary_base"] == 500_000  # Llama 3.1's, which the imported weights were trained with
    assert s["resume"]["restore"]["path"] == str(Path(plan.run_dir) / "imported" / "meta-llama--Llama-3.1-8B")
    assert s["resume"]["restore"]["load_optim_state"] is False  # fresh optimizer
    assert "import" in plan.stages


def test_the_recipe_carries_the_mlperf_schedule_at_another_gbs(tmp_path: Path) -> None:
    """At GBS 576 (allowed with new RCPs) the plan takes the rules' numbers and the recipe carries them."""
    plan = plan_for("llama31_405b", tmp_path, {"train.global_batch_size": 576, "mlperf.allow_new_rcp": True})
    assert (plan.train.optim.lr, plan.train.optim.warmup_steps, plan.train.max_steps) == (4e-5, 16000, 2_400_000)
    assert (plan.train.val_interval, plan.train.val_batches) == (32, 10)
    s = summarize(build_recipe(plan))
    assert s["optimizer"]["lr"] == 4e-5 and s["optimizer"]["warmup_steps"] == 16000
    assert s["trainer"]["max_steps"] == 2_400_000 and s["trainer"]["limit_val_batches"] == 10


def test_an_mlperf_plan_shorter_than_one_evaluation_interval_still_starts(tmp_path: Path) -> None:
    """Lightning refuses a ``val_check_interval`` longer than the epoch before step 0 (the 405B seed proxy, 24 steps
    at GBS 8 where the rules evaluate every 2304, died so on the GPU): the trainer's interval is capped at max_steps
    and the plan warns that no evaluation falls in the run."""
    plan = plan_for(
        "llama31_405b",
        tmp_path,
        {"train.global_batch_size": 8, "train.max_steps": 24, "mlperf.allow_new_rcp": True},
        check=False,
    )
    schedule = plan.mlperf_schedule()
    assert schedule.eval_interval_steps > 24 and summarize(build_recipe(plan))["trainer"]["val_check_interval"] == 24
    assert any(p.field == "train.max_steps" and p.severity == "warning" for p in validate(plan))


def test_no_checkpoints_when_the_plan_says_so(tmp_path: Path) -> None:
    """No save of any kind, but a checkpoint callback all the same: NeMo's AutoResume needs one to restore (the 405B
    proxy's second job died in NeMo's setup without it; test_nemo_mlperf_trainer.py resumes such a plan)."""
    ckpt = summarize(build_recipe(plan_for("qwen3_8b", tmp_path, {"train.save_checkpoints": False})))["checkpoint"]
    assert (ckpt["every_n_train_steps"], ckpt["train_time_interval"], ckpt["save_last"], ckpt["save_top_k"]) == (
        None,
        None,
        False,
        0,
    )
    assert not ckpt["save_on_train_epoch_end"] and not ckpt["save_optim_on_train_end"]


def test_plans_the_nemo_backend_cannot_run_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train.precision"):
        build_recipe(plan_for("llama3_8b", tmp_path, {"train.precision": "fp32"}, check=False))
    with pytest.raises(ValueError, match="data.train_prefixes"):
        build_recipe(build_plan("llama3_8b", "h100-pyxis", {"data.source": "preprocessed"}, run_dir=tmp_path / "x"))


def test_perf_environment_follows_the_layout(tmp_path: Path) -> None:
    plan = plan_for("llama3_70b", tmp_path)  # TP4 PP4 CP2
    env = perf_env(plan, build_recipe(plan))
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1" and env["NCCL_P2P_NET_CHUNKSIZE"] == "2097152"
    assert env["NVTE_FWD_LAYERNORM_SM_MARGIN"] == env["NVTE_BWD_LAYERNORM_SM_MARGIN"] == "16"
    plan = plan_for("llama3_8b", tmp_path, {"layout.cp": 1}, check=False)  # TP1 PP1 CP1: nothing to overlap
    env = perf_env(plan, build_recipe(plan))
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in env and "NCCL_P2P_NET_CHUNKSIZE" not in env


def test_print_recipe_needs_no_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_for("qwen25_7b", tmp_path)
    Path(plan.run_dir).mkdir(parents=True)
    (Path(plan.run_dir) / "plan.json").write_text(plan.to_json())
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR2)}
    assert entry.main(["--run-dir", plan.run_dir, "--print-recipe"]) == 0
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # a preview takes over no signal
    shown = json.loads(capsys.readouterr().out)
    assert shown["recipe"]["parallel"]["tp"] == 2 and shown["recipe"]["data"]["seq_length"] == 8192
    assert shown["environment"]["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"


def test_latest_step_agrees_with_autoresume(tmp_path: Path) -> None:
    """The driver's progress and NeMo's resume choice read the same checkpoint."""
    from nemo import lightning as nl

    from orchestrator.train.nemo_checkpoint import latest_step

    def save(step: int, finished: bool = True) -> Path:
        path = tmp_path / f"model_name=0--val_loss=0.00-step={step}-consumed_samples={(step + 1) * 8}.0-last"
        (path / "weights").mkdir(parents=True)
        if not finished:
            (tmp_path / f"{path.name}-unfinished").touch()
        return path

    resume = nl.AutoResume(resume_if_exists=True, resume_ignore_no_checkpoint=True, resume_from_directory=str(tmp_path))
    save(59, finished=False)
    assert latest_step(tmp_path) is None
    with pytest.raises(ValueError, match="unfinished"):  # never silently from scratch
        resume._find_trainer_ckpt_path()
    chosen = save(41)
    assert resume._find_trainer_ckpt_path() == chosen
    assert latest_step(tmp_path) == 42
