"""``{prefix}.meta``: the tokenizer that made a pair, written by preprocessing, carried by a
merge, and beside a pair that Megatron's readers still read; empty or failed preprocessing leaves
nothing behind."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from megatron.data.dataset_info import check_tokenizer, read_info
from megatron.data.errors import DataError
from megatron.data.indexed_dataset import MMapIndexedDataset
from megatron.tokenizer import create_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _preprocess(tmp_path, name, vocab, lines=None):
    inp = tmp_path / f"{name}.jsonl"
    inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in (lines or ["1 2 3", "4 5"])))
    out = tmp_path / "out" / name
    args = ["--input", str(inp), "--output-prefix", str(out), "--tokenizer-type", "NullTokenizer",
            "--vocab-size", str(vocab), "--log-interval", "0"]  # fmt: skip
    return _tool("preprocess_data").main(args), str(out) + "_text_document"


def test_preprocessing_records_the_tokenizer_beside_a_readable_pair(tmp_path):
    rc, prefix = _preprocess(tmp_path, "a", 100)
    assert rc == 0
    info = read_info(prefix)
    assert info["tokenizer"]["type"] == "NullTokenizer" and info["tokenizer"]["vocab_size"] == 101
    assert info["json_key"] == "text" and info["dtype"] == "uint16"
    assert [MMapIndexedDataset(prefix)[i].tolist() for i in range(2)] == [[1, 2, 3], [4, 5]]
    assert sorted(os.listdir(tmp_path / "out")) == ["a_text_document.bin", "a_text_document.idx",
                                                    "a_text_document.meta"]  # fmt: skip
    check_tokenizer([prefix], create_tokenizer("NullTokenizer", vocab_size=100))
    with pytest.raises(DataError, match="tokenized by a tokenizer: NullTokenizer \\(vocabulary 101\\)"):
        check_tokenizer([prefix], create_tokenizer("NullTokenizer", vocab_size=1000))


def test_merge_carries_the_tokenizer_and_refuses_two(tmp_path, capsys):
    merge = _tool("merge_datasets")
    _, a = _preprocess(tmp_path, "a", 100)
    _, b = _preprocess(tmp_path, "b", 100)
    _, c = _preprocess(tmp_path, "c", 200)
    assert merge.main(["--input", a, b, "--output-prefix", str(tmp_path / "ab")]) == 0
    assert read_info(str(tmp_path / "ab"))["tokenizer"] == read_info(a)["tokenizer"]
    assert merge.main(["--input", a, c, "--output-prefix", str(tmp_path / "ac")]) == 1
    assert "were tokenized by different tokenizers" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "ac.idx")


def test_input_without_documents_is_an_error_and_leaves_nothing(tmp_path, capsys):
    rc, _ = _preprocess(tmp_path, "empty", 100, lines=["", ""])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no documents (2 empty" in err[0] and "--json-keys text" in err[0]
    assert not os.path.exists(tmp_path / "out")  # the folder the run created is gone too


def test_failed_run_removes_only_the_folders_it_created(tmp_path):
    (tmp_path / "keep").mkdir()
    inp = tmp_path / "bad.jsonl"
    inp.write_text("not json\n")
    args = ["--input", str(inp), "--output-prefix", str(tmp_path / "keep" / "new" / "deeper" / "o"),
            "--tokenizer-type", "NullTokenizer", "--vocab-size", "5", "--log-interval", "0"]  # fmt: skip
    assert _tool("preprocess_data").main(args) == 1
    assert os.listdir(tmp_path / "keep") == []
