"""The native engine: ids equal SentencePiece's, outputs equal Megatron-LM's tool byte for byte, bad input stops."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import random
import shlex
import subprocess
import sys
from argparse import ArgumentParser
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
from conftest import nemo_python

from orchestrator.data import indexed, preprocess, preprocess_job, sample
from orchestrator.data.preprocess_job import PreprocessConfig, PreprocessError
from orchestrator.data.tokenizer import SentencePieceTokenizer, TokenizerSpec

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "fixtures" / "megatron"
EDGE_TEXTS = [
    "",
    " ",
    "  ",
    "a",
    " a",
    "a ",
    "a  b",
    "  a  b  ",
    "\n",
    "a\n b",
    "a \n b",
    "\t x\t",
    "x\u2581 y",
    "\u2581",
    "1234567 89",
    "héllo wörld — “quoted” …",
    "日本語のテキスト です",
    "emoji 🙂🙂 ok",
    "a\x00b c",
    "\r\n x \r",
    "   ",
    "x" * 5000,
    "end.\nNext line",
    "a\u00a0b c",
    "tab\tsep words",
    " leading",
    "trailing ",
    "multi   space   run",
    "<s> </s> <unk> [INST]",
    "\u3000 ideographic space",
    "x\x00  y",
    "a\x00 b",
    "a \x00b",
    "\n\nx",
    "x\n",
    "x\n\n",
    "a  \nb",
    "  \n  x",
    "\n ",
    "x \n\n y",
    "a\nb\nc d\ne",
    " \n",
    "\n",
]


def mixtral_v1() -> str:
    import mistral_common

    return str(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1")


@pytest.fixture(scope="module")
def real_texts() -> list[str]:
    return [r["text"] for r in sample.documents(random.Random("ids"), 1500)]


def write_jsonl(path: Path, records: list[object], compress: bool = False) -> Path:
    payload = "".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path


def config(tmp_path: Path, input_path: Path, **overrides: object) -> PreprocessConfig:
    fields: dict[str, object] = dict(
        input=input_path,
        output_prefix=str(tmp_path / "out" / "data"),
        tokenizer=TokenizerSpec("SentencePieceTokenizer", mixtral_v1()),
        workers=2,
        block_bytes=4096,  # many blocks, so order and merging are exercised
    )
    fields.update(overrides)
    return PreprocessConfig(**fields)  # type: ignore[arg-type]


def files_of(prefix: str) -> tuple[bytes, bytes]:
    return indexed.bin_path(prefix).read_bytes(), indexed.idx_path(prefix).read_bytes()


# --- ids ------------------------------------------------------------------------------------------------------


def test_ids_equal_sentencepiece_on_real_text_and_edge_cases(real_texts: list[str]) -> None:
    """The word cache is exact: id for id what encode_as_ids (Megatron's call) returns, on every document."""
    tokenizer = SentencePieceTokenizer(mixtral_v1())
    assert tokenizer.fast_path_blocker is None  # else this test would only compare SentencePiece with itself
    reference = sentencepiece.SentencePieceProcessor(model_file=mixtral_v1())
    texts = real_texts + EDGE_TEXTS
    expected = [reference.encode_as_ids(t) for t in texts]
    for _ in range(2):  # cold cache, then warm
        assert tokenizer.encode(texts) == expected
    assert tokenizer.hits > 10 * tokenizer.misses
    data, lengths = tokenizer.encode_documents(texts, append_eod=True)
    eod = reference.eos_id()
    assert lengths.tolist() == [len(ids) + 1 if ids else 0 for ids in expected]
    assert np.frombuffer(data, np.uint16).tolist() == [i for ids in expected for i in (ids + [eod] if ids else [])]


def test_ids_equal_sentencepiece_on_random_strings_of_the_characters_that_matter() -> None:
    """Spaces, newlines, the space symbol, NUL, digits, accents, emoji, in every order: the cache must not care."""
    tokenizer = SentencePieceTokenizer(mixtral_v1())
    reference = sentencepiece.SentencePieceProcessor(model_file=mixtral_v1())
    alphabet = [
        " ",
        " ",
        " ",
        "\n",
        "a",
        "b",
        "the",
        "ing",
        "\u2581",
        "\x00",
        "é",
        "1",
        "\t",
        "🙂",
        ".",
        "\r",
        "(",
        "日",
        "\x01",
    ]
    rng = random.Random(7)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(4000)]
    assert tokenizer.encode(texts) == [reference.encode_as_ids(t) for t in texts]


