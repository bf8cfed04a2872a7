"""The tokenizers Megatron users pass with ``--tokenizer-type``, and vocabulary padding.

Every tokenizer has ``vocab_size`` (unpadded), ``padded_vocab_size``, ``eod``, ``pad``,
``tokenize(str) -> list[int]`` and ``detokenize(list[int]) -> str``. Ids match Megatron-LM's
tokenizers of the same name, so corpora preprocessed there keep their meaning here:

- ``GPT2BPETokenizer``: vocab.json + merges.txt, eod = ``<|endoftext|>``.
- ``SentencePieceTokenizer``: Megatron's, which appends ``<CLS> <SEP> <EOD> <MASK>`` (and
  ``<PAD> <BOS> <EOS>`` when the model lacks them) after the model's pieces; eod = ``<EOD>``.
- ``GPTSentencePieceTokenizer``: the model's pieces only (Llama style); eod = the model's eos.
- ``HFTokenizer``: a ``tokenizer.json`` through the optional ``tokenizers`` package; BOS and eod
  as the family has them (Llama 3: ``<|begin_of_text|>`` first, eod ``<|end_of_text|>``; Qwen:
  no BOS, eod ``<|endoftext|>``).
- ``NullTokenizer``: text is whitespace-separated integer ids; eod = vocab_size - 1.
"""

from __future__ import annotations

import json
import math
import os
import re

from megatron.config import ConfigError

TOKENIZER_TYPES = (
    "GPT2BPETokenizer",
    "SentencePieceTokenizer",
    "GPTSentencePieceTokenizer",
    "HFTokenizer",
    "NullTokenizer",
)


class TokenizerError(ConfigError):
    """A tokenizer that cannot be built; the message names the flag to fix."""


def pad_vocab_size(vocab_size: int, divisible_by: int) -> int:
    """Megatron's padding: round up to a multiple of ``divisible_by`` (>= 1)."""
    m = max(1, int(divisible_by))
    return int(math.ceil(vocab_size / m) * m)


class Tokenizer:
    """Common attributes; subclasses set ``vocab_size``, ``eod``, ``pad`` and implement the two methods.

    ``bos`` is the begin-of-text id that ``tokenize`` puts first, or None when the tokenizer adds none.
    """

    name = "Tokenizer"
    vocab_size: int
    eod: int
    pad: int
    bos = None

    def __init__(self, make_vocab_size_divisible_by: int = 1):
        self._divisible_by = make_vocab_size_divisible_by

    @property
    def padded_vocab_size(self) -> int:
        return pad_vocab_size(self.vocab_size, self._divisible_by)

    def tokenize(self, text: str) -> list:
        raise NotImplementedError

    def detokenize(self, ids) -> str:
        raise NotImplementedError

    def spec(self) -> dict:
        """Picklable description to rebuild this tokenizer in a worker process."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.name}(vocab_size={self.vocab_size}, padded={self.padded_vocab_size}, eod={self.eod})"


def _need_file(path: str | None, flag: str, what: str) -> str:
    if not path:
        raise TokenizerError(f"{flag} is required for this tokenizer; give {what}")
    if not os.path.exists(path):
        raise TokenizerError(f"{flag} {path} does not exist; give {what}")
    return path


class GPT2BPETokenizer(Tokenizer):
    name = "GPT2BPETokenizer"

    def __init__(self, vocab_file: str, merge_file: str, make_vocab_size_divisible_by: int = 1):
        super().__init__(make_vocab_size_divisible_by)
        from megatron.tokenizer.gpt2_bpe import GPT2BPE

        _need_file(vocab_file, "--vocab-file", "the GPT-2 vocab.json")
        _need_file(merge_file, "--merge-file", "the GPT-2 merges.txt")
        self._files = (vocab_file, merge_file)
        self.bpe = GPT2BPE(vocab_file, merge_file)
        if "<|endoftext|>" not in self.bpe.encoder:
            raise TokenizerError(f"{vocab_file} has no <|endoftext|> token; it is not a GPT-2 vocabulary")
        self.vocab_size = len(self.bpe.encoder)
        self.eod = self.bpe.encoder["<|endoftext|>"]
        self.pad = self.eod

    def tokenize(self, text):
        return self.bpe.encode(text)

    def detokenize(self, ids):
        return self.bpe.decode(ids)

    def spec(self):
        return dict(tokenizer_type=self.name, vocab_file=self._files[0], merge_file=self._files[1])


def _load_sentencepiece(model_file: str):
    try:
        import sentencepiece
    except ImportError as e:  # pragma: no cover
        raise TokenizerError(
            "SentencePiece tokenizers need the sentencepiece package: pip install sentencepiece"
        ) from e
    _need_file(model_file, "--tokenizer-model", "a SentencePiece .model file")
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.Load(model_file)
    except Exception as e:
        raise TokenizerError(f"--tokenizer-model {model_file} is not a SentencePiece model ({e})") from None
    return sp


class GPTSentencePieceTokenizer(Tokenizer):
    """A SentencePiece model used as is (Llama style): eod is the model's eos."""

    name = "GPTSentencePieceTokenizer"

    def __init__(self, model_file: str, make_vocab_size_divisible_by: int = 1):
        super().__init__(make_vocab_size_divisible_by)
        self._model_file = model_file
        self.sp = _load_sentencepiece(model_file)
        self.vocab_size = self.sp.GetPieceSize()
        self.eod = self.sp.eos_id()
        self.pad = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.eod
        if self.eod < 0:
            raise TokenizerError(
                f"{model_file} has no eos piece; train it with eos_id >= 0 or use SentencePieceTokenizer"
            )

    def tokenize(self, text):
        return self.sp.EncodeAsIds(text)

    def detokenize(self, ids):
        return self.sp.DecodeIds([int(i) for i in ids])

    def spec(self):
        return dict(tokenizer_type=self.name, tokenizer_model=self._model_file)


