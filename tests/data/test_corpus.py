"""The embedded default corpus builds offline, is cached, and feeds build_gpt_datasets."""

from __future__ import annotations

import os
import time

import numpy as np

from megatron.config import DataConfig
from megatron.data import build_gpt_datasets
from megatron.data.corpus import prepare_default_corpus
from megatron.tokenizer import build_tokenizer


def test_prepare_default_corpus_end_to_end(tmp_path):
    info = prepare_default_corpus(str(tmp_path))
    assert info["tokens"] > 1_000_000 and info["documents"] > 500
    assert os.path.exists(info["data_prefix"] + ".bin") and os.path.exists(info["tokenizer_model"])
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    t0 = time.time()
    assert prepare_default_corpus(str(tmp_path)) == info  # cached: no rebuild
    assert time.time() - t0 < 1.0
    cfg = DataConfig(
        data_path=[info["data_prefix"]],
        tokenizer_type=info["tokenizer_type"],
        tokenizer_model=info["tokenizer_model"],
        data_cache_path=str(tmp_path / "idx"),
    )
    tok = build_tokenizer(cfg, 128)
    assert tok.vocab_size == 8192 and tok.padded_vocab_size == 8192
    train, valid, _ = build_gpt_datasets(cfg, 256, 1234, (64, 8, 0), is_builder_rank=True, barrier=None)
    sample = train[0]["tokens"]
    assert sample.shape == (257,) and sample.max() < tok.vocab_size
    text = tok.detokenize([int(t) for t in sample if t != tok.eod])
    assert sum(c.isalpha() for c in text) > 0.4 * len(text)  # real text, not noise
    assert valid is not None and np.asarray(valid[0]["tokens"]).shape == (257,)