DIVERSE_TEXTS = [
    "Lincoln, Abraham (1809-1865), 16th President; see https://en.wikipedia.org/wiki/Abraham_Lincoln.",
    "Call +1 (555) 010-2030 or mail info@example.com before 2019-04-25T12:57:54Z: $1,299.99 (-15%)!",
    'Zo["o]l.), esp. Helix pomatia -- Bacon. [1913 Webster]\n\n   2. To renounce;\tto forswear...',
    "naïve café Ærø Øresund Straße İstanbul ıi ǅ Ω≈ç√ ∫˜µ≤≥÷ ½ ¼ ¾ № ™ © ® € £ ¥",
    "北京是中国的首都。東京は日本の首都です。서울은 한국의 수도입니다. Москва — столица России.",
    "combining e\u0301 a\u0308 n\u0303; zero width\u200bjoiner\u200d; bidi \u202eabc\u202c; bom \ufeff.",
    "control \x01\x02\x07\x08\x0b\x0c\x1b[31mred\x1b[0m \x7f end",
    "spaces:  two   three    four\u00a0nbsp\u3000ideographic \u2009thin\t\ttabs \r\n crlf  ",
    "12345678901234567890 3.14159265358979 0x1F600 1e-10 1,000,000 ½x² 2nd 3rd 4th 21st",
    "x" * 3000 + "1" + "y" * 3000 + " " + "ab12" * 700 + " " + "🙂" * 300 + " " + "-" * 2000,
    "",
    "a",
    "trailing run   ",
    "\n\n\n",
]


def test_ids_equal_sentencepiece_on_diverse_text_in_one_block() -> None:
    """Names, dates, URLs, digits, scripts, control characters, whitespace runs, very long words: all unseen at
    once (their SentencePiece calls are batched and cut back), then cached."""
    tokenizer = SentencePieceTokenizer(mixtral_v1())
    reference = sentencepiece.SentencePieceProcessor(model_file=mixtral_v1())
    texts = DIVERSE_TEXTS + EDGE_TEXTS + [t.upper() for t in DIVERSE_TEXTS]
    expected = [reference.encode_as_ids(t) for t in texts]
    assert tokenizer.encode(texts) == expected  # cold: one block of unseen words
    assert tokenizer.encode(texts[::-1]) == expected[::-1]  # warm
    assert [tokenizer.encode([t])[0] for t in texts] == expected  # one text at a time


def test_ids_equal_sentencepiece_when_the_cache_keeps_filling_up(real_texts: list[str]) -> None:
    """A cache too small for one block is emptied between blocks and the ids stay SentencePiece's."""
    tokenizer = SentencePieceTokenizer(mixtral_v1(), cache_entries=200)
    reference = sentencepiece.SentencePieceProcessor(model_file=mixtral_v1())
    texts = real_texts[:200] + DIVERSE_TEXTS
    for start in range(0, len(texts), 25):
        block = texts[start : start + 25]
        assert tokenizer.encode(block) == [reference.encode_as_ids(t) for t in block]


def test_ids_equal_sentencepiece_for_a_bpe_model_without_byte_fallback(tmp_path: Path, real_texts: list[str]) -> None:
    """Without byte fallback, a run of unknown characters is one unknown id, whose text is not known from the id:
    batches of unseen words that hold one are encoded word by word, and the ids stay SentencePiece's."""
    prefix = tmp_path / "m"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(real_texts[:300]),
        model_prefix=str(prefix),
        vocab_size=400,
        minloglevel=2,
        model_type="bpe",
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        byte_fallback=False,
    )
    tokenizer = SentencePieceTokenizer(f"{prefix}.model")
    assert tokenizer.fast_path_blocker is None
    reference = sentencepiece.SentencePieceProcessor(model_file=f"{prefix}.model")
    rng = random.Random(11)
    alphabet = [" ", "  ", "\n", "the", "e", "1", "7", "日本", "🙂", "é", "\x01", "Ω", ".", ",", "(", ")"]
    texts = (
        DIVERSE_TEXTS
        + EDGE_TEXTS
        + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(2000)]
    )
    assert tokenizer.encode(texts) == [reference.encode_as_ids(t) for t in texts]
    assert tokenizer.encode(texts) == [reference.encode_as_ids(t) for t in texts]


