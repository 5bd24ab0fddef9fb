"""C4 consolidation: MLPerf's grouping, errors by shard name before anything is done, resume after interruption."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from argparse import ArgumentParser
from pathlib import Path

import pytest

from orchestrator.data import consolidate, sample
from orchestrator.data.consolidate import ConsolidationError, shard_name

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "consolidate_data.sh"


def make_shards(folder: Path, train: list[int], validation: tuple[int, ...] = (0,), docs: int = 30) -> Path:
    """Small C4-layout shards; each document names its shard and line so outputs can be checked line by line."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, indices in (("train", train), ("validation", validation)):
        for index in indices:
            records = [
                {"text": f"{split} shard {index} line {line}", "timestamp": "2019-04-25T12:57:54Z", "url": "u"}
                for line in range(docs)
            ]
            sample.write_shard(folder / shard_name(split, index), records)
    return folder


def lines_of(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in gzip.decompress(path.read_bytes()).decode().splitlines()]


def run(c4: Path, merged: Path, **kwargs: int) -> list[str]:
    the_plan = consolidate.consolidation(c4, merged, **kwargs)
    merged.mkdir(parents=True, exist_ok=True)
    return consolidate.run_all(the_plan, list(range(len(the_plan.units))), live_progress=False)


def test_train_shards_split_in_order_into_equal_groups(tmp_path: Path) -> None:
    c4 = make_shards(tmp_path / "c4", train=list(range(8)), validation=[0, 1])
    the_plan = consolidate.consolidation(c4, tmp_path / "merged", train_outputs=2, n_validation_samples=45)
    assert [u.output for u in the_plan.units] == [
        "c4-train.en_0.json.gz",
        "c4-train.en_1.json.gz",
        "c4-validation-45-samples.en.json.gz",
        "c4-validation.en.json.gz",
    ]
    assert the_plan.units[0].inputs == tuple(shard_name("train", i) for i in range(4))
    assert the_plan.units[1].inputs == tuple(shard_name("train", i) for i in range(4, 8))
    assert the_plan.units[2].head_lines == 45
    whole = consolidate.consolidation(c4, tmp_path / "merged", train_outputs=2, n_validation_samples=0)
    assert [u.output for u in whole.units[2:]] == ["c4-validation.en.json.gz"]  # unit 2: what training reads
    assert run(c4, tmp_path / "merged", train_outputs=2, n_validation_samples=45) == []
    merged = tmp_path / "merged"
    # bytes are concatenated, not recompressed
    assert (merged / "c4-train.en_1.json.gz").read_bytes() == b"".join(
        (c4 / n).read_bytes() for n in the_plan.units[1].inputs
    )
    assert lines_of(merged / "c4-train.en_1.json.gz")[30] == "train shard 5 line 0"
    assert (
        lines_of(merged / "c4-validation-45-samples.en.json.gz") == lines_of(merged / "c4-validation.en.json.gz")[:45]
    )
    manifest = json.loads((merged / ".consolidate" / "c4-train.en_0.json.gz.json").read_text())
    assert manifest["output"]["documents"] == 120 and [i["documents"] for i in manifest["inputs"]] == [30] * 4
    assert consolidate.is_complete(the_plan)


def test_mlperf_default_is_eight_outputs_of_128_shards(tmp_path: Path) -> None:
    c4 = tmp_path / "c4"
    c4.mkdir()
    for i in range(1024):
        (c4 / shard_name("train", i)).touch()
    for i in range(8):
        (c4 / shard_name("validation", i)).touch()
    the_plan = consolidate.consolidation(c4, tmp_path / "merged")
    assert [len(u.inputs) for u in the_plan.units[:8]] == [128] * 8
    assert the_plan.units[6].inputs[0] == "c4-train.00768-of-01024.json.gz"  # en_6 and en_7: MLPerf's training data
    assert the_plan.units[8].output == "c4-validation-91205-samples.en.json.gz" and not the_plan.notes


