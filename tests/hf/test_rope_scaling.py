"""RoPE scaling computes transformers' frequencies and attention factor bit for bit, read from either
config layout (rope_scaling + rope_theta, or rope_parameters) and written back in both."""

import pytest
import torch

from megatron.config import ConfigError
from megatron.hf_config import model_config_from_hf, rope_to_hf
from megatron.model.rotary import rope_frequencies
from tests.hf.conftest import transformers

SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "yarn-mscale": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 0.707,
                    "mscale_all_dim": 1.0, "beta_fast": 16, "beta_slow": 2, "truncate": False},
    "yarn-attention-factor": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 128,
                              "attention_factor": 1.25},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
}  # fmt: skip


def _llama_config(scaling: dict, head_dim=None):
    return transformers.LlamaConfig(
        vocab_size=100, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
        max_position_embeddings=256, rope_theta=5e5, rope_scaling=dict(scaling),
    )  # fmt: skip


def _v4_layout(config: dict) -> dict:
    """The same config as transformers 4.x and vLLM write it: rope_theta + rope_scaling."""
    out = {k: v for k, v in config.items() if k != "rope_parameters"}
    params = dict(config["rope_parameters"])
    out["rope_theta"] = params.pop("rope_theta")
    out["rope_scaling"] = params
    return out


@pytest.mark.parametrize("name", list(SCALINGS))
@pytest.mark.parametrize("head_dim", [None, 24], ids=["hd16", "hd24"])
def test_frequencies_and_attention_factor_equal_transformers(name, head_dim):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = _llama_config(SCALINGS[name], head_dim)
    ref_freqs, ref_factor = ROPE_INIT_FUNCTIONS[hf.rope_parameters["rope_type"]](hf)
    config = hf.to_dict()
    cfg = model_config_from_hf(config)
    assert model_config_from_hf(_v4_layout(config)) == cfg  # both layouts read the same
    freqs, factor = rope_frequencies(cfg)
    assert torch.equal(freqs, ref_freqs) and factor == ref_factor
    assert not torch.equal(freqs, rope_frequencies(model_config_from_hf({**config, "rope_parameters": None}))[0])
    theta, scaling, parameters = rope_to_hf(cfg)  # written back, both layouts give transformers the same values
    for again in (_llama_config({**scaling, "rope_theta": theta}, head_dim), _llama_config(parameters, head_dim)):
        got = ROPE_INIT_FUNCTIONS[hf.rope_parameters["rope_type"]](again)
        assert torch.equal(got[0], ref_freqs) and got[1] == ref_factor


def test_dynamic_ntk_past_the_context_equals_transformers():
    """Dynamic NTK recomputes the base from the longest position of the batch once it passes
    max_position_embeddings; below it, the unscaled frequencies."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    hf = _llama_config(SCALINGS["dynamic"])
    cfg = model_config_from_hf(hf.to_dict())
    x = torch.zeros(1)
    for length in (100, 256, 700):
        pos = torch.arange(length)[None]
        cos, _ = LlamaRotaryEmbedding(hf)(x, pos)  # a fresh module: transformers caches the longest length seen
        freqs, _ = rope_frequencies(cfg, extent=pos.max() + 1)
        angles = pos[..., None].float() * freqs
        torch.testing.assert_close(torch.cat([angles, angles], -1).cos(), cos, rtol=0, atol=0)
    assert torch.equal(rope_frequencies(cfg, extent=torch.tensor(256))[0], rope_frequencies(cfg)[0])


@pytest.mark.parametrize(
    "rope,words",
    [
        ({"rope_type": "proportional", "factor": 2.0}, "rope type 'proportional'"),
        ({"rope_type": "default", "partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ({"rope_type": "default", "mrope_section": [2, 3, 3]}, "mrope_section"),
    ],
    ids=["other-type", "partial-rotary", "mrope"],
)  # fmt: skip
def test_unsupported_rope_is_refused_by_name(rope, words):
    config = {**_llama_config({"rope_type": "linear", "factor": 2.0}).to_dict(), "rope_parameters": rope}
    with pytest.raises(ConfigError, match=words):
        model_config_from_hf(config)