def test_mixtral_v1_is_the_32000_vocabulary_and_v3_shifts_every_ordinary_id_by_768() -> None:
    v1 = SentencePieceTokenizer(mixtral_v1())
    v3 = SentencePieceTokenizer(Path(mixtral_v1()).with_name("mistral_instruct_tokenizer_240323.model.v3"))
    assert (v1.vocab_size, v1.dtype, v1.eod) == (32000, np.dtype(np.uint16), 2)
    assert v3.vocab_size == 32768
    text = "Consolidated C4 shards are tokenized once."
    ids1, ids3 = v1.encode([text])[0], v3.encode([text])[0]
    assert [i + 768 for i in ids1] == ids3


@pytest.mark.parametrize(
    "trainer_flags, blocker",
    [
        ({"model_type": "unigram"}, "not a BPE model"),
        ({"model_type": "bpe", "normalization_rule_name": "nmt_nfkc"}, "normalizer"),
    ],
)
def test_the_word_cache_is_refused_where_it_could_differ(
    tmp_path: Path, real_texts: list[str], trainer_flags: dict, blocker: str
) -> None:
    """Models whose segmentation is not provably local are encoded whole by SentencePiece (and still exactly)."""
    prefix = tmp_path / "m"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(real_texts[:300]),
        model_prefix=str(prefix),
        vocab_size=300,
        minloglevel=2,
        **trainer_flags,
    )
    tokenizer = SentencePieceTokenizer(f"{prefix}.model")
    assert tokenizer.fast_path_blocker is not None and blocker in tokenizer.fast_path_blocker
    reference = sentencepiece.SentencePieceProcessor(model_file=f"{prefix}.model")
    assert tokenizer.encode(real_texts[:50] + EDGE_TEXTS) == [reference.encode(t) for t in real_texts[:50] + EDGE_TEXTS]


# --- outputs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant, append_eod", [("plain", False), ("eod", True)])
def test_output_is_byte_identical_to_megatron_preprocess_data(tmp_path: Path, variant: str, append_eod: bool) -> None:
    """Goldens written by Megatron-LM's own tools/preprocess_data.py (tests/fixtures/megatron/README.md)."""
    cfg = config(tmp_path, GOLDEN / "input.jsonl", append_eod=append_eod)
    manifest = preprocess.preprocess(cfg, live_progress=False)
    assert files_of(cfg.output("text")) == files_of(str(GOLDEN / f"mlperf-{variant}_text_document"))
    assert manifest["outputs"]["text"]["documents"] == 160 and manifest["outputs"]["text"]["sequences"] == 159


def test_workers_and_blocks_do_not_change_the_bytes_and_gzip_input_equals_plain(
    tmp_path: Path, real_texts: list[str]
) -> None:
    records = [{"text": t, "url": f"u{i}"} for i, t in enumerate(real_texts[:400])]
    plain = write_jsonl(tmp_path / "in.jsonl", records)
    packed = write_jsonl(tmp_path / "in.json.gz", records, compress=True)
    one = config(tmp_path / "one", plain, workers=1, block_bytes=1 << 20)
    two = config(tmp_path / "two", packed, workers=2, block_bytes=3000)
    preprocess.preprocess(one, live_progress=False)
    preprocess.preprocess(two, live_progress=False)
    assert files_of(one.output("text")) == files_of(two.output("text"))
    dataset = indexed.IndexedDataset(two.output("text"))
    reference = sentencepiece.SentencePieceProcessor(model_file=mixtral_v1())
    assert [dataset[i].tolist() for i in (0, 199, 399)] == [reference.encode(real_texts[i]) for i in (0, 199, 399)]


def test_several_json_keys_write_one_dataset_each(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl", [{"text": "first body", "title": "A title"}, {"text": "second", "title": "B"}]
    )
    cfg = config(tmp_path, path, json_keys=("text", "title"))
    preprocess.preprocess(cfg, live_progress=False)
    reference = sentencepiece.SentencePieceProcessor(model_file=mixtral_v1())
    titles = indexed.IndexedDataset(cfg.output("title"))
    assert [titles[i].tolist() for i in range(2)] == [reference.encode("A title"), reference.encode("B")]


# --- bad input ------------------------------------------------------------------------------------------------


