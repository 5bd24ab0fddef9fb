"""An MLPerf log written by a real (short, CPU-sized) reference-backend run, judged by mlperf-logging's checker.

The checker's 405B rules also fix the benchmark's scale: max_sequence_length 8192, eval_samples 5760 and an
evaluation log-perplexity <= 5.6. A CPU run in CI cannot train at that scale (one evaluation alone is 47 million
tokens), so this run is small and honest about it: it logs the sequence length and evaluation size it really
used. The test asserts that the checker accepts everything else (event order, every hyper-parameter and its
formula at this GBS, samples counts, init_checkpoint_step) and rejects exactly those scale keys.
"""

from __future__ import annotations

from mlperf_helpers import SCALE_KEYS, failing_keys
from reference_helpers import VOCAB, markov_documents, train, write_dataset

from orchestrator.mlperf.compliance import check_compliance
from orchestrator.mlperf.mllog import read_mllog
from orchestrator.plan import build_plan


def test_reference_run_writes_a_log_the_checker_accepts_but_for_the_benchmark_scale(tmp_path):
    data = tmp_path / "data"
    write_dataset(data / "train", markov_documents(200, seed=11))
    write_dataset(data / "valid", markov_documents(60, seed=13))
    run_dir = tmp_path / "run"
    plan = build_plan(
        "tiny",
        "local",
        {
            "data.source": "preprocessed",
            "data.train_prefixes": [str(data / "train")],
            "data.validation_prefixes": [str(data / "valid")],
            "model.arch.vocab_size": VOCAB,
            "model.tokenizer.vocab_size": VOCAB,
            "model.arch.hidden_size": 64,
            "model.arch.ffn_hidden_size": 176,
            "model.arch.num_layers": 2,
            "layout.tasks_per_node": 1,
            "layout.micro_batch_size": 2,
            "train.global_batch_size": 16,
            "train.seq_length": 32,
            # The rules' schedule at GBS 16 (outside [1152, 9216], hence allow_new_rcp), but evaluations every 32
            # sequences over 32, the first after 64, and a target the untrained model meets: the run stops there.
            "mlperf.allow_new_rcp": True,
            "mlperf.eval_every_samples": 32,
            "mlperf.eval_samples": 32,
            "mlperf.start_eval_at_samples": 64,
            "mlperf.target_log_ppl": 9.0,
        },
        run_id="mlperf-tiny",
        run_dir=run_dir,
    )
    schedule = plan.mlperf_schedule()
    assert schedule is not None and (schedule.first_eval_step, schedule.eval_interval_steps) == (4, 2)
    assert (plan.train.optim.lr, plan.train.optim.warmup_steps, plan.train.max_steps) == (
        schedule.base_lr,
        schedule.warmup_steps,
        schedule.max_steps,
    )
    run_dir.mkdir()
    (run_dir / "plan.json").write_text(plan.to_json())

    result = train(run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "target log-perplexity 9.0 reached" in (run_dir / "DONE").read_text()
    (log,) = (run_dir / "mlperf").glob("mlperf_mlperf-tiny_seed1234_par0_*.log")
    run = read_mllog(log)
    assert run.status == "success" and run.evals and run.evals[0][0] == 4 * 16
    assert run.params["max_sequence_length"] == 32 and run.params["eval_samples"] == 32
    assert run.params["init_checkpoint_step"] == 0

    ok, output = check_compliance(log)
    assert not ok, output
    expected = set(SCALE_KEYS) | ({"eval_accuracy"} if min(v for _, v in run.evals) > 5.6 else set())
    assert failing_keys(output) == expected, output[-3000:]
