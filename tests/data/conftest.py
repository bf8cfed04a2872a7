"""Fixtures for the data tests: tiny tokenizers built on the fly (no downloads) and JSONL writers."""

from __future__ import annotations

import collections
import json
import os
import random

import numpy as np
import pytest

from megatron.tokenizer.gpt2_bpe import bytes_to_unicode

WORDS = (
    "the quick brown fox jumps over a lazy dog while data flows through tokenizer pipelines "
    "models train on many documents and résumé naïve café déjà vu 123 4567 it's we'll they've"
).split()


def make_text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def train_byte_bpe(texts: list, num_merges: int) -> tuple:
    """A minimal GPT-2-style byte-level BPE trainer: returns (vocab dict, merges list)."""
    from megatron.tokenizer.gpt2_bpe import _PAT

    be = bytes_to_unicode()
    words = collections.Counter()
    for t in texts:
        for piece in _PAT.findall(t):
            words[tuple(be[b] for b in piece.encode("utf-8"))] += 1
    vocab = {c: i for i, c in enumerate(be[b] for b in range(256))}
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for w, c in words.items():
            for p in zip(w[:-1], w[1:]):
                pairs[p] += c
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        vocab["".join(best)] = len(vocab)
        new = collections.Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += c
        words = new
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


@pytest.fixture(scope="session")
def corpus_texts():
    rng = random.Random(0)
    return [make_text(rng, rng.randint(1, 60)) for _ in range(400)]


@pytest.fixture(scope="session")
def gpt2_files(tmp_path_factory, corpus_texts):
    d = tmp_path_factory.mktemp("gpt2")
    vocab, merges = train_byte_bpe(corpus_texts, 120)
    with open(d / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(d / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return str(d / "vocab.json"), str(d / "merges.txt")


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory, corpus_texts):
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("sp")
    with open(d / "train.txt", "w", encoding="utf-8") as f:
        f.write("\n".join(corpus_texts))
    spm.SentencePieceTrainer.train(
        input=str(d / "train.txt"),
        model_prefix=str(d / "sp"),
        vocab_size=320,
        byte_fallback=True,
        model_type="unigram",
        num_threads=1,
        minloglevel=2,
    )
    return str(d / "sp.model")


@pytest.fixture(scope="session")
def hf_tokenizer_json(tmp_path_factory, gpt2_files):
    tokenizers = pytest.importorskip("tokenizers")
    d = tmp_path_factory.mktemp("hf")
    bpe = tokenizers.models.BPE.from_file(*gpt2_files)
    tok = tokenizers.Tokenizer(bpe)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(d / "tokenizer.json"))
    return str(d / "tokenizer.json")


def _write_jsonl(path, docs, key="text") -> str:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write((d if isinstance(d, str) and d.startswith("{") else json.dumps({key: d})) + "\n")
    return str(path)


def _write_dataset(prefix: str, doc_lengths, dtype=np.uint16, seed: int = 0, vocab: int = 1000) -> list:
    """Write documents of the given lengths with random ids; returns the documents."""
    from megatron.data.indexed_dataset import IndexWriter

    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, vocab, n) for n in doc_lengths]
    with IndexWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(d)
        w.finalize()
    return docs


@pytest.fixture
def no_stray_files():
    """Assert helper: list every file under a folder (to check nothing half-written remains)."""

    def files(folder):
        return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)

    return files


@pytest.fixture
def write_jsonl():
    """``write_jsonl(path, docs)``: strings become {"text": ...}; strings starting with '{' are written as is."""
    return _write_jsonl


@pytest.fixture
def write_dataset():
    """``write_dataset(prefix, doc_lengths, dtype=uint16, seed=0)`` -> the documents written."""
    return _write_dataset
