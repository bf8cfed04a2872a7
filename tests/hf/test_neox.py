"""GPT-NeoX (GPTNeoXForCausalLM, Pythia) computes what transformers computes, and converts both ways bit for bit.

Tiny models from transformers' own GPTNeoXConfig (random weights, perturbed norms and biases, q and k scaled up so
that RoPE matters; fp32): Pythia-style (parallel residual, rotary_pct 0.25, untied embed_out), a sequential residual
with half the head rotated and a tanh GeLU, dynamic NTK with partial rotary past its context (tied), and yarn with
partial rotary. Logits equal transformers' to 1e-5 at a sequence past every RoPE's original length, and the parallel
residual and the rotary fraction each move them (the match is not vacuous). The per-head fused query_key_value
([heads, 3, d] rows) maps onto our [q; k; v] and back exactly; HF -> ours -> HF is bit-exact (embed_out included)
with config.json in both RoPE layouts, and transformers loads the export with equal logits; a config we generate
without a source loads in transformers from either layout alone (rotary_emb_base / rotary_pct for 4.x,
rope_parameters for 5.x). model_args.json and its flags round-trip. SP=2 trains like SP=1 with the parallel residual
and partial rotary. The fused Triton RoPE kernel (TRITON_INTERPRET=1 on CPU) rotates partial heads as the eager
path does (Pythia-2.8b's head dim 80: a rotary half of 10), in the model too. Refusals are one line.
"""

import dataclasses
import json
import os
import shlex

import pytest
import torch

if not torch.cuda.is_available():  # the fused RoPE kernel in Triton's interpreter (set before it is first imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")

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

SEQ = 80
_SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              layer_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, max_position_embeddings=128)  # fmt: skip
VARIANTS = {
    # Pythia: parallel residual, 25% rotary (4 of 16 dims), untied embed_out
    "pythia": dict(rotary_pct=0.25, rotary_emb_base=1e4),
    # sequential residual, half of each head rotated, gelu_pytorch_tanh
    "sequential": dict(use_parallel_residual=False, rotary_pct=0.5, rotary_emb_base=5e5,
                       hidden_act="gelu_pytorch_tanh"),
    # dynamic NTK on the rotary dims (d = 8 in its exponent) past a 32-token context, tied
    "dynamic": dict(max_position_embeddings=32, tie_word_embeddings=True, rope_parameters={
        "rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4, "partial_rotary_factor": 0.5}),
    # yarn over the rotary dims (its ramp over 6 frequencies)
    "yarn": dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4, "partial_rotary_factor": 0.75,
                                  "original_max_position_embeddings": 32}),
}  # fmt: skip


@torch.no_grad()
def make_neox(name, path, seed=0, **changes):
    """VARIANTS[name] (``changes`` to its config) with random weights, norms and biases perturbed, q and k x4."""
    torch.manual_seed(seed)
    cfg = transformers.GPTNeoXConfig(**{**_SHAPE, **VARIANTS[name], **changes})
    model = transformers.GPTNeoXForCausalLM(cfg).eval()
    _perturb_norms(model)
    d = cfg.hidden_size // cfg.num_attention_heads
    for n, p in model.named_parameters():
        if n.endswith("query_key_value.weight"):
            p.view(cfg.num_attention_heads, 3, d, -1)[:, :2].mul_(4.0)  # q and k of every head
    model.save_pretrained(path)
    return model


# ---------------------------------------------------------------- logits
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_neox_logits_equal_transformers(tmp_path, variant):
    hf_model = make_neox(variant, tmp_path)
    ours, cfg = load_hf_checkpoint(str(tmp_path))
    ref, got = logits_of(hf_model, random_tokens()), logits_of(ours, random_tokens())
    assert ref.std() > 0.1
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    dynamic = cfg.rope_scaling_type == "dynamic"
    original = cfg.max_position_embeddings if dynamic else cfg.rope_original_max_position_embeddings
    assert original is None or original < SEQ


