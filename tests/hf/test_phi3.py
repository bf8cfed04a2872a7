"""Phi-3 (Phi3ForCausalLM) computes what transformers computes, and converts both ways bit for bit.

Tiny models from transformers' own Phi3Config (random weights, perturbed norms, q and k scaled up so that RoPE
matters; fp32): Phi-3-mini-128k-style longrope (short/long factor lists, the factor from max_position_embeddings /
original, its default attention factor), Phi-4-mini-style partial rotary (partial_rotary_factor 0.75: 6 of 8
frequencies, a head dim whose rotary half is not a power of two) with longrope and an explicit attention factor,
tied; and Phi-3-mini-4k-style plain RoPE with a window on every layer. Logits equal transformers' to 1e-5 at a
sequence inside the original context (short factors) and past it (long factors), and the regime is transformers'
(its rotary embedding's cos bit for bit at original and original + 1; the long factors move the logits only past
the original length). HF -> ours -> HF is bit-exact for the fused qkv_proj / gate_up_proj (which are our qkv / fc1
as they are) and config.json in both RoPE layouts, and transformers loads the export with equal logits; a config we
generate without a source (Phi3ForCausalLM, or Llama / Mistral when the model is one) loads in transformers from
either layout alone. model_args.json and its flags round-trip the factor lists. SP=2 trains like SP=1 with longrope
and partial rotary where only the global sequence length passes the original one. The fused Triton RoPE kernel
(TRITON_INTERPRET=1 on CPU) equals the eager path for longrope frequencies with partial rotary, values and
gradients. Phi-3-small, Phi-3.5-MoE, other activations and RoPE types are refused in one line.
"""

import dataclasses
import json
import os
import shlex

import pytest
import torch

if not torch.cuda.is_available():  # the fused RoPE kernel in Triton's interpreter (set before it is first imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from megatron.config import ConfigError  # noqa: E402
from megatron.hf import load_hf_checkpoint  # noqa: E402
from tests.hf.conftest import (  # noqa: E402
    VOCAB,
    _perturb_norms,
    assert_conversion_refused,
    kernel_device,
    logits_of,
    random_tokens,
    safetensors_of,
    transformers,
)
from tests.launch import TRAIN, assert_close_records, train_records  # noqa: E402
from tools.convert_checkpoint import main as convert  # noqa: E402

ORIGINAL, SHORT_SEQ, LONG_SEQ = 32, 24, 80
_SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0,
              max_position_embeddings=128, original_max_position_embeddings=ORIGINAL)  # fmt: skip
_SHORT8, _LONG8 = [1.0, 1.1, 1.3, 1.6, 2.0, 2.2, 2.5, 3.0], [1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 12.0, 16.0]
VARIANTS = {
    # Phi-3-mini-128k: longrope, no factor (max_position_embeddings / original = 4), head dim 16: 8 frequencies
    "longrope": dict(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": _SHORT8,
                                      "long_factor": _LONG8}),
    # Phi-4-mini: partial rotary 0.75 (12 of 16 dims: 6 frequencies), longrope with an attention factor, tied
    "partial": dict(tie_word_embeddings=True, rope_parameters={
        "rope_type": "longrope", "rope_theta": 5e4, "partial_rotary_factor": 0.75, "attention_factor": 1.2,
        "short_factor": _SHORT8[:6], "long_factor": _LONG8[:6]}),
    # Phi-3-mini-4k: plain RoPE, a window on every layer
    "window": dict(sliding_window=16, rope_parameters={"rope_type": "default", "rope_theta": 1e4}),
}  # fmt: skip


