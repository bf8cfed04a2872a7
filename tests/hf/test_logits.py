"""Our GPTModel built from an HF checkpoint computes transformers' logits (fp32, to 1e-5)."""

import pytest
import torch

from megatron.hf import load_hf_checkpoint
from tests.hf.conftest import VOCAB, make_gpt2, make_llama


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