BAD_LINES = {
    "invalid JSON": (b'{"text": "unterminated\n', "invalid JSON"),
    "missing key": (b'{"body": "no text key"}\n', "missing key 'text'"),
    "invalid UTF-8": (b'{"text": "caf\xe9"}\n', "invalid UTF-8"),
    "not a string": (b'{"text": 42}\n', "'text' is a int, expected a string"),
    "lone surrogate": (b'{"text": "x \\ud800 y"}\n', "lone surrogate"),
    "empty line": (b"\n", "empty line"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_a_bad_record_stops_with_file_and_line_and_publishes_nothing(tmp_path: Path, case: str) -> None:
    good = b"".join(json.dumps({"text": f"document {i}"}).encode() + b"\n" for i in range(40))
    bad, reason = BAD_LINES[case]
    path = tmp_path / "in.jsonl"
    path.write_bytes(good + bad + good)
    cfg = config(tmp_path, path, block_bytes=256)
    with pytest.raises(PreprocessError) as error:
        preprocess.preprocess(cfg, live_progress=False)
    assert f"{path}:41: " in str(error.value) and reason in str(error.value)
    out = Path(cfg.output_prefix).parent
    assert list(out.iterdir()) == [cfg.lock_path]  # no .bin, .idx, manifest or partial files


def test_skip_mode_leaves_bad_records_out_and_counts_them(tmp_path: Path) -> None:
    lines = [b'{"text": "kept one"}\n'] + [BAD_LINES[c][0] for c in sorted(BAD_LINES)] + [b'{"text": "kept two"}\n']
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(lines))
    cfg = config(tmp_path, path, on_bad_record="skip")
    manifest = preprocess.preprocess(cfg, live_progress=False)
    assert manifest["bad_records"] == len(BAD_LINES) and manifest["documents"] == 2
    assert manifest["bad_examples"][0].startswith(f"{path}:2: ")
    reference = sentencepiece.SentencePieceProcessor(model_file=mixtral_v1())
    dataset = indexed.IndexedDataset(cfg.output("text"))
    assert [dataset[0].tolist(), dataset[1].tolist()] == [reference.encode("kept one"), reference.encode("kept two")]


def test_a_truncated_gzip_input_is_an_error_naming_the_file(tmp_path: Path) -> None:
    packed = write_jsonl(tmp_path / "in.json.gz", [{"text": f"document {i}"} for i in range(500)], compress=True)
    packed.write_bytes(packed.read_bytes()[:-20])
    cfg = config(tmp_path, packed)
    with pytest.raises(PreprocessError, match="in.json.gz: truncated"):
        preprocess.preprocess(cfg, live_progress=False)
    assert not cfg.manifest_path.exists() and not indexed.exists(cfg.output("text"))


# --- completion -----------------------------------------------------------------------------------------------


def test_the_manifest_makes_a_rerun_skip_and_a_changed_job_redo(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": f"document number {i}"} for i in range(50)])
    cfg = config(tmp_path, path)
    assert not preprocess_job.is_complete(cfg)
    first = preprocess.preprocess(cfg, live_progress=False)
    assert preprocess_job.is_complete(cfg)
    argv = [
        "--input",
        path,
        "--output-prefix",
        cfg.output_prefix,
        "--tokenizer-type",
        "SentencePieceTokenizer",
        "--tokenizer-model",
        mixtral_v1(),
        "--workers",
        "7",
    ]
    assert preprocess_job.is_complete(preprocess_job.config_from_argv(argv))  # what a pipeline asks of a stage's argv
    assert not preprocess_job.is_complete(preprocess_job.config_from_argv([*argv, "--append-eod"]))
    assert first["input"]["sha256"].startswith("sha256:") and first["tokenizer"]["vocab_size"] == 32000
    bin_file = indexed.bin_path(cfg.output("text"))
    stamp = bin_file.stat().st_mtime_ns
    preprocess.preprocess(cfg, live_progress=False)
    assert bin_file.stat().st_mtime_ns == stamp  # skipped
    with_eod = config(tmp_path, path, append_eod=True)
    assert not preprocess_job.is_complete(with_eod)  # other flags: the outputs on disk are not this job's
    preprocess.preprocess(with_eod, live_progress=False)
    assert preprocess_job.is_complete(with_eod) and not preprocess_job.is_complete(cfg)
    path.write_text(path.read_text() + json.dumps({"text": "one more"}) + "\n")
    assert not preprocess_job.is_complete(with_eod)  # the input changed
    bin_file.write_bytes(b"")
    assert not preprocess_job.is_complete(config(tmp_path, path, append_eod=True))


def test_a_rerun_after_a_kill_removes_what_the_killed_run_left(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "some text"}])
    cfg = config(tmp_path, path)
    out = Path(cfg.output_prefix).parent
    out.mkdir(parents=True)
    (out / ".data.partial-k1ll3d").mkdir()
    (out / ".data.partial-k1ll3d" / "worker-1-0.bin").write_bytes(b"\0" * 10)
    (out / ".data_text_document.bin.tmp-77-abcd").write_bytes(b"\0" * 10)
    preprocess.preprocess(cfg, live_progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        ".data.lock",
        "data.manifest.json",
        "data_text_document.bin",
        "data_text_document.idx",
    ]