@pytest.mark.parametrize(
    "train, outputs, message",
    [
        ([0, 1, 3], 1, "missing 1 c4-train shard(s) inside 00000..00003: c4-train.00002-of-01024.json.gz"),
        ([0, 1, 2], 2, "do not split into TRAIN_OUTPUTS=2 equal groups; missing c4-train.00003-of-01024.json.gz"),
        ([], 2, "no c4-train.NNNNN-of-NNNNN.json.gz shards"),
    ],
)
def test_missing_shards_and_gaps_are_named_before_anything_is_written(
    tmp_path: Path, train: list[int], outputs: int, message: str
) -> None:
    c4 = make_shards(tmp_path / "c4", train=train)
    merged = tmp_path / "merged"
    with pytest.raises(ConsolidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        consolidate.consolidation(c4, merged, train_outputs=outputs)
    assert not merged.exists()


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "not gzip"])
def test_a_damaged_shard_fails_its_output_by_name_and_nothing_is_declared_done(tmp_path: Path, damage: str) -> None:
    c4 = make_shards(tmp_path / "c4", train=list(range(4)), docs=400)
    victim = c4 / shard_name("train", 2)
    data = bytearray(victim.read_bytes())
    if damage == "corrupt":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncated":
        del data[-100:]
    else:
        data[:] = b"plain text, not gzip\n" * 10
    victim.write_bytes(bytes(data))
    merged = tmp_path / "merged"
    errors = run(c4, merged, train_outputs=2, n_validation_samples=10)
    assert (
        len(errors) == 1
        and errors[0].startswith(f"{victim}: ")
        and "c4-train.en_1.json.gz was not written" in errors[0]
    )
    assert not (merged / "c4-train.en_1.json.gz").exists()
    assert not (merged / ".consolidate" / "c4-train.en_1.json.gz.json").exists()
    assert [p.name for p in merged.iterdir() if p.name.startswith(".c4")] == []  # no temporary left
    the_plan = consolidate.consolidation(c4, merged, train_outputs=2, n_validation_samples=10)
    assert not consolidate.is_complete(the_plan) and consolidate.unit_complete(the_plan, the_plan.units[0])


def test_resume_after_an_interrupted_run_redoes_only_the_partial_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c4 = make_shards(tmp_path / "c4", train=list(range(4)), docs=300)
    merged = tmp_path / "merged"
    merged.mkdir()
    the_plan = consolidate.consolidation(c4, merged, train_outputs=2, n_validation_samples=10)
    assert consolidate.run_unit(the_plan, 0) == "done"

    real = consolidate.gunzip_blocks

    def dies_mid_copy(path, on_raw=None, read_block=consolidate.gunzip_blocks.__defaults__[-1]):  # type: ignore[index]
        if path.name == shard_name("train", 3):
            raise KeyboardInterrupt  # the job is killed while en_1 is half written
        return real(path, on_raw, read_block)

    monkeypatch.setattr(consolidate, "gunzip_blocks", dies_mid_copy)
    with pytest.raises(KeyboardInterrupt):
        consolidate.run_unit(the_plan, 1)
    monkeypatch.setattr(consolidate, "gunzip_blocks", real)
    assert not (merged / "c4-train.en_1.json.gz").exists()
    (merged / ".c4-train.en_1.json.gz.tmp-4242-deadbeef").write_bytes(b"half")  # what a SIGKILL would leave

    en_0 = merged / "c4-train.en_0.json.gz"
    stamp = en_0.stat().st_mtime_ns
    states = {i: consolidate.run_unit(the_plan, i) for i in range(len(the_plan.units))}
    assert states == {0: "skipped", 1: "done", 2: "done", 3: "done"}
    assert en_0.stat().st_mtime_ns == stamp
    assert lines_of(merged / "c4-train.en_1.json.gz")[-1] == "train shard 3 line 299"
    assert not list(merged.glob(".c4-train.en_1.json.gz.tmp-*"))
    assert consolidate.is_complete(the_plan)

    os.utime(c4 / shard_name("train", 1), ns=(1, 1))  # an input changed since: its output is redone
    assert not consolidate.unit_complete(the_plan, the_plan.units[0])
    assert consolidate.run_unit(the_plan, 0) == "done" and consolidate.is_complete(the_plan)