class SentencePieceTokenizer(Tokenizer):
    """Megatron-LM's ``SentencePieceTokenizer``: model pieces plus appended special tokens.

    Special-token strings that appear in the text (``<EOD>`` ...) are encoded as their ids.
    """

    name = "SentencePieceTokenizer"

    def __init__(self, model_file: str, make_vocab_size_divisible_by: int = 1):
        super().__init__(make_vocab_size_divisible_by)
        self._model_file = model_file
        self.sp = _load_sentencepiece(model_file)
        self._vocab = {self.sp.IdToPiece(i): i for i in range(self.sp.GetPieceSize())}
        self._inv_vocab = {i: p for p, i in self._vocab.items()}
        self._special: dict = {}

        def add(t):
            if t not in self._vocab:
                self._vocab[t] = len(self._inv_vocab)
                self._inv_vocab[self._vocab[t]] = t
            self._special[t] = self._vocab[t]
            return self._vocab[t]

        for t in ("<CLS>", "<SEP>", "<EOD>", "<MASK>"):
            add(t)
        self.eod = self._vocab["<EOD>"]
        pad_id = self.sp.pad_id()
        self.pad = add(self.sp.IdToPiece(pad_id)) if pad_id >= 0 else add("<PAD>")
        for attr, fallback in (("bos_id", "<BOS>"), ("eos_id", "<EOS>")):
            i = getattr(self.sp, attr)()
            add(self.sp.IdToPiece(i) if i >= 0 else fallback)
        self.vocab_size = len(self._vocab)
        self._split = re.compile(
            "(" + "|".join(re.escape(t) for t in sorted(self._special, key=len, reverse=True)) + ")"
        )

    def tokenize(self, text):
        ids: list = []
        for part in self._split.split(text):
            if not part:
                continue
            if part in self._special:
                ids.append(self._special[part])
            else:
                ids.extend(self.sp.EncodeAsIds(part))
        return ids

    def detokenize(self, ids):
        out, run = [], []
        n = self.sp.GetPieceSize()
        for i in map(int, ids):
            if i >= n:
                out.append(self.sp.DecodeIds(run))
                run = []
                out.append(self._inv_vocab[i])
            else:
                run.append(i)
        out.append(self.sp.DecodeIds(run))
        return "".join(out)

    def spec(self):
        return dict(tokenizer_type=self.name, tokenizer_model=self._model_file)


_HF_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>", "[SEP]")


