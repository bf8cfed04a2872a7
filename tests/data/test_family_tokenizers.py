"""Llama-3, Qwen and Gemma tokenizers through tokenizer.json (HFTokenizer): the ids transformers' tokenizer
gives, BOS and end of document as each family has them, preprocessing and a short training run on the result.

All are built here with the ``tokenizers`` library from a small corpus (no downloads), with the families'
special tokens, pre-tokenizer patterns and post-processors: Llama 3 (byte-level BPE) prepends
``<|begin_of_text|>`` and ends documents with ``<|end_of_text|>``; Qwen (byte-level BPE) has no BOS and ends
documents with ``<|endoftext|>``; Gemma's is a SentencePiece model in tokenizer.json form (``▁`` for spaces,
byte fallback to ``<0xNN>`` pieces for unseen characters, ``<pad>`` ``<eos>`` ``<bos>`` ``<unk>`` as ids 0-3)
that prepends ``<bos>`` and ends documents with ``<eos>``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron.data.indexed_dataset import MMapIndexedDataset
from megatron.tokenizer import create_tokenizer
from tests.launch import TINY_LLAMA, torchrun

tokenizers = pytest.importorskip("tokenizers")

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
FAMILIES = {
    "llama3": dict(
        pattern=LLAMA3_PATTERN, normalizer=None,
        special=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        config={"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, bos="<|begin_of_text|>",
        eod="<|end_of_text|>",
    ),
    "qwen": dict(
        pattern=QWEN_PATTERN, normalizer="NFC", special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        config={"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, bos=None,
        eod="<|endoftext|>",
    ),
    "gemma": dict(
        sentencepiece=True, special=["<pad>", "<eos>", "<bos>", "<unk>"],
        config={"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}, bos="<bos>", eod="<eos>",
    ),
}  # fmt: skip


def _sentencepiece_bpe(texts: list, special: list):
    """A SentencePiece-style BPE: spaces become ``▁``, no pre-tokenizer, 256 ``<0xNN>`` byte pieces after the
    special tokens for byte fallback, decoding back through them."""
    from tokenizers import decoders, models, normalizers, trainers

    draft = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    draft.normalizer = normalizers.Replace(" ", "\u2581")
    draft.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=500, special_tokens=special, show_progress=False))
    trained = json.loads(draft.to_str())["model"]
    pieces = sorted(trained["vocab"], key=trained["vocab"].get)
    pieces = pieces[: len(special)] + [f"<0x{b:02X}>" for b in range(256)] + pieces[len(special) :]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = tokenizers.Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, merges, unk_token="<unk>",
                                          byte_fallback=True, fuse_unk=True))  # fmt: skip
    tok.add_special_tokens(special)
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


def build_family_tokenizer(family: str, folder, texts: list) -> str:
    """A byte-level BPE in the family's layout: tokenizer.json and tokenizer_config.json in ``folder``."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

    spec = FAMILIES[family]
    if spec.get("sentencepiece"):
        tok = _sentencepiece_bpe(texts, spec["special"])
        bos = (spec["bos"], tok.token_to_id(spec["bos"]))
        tok.post_processor = processors.TemplateProcessing(single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B",
                                                           special_tokens=[bos])  # fmt: skip
        return _save(tok, folder, spec)
    tok = tokenizers.Tokenizer(models.BPE())
    if spec["normalizer"]:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec["pattern"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=spec["special"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    byte_level = processors.ByteLevel(trim_offsets=False)
    if spec["bos"]:
        bos = (spec["bos"], tok.token_to_id(spec["bos"]))
        template = processors.TemplateProcessing(single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B",
                                                 special_tokens=[bos])  # fmt: skip
        tok.post_processor = processors.Sequence([byte_level, template])
    else:
        tok.post_processor = byte_level
    return _save(tok, folder, spec)


def _save(tok, folder, spec) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 131072, **spec["config"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_tokenizer(request, tmp_path_factory, corpus_texts):
    folder = tmp_path_factory.mktemp(request.param) / "tokenizer"
    return request.param, build_family_tokenizer(request.param, folder, corpus_texts)


TEXTS = ["the quick brown fox", "it's  naïve déjà vu 4567\n\nnew line", "  leading spaces", "日本語 unseen"]


def test_ids_equal_transformers_tokenizer_with_the_family_bos_and_eod(family_tokenizer):
    transformers = pytest.importorskip("transformers")
    family, folder = family_tokenizer
    spec = FAMILIES[family]
    ours = create_tokenizer("HFTokenizer", tokenizer_model=folder)
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    for text in TEXTS:
        assert ours.tokenize(text) == ref(text)["input_ids"], text
    assert ours.eod == ours.hf.token_to_id(spec["eod"]) == ref.eos_token_id
    if spec["bos"]:
        assert ours.bos == ours.hf.token_to_id(spec["bos"]) == ref.bos_token_id
        assert ours.tokenize("the fox")[0] == ours.bos
        assert ours.detokenize(ours.tokenize("the fox")) == spec["bos"] + "the fox"
    else:
        assert ours.bos is None and ref.bos_token_id is None
        assert ours.detokenize(ours.tokenize(TEXTS[1])) == TEXTS[1]
    if spec.get("sentencepiece"):  # characters the corpus lacks fall back to their UTF-8 bytes, and decode back
        pieces = [ours.hf.id_to_token(i) for i in ours.tokenize("日本語")[1:]]
        assert len(pieces) == 9 and all(p.startswith("<0x") for p in pieces), pieces
        assert ours.detokenize(ours.tokenize("日本語 unseen")[1:]) == "日本語 unseen"


def test_preprocess_writes_documents_as_the_family_delimits_them(family_tokenizer, tmp_path, write_jsonl):
    from tools.preprocess_data import main as preprocess

    family, folder = family_tokenizer
    tok = create_tokenizer("HFTokenizer", tokenizer_model=folder)
    docs = ["the quick brown fox", "data flows through tokenizer pipelines"]
    inp = write_jsonl(tmp_path / "in.jsonl", docs)
    args = ["--input", inp, "--output-prefix", str(tmp_path / "c"), "--tokenizer-type", "HFTokenizer",
            "--tokenizer-model", folder, "--append-eod", "--log-interval", "0"]  # fmt: skip
    assert preprocess(args) == 0
    ds = MMapIndexedDataset(str(tmp_path / "c_text_document"))
    for i, text in enumerate(docs):
        ids = tok.hf.encode(text, add_special_tokens=False).ids
        expected = ([tok.bos] if tok.bos is not None else []) + ids + [tok.eod]
        assert ds[i].tolist() == expected
    assert (ds[0][0] == tok.bos) == (FAMILIES[family]["bos"] is not None)


def test_trains_on_the_preprocessed_corpus(family_tokenizer, tmp_path, write_jsonl, corpus_texts):
    from tools.preprocess_data import main as preprocess

    _, folder = family_tokenizer
    inp = write_jsonl(tmp_path / "in.jsonl", corpus_texts[:200])
    assert preprocess(["--input", inp, "--output-prefix", str(tmp_path / "c"), "--tokenizer-type", "HFTokenizer",
                       "--tokenizer-model", folder, "--append-eod", "--log-interval", "0"]) == 0  # fmt: skip
    shape = [a for a in TINY_LLAMA if a not in ("--vocab-size", "128")]
    args = shape + [
        "--data-path", str(tmp_path / "c_text_document"), "--tokenizer-type", "HFTokenizer", "--tokenizer-model",
        folder, "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "3", "--lr", "3e-3",
        "--log-interval", "1", "--num-workers", "0", "--split", "100,0,0", "--reset-position-ids", "--eod-mask-loss",
    ]  # fmt: skip
    proc = torchrun(1, args, tmp_path / "m.jsonl")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    losses = [json.loads(line)["lm_loss"] for line in (tmp_path / "m.jsonl").read_text().splitlines()
              if "lm_loss" in line]  # fmt: skip
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