@torch.no_grad()
def make_phi3(name, path, seed=0, **changes):
    """VARIANTS[name] (``changes`` to its config) with random weights, norms perturbed, q and k x4, saved."""
    torch.manual_seed(seed)
    cfg = transformers.Phi3Config(**{**_SHAPE, **VARIANTS[name], **changes})
    model = transformers.Phi3ForCausalLM(cfg).eval()
    _perturb_norms(model)
    qk = (cfg.num_attention_heads + cfg.num_key_value_heads) * (cfg.hidden_size // cfg.num_attention_heads)
    for n, p in model.named_parameters():
        if n.endswith("qkv_proj.weight"):
            p[:qk].mul_(4.0)
    model.save_pretrained(path)
    return model


# ---------------------------------------------------------------- logits
@pytest.mark.parametrize("seq", [SHORT_SEQ, LONG_SEQ], ids=["short-regime", "long-regime"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_phi3_logits_equal_transformers(tmp_path, variant, seq):
    hf_model = make_phi3(variant, tmp_path)
    ours, cfg = load_hf_checkpoint(str(tmp_path))
    ref, got = logits_of(hf_model, random_tokens(seq)), logits_of(ours, random_tokens(seq))
    assert ref.std() > 0.1
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_phi3_features_are_read(tmp_path):
    cfgs = {}
    for name in VARIANTS:
        make_phi3(name, tmp_path / name)
        cfgs[name] = load_hf_checkpoint(str(tmp_path / name))[1]
    lr, partial, window = cfgs["longrope"], cfgs["partial"], cfgs["window"]
    for cfg in cfgs.values():
        assert cfg.normalization == "RMSNorm" and cfg.swiglu and not cfg.add_bias_linear and not cfg.add_qkv_bias
        assert (cfg.num_key_value_heads, cfg.head_dim, cfg.norm_epsilon) == (2, 16, 1e-6)
    assert (lr.rope_scaling_type, lr.rope_original_max_position_embeddings) == ("longrope", 32)
    assert lr.rope_scaling_factor == 4.0  # max_position_embeddings / original: the config has no factor
    assert lr.rope_short_factor == _SHORT8 and lr.rope_long_factor == _LONG8 and lr.rope_attention_factor is None
    assert lr.untie_embeddings_and_output_weights and lr.rotary_percent == 1.0 and lr.sliding_window is None
    assert (partial.rotary_percent, partial.rotary_dim, partial.rope_attention_factor) == (0.75, 12, 1.2)
    assert not partial.untie_embeddings_and_output_weights and partial.rotary_base == 5e4
    assert window.rope_scaling_type is None and [window.window(i) for i in range(2)] == [16, 16]


def test_longrope_regime_is_transformers_rule():
    """Long factors once the longest position + 1 exceeds original_max_position_embeddings (transformers'
    longrope_frequency_update), the same cos bit for bit at original and original + 1 tokens; the attention factor
    sqrt(1 + ln(4) / ln(32)) in both regimes."""
    import math

    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    from megatron.hf_config import model_config_from_hf
    from megatron.model.rotary import RotaryEmbedding, rope_frequencies

    for name in ("longrope", "partial"):
        hf = transformers.Phi3Config(**{**_SHAPE, **VARIANTS[name]})
        cfg = model_config_from_hf(hf.to_dict())
        hf_rope, ours = Phi3RotaryEmbedding(hf), RotaryEmbedding(cfg, fused=False)
        for length in (ORIGINAL, ORIGINAL + 1, LONG_SEQ, 8):  # transformers switches back on a shorter batch too
            pos = torch.arange(length)[None]
            cos, sin = hf_rope(torch.zeros(1), pos)
            freqs, factor = ours.frequencies(pos, torch.device("cpu"))
            ref_freqs, ref_factor = rope_frequencies(cfg, extent=pos.max() + 1)
            assert torch.equal(freqs, ref_freqs) and factor == ref_factor
            angles = pos[..., None].float() * freqs
            emb = torch.cat([angles, angles], -1)
            torch.testing.assert_close(emb.cos() * factor, cos, rtol=0, atol=0)
            torch.testing.assert_close(emb.sin() * factor, sin, rtol=0, atol=0)
            factors = cfg.rope_long_factor if length > ORIGINAL else cfg.rope_short_factor
            assert torch.equal(freqs, rope_frequencies(dataclasses.replace(cfg, rope_short_factor=factors))[0])
    plain = model_config_from_hf(transformers.Phi3Config(**{**_SHAPE, **VARIANTS["longrope"]}).to_dict())
    assert rope_frequencies(plain)[1] == math.sqrt(1 + math.log(4) / math.log(32))


def test_long_factors_move_the_logits_only_past_the_original_length(tmp_path):
    from megatron.hf import build_model, hf_to_megatron_state_dict, read_hf_dir

    make_phi3("longrope", tmp_path)
    config, hf_sd, _ = read_hf_dir(str(tmp_path))
    state_dict, cfg = hf_to_megatron_state_dict(config, hf_sd)
    short_only = dataclasses.replace(cfg, rope_long_factor=cfg.rope_short_factor)
    a, b = build_model(cfg, state_dict), build_model(short_only, state_dict)
    assert torch.equal(logits_of(a, random_tokens(ORIGINAL)), logits_of(b, random_tokens(ORIGINAL)))
    assert (logits_of(a, random_tokens(ORIGINAL + 1)) - logits_of(b, random_tokens(ORIGINAL + 1))).abs().max() > 1e-3


# ---------------------------------------------------------------- conversion both ways
def _v4_layout(path):
    """Rewrite config.json in transformers 4's layout: rope_theta + rope_scaling (+ partial_rotary_factor) on top."""
    config = json.loads((path / "config.json").read_text())
    params = dict(config.pop("rope_parameters"))
    config["rope_theta"] = params.pop("rope_theta")
    partial = params.pop("partial_rotary_factor", 1.0)
    if partial != 1.0:
        config["partial_rotary_factor"] = partial
    params.pop("original_max_position_embeddings", None)  # Phi-3 keeps it on top
    config["rope_scaling"] = params if params.pop("rope_type") != "default" else None
    if config["rope_scaling"] is not None:
        config["rope_scaling"]["type"] = "longrope"  # the key Phi-3-mini-128k's config.json spells it with
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("layout", ["v5", "v4"], ids=["rope_parameters", "rope_scaling"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_phi3_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path, variant, layout):
    src, mid, back = tmp_path / "hf", tmp_path / "ours", tmp_path / "back"
    make_phi3(variant, src)
    if layout == "v4":
        _v4_layout(src)
    assert convert(["hf-to-megatron", "--input", str(src), "--output", str(mid)]) == 0
    # the fused projections are our layout as they are: qkv_proj = [q; k; v] = qkv, gate_up_proj = [gate; up] = fc1
    from megatron.training.weights import read_weights_dir

    ours_sd, cfg, _ = read_weights_dir(str(mid))
    ref = safetensors_of(src)
    for i in range(cfg.num_layers):
        qkv_proj = ref[f"model.layers.{i}.self_attn.qkv_proj.weight"]
        assert torch.equal(ours_sd[f"layers.{i}.attention.qkv.weight"], qkv_proj)
        assert torch.equal(ours_sd[f"layers.{i}.mlp.fc1.weight"], ref[f"model.layers.{i}.mlp.gate_up_proj.weight"])
    assert convert(["megatron-to-hf", "--input", str(mid), "--output", str(back)]) == 0
    got = safetensors_of(back)
    assert sorted(ref) == sorted(got)
    assert all(torch.equal(got[k], t) and got[k].dtype == t.dtype for k, t in ref.items())
    assert json.loads((src / "config.json").read_text()) == json.loads((back / "config.json").read_text())
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(back).eval()
    ours, _ = load_hf_checkpoint(str(src))
    for seq in (SHORT_SEQ, LONG_SEQ):
        torch.testing.assert_close(
            logits_of(hf_model, random_tokens(seq)), logits_of(ours, random_tokens(seq)), rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("variant,auto", [("longrope", "LlamaForCausalLM"), ("partial", "Phi3ForCausalLM"),
                                          ("window", "MistralForCausalLM")])  # fmt: skip
def test_generated_config_loads_in_transformers_from_either_layout(tmp_path, variant, auto):
    """A model of ours without a source exports a config.json that transformers builds the model from, with our
    logits in both regimes; the family chosen is the first that computes it (partial rotary: only Phi-3), and
    Phi3ForCausalLM asked for explicitly (as a Phi-3 source's family is) computes it too. Either RoPE layout alone
    (transformers 4 / vLLM, 5) reads the same."""
    from megatron.hf import hf_config_from_model, megatron_to_hf_state_dict, write_hf_dir
    from megatron.hf_config import model_config_from_hf
    from megatron.hf_phi3_neox import phi3_neox_hf_config

    make_phi3(variant, tmp_path / "hf")
    ours, cfg = load_hf_checkpoint(str(tmp_path / "hf"))
    for arch in dict.fromkeys((auto, "Phi3ForCausalLM")):
        config = hf_config_from_model(cfg) if arch == auto else phi3_neox_hf_config(cfg, arch)
        hf_sd, got_arch = megatron_to_hf_state_dict(cfg, ours.state_dict(), arch=arch)
        assert got_arch == arch and config["architectures"] == [arch]
        assert model_config_from_hf(config) == cfg
        v4 = {k: v for k, v in config.items() if k != "rope_parameters"}
        v5 = {k: v for k, v in config.items() if k not in ("rope_scaling", "rope_theta")}
        for name, layout in (("both", config), ("v4", v4), ("v5", v5)):
            assert model_config_from_hf(layout) == cfg, (arch, name)
            write_hf_dir(str(tmp_path / arch / name), layout, hf_sd)
            hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / arch / name).eval()
            assert type(hf_model).__name__ == arch
            for seq in (SHORT_SEQ, LONG_SEQ):
                torch.testing.assert_close(logits_of(hf_model, random_tokens(seq)), logits_of(ours, random_tokens(seq)), rtol=0,
                                           atol=1e-5)  # fmt: skip


def test_model_args_and_their_flags_rebuild_the_config(tmp_path):
    """hf-to-megatron's model_args.json, and model_args.txt parsed as flags (the factor lists as numbers), give the
    converted config back."""
    from megatron.arguments import parse_args
    from megatron.training.weights import config_from_model_args, read_model_args

    make_phi3("partial", tmp_path / "hf")
    _, cfg = load_hf_checkpoint(str(tmp_path / "hf"))
    assert convert(["hf-to-megatron", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "init")]) == 0
    saved = read_model_args(str(tmp_path / "init"))
    assert saved["rope_short_factor"] == _SHORT8[:6] and saved["rotary_percent"] == 0.75
    assert config_from_model_args(saved) == cfg
    text = (tmp_path / "init" / "model_args.txt").read_text()
    assert "--rope-long-factor 1.0 1.5 2.5 4.0 6.0 9.0" in text and "--rotary-percent 0.75" in text
    parsed = parse_args(shlex.split(text) + ["--seq-length", str(cfg.seq_length), "--mock-data"]).model
    assert parsed == cfg


# ---------------------------------------------------------------- SP=2 = SP=1
PHI3_FEATURES = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--num-key-value-heads", "2",
    "--seq-length", "64", "--vocab-size", "128", "--make-vocab-size-divisible-by", "64",
    "--use-rotary-position-embeddings", "--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear",
    "--untie-embeddings-and-output-weights", "--rotary-percent", "0.75", "--rope-scaling-type", "longrope",
    "--rope-original-max-position-embeddings", "40", "--max-position-embeddings", "160", "--rope-scaling-factor", "4",
    "--rope-short-factor", "1", "1", "1", "1", "1", "1", "--rope-long-factor", "8", "16", "32", "64", "128", "256",
    "--init-method-std", "0.1",  # q and k large enough that the factor lists move the loss
]  # fmt: skip


def test_sp2_equals_sp1_with_longrope_and_partial_rotary(tmp_path):
    """64-token samples against an original length of 40: SP=1 takes the long factors. Under SP=2 rank 0 holds
    positions 0..31, below 40 by themselves; the rule decided on the global length (the max over the SP ranks)
    takes the long factors there too, so SP=2 trains exactly like SP=1."""
    ref = train_records(tmp_path, "phi3_sp1", 1, PHI3_FEATURES + TRAIN)
    assert ref[-1]["lm_loss"] < ref[0]["lm_loss"], "the reference run must learn something"
    got = train_records(tmp_path, "phi3_sp2", 2, PHI3_FEATURES + TRAIN + ["--ds-sequence-parallel-size", "2"])
    assert_close_records(ref, got, what="longrope + partial rotary SP=2")


# ---------------------------------------------------------------- the fused RoPE kernel


@pytest.mark.parametrize("variant,d", [("longrope", 16), ("partial", 16), ("partial", 96)],
                         ids=["longrope", "longrope-partial", "phi3-mini-head-dim-96"])  # fmt: skip
def test_fused_rope_with_longrope_and_partial_rotary_equals_eager(variant, d):
    """The kernel takes longrope's (long-regime) frequencies and attention factor and rotates the first rotary-dim
    dims only (6 or 36 frequencies: halves that are not powers of two), on strided views of a packed QKV at global
    positions past the original length: values and gradients equal the eager path's."""
    from megatron.config import ModelConfig
    from megatron.model.rotary import apply_rotary, rope_frequencies

    dev = kernel_device()
    params = VARIANTS[variant]["rope_parameters"]
    partial = params.get("partial_rotary_factor", 1.0)
    n = int(d * partial) // 2
    stretch = lambda f: [f[i % len(f)] for i in range(n)]  # noqa: E731
    cfg = ModelConfig(hidden_size=4 * d, num_attention_heads=4, num_key_value_heads=2, seq_length=64,
                      max_position_embeddings=128, use_rotary_position_embeddings=True, rotary_percent=partial,
                      rope_scaling_type="longrope", rope_original_max_position_embeddings=ORIGINAL,
                      rope_scaling_factor=4.0, rope_short_factor=stretch(_SHORT8), rope_long_factor=stretch(_LONG8),
                      rope_attention_factor=params.get("attention_factor"))  # fmt: skip
    b, s, h, g = 2, 6, 4, 2
    pos = (torch.arange(s, device=dev) + 40).expand(b, s)  # a later SP rank's global positions, past the original
    freqs, factor = rope_frequencies(cfg, dev, extent=torch.tensor(s + 40, device=dev))
    assert freqs.numel() == n and factor != 1.0
    grads, outs = [], []
    for fused in (True, False):
        qkv = torch.randn(b, s, (h + 2 * g) * d, generator=torch.Generator().manual_seed(0)).to(dev)
        qkv.requires_grad_(True)
        q, k, _ = qkv.split([h * d, g * d, g * d], dim=-1)
        qo, ko = apply_rotary(q.view(b, s, h, d), k.view(b, s, g, d), pos, freqs, fused, factor)
        w = torch.randn(qo.shape, generator=torch.Generator().manual_seed(1)).to(dev)
        wk = torch.randn(ko.shape, generator=torch.Generator().manual_seed(2)).to(dev)
        ((qo * w).sum() + (ko * wk).sum()).backward()
        outs.append((qo.detach(), ko.detach()))
        grads.append(qkv.grad)
    for a, r in zip(outs[0], outs[1]):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)
    rot = 2 * n
    assert torch.equal(outs[0][0][..., rot:], q.view(b, s, h, d)[..., rot:].detach())  # the rest passes through


def test_fused_rope_in_the_model_equals_transformers(tmp_path):
    """Our Phi-4-mini-style model with the fused kernel in every layer (longrope, partial rotary) gives
    transformers' logits past the original length."""
    dev = kernel_device()
    hf_model = make_phi3("partial", tmp_path)
    ours, _ = load_hf_checkpoint(str(tmp_path), device=dev)
    for layer in ours.layers:
        layer.attention.rotary.fused = True
    got = logits_of(ours, random_tokens(40).to(dev)).cpu()
    torch.testing.assert_close(got, logits_of(hf_model, random_tokens(40)), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "change,words",
    [
        ({"architectures": ["Phi3SmallForCausalLM"]}, ["Phi3SmallForCausalLM", "blocksparse"]),
        ({"architectures": ["PhiMoEForCausalLM"]}, ["PhiMoEForCausalLM", "mixture-of-experts"]),
        ({"hidden_act": "gelu"}, ["hidden_act=gelu"]),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, ["'linear'", "longrope"]),
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, ["without short_factor and long_factor"]),
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 3,
                              "long_factor": [1.0] * 3}}, ["8 positive numbers", "got 3"]),
    ],
    ids=["phi3-small", "phimoe", "activation", "rope-type", "no-factors", "factor-count"],
)  # fmt: skip
def test_phi3_refusals_are_one_line(tmp_path, capsys, change, words):
    make_phi3("longrope", tmp_path)
    assert_conversion_refused(tmp_path, capsys, change, *words)


def test_longrope_flags_are_checked():
    from megatron.config import ModelConfig

    base = dict(use_rotary_position_embeddings=True, hidden_size=64, num_attention_heads=4,
                rope_scaling_type="longrope")  # fmt: skip
    with pytest.raises(ConfigError, match="needs --rope-original-max-position-embeddings"):
        ModelConfig(**base, rope_short_factor=[1.0] * 8, rope_long_factor=[1.0] * 8)
    with pytest.raises(ConfigError, match="--rope-long-factor with 8 positive numbers"):
        ModelConfig(**base, rope_original_max_position_embeddings=32, rope_short_factor=[1.0] * 8)
    with pytest.raises(ConfigError, match="are longrope's"):
        ModelConfig(use_rotary_position_embeddings=True, rope_short_factor=[1.0] * 8)
    ok = ModelConfig(**base, rope_original_max_position_embeddings=32, rope_short_factor="1 2 3 4",
                     rope_long_factor=[1, 2, 3, 4], rotary_percent=0.5)  # fmt: skip
    assert ok.rope_short_factor == [1.0, 2.0, 3.0, 4.0] and ok.rotary_dim == 8