# --- command line ---------------------------------------------------------------------------------------------


def parse(*argv: str):
    parser = ArgumentParser()
    preprocess_job.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_nemo_engine_prints_mlperfs_reference_command(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(
        "--input",
        "/dataset/c4-train.en_6.json.gz",
        "--output-prefix",
        "/outputs/c4-train.en_6",
        "--tokenizer-type",
        "HuggingFaceTokenizer",
        "--tokenizer-model",
        "/tokenizer",
        "--workers",
        "128",
        "--engine",
        "nemo",
    )
    assert preprocess.run(args) == 0
    argv = shlex.split(capsys.readouterr().out)
    assert argv == [
        "python3",
        preprocess.NEMO_SCRIPT,
        "--input",
        "/dataset/c4-train.en_6.json.gz",
        "--output-prefix",
        "/outputs/c4-train.en_6",
        "--json-keys",
        "text",
        "--dataset-impl",
        "mmap",
        "--workers",
        "128",
        "--tokenizer-library",
        "huggingface",
        "--tokenizer-type",
        "/tokenizer",
    ]


def test_the_command_line_runs_standalone_with_megatrons_flags(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello world"}])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.data.preprocess",
            "--input",
            str(path),
            "--output-prefix",
            str(tmp_path / "p"),
            "--tokenizer-type",
            "SentencePieceTokenizer",
            "--tokenizer-model",
            mixtral_v1(),
            "--workers",
            "1",
            "--append-eod",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert done.returncode == 0, done.stderr
    assert "1 documents" in done.stderr and "docs/s" in done.stderr and "tokens/s" in done.stderr
    reference = sentencepiece.SentencePieceProcessor(model_file=mixtral_v1())
    assert indexed.IndexedDataset(tmp_path / "p_text_document")[0].tolist() == reference.encode("hello world") + [2]


# --- the MLPerf / NeMo path -----------------------------------------------------------------------------------

HF_CHECK = r"""
import json, sys
from array import array
from pathlib import Path
from transformers import AutoTokenizer
import sentencepiece
from orchestrator.data.tokenizer import HuggingFaceTokenizer
model, folder, texts_file = sys.argv[1:4]
texts = json.loads(Path(texts_file).read_text())
folder = Path(folder); folder.mkdir(exist_ok=True)
(folder / "tokenizer.model").write_bytes(Path(model).read_bytes())
special = {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
           for i, c in enumerate(["<unk>", "<s>", "</s>"])}
(folder / "tokenizer_config.json").write_text(json.dumps({
    "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": True,
    "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "added_tokens_decoder": special}))
sp = sentencepiece.SentencePieceProcessor(model_file=model)
slow = AutoTokenizer.from_pretrained(str(folder), use_fast=False)
nemo_ids = [slow.convert_tokens_to_ids(slow.tokenize(t)) for t in texts]  # NeMo's AutoTokenizer.text_to_ids
ours = HuggingFaceTokenizer(str(folder), use_fast=False, include_special_tokens=False)
megatron_default = HuggingFaceTokenizer(str(folder), use_fast=False, include_special_tokens=True)
print(json.dumps({
    "class": type(slow).__name__,
    "differ": [i for i, t in enumerate(texts) if nemo_ids[i] != sp.encode(t)],
    "route": ours.sentencepiece_route,
    "ours_equal_nemo": ours.encode(texts) == nemo_ids,
    "documents_equal_nemo": ours.encode_documents(texts, False)[0] == b"".join(bytes(array("H", i)) for i in nemo_ids),
    "megatron_default_is_bos_plus": megatron_default.encode(texts[:20]) == [[1] + sp.encode(t) for t in texts[:20]],
    "vocab_size": ours.vocab_size, "eod": ours.eod,
}))
"""


@pytest.mark.nemo
def test_mlperf_nemo_path_ids_equal_sentencepiece_except_literal_special_tokens(
    tmp_path: Path, real_texts: list[str]
) -> None:
    """MLPerf tokenizes with NeMo: the slow Hugging Face LlamaTokenizer over the Mixtral folder, no BOS.

    On real text it gives SentencePiece's ids; it differs only where the text spells a special token (``</s>``),
    which the Hugging Face tokenizer turns into the control id. Our HuggingFaceTokenizer with NeMo's semantics takes
    the SentencePiece route for all other texts and gives NeMo's ids for all of them.
    """
    python = nemo_python()
    if python is None:
        pytest.skip("needs an interpreter with transformers (ORCHESTRATOR_NEMO_PYTHON)")
    texts = real_texts + EDGE_TEXTS
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(texts))
    done = subprocess.run(
        [python, "-c", HF_CHECK, mixtral_v1(), str(tmp_path / "tok"), str(texts_file)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["class"] == "LlamaTokenizer"
    assert [texts[i] for i in result["differ"]] == ["<s> </s> <unk> [INST]"]
    assert result["route"] and result["ours_equal_nemo"] and result["documents_equal_nemo"]  # fast and still NeMo's
    assert result["megatron_default_is_bos_plus"]
    assert (result["vocab_size"], result["eod"]) == (32000, 2)


# --- seeds 000/001: Llama 3's tokenizer through NeMo's tool -------------------------------------------------------

NEMO_TOOL = r"""
import json, sys
import numpy, torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from nemo.collections.nlp.modules.common.tokenizer_utils import get_nmt_tokenizer
folder, input_path, prefix = sys.argv[1:4]
# preprocess_data_for_megatron.py --tokenizer-library huggingface --tokenizer-type FOLDER [--append-eod]: its
# get_tokenizer(args) (use_fast=False without --use-fast), text_to_ids per document, eos_id after a non-empty one,
# documents without tokens left out, make_builder(..., vocab_size) -> uint16 below 65500 else int32. NeMo's own
# builder module is not in the 2.5.3 wheel; megatron-core's writes the same .bin/.idx format (same header, dtype
# codes, lengths, pointers and document index).
tok = get_nmt_tokenizer(library="huggingface", model_name=folder, tokenizer_model=None, vocab_file=None,
                        merges_file=None, delimiter=None, use_fast=False)
for variant, append_eod in (("plain", False), ("eod", True)):
    builder = IndexedDatasetBuilder(f"{prefix}-{variant}.bin", dtype=numpy.uint16 if tok.vocab_size < 65500 else numpy.int32)
    with open(input_path, encoding="utf-8") as lines:
        for line in lines:
            ids = tok.text_to_ids(json.loads(line)["text"])
            if ids:
                builder.add_item(torch.IntTensor(ids + [tok.eos_id] if append_eod else ids))
                builder.end_document()
    builder.finalize(f"{prefix}-{variant}.idx")
print(json.dumps({"class": type(tok.tokenizer).__name__, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id}))
"""


@pytest.mark.nemo
def test_llama3_data_path_is_byte_identical_to_nemos_tool(tmp_path: Path) -> None:
    """Seeds 000/001 tokenize with NeMo's preprocess_data_for_megatron.py over Llama 3's Hugging Face tokenizer.
    The preprocess stage's own flags for that tokenizer (the folder made from llama-models' tokenizer.model) write
    the same bytes on the sample corpus, with and without --append-eod, texts that spell special tokens included
    (they become the special ids in both)."""
    from orchestrator.data.packaged_tokenizers import materialise
    from orchestrator.plan import build_plan
    from orchestrator.stages import preprocess_configs

    python = nemo_python()
    if python is None:
        pytest.skip("needs an interpreter with the NeMo stack (ORCHESTRATOR_NEMO_PYTHON)")
    folder = materialise("llama-models:llama3", tmp_path / "tokenizers")
    records = sample.documents(random.Random("seed-000"), 400)
    records += [{"text": t} for t in ("<|begin_of_text|>x<|end_of_text|>", "a <|eot_id|> b", " ", "\n\n", "日本語 🙂")]
    corpus = write_jsonl(tmp_path / "c4-train.en_0.json", records)
    plan = build_plan("llama3_8b", "h100-pyxis", {"model.tokenizer.model": str(folder)}, run_dir=tmp_path / "plan")
    stage_job = preprocess_configs(plan)[0]  # the preprocess stage's own job for this tokenizer
    flags = stage_job.to_argv()
    assert flags[4:12] == [
        "--json-keys",
        "text",
        "--tokenizer-type",
        "HuggingFaceTokenizer",
        "--tokenizer-model",
        str(folder),
        "--tokenizer-hf-no-use-fast",
        "--tokenizer-hf-no-include-special-tokens",
    ]
    nemo = str(tmp_path / "nemo" / "c4")
    (tmp_path / "nemo").mkdir()
    done = subprocess.run(
        [python, "-c", NEMO_TOOL, str(folder), str(corpus), nemo],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "class": "PreTrainedTokenizerFast",
        "vocab_size": 128256,
        "eos_id": 128001,
    }
    for variant, eod in (("plain", []), ("eod", ["--append-eod"])):
        ours = str(tmp_path / "ours" / variant)
        job = dataclasses.replace(stage_job, input=corpus, output_prefix=ours, workers=2, append_eod=bool(eod))
        argv = job.to_argv()
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", "preprocess", *argv],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert files_of(ours + "_text_document") == files_of(f"{nemo}-{variant}"), variant
    dataset = indexed.IndexedDataset(f"{nemo}-eod")
    assert dataset.dtype == np.int32 and len(dataset) == len(records)
    assert dataset[len(records) - 4].tolist() == [64, 220, 128009, 293, 128001]  # "a", " ", <|eot_id|>, " b", EOD


# --- shared outputs and stale or damaged files -------------------------------------------------------------------


def test_a_second_writer_waits_for_the_first_instead_of_deleting_its_files(tmp_path: Path, capfd) -> None:
    """Two jobs on one prefix: the second once deleted the first's temporaries ("error: 2"); now it waits for the
    lock, then finds the output complete."""
    import threading

    from orchestrator.atomic import locked

    path = write_jsonl(tmp_path / "in.jsonl", [{"text": f"document {i}"} for i in range(50)])
    cfg = config(tmp_path, path, workers=1)
    out = Path(cfg.output_prefix).parent
    out.mkdir(parents=True)
    live = out / ".data_text_document.bin.tmp-1-live"  # the first writer's file, still being written
    results: list[dict] = []
    with locked(cfg.lock_path):  # the first writer, running
        live.write_bytes(b"\0" * 10)
        second = threading.Thread(target=lambda: results.append(preprocess.preprocess(cfg, live_progress=False)))
        second.start()
        second.join(timeout=3)
        assert second.is_alive() and live.exists(), "the second writer must wait, leaving the first one's files"
        live.unlink()  # the first writer publishes and releases
    second.join(timeout=60)
    assert results and preprocess_job.is_complete(cfg)
    assert "another preprocessing of this output is running; waiting" in capfd.readouterr().err


def test_an_index_damaged_at_the_same_size_is_not_complete(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": f"document number {i}"} for i in range(30)])
    cfg = config(tmp_path, path)
    preprocess.preprocess(cfg, live_progress=False)
    idx = indexed.idx_path(cfg.output("text"))
    data = bytearray(idx.read_bytes())
    pointers_at = indexed.HEADER_SIZE + 4 * 30  # after the 30 int32 lengths
    data[pointers_at + 8 : pointers_at + 16] = (10**6).to_bytes(8, "little")  # sequence 1 starts far away
    idx.write_bytes(bytes(data))  # same size: the manifest's size check alone passes
    assert not preprocess_job.is_complete(cfg)
    with pytest.raises(indexed.CorruptDataset, match=f"{idx}: sequence 1 starts at byte 1000000"):
        indexed.IndexedDataset(cfg.output("text"))


def test_a_failed_redo_leaves_no_old_dataset_that_looks_complete(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "old text"}] * 20)
    cfg = config(tmp_path, path)
    preprocess.preprocess(cfg, live_progress=False)
    path.write_bytes(path.read_bytes() + b'{"text": "unterminated\n')  # the new input has a bad record
    with pytest.raises(PreprocessError, match="in.jsonl:21"):
        preprocess.preprocess(cfg, live_progress=False)
    assert not preprocess_job.is_complete(cfg)
    assert not indexed.bin_path(cfg.output("text")).exists() and not indexed.idx_path(cfg.output("text")).exists()