def test_consolidate_data_sh_end_to_end_on_a_four_shard_real_text_corpus(tmp_path: Path) -> None:
    c4 = tmp_path / "c4"
    sample.build_corpus(c4, train_shards=4, validation_shards=1, docs_per_shard=60)
    merged = tmp_path / "merged"
    env = dict(os.environ, C4_PATH=str(c4), MERGED_C4_PATH=str(merged), TRAIN_OUTPUTS="2", PYTHON=sys.executable)
    env.pop("N_VALIDATION_SAMPLES", None)
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    shards = sorted(c4.glob("c4-train.*"))
    assert (merged / "c4-train.en_0.json.gz").read_bytes() == shards[0].read_bytes() + shards[1].read_bytes()
    assert (merged / "c4-train.en_1.json.gz").read_bytes() == shards[2].read_bytes() + shards[3].read_bytes()
    assert (merged / "c4-validation.en.json.gz").read_bytes() == (c4 / shard_name("validation", 0)).read_bytes()
    subset = merged / "c4-validation-91205-samples.en.json.gz"  # MLPerf's default N: only 60 documents exist
    assert lines_of(subset) == lines_of(merged / "c4-validation.en.json.gz")
    assert "has 60 documents" in done.stderr
    again = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and again.stderr.count(": skipped") == 4
    listing = subprocess.run(["bash", str(SCRIPT), "--count"], capture_output=True, text=True, env=env)
    assert listing.stdout.strip() == "4"


def test_consolidate_data_sh_requires_its_variables_and_passes_bash_n_and_shellcheck() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("C4_PATH", "MERGED_C4_PATH")}
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env)
    assert done.returncode != 0 and "C4_PATH" in done.stderr
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    lint = subprocess.run(["shellcheck", "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def test_a_pipeline_gets_the_plan_and_completeness_from_the_stage_argv(tmp_path: Path) -> None:
    c4 = make_shards(tmp_path / "c4", train=list(range(4)))
    parser = ArgumentParser()
    consolidate.add_arguments(parser)
    args = parser.parse_args(
        [
            "--c4-path",
            str(c4),
            "--merged-path",
            str(tmp_path / "m"),
            "--train-outputs",
            "2",
            "--n-validation-samples",
            "0",
        ]
    )
    the_plan = consolidate.config_from_args(args).resolve()
    assert len(the_plan.units) == 3 and not consolidate.is_complete(the_plan, [0, 2])
    assert run(c4, tmp_path / "m", train_outputs=2, n_validation_samples=0) == []
    assert consolidate.is_complete(the_plan, [0, 2]) and consolidate.is_complete(the_plan)


def test_task_index_makes_one_output(tmp_path: Path) -> None:
    c4 = make_shards(tmp_path / "c4", train=list(range(4)))
    merged = tmp_path / "merged"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.data.consolidate",
            "--c4-path",
            str(c4),
            "--merged-c4-path",
            str(merged),
            "--train-outputs",
            "2",
            "--task-index",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in merged.iterdir() if not p.name.startswith(".")) == ["c4-train.en_1.json.gz"]


def test_lines_that_are_not_documents_are_reported_by_shard_and_line_not_counted(tmp_path: Path, capsys) -> None:
    """Invalid JSON and a record without 'text' were counted as documents, found only later in the merged file."""
    c4 = make_shards(tmp_path / "c4", train=[0, 1], docs=10)
    shard = c4 / consolidate.shard_name("train", 1)
    lines = gzip.decompress(shard.read_bytes()).split(b"\n")
    lines[3] = b'{"text": "unterminated'
    lines[6] = b'{"url": "no text here"}'
    shard.write_bytes(gzip.compress(b"\n".join(lines)))
    assert run(c4, tmp_path / "merged", train_outputs=1) == []
    manifest = json.loads((tmp_path / "merged" / ".consolidate" / "c4-train.en_0.json.gz.json").read_text())
    assert manifest["output"]["documents"] == 2 * 10 - 2 and manifest["bad_records"] == 2
    name = consolidate.shard_name("train", 1)
    assert manifest["bad_examples"][0].startswith(f"{name}:4: invalid JSON")
    assert manifest["bad_examples"][1] == f"{name}:7: missing key 'text' (keys: url)"
    assert "c4-train.en_0.json.gz: 2 line(s) of its shards are not documents" in capsys.readouterr().err


def test_a_dangling_shard_link_is_one_line_naming_it(tmp_path: Path, capsys) -> None:
    """It was a FileNotFoundError traceback from consolidate_data.sh."""
    c4 = make_shards(tmp_path / "c4", train=[0, 1])
    link = c4 / consolidate.shard_name("train", 1)
    link.unlink()
    link.symlink_to(tmp_path / "gone.json.gz")
    argv = ["--c4-path", str(c4), "--merged-c4-path", str(tmp_path / "merged"), "--train-outputs", "1"]
    assert consolidate.main(argv) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"error: C4_PATH {c4}: {link.name} points to {tmp_path / 'gone.json.gz'}, which does not exist; "
        "fix the link or re-fetch the shard"
    )
