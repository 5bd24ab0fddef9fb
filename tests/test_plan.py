"""The plan: real architecture numbers, and validation that refuses what would fail on the cluster."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from orchestrator.plan import PlanError, RunPlan, build_plan, parse_assignment, validate
from orchestrator.profiles import MODELS, get_model


def test_405b_plan_json_carries_the_mlperf_shape(tmp_path):
    done = run_cli("plan", "--profile", "405b", "--cluster", "h100-pyxis", "--run-dir", str(tmp_path / "r"), "--json")
    body = json.loads(done.stdout)
    arch = body["model"]["arch"]
    assert (arch["num_layers"], arch["hidden_size"], arch["ffn_hidden_size"]) == (126, 16384, 53248)
    assert (arch["num_attention_heads"], arch["num_query_groups"], arch["vocab_size"]) == (128, 8, 32000)
    assert body["train"]["seq_length"] == 8192
    assert body["derived"]["world_size"] == 288 * 8
    # the layout, batch and memory are valid; only the site's C4 shards are not on this machine (said before any queue)
    assert [(p["field"], p["message"].split(" does not")[0]) for p in body["problems"]] == [
        ("consolidate stage", "path /lustre/data/c4/en")
    ]
    assert done.returncode == 2 and not (tmp_path / "r").exists(), "plan must not write anything"


@pytest.mark.parametrize("model", [m.name for m in MODELS if m.name != "tiny"])
def test_every_seed_model_plan_is_valid_on_the_h100_site(model, tmp_path):
    plan = build_plan(model, "h100-pyxis", run_dir=tmp_path / model)
    errors = [p for p in validate(plan) if p.severity == "error"]
    assert errors == []
    bench = get_model(model).bench
    assert plan.world_size == bench.gpus
    assert plan.train.global_batch_size == bench.global_batch_size
    assert plan.train.seq_length == bench.seq_length


def test_plan_round_trips_through_json(tmp_path):
    plan = build_plan("qwen3_30b_a3b", "h100-pyxis", run_dir=tmp_path / "r")
    again = RunPlan.from_json(plan.to_json())
    assert again == plan


def _errors(profile: str, cluster: str, tmp_path, **overrides) -> list[str]:
    with pytest.raises(PlanError) as caught:
        build_plan(profile, cluster, overrides, run_dir=tmp_path / "r")
    return [f"{p.field}: {p.message} | {p.fix}" for p in caught.value.problems]


def test_layout_that_does_not_divide_the_gpus_names_the_numbers_and_a_fix(tmp_path):
    (problem,) = _errors("405b", "h100-pyxis", tmp_path, **{"layout.nodes": 3})
    assert "8 x 9 x 4 = 288 does not divide 24 tasks" in problem
    assert "36 nodes" in problem


def test_heads_not_divisible_by_tp(tmp_path):
    problems = _errors("qwen25_7b", "h100-pyxis", tmp_path, **{"layout.tp": 8, "layout.nodes": 1})
    assert any(p.startswith("layout.tp: 28 attention heads are not divisible by TP=8") for p in problems)


def test_layers_not_divisible_by_pipeline_stages(tmp_path):
    problems = _errors("llama3_70b", "h100-pyxis", tmp_path, **{"layout.vp": 3})
    assert any("80 layers are not divisible by PP x VP = 4 x 3 = 12" in p for p in problems)


def test_sequence_not_divisible_by_twice_cp(tmp_path):
    problems = _errors("llama3_8b", "h100-pyxis", tmp_path, **{"train.seq_length": 8190})
    assert any(p.startswith("train.seq_length: sequence 8190 is not divisible by 2 x CP = 4") for p in problems)


def test_experts_not_divisible_by_ep(tmp_path):
    problems = _errors("qwen3_30b_a3b", "h100-pyxis", tmp_path, **{"layout.ep": 3})
    assert any("128 experts are not divisible by EP=3" in p for p in problems)


def test_global_batch_not_divisible_by_micro_batch_times_dp(tmp_path):
    problems = _errors("llama3_8b", "h100-pyxis", tmp_path, **{"train.global_batch_size": 126})
    assert any("global batch 126 is not divisible by micro batch x DP = 1 x 4 = 4" in p for p in problems)


def test_vocabulary_smaller_than_the_tokenizer_is_refused(tmp_path):
    problems = _errors("8b", "h100-pyxis", tmp_path, **{"model.arch.vocab_size": 32000})
    assert any(
        p.startswith("model.arch.vocab_size: vocabulary 32000 is smaller than the tokenizer's 128256") for p in problems
    )


def test_memory_estimate_refuses_a_layout_that_cannot_fit(tmp_path):
    problems = _errors(
        "llama3_70b",
        "h100-pyxis",
        tmp_path,
        **{
            "layout.tp": 1,
            "layout.pp": 1,
            "layout.cp": 1,
            "layout.vp": None,
            "layout.sequence_parallel": False,
            "layout.nodes": 1,
            "train.global_batch_size": 64,
        },
    )
    (memory,) = [p for p in problems if "GiB per GPU" in p]
    assert "> 80 GiB" in memory and "recompute=full" in memory


def test_nemo_backend_needs_gpus(tmp_path):
    problems = _errors("llama3_8b", "slurm-lab", tmp_path, **{"layout.nodes": 1, "layout.cp": 1})
    assert any(p.startswith("train.backend: the nemo backend needs GPU nodes") for p in problems)


def test_what_a_trainer_refuses_at_its_start_is_refused_at_plan_time(tmp_path):
    """The checks that used to raise only inside the GPU job (after the queue wait), asked by the plan."""
    data = {"data.source": "preprocessed", "data.train_prefixes": ["/d/a"]}
    problems = _errors("llama3_8b", "h100-pyxis", tmp_path, **data, **{"train.precision": "fp32"})
    assert any(
        p.startswith("train.precision: train.precision='fp32': the nemo backend trains in bf16") for p in problems
    )
    (recipe,) = _errors("tiny", "h100-pyxis", tmp_path, **data, **{"train.backend": "nemo"})
    assert recipe.startswith("model.recipe: model 'tiny' has no NeMo recipe") and "train.backend=reference" in recipe
    (prefixes,) = _errors("tiny", "local", tmp_path, **{"data.source": "preprocessed"})
    assert prefixes.startswith("data.train_prefixes: data.train_prefixes is empty")
    (min_lr,) = _errors("tiny", "local", tmp_path, **data, **{"train.optim.min_lr": 1.0})
    assert min_lr.startswith("train.optim.min_lr: train.optim.min_lr=1.0 exceeds train.optim.lr")
    # NeMo's schedule runs a rising LR (a small-GBS MLPerf proxy has one): a warning there, not a refusal
    plan = build_plan("llama3_8b", "h100-pyxis", {**data, "train.optim.min_lr": 1.0}, run_dir=tmp_path / "n")
    assert [p.severity for p in validate(plan) if p.field == "train.optim.min_lr"] == ["warning"]


def test_unknown_override_key_is_refused_with_the_valid_sections(tmp_path):
    problems = _errors("tiny", "local", tmp_path, **{"trian.max_steps": 3})
    assert "unknown plan section 'trian'" in problems[0] and "train" in problems[0]


def test_typo_inside_a_section_is_refused(tmp_path):
    problems = _errors("tiny", "local", tmp_path, **{"train.max_stepz": 3})
    assert problems[0].startswith("train.max_stepz: Extra inputs are not permitted")


def test_assignments_parse_as_yaml_scalars_but_keep_strings_verbatim():
    assert parse_assignment("layout.tp=2") == ("layout.tp", 2)
    assert parse_assignment("layout.vp=null") == ("layout.vp", None)
    assert parse_assignment("data.train_shards=[6, 7]") == ("data.train_shards", [6, 7])
    assert parse_assignment("chain.time_limit=04:00:00") == ("chain.time_limit", "04:00:00")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignment("layout.tp")


def test_a_preset_applies_before_set(tmp_path):
    done = run_cli(
        "plan",
        "--profile",
        "8b",
        "--cluster",
        "h100-pyxis",
        "--run-dir",
        str(tmp_path / "r"),
        "--json",
        "--preset",
        "cpt-llama31-8b",
        "--set",
        "train.max_steps=20",
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["train"]["optim"]["lr"] == 2.5e-5 and body["train"]["hf_model_id"] == "meta-llama/Llama-3.1-8B"
    assert body["train"]["max_steps"] == 20, "--set wins over the preset"
    assert body["stages"] == ["consolidate", "preprocess", "index", "import", "train"]


def test_an_environment_value_is_text_as_typed(tmp_path):
    """``--set env.X=15`` once failed ("Input should be a valid string") unless quoted twice."""
    assert parse_assignment("env.OMP_NUM_THREADS=15") == ("env.OMP_NUM_THREADS", "15")
    assert parse_assignment("cluster.env.UMASK=0022") == ("cluster.env.UMASK", "0022")
    assert parse_assignment("env.X='15'") == ("env.X", "15")  # the old workaround still means the same
    done = run_cli(
        "plan", "--profile", "tiny", "--run-dir", str(tmp_path / "r"), "--set", "env.OMP_NUM_THREADS=15", "--json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["env"] == {"OMP_NUM_THREADS": "15"}


def test_datasets_that_differ_in_bytes_never_share_a_folder(tmp_path):
    """append_eod true and false (or another tokenizer library) once shared preprocessed-<tokenizer>/."""

    def folder(**overrides):
        plan = build_plan("405b", "h100-pyxis", overrides, run_dir=tmp_path / "r", check=False)
        return plan.data.preprocessed_path

    plain = folder()
    assert folder() == plain, "the same plan names the same folder, so runs share their data"
    others = [
        folder(**{"data.append_eod": True}),
        folder(**{"model.tokenizer.library": "huggingface"}),
        folder(**{"model.tokenizer.model": "/tokenizers/other/tokenizer.model"}),
    ]
    assert len({plain, *others}) == 1 + len(others), [plain, *others]


def _concrete_fixes(fix: str) -> list[str]:
    """The ``--set KEY=VALUE ...`` assignments a fix spells out (not ones with ``..`` placeholders)."""
    import re

    found = re.search(r"--set ((?:[a-z_]+(?:\.[a-z_]+)+=[^\s,()]+ ?)+)", fix)
    items = found.group(1).split() if found else []
    return [] if any(".." in i.split("=", 1)[1] for i in items) else items


def test_every_concrete_fix_the_plan_suggests_makes_its_problem_go_away(tmp_path):
    """TP4 x PP3 on one node of 8 once suggested "e.g. 2 nodes" (16 tasks, not a multiple of 12)."""
    applied = 0
    for tp in (1, 2, 4, 8):
        for pp in (1, 2, 3, 4):
            for nodes in (1, 2, 3, 5):
                for extra in ({}, {"layout.vp": 2}, {"layout.sequence_parallel": True}, {"layout.ep": 2}):
                    base = {"layout.tp": tp, "layout.pp": pp, "layout.nodes": nodes, **extra}
                    plan = build_plan("llama3_8b", "h100-pyxis", base, run_dir=tmp_path / "r", check=False)
                    for problem in validate(plan):
                        fixes = _concrete_fixes(problem.fix)
                        if "does not divide" in problem.message and problem.field == "layout":
                            assert fixes, f"a layout that does not divide the tasks gets a node count: {problem}"
                        if not fixes:
                            continue
                        fixed = dict(base, **dict(parse_assignment(f) for f in fixes))
                        again = build_plan("llama3_8b", "h100-pyxis", fixed, run_dir=tmp_path / "r", check=False)
                        kind = problem.message.split(" ")[-3:]
                        left = [
                            p for p in validate(again) if p.field == problem.field and p.message.split(" ")[-3:] == kind
                        ]
                        assert not left, f"{base}: {problem} -> after {fixes}: {left}"
                        applied += 1
    assert applied >= 30, applied


def test_an_os_error_names_the_reason_and_the_file(tmp_path):
    """OSErrors printed as "error: 2" (the errno) or as a traceback."""
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "scripts"
    done = run_cli(
        "render", "--profile", "tiny", "--cluster", "local", "--run-dir", str(tmp_path / "r"), "--out", str(out)
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"error: Not a directory: {out}" in " ".join(done.stderr.split())


def test_rich_markup_in_user_text_is_shown_as_typed(tmp_path):
    done = run_cli("plan", "--profile", "tiny", "--run-dir", str(tmp_path / "r"), "--set", "train.[/]=1")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "train.[/]: Extra inputs are not permitted" in done.stderr