def test_neox_features_are_read(tmp_path):
    cfgs = {}
    for name in VARIANTS:
        make_neox(name, tmp_path / name)
        cfgs[name] = load_hf_checkpoint(str(tmp_path / name))[1]
    for cfg in cfgs.values():
        assert cfg.normalization == "LayerNorm" and not cfg.gated_mlp and cfg.add_bias_linear
        assert cfg.use_rotary_position_embeddings and cfg.num_key_value_heads == cfg.num_attention_heads == 4
    p, s, dyn, y = cfgs["pythia"], cfgs["sequential"], cfgs["dynamic"], cfgs["yarn"]
    assert p.parallel_residual and (p.rotary_percent, p.rotary_dim, p.rotary_base) == (0.25, 4, 1e4)
    assert p.activation == "gelu" and p.untie_embeddings_and_output_weights
    assert not s.parallel_residual and (s.rotary_percent, s.rotary_base, s.activation) == (0.5, 5e5, "gelu_tanh")
    assert dyn.rope_scaling_type == "dynamic" and dyn.rotary_dim == 8 and not dyn.untie_embeddings_and_output_weights
    assert y.rope_scaling_type == "yarn" and y.rotary_dim == 12 and y.rope_original_max_position_embeddings == 32
    for name in VARIANTS:  # the parameter count counts the LayerNorm and attention biases
        model, cfg = load_hf_checkpoint(str(tmp_path / name))
        assert cfg.num_parameters() == sum(p.numel() for p in model.parameters()), name


@pytest.mark.parametrize("changes", [{"parallel_residual": False}, {"rotary_percent": 1.0}, {"rotary_percent": 0.5}])
def test_each_neox_feature_changes_the_logits(tmp_path, changes):
    from megatron.hf import build_model, hf_to_megatron_state_dict, read_hf_dir

    hf_model = make_neox("pythia", tmp_path)
    config, hf_sd, _ = read_hf_dir(str(tmp_path))
    state_dict, cfg = hf_to_megatron_state_dict(config, hf_sd)
    ref = logits_of(hf_model, random_tokens())
    got = logits_of(build_model(dataclasses.replace(cfg, **changes), state_dict), random_tokens())
    assert (got - ref).abs().max() > 1e-3, changes


# ---------------------------------------------------------------- conversion both ways
def test_fused_query_key_value_maps_onto_our_qkv(tmp_path):
    """NeoX's rows are per head [q_h; k_h; v_h]; ours are [q_0 .. q_h-1; k ..; v ..]: row block (t, j) of ours is
    HF's block (j, t), for the weight and the bias, and the way back is the inverse permutation."""
    from megatron.hf import hf_to_megatron_state_dict, megatron_to_hf_state_dict, read_hf_dir

    make_neox("pythia", tmp_path)
    config, hf_sd, layout = read_hf_dir(str(tmp_path))
    ours, cfg = hf_to_megatron_state_dict(config, dict(hf_sd))
    h, d = cfg.num_attention_heads, cfg.head_dim
    for suffix in ("weight", "bias"):
        theirs = hf_sd[f"gpt_neox.layers.1.attention.query_key_value.{suffix}"]
        mine = ours[f"layers.1.attention.qkv.{suffix}"]
        for t in range(3):
            for j in range(h):
                ours_rows, hf_rows = (t * h + j) * d, (j * 3 + t) * d
                assert torch.equal(mine[ours_rows : ours_rows + d], theirs[hf_rows : hf_rows + d])
    back, arch = megatron_to_hf_state_dict(cfg, ours, names=list(hf_sd))
    assert arch == "GPTNeoXForCausalLM" and sorted(back) == sorted(hf_sd)
    assert all(torch.equal(back[k], v) for k, v in hf_sd.items())
    assert "embed_out.weight" in back


