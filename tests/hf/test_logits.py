"""Our GPTModel built from an HF checkpoint computes transformers' logits (fp32, to 1e-5): Llama (GQA, tied and
untied; llama3, linear, yarn and dynamic RoPE scaling; explicit head dim), Mistral (sliding window), Qwen2 (q/k/v
biases, windows on some layers, yarn), Qwen3 (q/k norms, interleaved windows) and GPT-2."""

import pytest
import torch

from megatron.hf import load_hf_checkpoint
from tests.hf.conftest import FAMILIES, FAMILY_SEQ, VOCAB, make_family, make_gpt2, make_llama


def _assert_same_logits(hf_model, path):
    ours, cfg = load_hf_checkpoint(str(path))
    input_ids = torch.randint(0, VOCAB, (2, 37), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_bsV = hf_model(input_ids).logits
        got_bsV = ours(input_ids)
    assert got_bsV.shape == ref_bsV.shape == (2, 37, VOCAB)
    assert ref_bsV.std() > 0.1
    torch.testing.assert_close(got_bsV, ref_bsV, rtol=0, atol=1e-5)
    return cfg


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_llama_gqa_logits_equal_transformers(tmp_path, tied):
    cfg = _assert_same_logits(make_llama(tmp_path, tied, max_shard_size="60KB"), tmp_path)
    assert (cfg.num_key_value_heads, cfg.rotary_base, cfg.norm_epsilon) == (2, 5e5, 1e-6)
    assert cfg.untie_embeddings_and_output_weights == (not tied)


def test_gpt2_logits_equal_transformers(tmp_path):
    cfg = _assert_same_logits(make_gpt2(tmp_path), tmp_path)
    assert cfg.activation == "gelu_tanh" and not cfg.untie_embeddings_and_output_weights


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_logits_equal_transformers(tmp_path, family):
    """Every family at a sequence longer than its windows and its RoPE's original context."""
    hf_model = make_family(family, tmp_path)
    ours, cfg = load_hf_checkpoint(str(tmp_path))
    input_ids = torch.randint(0, VOCAB, (2, FAMILY_SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_bsV, got_bsV = hf_model(input_ids).logits, ours(input_ids)
    assert ref_bsV.std() > 0.1
    torch.testing.assert_close(got_bsV, ref_bsV, rtol=0, atol=1e-5)
    assert all(cfg.window(i) is None or cfg.window(i) < FAMILY_SEQ for i in range(cfg.num_layers))
    original = cfg.max_position_embeddings if cfg.rope_scaling_type == "dynamic" else cfg.rope_original_max_position_embeddings
    assert original is None or original < FAMILY_SEQ


def test_family_features_are_read(tmp_path):
    """What each family's config.json sets lands in our config (the logits test proves it computes alike)."""
    got = {}
    for family in ("llama3", "llama-yarn", "mistral", "qwen2", "qwen3"):
        make_family(family, tmp_path / family)
        got[family] = load_hf_checkpoint(str(tmp_path / family))[1]
    assert got["llama3"].rope_scaling_type == "llama3" and got["llama3"].rope_original_max_position_embeddings == 16
    assert got["llama-yarn"].kv_channels == 16 and got["llama-yarn"].yarn_mscale_all_dim == 0.5
    assert got["mistral"].sliding_window == 16 and got["mistral"].layer_types == [] and not got["mistral"].add_bias_linear
    assert got["qwen2"].add_qkv_bias and not got["qwen2"].add_bias_linear
    assert got["qwen2"].layer_types == ["full_attention", "sliding_attention"]
    assert not got["qwen2"].untie_embeddings_and_output_weights
    assert got["qwen3"].qk_layernorm and got["qwen3"].head_dim == 16
    assert [got["qwen3"].window(i) for i in range(2)] == [16, None]
