"""megatron-to-hf of a run trained from scratch exports a directory that loads as is: the run's
tokenizer (recorded in its config, stored elsewhere), its tokenizer_config.json, bos/eos in
config.json and generation_config.json; transformers and tools/generate.py need no other flag."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.launch import ROOT, env, torchrun

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

TEXTS = [f"def f{i}(x):\n    return x * {i} + {i % 7}  # the value {i}" for i in range(300)]
TINY = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "8", "--num-key-value-heads", "2",
        "--seq-length", "32", "--use-rotary-position-embeddings", "--normalization", "RMSNorm", "--swiglu",
        "--disable-bias-linear", "--untie-embeddings-and-output-weights", "--micro-batch-size", "2",
        "--train-iters", "2", "--lr-warmup-iters", "1", "--num-workers", "0", "--split", "100,0,0"]  # fmt: skip


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _train_and_export(tmp_path, tokenizer_args: list) -> str:
    """Preprocess TEXTS with the tokenizer, train 2 steps into --save, export; returns the HF dir."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    subprocess.run([sys.executable, str(ROOT / "tools/preprocess_data.py"), "--input", str(docs), "--output-prefix",
                    str(tmp_path / "d"), "--append-eod", *tokenizer_args], check=True, env=env(), capture_output=True)  # fmt: skip
    proc = torchrun(1, TINY + tokenizer_args + ["--data-path", str(tmp_path / "d_text_document"),
                                                "--save", str(tmp_path / "run")])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "hf_out"
    assert _tool("convert_checkpoint").main(["megatron-to-hf", "--input", str(tmp_path / "run"), "--output", str(out)]) == 0
    return str(out)


def _generate_runs(out: str, capsys) -> None:
    capsys.readouterr()
    assert _tool("generate").main(["--load", out, "--prompt", "def f3(x):", "--max-new-tokens", "4", "--greedy"]) == 0
    assert "def f3(x):" in capsys.readouterr().out


def test_hf_tokenizer_run_exports_a_directory_transformers_loads(tmp_path, capsys):
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(TEXTS, trainer)
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))  # no tokenizer_config.json: the export writes one
    out = _train_and_export(tmp_path, ["--tokenizer-type", "HFTokenizer", "--tokenizer-model",
                                       str(tmp_path / "tok" / "tokenizer.json")])  # fmt: skip
    eos = tok.token_to_id("</s>")
    config = json.loads(open(os.path.join(out, "config.json")).read())
    assert config["eos_token_id"] == eos and config["bos_token_id"] == eos  # documents had no BOS: GPT-2's convention
    assert json.loads(open(os.path.join(out, "generation_config.json")).read())["eos_token_id"] == eos
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok("def f3(x):", add_special_tokens=False)["input_ids"] == tok.encode("def f3(x):").ids
    assert hf_tok.eos_token_id == eos
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.generation_config.eos_token_id == eos and model.config.vocab_size == tok.get_vocab_size()
    _generate_runs(out, capsys)


def test_sentencepiece_run_exports_its_model_and_token_ids(tmp_path, capsys):
    import sentencepiece as spm

    (tmp_path / "train.txt").write_text("\n".join(TEXTS))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "train.txt"), model_prefix=str(tmp_path / "sp"), vocab_size=400,
                                   byte_fallback=True, model_type="unigram", num_threads=1, minloglevel=2)  # fmt: skip
    out = _train_and_export(tmp_path, ["--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model",
                                       str(tmp_path / "sp.model")])  # fmt: skip
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    assert open(os.path.join(out, "tokenizer.model"), "rb").read() == open(tmp_path / "sp.model", "rb").read()
    config = json.loads(open(os.path.join(out, "config.json")).read())
    assert (config["bos_token_id"], config["eos_token_id"]) == (sp.bos_id(), sp.eos_id())
    tok_config = json.loads(open(os.path.join(out, "tokenizer_config.json")).read())
    assert tok_config["tokenizer_class"] == "LlamaTokenizer" and tok_config["eos_token"] == sp.IdToPiece(sp.eos_id())
    assert json.loads(open(os.path.join(out, "generation_config.json")).read()) == {
        "bos_token_id": sp.bos_id(), "eos_token_id": sp.eos_id()}  # fmt: skip
    _generate_runs(out, capsys)