def _v4_layout(path):
    """config.json as transformers 4 wrote it: rotary_emb_base + rotary_pct on top, rope_scaling (or null)."""
    config = json.loads((path / "config.json").read_text())
    params = dict(config.pop("rope_parameters"))
    config["rotary_emb_base"] = params.pop("rope_theta")
    config["rotary_pct"] = params.pop("partial_rotary_factor")
    config["rope_scaling"] = params if params["rope_type"] != "default" else None
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("layout", ["v5", "v4"], ids=["rope_parameters", "rotary_pct"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_neox_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path, variant, layout):
    src, mid, back = tmp_path / "hf", tmp_path / "ours", tmp_path / "back"
    make_neox(variant, src)
    if layout == "v4":
        _v4_layout(src)
    assert convert(["hf-to-megatron", "--input", str(src), "--output", str(mid)]) == 0
    assert convert(["megatron-to-hf", "--input", str(mid), "--output", str(back)]) == 0
    ref, got = safetensors_of(src), safetensors_of(back)
    assert sorted(ref) == sorted(got)
    assert all(torch.equal(got[k], t) and got[k].dtype == t.dtype for k, t in ref.items())
    assert json.loads((src / "config.json").read_text()) == json.loads((back / "config.json").read_text())
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(back).eval()
    ours, _ = load_hf_checkpoint(str(src))
    torch.testing.assert_close(
        logits_of(hf_model, random_tokens()), logits_of(ours, random_tokens()), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_generated_config_loads_in_transformers_from_either_layout(tmp_path, variant):
    """A model of ours without a source exports a GPTNeoXForCausalLM config.json (the one family with the parallel
    residual or LayerNorm + partial rotary) that transformers builds it from with our logits; either layout alone
    (rotary_emb_base / rotary_pct / rope_scaling, or rope_parameters) reads the same, here and in transformers."""
    from megatron.hf import hf_config_from_model, megatron_to_hf_state_dict, write_hf_dir
    from megatron.hf_config import model_config_from_hf

    make_neox(variant, tmp_path / "hf")
    ours, cfg = load_hf_checkpoint(str(tmp_path / "hf"))
    config = hf_config_from_model(cfg)
    hf_sd, arch = megatron_to_hf_state_dict(cfg, ours.state_dict())
    assert arch == "GPTNeoXForCausalLM" and ("embed_out.weight" in hf_sd) == cfg.untie_embeddings_and_output_weights
    v4 = {k: v for k, v in config.items() if k != "rope_parameters"}
    v5 = {k: v for k, v in config.items() if k not in ("rope_scaling", "rotary_emb_base", "rotary_pct")}
    for name, layout in (("both", config), ("v4", v4), ("v5", v5)):
        assert model_config_from_hf(layout) == cfg, name
        write_hf_dir(str(tmp_path / name), layout, hf_sd)
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()
        assert type(hf_model).__name__ == arch
        torch.testing.assert_close(
            logits_of(hf_model, random_tokens()), logits_of(ours, random_tokens()), rtol=0, atol=1e-5
        )


def test_model_args_and_their_flags_rebuild_the_config(tmp_path):
    from megatron.arguments import parse_args
    from megatron.training.weights import config_from_model_args, read_model_args

    make_neox("pythia", tmp_path / "hf")
    _, cfg = load_hf_checkpoint(str(tmp_path / "hf"))
    assert convert(["hf-to-megatron", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "init")]) == 0
    saved = read_model_args(str(tmp_path / "init"))
    assert saved["parallel_residual"] is True and saved["rotary_percent"] == 0.25
    assert config_from_model_args(saved) == cfg
    text = (tmp_path / "init" / "model_args.txt").read_text()
    assert "--parallel-residual" in text and "--rotary-percent 0.25" in text
    parsed = parse_args(shlex.split(text) + ["--seq-length", str(cfg.seq_length), "--mock-data"]).model
    assert parsed == cfg


# ---------------------------------------------------------------- SP=2 = SP=1
NEOX_FEATURES = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64",
    "--vocab-size", "128", "--make-vocab-size-divisible-by", "64", "--use-rotary-position-embeddings",
    "--rotary-percent", "0.25", "--parallel-residual", "--untie-embeddings-and-output-weights",
    "--init-method-std", "0.1",
]  # fmt: skip


def test_sp2_equals_sp1_with_parallel_residual_and_partial_rotary(tmp_path):
    ref = train_records(tmp_path, "neox_sp1", 1, NEOX_FEATURES + TRAIN)
    assert ref[-1]["lm_loss"] < ref[0]["lm_loss"], "the reference run must learn something"
    got = train_records(tmp_path, "neox_sp2", 2, NEOX_FEATURES + TRAIN + ["--ds-sequence-parallel-size", "2"])
    assert_close_records(ref, got, what="parallel residual + partial rotary SP=2")