def _token(value):
    """A tokenizer_config.json token entry: a string, {"content": ...} or null."""
    return value.get("content") if isinstance(value, dict) else value


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` (file or directory holding one), without transformers.

    eod is the ``eos_token`` of a sibling ``tokenizer_config.json`` when there is one, else the
    first of the usual end-of-text tokens found in the vocabulary. Documents start with the
    family's BOS as transformers' tokenizer would put it: ``add_bos_token`` of the
    tokenizer_config.json when it says, else what tokenizer.json's post-processor prepends
    (Llama 3's template adds ``<|begin_of_text|>``; Qwen's adds nothing, its bos_token is null).
    Nothing is appended: ``--append-eod`` adds the eod.
    """

    name = "HFTokenizer"

    def __init__(self, tokenizer_model: str, make_vocab_size_divisible_by: int = 1):
        super().__init__(make_vocab_size_divisible_by)
        try:
            from tokenizers import Tokenizer as _HF
        except ImportError:
            raise TokenizerError("HFTokenizer needs the optional tokenizers package: pip install tokenizers") from None
        _need_file(tokenizer_model, "--tokenizer-model", "a Hugging Face tokenizer.json (or its directory)")
        path = os.path.join(tokenizer_model, "tokenizer.json") if os.path.isdir(tokenizer_model) else tokenizer_model
        _need_file(path, "--tokenizer-model", "a Hugging Face tokenizer.json (or its directory)")
        self._model = tokenizer_model
        try:
            self.hf = _HF.from_file(path)
        except Exception as e:
            raise TokenizerError(f"--tokenizer-model {path} is not a tokenizer.json ({e})") from None
        self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
        config = {}
        cfg = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        if os.path.exists(cfg):
            with open(cfg, encoding="utf-8") as f:
                config = json.load(f)
        eos = _token(config.get("eos_token"))
        self.bos = self._family_bos(config)
        for cand in ([eos] if eos else []) + list(_HF_EOS_CANDIDATES):
            if self.hf.token_to_id(cand) is not None:
                self.eod = self.hf.token_to_id(cand)
                break
        else:
            raise TokenizerError(f"{path} has no end-of-text token (tried {', '.join(_HF_EOS_CANDIDATES)})")
        pad = self.hf.token_to_id("<pad>")
        self.pad = pad if pad is not None else self.eod

    def _family_bos(self, config: dict):
        """The BOS id documents start with, or None."""
        probe = "a"
        plain = self.hf.encode(probe, add_special_tokens=False).ids
        full = self.hf.encode(probe, add_special_tokens=True).ids
        prepended = full[: len(full) - len(plain)] if full[len(full) - len(plain):] == plain else []
        named = _token(config.get("bos_token"))
        bos = self.hf.token_to_id(named) if named else (prepended[0] if len(prepended) == 1 else None)
        add = config.get("add_bos_token", bool(prepended))
        return bos if add and bos is not None else None

    def tokenize(self, text):
        ids = self.hf.encode(text, add_special_tokens=False).ids
        return [self.bos, *ids] if self.bos is not None else ids

    def detokenize(self, ids):
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def spec(self):
        return dict(tokenizer_type=self.name, tokenizer_model=self._model)


class NullTokenizer(Tokenizer):
    """Text holds integer ids separated by whitespace; for pre-tokenized data and tests.

    ``vocab_size`` counts the eod, which is the last id (Megatron: ``--vocab-size N`` gives N + 1).
    """

    name = "NullTokenizer"

    def __init__(self, vocab_size: int, make_vocab_size_divisible_by: int = 1):
        super().__init__(make_vocab_size_divisible_by)
        if vocab_size is None or int(vocab_size) < 1:
            raise TokenizerError("NullTokenizer needs --vocab-size N (ids 0..N-1; eod is N)")
        self._n = int(vocab_size)
        self.vocab_size = self._n + 1
        self.eod = self._n
        self.pad = self._n

    def tokenize(self, text):
        ids = [int(t) for t in text.split()]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"NullTokenizer id {i} is outside [0, {self.vocab_size})")
        return ids

    def detokenize(self, ids):
        return " ".join(str(int(i)) for i in ids)

    def spec(self):
        return dict(tokenizer_type=self.name, vocab_size=self._n)


def create_tokenizer(
    tokenizer_type: str | None,
    *,
    tokenizer_model: str | None = None,
    vocab_file: str | None = None,
    merge_file: str | None = None,
    vocab_size: int | None = None,
    make_vocab_size_divisible_by: int = 1,
) -> Tokenizer:
    """Build a tokenizer from explicit arguments (what tools and workers call)."""
    d = make_vocab_size_divisible_by
    if tokenizer_type == "GPT2BPETokenizer":
        return GPT2BPETokenizer(vocab_file, merge_file, d)
    if tokenizer_type == "SentencePieceTokenizer":
        return SentencePieceTokenizer(tokenizer_model, d)
    if tokenizer_type == "GPTSentencePieceTokenizer":
        return GPTSentencePieceTokenizer(tokenizer_model, d)
    if tokenizer_type == "HFTokenizer":
        return HFTokenizer(tokenizer_model, d)
    if tokenizer_type == "NullTokenizer":
        return NullTokenizer(vocab_size, d)
    raise TokenizerError(f"--tokenizer-type {tokenizer_type} is unknown; use one of {', '.join(TOKENIZER_TYPES)}")
