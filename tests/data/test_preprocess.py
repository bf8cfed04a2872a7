"""tools/preprocess_data.py: text -> tokens -> .bin/.idx -> tokens, workers, globs, bad input."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron.data.indexed_dataset import MMapIndexedDataset
from megatron.tokenizer import create_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("preprocess_data", os.path.join(ROOT, "tools", "preprocess_data.py"))
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def run(tmp_path, *args):
    return tool.main(["--log-interval", "0", *map(str, args)])


def tok_args(kind, gpt2_files, sp_model, hf_json):
    if kind == "GPT2BPETokenizer":
        return ["--vocab-file", gpt2_files[0], "--merge-file", gpt2_files[1]], dict(
            vocab_file=gpt2_files[0], merge_file=gpt2_files[1]
        )
    if kind == "NullTokenizer":
        return ["--vocab-size", "1000"], dict(vocab_size=1000)
    model = hf_json if kind == "HFTokenizer" else sp_model
    return ["--tokenizer-model", model], dict(tokenizer_model=model)


@pytest.mark.parametrize(
    "kind", ["GPT2BPETokenizer", "SentencePieceTokenizer", "GPTSentencePieceTokenizer", "HFTokenizer", "NullTokenizer"]
)
def test_round_trip_each_tokenizer(tmp_path, write_jsonl, kind, corpus_texts, gpt2_files, sp_model, request):
    hf_json = request.getfixturevalue("hf_tokenizer_json") if kind == "HFTokenizer" else None
    texts = corpus_texts[:50] if kind != "NullTokenizer" else [" ".join(map(str, range(i, i + 7))) for i in range(50)]
    inp = write_jsonl(tmp_path / "in.jsonl", texts)
    flags, kwargs = tok_args(kind, gpt2_files, sp_model, hf_json)
    assert (
        run(
            tmp_path,
            "--input",
            inp,
            "--output-prefix",
            tmp_path / "out",
            "--tokenizer-type",
            kind,
            "--append-eod",
            *flags,
        )
        == 0
    )
    tok = create_tokenizer(kind, **kwargs)
    ds = MMapIndexedDataset(str(tmp_path / "out_text_document"))
    assert ds.dtype == np.uint16 and len(ds) == len(texts)
    for i, text in enumerate(texts):
        ids = ds[i].tolist()
        assert ids[-1] == tok.eod and ids[:-1] == tok.tokenize(text)
        assert tok.detokenize(ids[:-1]) == text


def test_workers_gz_glob_and_keys(tmp_path, write_jsonl, corpus_texts, gpt2_files):
    docs = [json.dumps({"text": t, "title": t[:10]}) for t in corpus_texts]
    write_jsonl(tmp_path / "a.jsonl", docs[:200])
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(docs[200:]) + "\n")
    common = [
        "--tokenizer-type",
        "GPT2BPETokenizer",
        "--vocab-file",
        gpt2_files[0],
        "--merge-file",
        gpt2_files[1],
        "--json-keys",
        "text",
        "title",
        "--chunk-lines",
        "16",
    ]
    assert run(tmp_path, "--input", tmp_path / "*.json*", "--output-prefix", tmp_path / "w1", *common) == 0
    assert (
        run(tmp_path, "--input", tmp_path / "*.json*", "--output-prefix", tmp_path / "w2", "--workers", "2", *common)
        == 0
    )
    for key in ("text", "title"):
        for ext in (".bin", ".idx"):
            a = open(tmp_path / f"w1_{key}_document{ext}", "rb").read()
            assert a == open(tmp_path / f"w2_{key}_document{ext}", "rb").read()
    assert len(MMapIndexedDataset(str(tmp_path / "w1_text_document"))) == len(corpus_texts)


def test_malformed_line_fails_with_file_and_line(
    tmp_path, write_jsonl, gpt2_files, corpus_texts, capsys, no_stray_files
):
    lines = [json.dumps({"text": t}) for t in corpus_texts[:100]]
    lines[57] = '{"text": "unterminated'
    inp = write_jsonl(tmp_path / "bad.jsonl", lines)
    args = [
        "--input",
        inp,
        "--output-prefix",
        tmp_path / "out" / "o",
        "--tokenizer-type",
        "GPT2BPETokenizer",
        "--vocab-file",
        gpt2_files[0],
        "--merge-file",
        gpt2_files[1],
        "--chunk-lines",
        "8",
        "--workers",
        "2",
    ]
    assert run(tmp_path, *args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.jsonl:58: malformed JSON" in err and "--skip-malformed" in err
    assert no_stray_files(tmp_path / "out") == []  # nothing half-written
    assert run(tmp_path, *args, "--skip-malformed") == 0
    assert "skipped 1 malformed" in capsys.readouterr().out
    assert len(MMapIndexedDataset(str(tmp_path / "out" / "o_text_document"))) == 99


def test_missing_key_and_empty_documents(tmp_path, gpt2_files, capsys):
    inp = tmp_path / "k.jsonl"
    inp.write_text('{"text": "a b"}\n{"body": "x"}\n{"text": ""}\n\n{"text": "c"}\n')
    args = [
        "--input",
        inp,
        "--output-prefix",
        tmp_path / "o",
        "--tokenizer-type",
        "GPT2BPETokenizer",
        "--vocab-file",
        gpt2_files[0],
        "--merge-file",
        gpt2_files[1],
        "--append-eod",
    ]
    assert run(tmp_path, *args) == 1
    assert "k.jsonl:2: missing key 'text'" in capsys.readouterr().err
    assert run(tmp_path, *args, "--skip-malformed") == 0
    assert "skipped 1 malformed, 1 empty" in capsys.readouterr().out
    assert len(MMapIndexedDataset(str(tmp_path / "o_text_document"))) == 2  # the blank line is ignored


def test_bad_tokenizer_file_and_vocab_too_big_for_dtype(tmp_path, write_jsonl, gpt2_files, capsys, no_stray_files):
    inp = write_jsonl(tmp_path / "x.jsonl", ["hello"])
    assert (
        run(
            tmp_path,
            "--input",
            inp,
            "--output-prefix",
            tmp_path / "o" / "o",
            "--tokenizer-type",
            "SentencePieceTokenizer",
            "--tokenizer-model",
            tmp_path / "missing.model",
        )
        == 1
    )
    assert "missing.model does not exist" in capsys.readouterr().err
    assert (
        run(
            tmp_path,
            "--input",
            inp,
            "--output-prefix",
            tmp_path / "o" / "o",
            "--tokenizer-type",
            "GPT2BPETokenizer",
            "--vocab-file",
            gpt2_files[0],
            "--merge-file",
            gpt2_files[1],
            "--dtype",
            "uint8",
        )
        == 1
    )
    assert "does not fit uint8" in capsys.readouterr().err
    assert (
        run(
            tmp_path,
            "--input",
            tmp_path / "nothing*.jsonl",
            "--output-prefix",
            tmp_path / "o" / "o",
            "--tokenizer-type",
            "NullTokenizer",
            "--vocab-size",
            "5",
        )
        == 1
    )
    assert "matches no file" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o") or no_stray_files(tmp_path / "o") == []


def test_truncated_gzip_is_reported(tmp_path, write_jsonl, capsys):
    data = gzip.compress(("\n".join(json.dumps({"text": "1 2 3"}) for _ in range(2000)) + "\n").encode())
    (tmp_path / "t.jsonl.gz").write_bytes(data[: len(data) // 2])
    assert (
        run(
            tmp_path,
            "--input",
            tmp_path / "t.jsonl.gz",
            "--output-prefix",
            tmp_path / "o",
            "--tokenizer-type",
            "NullTokenizer",
            "--vocab-size",
            "5",
        )
        == 1
    )
    assert "truncated" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o_text_document.idx")


def test_cli_exit_code_and_one_line(tmp_path):
    inp = tmp_path / "x.jsonl"
    inp.write_text("not json\n")
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "preprocess_data.py"),
            "--input",
            str(inp),
            "--output-prefix",
            str(tmp_path / "o"),
            "--tokenizer-type",
            "NullTokenizer",
            "--vocab-size",
            "5",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "x.jsonl:1" in r.stderr


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupted_run_leaves_nothing(tmp_path, gpt2_files, corpus_texts, sig):
    import signal
    import time

    inp = tmp_path / "big.jsonl"
    with open(inp, "w") as f:
        for i in range(150000):
            f.write(json.dumps({"text": corpus_texts[i % len(corpus_texts)] + f" {i}"}) + "\n")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", str(inp),
         "--output-prefix", str(out / "o"), "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", gpt2_files[0],
         "--merge-file", gpt2_files[1], "--workers", "2", "--log-interval", "1000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 30
    while not (out.exists() and os.listdir(out)) and time.time() < deadline:  # wait until writing started
        time.sleep(0.05)
    try:
        os.killpg(proc.pid, getattr(signal, sig))  # like Ctrl-C / a scheduler's kill: the whole group
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # never leave a hung run behind
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and "interrupted" in err
    assert not out.exists()  # nothing written, and the folder the run created is gone
