"""Packaged tokenizers: the files jobs read are the packages' own (Mixtral's copied, Llama 3's converted to give
Meta's ids), written atomically and only when missing or changed, with an error that names the package."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from orchestrator.data import sample
from orchestrator.data.packaged_tokenizers import PackagedTokenizerError, is_packaged, materialise


@pytest.fixture(scope="module")
def llama3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialise("llama-models:llama3", tmp_path_factory.mktemp("tokenizers"))


def test_references_that_name_a_package_are_packaged() -> None:
    assert is_packaged("mistral-common:tokenizer.model.v1")
    assert is_packaged("llama-models:llama3") and is_packaged("llama-models:llama3.1")
    for other in (
        "meta-llama/Meta-Llama-3-8B",
        "/abs/tokenizer.model",
        "llama-models:llama2",
        "mistral-common:",
        "x:y",
    ):
        assert not is_packaged(other)


def test_mixtral_v1_is_the_packaged_file_copied_once(tmp_path: Path) -> None:
    import mistral_common

    shipped = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    path = materialise("mistral-common:tokenizer.model.v1", tmp_path)
    assert path == tmp_path / "tokenizer.model.v1" and path.read_bytes() == shipped.read_bytes()
    written = path.stat().st_mtime_ns
    assert materialise("mistral-common:tokenizer.model.v1", tmp_path) == path
    assert path.stat().st_mtime_ns == written  # present with the same checksum: left alone
    path.write_bytes(b"truncated")
    materialise("mistral-common:tokenizer.model.v1", tmp_path)
    assert path.read_bytes() == shipped.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.model.v1"]  # no temporaries left


def test_llama3_folder_gives_metas_ids_on_real_text(llama3: Path) -> None:
    """The converted Hugging Face tokenizer against Meta's own (tiktoken over the same ranks), on the sample corpus."""
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(llama3))
    meta = MetaTokenizer(_llama_models_file())
    texts = [r["text"] for r in sample.documents(random.Random("llama3"), 300)]
    texts += [
        "",
        " ",
        "a  b\n\n c",
        "héllo wörld — “quoted” …",
        "日本語のテキスト",
        "emoji 🙂 ok",
        "x" * 3000,
        "1234567",
    ]
    assert [hf.encode(t, add_special_tokens=False) for t in texts] == [
        meta.encode(t, bos=False, eos=False) for t in texts
    ]
    assert (len(hf), hf.bos_token_id, hf.eos_token_id) == (128256, 128000, 128001)
    assert hf("hello world").input_ids == [128000, 15339, 1917]  # BOS from the post-processor, as Meta's folders


def test_llama3_and_31_differ_only_in_the_names_of_special_tokens(llama3: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    v3 = AutoTokenizer.from_pretrained(str(llama3))
    v31 = AutoTokenizer.from_pretrained(str(materialise("llama-models:llama3.1", tmp_path)))
    assert v3.get_vocab().keys() - v31.get_vocab().keys() == {
        f"<|reserved_special_token_{i}|>" for i in (248, 249, 250)
    }
    assert v31.get_vocab().keys() - v3.get_vocab().keys() == {
        "<|finetune_right_pad_id|>",
        "<|eom_id|>",
        "<|python_tag|>",
    }
    assert v3.convert_ids_to_tokens([128004, 128008, 128010]) == [
        "<|reserved_special_token_2|>",
        "<|reserved_special_token_4|>",
        "<|reserved_special_token_5|>",
    ]
    assert v31.convert_ids_to_tokens([128004, 128008, 128010]) == [
        "<|finetune_right_pad_id|>",
        "<|eom_id|>",
        "<|python_tag|>",
    ]
    text = "plain prose\nwith lines, digits 2024 and <|eot_id|>; then <|eom_id|>."
    ids3, ids31 = v3.encode(text, add_special_tokens=False), v31.encode(text, add_special_tokens=False)
    assert 128009 in ids3 and 128009 in ids31  # <|eot_id|> is special in both
    assert 128008 in ids31 and 128008 not in ids3  # <|eom_id|> is special only in 3.1; in 3 it is ordinary text
    plain = "plain prose\nwith lines, digits 2024."
    assert v3.encode(plain, add_special_tokens=False) == v31.encode(plain, add_special_tokens=False)


def test_llama3_folder_is_rebuilt_only_when_its_checksums_differ(llama3: Path) -> None:
    stamp = {p.name: p.stat().st_mtime_ns for p in llama3.iterdir()}
    assert materialise("llama-models:llama3", llama3.parent) == llama3
    assert {p.name: p.stat().st_mtime_ns for p in llama3.iterdir()} == stamp  # current: left alone
    (llama3 / "tokenizer.json").write_text("{}")
    materialise("llama-models:llama3", llama3.parent)
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(str(llama3))) == 128256
    assert not [p for p in llama3.parent.iterdir() if p.name.startswith(".")]  # the old folder and staging are gone


def test_a_missing_package_is_named_with_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_models", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(PackagedTokenizerError, match="needs the llama-models package.*pip install llama-models"):
        materialise("llama-models:llama3", tmp_path)
    assert not list(tmp_path.iterdir())
    with pytest.raises(PackagedTokenizerError, match="unknown packaged tokenizer"):
        materialise("llama-models:llama2", tmp_path)


def _llama_models_file() -> Path:
    import llama_models

    return Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
