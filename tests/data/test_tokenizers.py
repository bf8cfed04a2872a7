"""Tokenizers: round trips, Megatron-compatible special ids, padding, parity with HF BPE."""

from __future__ import annotations

import pytest

from megatron.config import DataConfig
from megatron.tokenizer import TokenizerError, build_tokenizer, create_tokenizer, pad_vocab_size

TEXTS = ["the quick brown fox", "it's  naïve déjà vu 4567\n\nnew line", "  leading spaces", "日本語 unseen"]


def test_gpt2_bpe_round_trip_and_eod(gpt2_files):
    tok = build_tokenizer(
        DataConfig(tokenizer_type="GPT2BPETokenizer", vocab_file=gpt2_files[0], merge_file=gpt2_files[1]), 128
    )
    for t in TEXTS:
        assert tok.detokenize(tok.tokenize(t)) == t
    assert tok.eod == tok.vocab_size - 1 and tok.padded_vocab_size % 128 == 0
    assert len(tok.tokenize("the quick brown fox")) < len("the quick brown fox")  # merges apply


def test_gpt2_bpe_matches_hf_byte_level_bpe(gpt2_files, hf_tokenizer_json):
    from tokenizers import Tokenizer

    ours = create_tokenizer("GPT2BPETokenizer", vocab_file=gpt2_files[0], merge_file=gpt2_files[1])
    hf = Tokenizer.from_file(hf_tokenizer_json)
    for t in TEXTS + ["the lazy dog's data, trains 123 models!!  "]:
        assert ours.tokenize(t) == hf.encode(t, add_special_tokens=False).ids


def test_hf_tokenizer_round_trip(hf_tokenizer_json):
    tok = create_tokenizer("HFTokenizer", tokenizer_model=hf_tokenizer_json)
    assert tok.detokenize(tok.tokenize("the quick brown fox")) == "the quick brown fox"
    assert tok.eod == tok.hf.token_to_id("<|endoftext|>")


def test_gpt_sentencepiece_round_trip(sp_model):
    tok = create_tokenizer("GPTSentencePieceTokenizer", tokenizer_model=sp_model)
    assert tok.vocab_size == 320 and tok.eod == tok.sp.eos_id()
    for t in TEXTS[:1]:
        assert tok.detokenize(tok.tokenize(t)) == t
    assert tok.detokenize(tok.tokenize("日本語")) == "日本語"  # byte fallback


def test_megatron_sentencepiece_special_tokens(sp_model):
    tok = create_tokenizer("SentencePieceTokenizer", tokenizer_model=sp_model)
    n = tok.sp.GetPieceSize()
    # Megatron appends <CLS> <SEP> <EOD> <MASK>, then <PAD> (the model has no pad); bos/eos exist.
    assert tok.eod == n + 2 and tok.pad == n + 4 and tok.vocab_size == n + 5
    ids = tok.tokenize("the fox<EOD>the dog")
    assert tok.eod in ids
    assert tok.detokenize(ids) == "the fox<EOD>the dog"


def test_null_tokenizer():
    tok = create_tokenizer("NullTokenizer", vocab_size=10)
    assert tok.tokenize("1 2 3") == [1, 2, 3] and tok.eod == 10 and tok.vocab_size == 11
    assert tok.detokenize([1, 2]) == "1 2"


def test_vocab_padding():
    assert pad_vocab_size(50257, 128) == 50304
    assert pad_vocab_size(128, 128) == 128 and pad_vocab_size(5, 1) == 5


@pytest.mark.parametrize(
    "kind,kwargs,match",
    [
        ("SentencePieceTokenizer", dict(tokenizer_model="/nonexistent.model"), "does not exist"),
        ("GPT2BPETokenizer", dict(vocab_file="/nope.json", merge_file="/nope.txt"), "does not exist"),
        ("HFTokenizer", dict(tokenizer_model="/nope/tokenizer.json"), "does not exist|needs the optional"),
        ("NullTokenizer", dict(), "--vocab-size"),
        ("BertTokenizer", dict(), "unknown"),
    ],
)
def test_bad_tokenizer_arguments(kind, kwargs, match):
    with pytest.raises(TokenizerError, match=match):
        create_tokenizer(kind, **kwargs)