# ---------------------------------------------------------------- the fused RoPE kernel


@pytest.mark.parametrize("d,percent", [(16, 0.25), (80, 0.25), (64, 0.5)], ids=["pythia-tiny", "pythia-2.8b", "half"])
def test_fused_rope_partial_rotary_equals_eager(d, percent):
    """Only the first int(d * percent) dims rotate; the rest are copied through (their gradient too): values and
    gradients equal the eager path's on strided views of a packed QKV at global positions."""
    from megatron.model.rotary import apply_rotary, inv_freq

    dev = kernel_device()
    b, s, h = 2, 5, 3
    freqs = inv_freq(int(d * percent), 1e4, dev)
    pos = (torch.arange(s, device=dev) + 1000).expand(b, s)
    outs, grads = [], []
    for fused in (True, False):
        qkv = torch.randn(b, s, 3 * h * d, generator=torch.Generator().manual_seed(0)).to(dev).requires_grad_(True)
        q, k, _ = qkv.split([h * d] * 3, dim=-1)
        qo, ko = apply_rotary(q.view(b, s, h, d), k.view(b, s, h, d), pos, freqs, fused)
        w = torch.randn(qo.shape, generator=torch.Generator().manual_seed(1)).to(dev)
        ((qo * w).sum() + (ko * w).sum()).backward()
        outs.append((qo.detach(), ko.detach()))
        grads.append(qkv.grad)
    for a, r in zip(outs[0], outs[1]):
        torch.testing.assert_close(a, r, rtol=0, atol=2e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)
    rot = int(d * percent)
    assert torch.equal(outs[0][0][..., rot:], q.view(b, s, h, d)[..., rot:].detach())
    assert torch.equal(grads[0][..., rot:d], w[:, :, 0, rot:])  # head 0 of q: the pass-through gradient is the input's


def test_fused_rope_in_the_model_equals_transformers(tmp_path):
    dev = kernel_device()
    hf_model = make_neox("pythia", tmp_path)
    ours, _ = load_hf_checkpoint(str(tmp_path), device=dev)
    for layer in ours.layers:
        layer.attention.rotary.fused = True
    got = logits_of(ours, random_tokens(24).to(dev)).cpu()
    torch.testing.assert_close(got, logits_of(hf_model, random_tokens(24)), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "change,words",
    [
        ({"attention_bias": False}, ["attention_bias=false"]),
        ({"hidden_act": "relu"}, ["hidden_act=relu"]),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [1, 1]}}, ["mrope_section"]),
    ],
    ids=["attention-bias", "activation", "rope-keys"],
)  # fmt: skip
def test_neox_refusals_are_one_line(tmp_path, capsys, change, words):
    make_neox("pythia", tmp_path)
    assert_conversion_refused(tmp_path, capsys, change, *words)


def test_shapes_without_an_hf_family_are_refused_in_one_line():
    from megatron.config import ConfigError, ModelConfig
    from megatron.hf_config import hf_architecture_for

    base = dict(use_rotary_position_embeddings=True, hidden_size=64, num_attention_heads=4)
    for fields in (dict(parallel_residual=True, normalization="RMSNorm", swiglu=True, add_bias_linear=False),
                   dict(rotary_percent=0.5, num_key_value_heads=2)):  # fmt: skip
        with pytest.raises(ConfigError, match="only as Phi3ForCausalLM .* or GPTNeoXForCausalLM"):
            hf_architecture_for(ModelConfig(**base, **fields))
    assert hf_architecture_for(ModelConfig(**base, rotary_percent=0.5)) == "GPTNeoXForCausalLM"
    assert hf_architecture_for(ModelConfig(**base, rotary_percent=0.5, normalization="RMSNorm", swiglu=True,
                                           add_bias_linear=False)) == "Phi3ForCausalLM"  # fmt: skip
    with pytest.raises(ConfigError, match="--rotary-percent 0.2 .* even number"):
        ModelConfig(**base, rotary_percent=0.2)
