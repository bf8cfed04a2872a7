"""Model FLOPs (and so MFU) with packed documents: with --reset-attention-mask a token attends to its
own document only, so the logged model FLOPs count each document's causal attention."""

import json
import subprocess
import sys

import pytest

from megatron.arguments import parse_args
from megatron.data.mock import MockGPTDataset
from megatron.training import metrics
from tests.launch import ROOT, TINY_LLAMA, TRAIN, env, train_records


def _square_sum(tokens, eod):
    """Documents' squared lengths in one input sequence, counted by hand (eod ends its document)."""
    total, run = 0, 0
    for t in tokens:
        run += 1
        if t == eod:
            total, run = total + run * run, 0
    return total + run * run


def _logged_flops(record, nproc):
    return record["model_tflops"] * 1e12 * record["step_time_s"] * nproc


def test_mock_documents_flops_match_a_hand_count(tmp_path):
    base = TINY_LLAMA + TRAIN + ["--train-iters", "2", "--zero-stage", "1", "--mock-document-length", "12"]
    args = base + ["--reset-attention-mask", "--attention-backend", "sdpa"]
    cfg = parse_args(args)
    seq, gbs, eod = cfg.model.seq_length, cfg.train.global_batch_size, cfg.model.vocab_size - 1
    ds = MockGPTDataset(seq, cfg.model.vocab_size, cfg.train.seed, document_length=12)
    records = train_records(tmp_path, "flops", 1, args)
    for it, rec in enumerate(records):
        square_sum = sum(_square_sum(ds[j]["tokens"][:-1].tolist(), eod) for j in range(it * gbs, (it + 1) * gbs))
        assert square_sum < gbs * seq * seq
        expected = metrics.model_flops(cfg.model, gbs * seq, square_sum)
        assert _logged_flops(rec, 1) == pytest.approx(expected, rel=1e-9), it


def _window_pairs(tokens, eod, window):
    """(query, key) pairs one input sequence attends under a sliding window within its documents, by hand."""
    total, pos = 0, 0
    for t in tokens:
        total += min(pos + 1, window)
        pos = 0 if t == eod else pos + 1
    return total


def test_mock_documents_with_a_sliding_window_count_the_pairs_attended(tmp_path):
    """A window shorter than the documents: each layer's attention FLOPs are 12 x heads x head dim per pair that
    the window leaves inside a document, counted exactly (not bounded by the whole sequences' pairs)."""
    args = TINY_LLAMA + TRAIN + ["--train-iters", "2", "--zero-stage", "1", "--mock-document-length", "12",
                                 "--reset-attention-mask", "--sliding-window", "5"]  # fmt: skip
    cfg = parse_args(args)
    seq, gbs, eod = cfg.model.seq_length, cfg.train.global_batch_size, cfg.model.vocab_size - 1
    ds = MockGPTDataset(seq, cfg.model.vocab_size, cfg.train.seed, document_length=12)
    records = train_records(tmp_path, "window", 1, args)
    width = cfg.model.num_attention_heads * cfg.model.head_dim
    assert len(records) == 2
    for it, rec in enumerate(records):
        pairs = sum(_window_pairs(ds[j]["tokens"][:-1].tolist(), eod, 5) for j in range(it * gbs, (it + 1) * gbs))
        assert pairs < gbs * metrics.attended_pairs(seq, 5)  # the documents cut pairs off the window
        expected = metrics.model_flops_per_token(cfg.model, 0) * gbs * seq + cfg.model.num_layers * 12 * width * pairs
        assert _logged_flops(rec, 1) == pytest.approx(expected, rel=1e-9), it


def test_corpus_documents_flops_agree_between_one_and_two_data_parallel_ranks(tmp_path):
    """Documents of varied lengths: each data-parallel rank holds different ones, so the global figure
    needs every rank's count; one rank and two ranks train on the same global batches."""
    docs = tmp_path / "docs.jsonl"
    with docs.open("w") as f:
        for i in range(300):
            f.write(json.dumps({"text": " ".join(str((i + j) % 100) for j in range(3 + (i * 37) % 70))}) + "\n")
    subprocess.run(
        [sys.executable, str(ROOT / "tools/preprocess_data.py"), "--input", str(docs), "--output-prefix",
         str(tmp_path / "null"), "--tokenizer-type", "NullTokenizer", "--vocab-size", "128", "--append-eod"],
        check=True, env=env(), capture_output=True,
    )  # fmt: skip
    args = TINY_LLAMA + [
        "--data-path", str(tmp_path / "null_text_document"), "--tokenizer-type", "NullTokenizer", "--split", "100,0,0",
        "--micro-batch-size", "1", "--global-batch-size", "4", "--train-iters", "3", "--lr", "3e-3",
        "--log-interval", "1", "--seed", "7", "--num-workers", "0", "--zero-stage", "1",
        "--reset-attention-mask", "--attention-backend", "sdpa",
    ]  # fmt: skip
    one = [_logged_flops(r, 1) for r in train_records(tmp_path, "dp1", 1, args)]
    two = [_logged_flops(r, 2) for r in train_records(tmp_path, "dp2", 2, args)]
    dense = [_logged_flops(r, 1) for r in train_records(tmp_path, "dense", 1, args[:-3] + args[-2:])]
    assert len(one) == len(two) == len(dense) == 3
    assert two == pytest.approx(one, rel=1e-9)
    assert all(f < d for f, d in zip(one, dense)) and len({round(f) for f in one}) == 3, (one, dense)
    assert len({round(d) for d in dense}) == 1
