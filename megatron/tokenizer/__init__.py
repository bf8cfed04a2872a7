"""Tokenizers: ``build_tokenizer(data_cfg, make_vocab_size_divisible_by)`` is the entry point."""

from __future__ import annotations

from megatron.tokenizer.tokenizer import (
    TOKENIZER_TYPES,
    GPT2BPETokenizer,
    GPTSentencePieceTokenizer,
    HFTokenizer,
    NullTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    TokenizerError,
    create_tokenizer,
    pad_vocab_size,
)


def build_tokenizer(data_cfg, make_vocab_size_divisible_by: int, vocab_size=None) -> Tokenizer:
    """The tokenizer a ``DataConfig`` describes, padding its vocabulary to the given multiple.

    ``vocab_size`` is only read by ``NullTokenizer`` (Megatron's ``--vocab-size``); when not
    given it is taken from ``data_cfg.vocab_size`` if that field exists.
    """
    if vocab_size is None:
        vocab_size = getattr(data_cfg, "vocab_size", None)
    return create_tokenizer(
        data_cfg.tokenizer_type,
        tokenizer_model=data_cfg.tokenizer_model,
        vocab_file=data_cfg.vocab_file,
        merge_file=data_cfg.merge_file,
        vocab_size=vocab_size,
        make_vocab_size_divisible_by=make_vocab_size_divisible_by,
    )


__all__ = [
    "TOKENIZER_TYPES",
    "GPT2BPETokenizer",
    "GPTSentencePieceTokenizer",
    "HFTokenizer",
    "NullTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "TokenizerError",
    "build_tokenizer",
    "create_tokenizer",
    "pad_vocab_size",
]
