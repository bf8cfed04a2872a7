"""One-line errors with a non-zero exit: unsupported architectures and features (mixture of experts,
multimodal, partial rotary on Llama, activations), models without a Hugging Face family, missing shards, tokenizer
and shape mismatches; and greedy generation equals an argmax loop over transformers' logits."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.hf.conftest import VOCAB, assert_one_line_error, make_gpt2, make_llama
from tests.launch import ROOT, env
from tools.convert_checkpoint import main as convert
from tools.generate import main as generate


def test_unsupported_architecture_isassert_one_line_error(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    rc = convert(["hf-to-megatron", "--input", str(tmp_path), "--output", str(tmp_path / "out")])
    assert_one_line_error(capsys, rc, "BertForMaskedLM", "not supported")


def test_unsupported_llama_variant_isassert_one_line_error(tmp_path, capsys):
    make_llama(tmp_path, tied=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}
    (tmp_path / "config.json").write_text(json.dumps(cfg))  # transformers' Llama rotates whole heads
    rc = convert(["hf-to-megatron", "--input", str(tmp_path), "--output", str(tmp_path / "out")])
    assert_one_line_error(capsys, rc, "partial_rotary_factor=0.5")


def test_missing_shard_isassert_one_line_error(tmp_path, capsys):
    make_llama(tmp_path, tied=False, max_shard_size="60KB")
    os.remove(tmp_path / "model-00002-of-00006.safetensors")
    rc = convert(["hf-to-megatron", "--input", str(tmp_path), "--output", str(tmp_path / "out")])
    assert_one_line_error(capsys, rc, "model-00002-of-00006.safetensors", "missing")


def test_missing_zero_shards_isassert_one_line_error(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    (ckpt / "iter_0000001").mkdir(parents=True)
    (ckpt / "latest").write_text("iter_0000001")
    rc = convert(["megatron-to-hf", "--input", str(ckpt), "--output", str(tmp_path / "out")])
    assert_one_line_error(capsys, rc, "missing")


def test_hf_tokenizer_larger_than_the_embedding_isassert_one_line_error(tmp_path, capsys):
    from tokenizers import Tokenizer, models

    make_gpt2(tmp_path)
    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, VOCAB + 20)}}
    Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>")).save(str(tmp_path / "tokenizer.json"))
    rc = convert(["hf-to-megatron", "--input", str(tmp_path), "--output", str(tmp_path / "out")])
    assert_one_line_error(capsys, rc, f"has {VOCAB + 20} tokens", f"{VOCAB} rows")


def test_generate_rejects_a_larger_tokenizer(tmp_path, capsys):
    make_gpt2(tmp_path)
    rc = generate(
        ["--load", str(tmp_path), "--prompt", "1 2", "--tokenizer-type", "NullTokenizer", "--vocab-size", "300"]
    )
    assert_one_line_error(capsys, rc, "tokenizer has 301 tokens", f"vocabulary is {VOCAB}")


def test_shape_flag_disagreeing_with_model_args_isassert_one_line_error(tmp_path):
    make_llama(tmp_path / "hf", tied=True)
    assert convert(["hf-to-megatron", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "init")]) == 0
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pretrain_gpt.py"), "--load", str(tmp_path / "init"), "--mock-data",
         "--hidden-size", "128"],
        env=env(), cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "--hidden-size 128 disagrees with hidden_size=64" in proc.stderr, proc.stderr


def test_tokenizer_vocab_mismatch_at_load_names_the_vocabulary(tmp_path):
    from megatron.config import ConfigError, ModelConfig
    from megatron.model.gpt import GPTModel
    from megatron.training.weights import config_from_model_args, load_weights, read_model_args

    make_llama(tmp_path / "hf", tied=True)
    assert convert(["hf-to-megatron", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "init")]) == 0
    cfg = config_from_model_args(read_model_args(tmp_path / "init"), seq_length=64)
    load_weights(GPTModel(cfg), str(tmp_path / "init"))  # fits
    wrong = ModelConfig(**{**cfg.__dict__, "vocab_size": VOCAB + 28})  # e.g. another tokenizer's size
    with pytest.raises(ConfigError, match="vocabulary differs"):
        load_weights(GPTModel(wrong), str(tmp_path / "init"))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_generation_equals_transformers_argmax(tmp_path, capsys, arch):
    hf_model = make_llama(tmp_path, tied=True) if arch == "llama" else make_gpt2(tmp_path)
    ids = [5, 17, 42]
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(hf_model(torch.tensor([ids])).logits[0, -1].argmax()))
    rc = generate(["--load", str(tmp_path), "--prompt", "5 17 42", "--greedy", "--max-new-tokens", "6",
                   "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB - 1), "--no-stop-at-eod"])  # fmt: skip
    assert rc == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == " ".join(map(str, ids))


def test_top_p_sampling_is_seeded(tmp_path, capsys):
    make_gpt2(tmp_path)
    args = ["--load", str(tmp_path), "--prompt", "5 17", "--top-p", "0.9", "--temperature", "0.8",
            "--max-new-tokens", "8", "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB - 1)]  # fmt: skip
    outs = []
    for seed in ("1", "1", "2"):
        assert generate(args + ["--seed", seed]) == 0
        outs.append(capsys.readouterr().out.strip().splitlines()[-1])
    assert outs[0] == outs[1] and outs[0].startswith("5 17 ")


@pytest.mark.parametrize(
    "config,words",
    [
        ({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "num_local_experts": 8},
         ["MixtralForCausalLM", "mixture-of-experts"]),
        ({"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "num_experts": 60},
         ["Qwen2MoeForCausalLM", "mixture-of-experts"]),
        ({"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl", "vision_config": {}},
         ["Qwen2VLForConditionalGeneration", "vision inputs"]),
        ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_experts": 4}, ["mixture-of-experts"]),
        ({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "gelu", "hidden_size": 64,
          "num_attention_heads": 4, "num_hidden_layers": 1}, ["hidden_act=gelu"]),
    ],
    ids=["mixtral", "qwen2-moe", "qwen2-vl", "experts-key", "activation"],
)  # fmt: skip
def test_unsupported_feature_is_one_line_error_naming_it(tmp_path, capsys, config, words):
    (tmp_path / "config.json").write_text(json.dumps(config))
    rc = convert(["hf-to-megatron", "--input", str(tmp_path), "--output", str(tmp_path / "out")])
    assert_one_line_error(capsys, rc, "not supported", *words)


def test_model_without_a_hf_family_isassert_one_line_error(tmp_path, capsys):
    """Interleaved windows need Qwen2's q/k/v biases or Qwen3's q/k norms to export."""
    from megatron.config import ConfigError, ModelConfig
    from megatron.hf import hf_config_from_model

    cfg = ModelConfig(use_rotary_position_embeddings=True, normalization="RMSNorm", swiglu=True, add_bias_linear=False,
                      sliding_window=8, layer_types=["sliding_attention", "full_attention"])  # fmt: skip
    with pytest.raises(ConfigError, match="sliding windows on some layers only"):
        hf_config_from_model(cfg)
    assert hf_config_from_model(ModelConfig(**{**cfg.__dict__, "qk_layernorm": True}))["model_type"] == "qwen3"
    assert hf_config_from_model(ModelConfig(**{**cfg.__dict__, "layer_types": []}))["model_type"] == "mistral"
