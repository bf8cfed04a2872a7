"""tools/merge_datasets.py and tools/train_tokenizer.py."""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from megatron.data.indexed_dataset import MMapIndexedDataset
from megatron.tokenizer import create_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_merge_concatenates_documents(tmp_path, write_dataset, capsys):
    a = write_dataset(str(tmp_path / "in" / "a"), [3, 5], seed=1)
    b = write_dataset(str(tmp_path / "in" / "b"), [4], seed=2)
    merge = load("merge_datasets")
    assert merge.main(["--input", str(tmp_path / "in"), "--output-prefix", str(tmp_path / "ab")]) == 0
    ds = MMapIndexedDataset(str(tmp_path / "ab"))
    assert [ds[i].tolist() for i in range(3)] == [d.tolist() for d in a + b]
    assert ds.doc_idx.tolist() == [0, 1, 2, 3] and ds.pointers.tolist() == [0, 6, 16]
    write_dataset(str(tmp_path / "c"), [2], dtype=np.int32)
    assert (
        merge.main(["--input", str(tmp_path / "ab"), str(tmp_path / "c"), "--output-prefix", str(tmp_path / "x")]) == 1
    )
    assert "one dtype" in capsys.readouterr().err and not os.path.exists(tmp_path / "x.idx")


def test_train_tokenizer_from_jsonl(tmp_path, write_jsonl, corpus_texts):
    inp = write_jsonl(tmp_path / "t.jsonl", corpus_texts)
    train = load("train_tokenizer")
    assert (
        train.main(["--input", inp, "--output-prefix", str(tmp_path / "tok"), "--vocab-size", "300", "--threads", "1"])
        == 0
    )
    tok = create_tokenizer("GPTSentencePieceTokenizer", tokenizer_model=str(tmp_path / "tok.model"))
    assert tok.vocab_size == 300 and tok.detokenize(tok.tokenize(corpus_texts[0])) == corpus_texts[0]
