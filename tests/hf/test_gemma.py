"""Gemma, Gemma-2 and Gemma-3 (Gemma3ForCausalLM) compute what transformers computes.

Each family's tiny model (transformers' own config classes, random weights, perturbed norms, q and k scaled up
so that attention, its soft-cap, the windows and RoPE matter; fp32, transformers' eager attention) gives
transformers' logits to 1e-5 at a sequence longer than every window, and each Gemma feature changes the logits
(so the match is not vacuous). The embedding scale rounds in bf16 as transformers rounds it; GeGLU equals
transformers' GemmaMLP (the exact GeLU does not). Also here: config.json keys left out take transformers'
defaults; Gemma-3's RoPE in the 4.x layout; model_args.json and its flags rebuild the model config; the
final-logit soft-cap in the tiled loss equals the full-logits loss (values and gradients); SP=2 trains exactly
like SP=1 with every Gemma feature on; the refusals (one line each); and, with -m gpu on CUDA, Gemma-3 through
the fused RoPE kernel and our Triton attention, and the soft-capped loss in the Triton loss kernels.

The shared tests take the FAMILIES entries gemma, gemma2 and gemma3 too: HF -> ours -> HF bit-exact in both
RoPE layouts and generated configs (test_roundtrip.py), logits (test_logits.py), and a converted Gemma-2
trained with SP=2 under ZeRO-3 starting from transformers' loss and exporting to a model that computes the
trained logits (test_train.py)."""

import dataclasses
import json
import shlex

import pytest
import torch

from megatron.config import AttentionConfig, ConfigError
from megatron.hf import load_hf_checkpoint
from tests.hf.conftest import (
    _SHAPE,
    FAMILIES,
    FAMILY_SEQ,
    _perturb_norms,
    assert_conversion_refused,
    logits_of,
    random_tokens,
    transformers,
)
from tests.launch import TRAIN, assert_close_records, train_records
from tools.convert_checkpoint import main as convert

GEMMAS = ("gemma", "gemma2", "gemma3")


@torch.no_grad()
def _make(name, path, seed=0, **changes):
    """FAMILIES[name] (``changes`` to its config) with random weights, norms perturbed twice, q and k x4, saved."""
    config_cls, model_cls, kwargs = FAMILIES[name]
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**{**_SHAPE, **kwargs, **changes}))
    model.eval()
    _perturb_norms(model)
    for n, p in model.named_parameters():
        if n.endswith(("q_proj.weight", "k_proj.weight")):
            p.mul_(4.0)
        if "norm" in n:  # Gemma's norms are offsets from 1: make them matter more than make_family does
            p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("family", GEMMAS)
def test_gemma_logits_equal_transformers_eager(tmp_path, family):
    hf_model = _make(family, tmp_path)
    assert hf_model.config._attn_implementation == "eager"
    ours, cfg = load_hf_checkpoint(str(tmp_path))
    ref, got = logits_of(hf_model, random_tokens()), logits_of(ours, random_tokens())
    assert ref.std() > 0.1
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert all(cfg.window(i) is None or cfg.window(i) < FAMILY_SEQ for i in range(cfg.num_layers))


def test_gemma_features_are_read(tmp_path):
    cfgs = {}
    for name in GEMMAS:
        _make(name, tmp_path / name)
        cfgs[name] = load_hf_checkpoint(str(tmp_path / name))[1]
    for cfg in cfgs.values():
        assert cfg.normalization == "GemmaRMSNorm" and cfg.geglu and cfg.activation == "gelu_tanh"
        assert cfg.scale_embeddings
        assert cfg.kv_channels == 16 and cfg.num_key_value_heads == 2 and not cfg.add_bias_linear
    g1, g2, g3 = cfgs["gemma"], cfgs["gemma2"], cfgs["gemma3"]
    assert not g1.sandwich_norm and g1.query_pre_attn_scalar is None and g1.sliding_window is None
    assert not g1.untie_embeddings_and_output_weights and g2.untie_embeddings_and_output_weights
    assert g2.sandwich_norm and not g2.qk_layernorm and g2.query_pre_attn_scalar == 24.0
    assert (g2.attention_softcap, g2.final_logit_softcap) == (5.0, 3.0)
    assert [g2.window(i) for i in range(2)] == [16, None]  # transformers' default: sliding on even layers
    assert g3.sandwich_norm and g3.qk_layernorm and g3.attention_softcap is None and g3.final_logit_softcap is None
    assert (g3.rotary_base, g3.rotary_base_local) == (1e6, 1e4)
    assert (g3.rope_scaling_type, g3.rope_scaling_factor) == ("linear", 8.0)
    assert [g3.local_rope(i) for i in range(2)] == [True, False]
    ours, _ = load_hf_checkpoint(str(tmp_path / "gemma3"))
    assert type(ours.layers[0].attention.q_norm).__name__ == "GemmaRMSNorm"
    for name in GEMMAS:  # the parameter count (memory estimates, the start-up line) counts sandwich and q/k norms
        model, cfg = load_hf_checkpoint(str(tmp_path / name))
        assert cfg.num_parameters() == sum(p.numel() for p in model.parameters()), name


# Each Gemma feature turned off in our config alone moves the logits away from transformers'.
FEATURES = {
    "gemma": [{"scale_embeddings": False}, {"normalization": "RMSNorm"}],  # RMSNorm: w, not 1 + w
    "gemma2": [{"sandwich_norm": False}, {"query_pre_attn_scalar": None}, {"attention_softcap": None},
               {"final_logit_softcap": None}, {"sliding_window": None, "layer_types": []}],
    "gemma3": [{"qk_layernorm": False}, {"rotary_base_local": None}, {"rope_scaling_type": None}],
}  # fmt: skip


@pytest.mark.parametrize("family", GEMMAS)
def test_each_gemma_feature_changes_the_logits(tmp_path, family):
    from megatron.hf import build_model, hf_to_megatron_state_dict, read_hf_dir
    from megatron.model.gpt import GPTModel

    hf_model = _make(family, tmp_path)
    config, hf_sd, _ = read_hf_dir(str(tmp_path))
    state_dict, cfg = hf_to_megatron_state_dict(config, hf_sd)
    ref = logits_of(hf_model, random_tokens())
    torch.testing.assert_close(logits_of(build_model(cfg, state_dict), random_tokens()), ref, rtol=0, atol=1e-5)
    for changes in FEATURES[family]:
        changed = dataclasses.replace(cfg, **changes)
        with torch.device("meta"):
            names = set(GPTModel(changed, AttentionConfig(backend="classic")).state_dict())
        sd = {k: v for k, v in state_dict.items() if k in names}  # without the norms a feature drops
        got = logits_of(build_model(changed, sd), random_tokens())
        assert (got - ref).abs().max() > 1e-4, changes  # 10x the tolerance of the logits tests


def test_embedding_scale_is_rounded_to_bf16_as_transformers(tmp_path):
    """In bf16, sqrt(3072) = 55.43 multiplies as 55.5 (transformers' Gemma rounds it to the embeddings' dtype): the
    first layer's input is transformers' bit for bit."""
    _make("gemma", tmp_path, hidden_size=3072, num_attention_heads=8, head_dim=16)
    hf_model = transformers.GemmaForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    ours, _ = load_hf_checkpoint(str(tmp_path), dtype=torch.bfloat16)
    seen = []
    for layer in (hf_model.model.layers[0], ours.layers[0]):
        layer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0]), with_kwargs=True)
    for model in (hf_model, ours):
        logits_of(model, random_tokens())
    assert seen[0].dtype == seen[1].dtype == torch.bfloat16 and torch.equal(seen[0], seen[1])
    plain = ours.word_embeddings(random_tokens())
    assert torch.equal(seen[1], plain * 55.5) and not torch.equal(seen[1], plain * 3072**0.5)


def test_geglu_mlp_equals_transformers_gemma_mlp():
    """Our GeGLU (fc1 = [gate; up], gelu_tanh) is transformers' GemmaMLP (gelu_pytorch_tanh); the exact GeLU is not."""
    from transformers.models.gemma.modeling_gemma import GemmaMLP

    from megatron.config import ModelConfig
    from megatron.model.gpt import MLP

    torch.manual_seed(0)
    hf = GemmaMLP(transformers.GemmaConfig(hidden_size=32, intermediate_size=48)).eval()
    ours = {}
    for act in ("gelu_tanh", "gelu"):
        mlp = MLP(ModelConfig(hidden_size=32, num_attention_heads=2, ffn_hidden_size=48, geglu=True, activation=act,
                              add_bias_linear=False))  # fmt: skip
        mlp.fc1.weight.data = torch.cat([hf.gate_proj.weight, hf.up_proj.weight]).detach().clone()
        mlp.fc2.weight.data = hf.down_proj.weight.detach().clone()
        ours[act] = mlp
    x = 3 * torch.randn(4, 32)
    with torch.no_grad():
        ref = hf(x)
        torch.testing.assert_close(ours["gelu_tanh"](x), ref, rtol=0, atol=1e-6)
        assert (ours["gelu"](x) - ref).abs().max() > 1e-4


def test_missing_keys_take_transformers_defaults(tmp_path):
    """A Gemma-2 config.json without its soft-caps, query_pre_attn_scalar and layer types (older or hand-written
    files): transformers uses its class defaults (50, 30, 256, sliding on even layers), and so do we."""
    _make("gemma2", tmp_path, sliding_window=4096)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar", "layer_types",
                "sliding_window", "hidden_activation"):  # fmt: skip
        config.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf_model = transformers.Gemma2ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert (hf_model.config.attn_logit_softcapping, hf_model.config.final_logit_softcapping) == (50.0, 30.0)
    ours, cfg = load_hf_checkpoint(str(tmp_path))
    assert (cfg.attention_softcap, cfg.final_logit_softcap, cfg.query_pre_attn_scalar) == (50.0, 30.0, 256.0)
    assert cfg.layer_types == ["sliding_attention", "full_attention"] and cfg.sliding_window == 4096
    torch.testing.assert_close(
        logits_of(ours, random_tokens()), logits_of(hf_model, random_tokens()), rtol=0, atol=1e-5
    )


def test_gemma3_rope_in_the_4x_layout_computes_the_same(tmp_path):
    """rope_theta (global) + rope_local_base_freq + rope_scaling, as transformers 4.x and vLLM write Gemma-3:
    transformers and we read the same RoPE (the full layer scaled, the sliding one at its own base)."""
    from megatron.hf_config import model_config_from_hf

    _make("gemma3", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    params = config.pop("rope_parameters")
    assert params["full_attention"] == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
    scaling = {"rope_type": "linear", "factor": 8.0}
    v4 = {**config, "rope_theta": 1e6, "rope_local_base_freq": 1e4, "rope_scaling": scaling}
    (tmp_path / "config.json").write_text(json.dumps(v4))
    assert model_config_from_hf(v4) == model_config_from_hf({**config, "rope_parameters": params})
    hf_model = transformers.Gemma3ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert hf_model.config.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
    ours, _ = load_hf_checkpoint(str(tmp_path))
    torch.testing.assert_close(
        logits_of(ours, random_tokens()), logits_of(hf_model, random_tokens()), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("family", GEMMAS)
def test_model_args_and_their_flags_rebuild_the_config(tmp_path, family):
    """hf-to-megatron's model_args.json, and model_args.txt parsed as flags, give the converted config back."""
    from megatron.arguments import parse_args
    from megatron.training.weights import config_from_model_args, read_model_args

    _make(family, tmp_path / "hf")
    _, cfg = load_hf_checkpoint(str(tmp_path / "hf"))
    assert convert(["hf-to-megatron", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "init")]) == 0
    assert config_from_model_args(read_model_args(str(tmp_path / "init"))) == cfg
    flags = shlex.split((tmp_path / "init" / "model_args.txt").read_text())
    backend = ["--attention-backend", "classic"] if cfg.attention_softcap else []
    parsed = parse_args(flags + backend + ["--seq-length", str(cfg.seq_length), "--mock-data"]).model
    assert parsed == cfg


# ---------------------------------------------------------------- losses
@pytest.mark.parametrize("chunk", [7, 1000])
def test_final_logit_softcap_in_the_tiled_loss_equals_the_full_loss(chunk):
    from megatron.model.gpt import full_logits_cross_entropy
    from megatron.model.tiled import tiled_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(2, 19, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (2, 19))
    y[1, 4] = -100
    g = torch.rand(2, 19, dtype=torch.float64)  # any per-token weight (loss mask x scale)
    out = {}
    for name, fn in (("full", full_logits_cross_entropy), ("tiled", lambda *a, softcap: tiled_cross_entropy(
            *a, chunk=chunk, softcap=softcap))):  # fmt: skip
        h.grad = w.grad = None
        loss = fn(h, w, y, softcap=2.5)
        (loss * g).sum().backward()
        out[name] = (loss.detach(), h.grad.clone(), w.grad.clone())
    torch.testing.assert_close(out["tiled"][0], out["full"][0], rtol=0, atol=0)
    for a, b in zip(out["tiled"][1:], out["full"][1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    uncapped = full_logits_cross_entropy(h, w, y)
    assert (uncapped - out["full"][0]).abs().max() > 0.1  # the cap matters here


def test_liger_and_the_final_logit_softcap_are_refused_in_one_line():
    from megatron.arguments import parse_args

    with pytest.raises(ConfigError, match="^--use-liger-kernel's fused loss has no final-logit soft-cap") as e:
        parse_args(["--final-logit-softcap", "30", "--use-liger-kernel", "--mock-data"])
    assert "\n" not in str(e.value) and "drop --use-liger-kernel" in str(e.value)


def test_attention_softcap_needs_the_classic_backend_in_one_line():
    from megatron.arguments import parse_args

    with pytest.raises(ConfigError, match="^--attention-softcap 50.0 .* computed only by --attention-backend classic"):
        parse_args(["--attention-softcap", "50", "--mock-data"])
    assert parse_args(["--attention-softcap", "50", "--attention-backend", "classic", "--mock-data"])


# ---------------------------------------------------------------- SP=2 = SP=1
GEMMA_FEATURES = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "8", "--num-key-value-heads", "2",
    "--kv-channels", "16", "--seq-length", "64", "--vocab-size", "128", "--make-vocab-size-divisible-by", "64",
    "--use-rotary-position-embeddings", "--normalization", "GemmaRMSNorm", "--geglu", "--activation", "gelu_tanh",
    "--scale-embeddings", "--sandwich-norm", "--qk-layernorm", "--disable-bias-linear", "--query-pre-attn-scalar",
    "24", "--attention-softcap", "5", "--final-logit-softcap", "3", "--sliding-window", "16", "--layer-types",
    "sliding_attention", "full_attention", "--rotary-base", "1e6", "--rotary-base-local", "1e4",
    "--rope-scaling-type", "linear", "--rope-scaling-factor", "8", "--attention-backend", "classic",
]  # fmt: skip


def test_sp2_zero3_equals_sp1_with_every_gemma_feature(tmp_path):
    """(1 + w) norms and q/k norms, sandwich norms, GeGLU, the embedding scale, query_pre_attn_scalar, both
    soft-caps (SP=2 takes the tiled loss, SP=1 the full logits), a window and a local RoPE base beside linear
    scaling on the full layer: SP=2 under ZeRO-3 trains like SP=1."""
    ref = train_records(tmp_path, "gemma_sp1", 1, GEMMA_FEATURES + TRAIN + ["--zero-stage", "1"])
    assert ref[-1]["lm_loss"] < ref[0]["lm_loss"], "the reference run must learn something"
    args = GEMMA_FEATURES + TRAIN + ["--ds-sequence-parallel-size", "2", "--zero-stage", "3"]
    assert_close_records(ref, train_records(tmp_path, "gemma_sp2_z3", 2, args), what="Gemma features SP=2 ZeRO-3")


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "family,change,words",
    [
        ("gemma2", {"use_bidirectional_attention": True}, ["use_bidirectional_attention", "causal"]),
        ("gemma", {"attention_bias": True}, ["attention_bias=true"]),
        ("gemma3", {"attn_logit_softcapping": 50.0}, ["attn_logit_softcapping=50.0", "set it to null"]),
        ("gemma2", {"hidden_activation": "silu"}, ["hidden_activation=silu"]),
        ("gemma3", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                        "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}},
         ["sliding-window layers", "'linear'"]),
        ("gemma3", {"layer_types": ["sliding_attention", "chunked_attention"]}, ["layer_types chunked_attention"]),
        ("gemma3", {"rope_scaling": {"type": "linear", "factor": 8.0}}, ["'type'", "write 'rope_type'"]),
        ("gemma3", {"architectures": ["Gemma3ForConditionalGeneration"]}, ["vision inputs", "Gemma3ForCausalLM"]),
    ],
    ids=["bidirectional", "attention-bias", "gemma3-attention-softcap", "activation", "local-rope-scaling",
         "layer-type", "gemma3-legacy-rope-type", "gemma3-vision"],
)  # fmt: skip
def test_unsupported_gemma_variant_is_one_line_error(tmp_path, capsys, family, change, words):
    _make(family, tmp_path)
    assert_conversion_refused(tmp_path, capsys, change, "not supported", *words)


def test_gemma_shapes_without_a_hf_family_are_refused_on_export():
    from megatron.config import ModelConfig
    from megatron.hf import hf_config_from_model

    gemma = dict(use_rotary_position_embeddings=True, normalization="GemmaRMSNorm", geglu=True, scale_embeddings=True,
                 add_bias_linear=False, activation="gelu_tanh")  # fmt: skip
    assert hf_config_from_model(ModelConfig(**gemma))["architectures"] == ["GemmaForCausalLM"]
    assert hf_config_from_model(ModelConfig(**gemma, sandwich_norm=True))["architectures"] == ["Gemma2ForCausalLM"]
    assert hf_config_from_model(ModelConfig(**gemma, sandwich_norm=True, qk_layernorm=True))["architectures"] == [
        "Gemma3ForCausalLM"]  # fmt: skip
    for extra in (dict(sandwich_norm=True, qk_layernorm=True, attention_softcap=50.0), dict(qk_layernorm=True)):
        with pytest.raises(ConfigError, match="Gemma-style model has no Hugging Face equivalent"):
            hf_config_from_model(ModelConfig(**gemma, **extra))
    llama = dict(use_rotary_position_embeddings=True, normalization="RMSNorm", swiglu=True, add_bias_linear=False)
    with pytest.raises(ConfigError, match="Gemma-style"):  # a Llama with a Gemma feature is no Llama
        hf_config_from_model(ModelConfig(**llama, final_logit_softcap=30.0))


# ---------------------------------------------------------------- on a GPU (-m gpu)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gemma3_on_gpu_fused_rope_and_triton_attention_equal_transformers(tmp_path):
    """On CUDA our fused RoPE kernel rotates the sliding layer at the local base and the full one scaled: fp32
    logits (SDPA) equal transformers' eager ones; our Triton attention (window, query_pre_attn_scalar) in bf16
    stays within bf16 error of them."""
    from megatron.hf import hf_to_megatron_state_dict, read_hf_dir
    from megatron.model.gpt import GPTModel

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    hf_model = _make("gemma3", tmp_path).cuda()
    config, hf_sd, _ = read_hf_dir(str(tmp_path))
    state_dict, cfg = hf_to_megatron_state_dict(config, hf_sd)
    tokens = random_tokens().cuda()
    ref = logits_of(hf_model, tokens)
    got = {}
    for backend, dtype in (("sdpa", torch.float32), ("flash_triton", torch.bfloat16)):
        model = GPTModel(cfg, AttentionConfig(backend=backend), device=torch.device("cuda")).cuda()
        model.load_state_dict(state_dict)
        got[backend] = logits_of(model.to(dtype).eval(), tokens).float()
    assert model.layers[0].attention.rotary.fused is None  # the default: the fused kernel on CUDA
    torch.testing.assert_close(got["sdpa"], ref, rtol=0, atol=1e-4)
    assert (got["flash_triton"] - ref).norm() / ref.norm() < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_final_logit_softcap_in_the_fused_tiled_loss_on_gpu():
    """bf16 on a GPU: the Triton tiled loss with the soft-cap against the eager chunks and an fp64 full loss."""
    from megatron.model.gpt import full_logits_cross_entropy
    from megatron.model.tiled import tiled_cross_entropy

    gen = torch.Generator(device="cuda").manual_seed(5)
    h64 = torch.randn(1, 3000, 256, device="cuda", dtype=torch.float64, generator=gen)
    w64 = torch.randn(32000, 256, device="cuda", dtype=torch.float64, generator=gen) / 4
    y = torch.randint(0, 32000, (1, 3000), device="cuda", generator=gen)
    y[0, :7] = -100
    h, w = h64.clone().requires_grad_(True), w64.clone().requires_grad_(True)
    ref_loss = full_logits_cross_entropy(h, w, y, softcap=30.0)
    ref_loss.mean().backward()
    got = {}
    for fused in (True, False):
        hl, wl = h64.bfloat16().requires_grad_(True), w64.bfloat16().requires_grad_(True)
        loss = tiled_cross_entropy(hl, wl, y, chunk=1000, fused=fused, softcap=30.0)
        loss.mean().backward()
        got[fused] = (loss, hl.grad, wl.grad)
    for i, ref in enumerate((ref_loss, h.grad, w.grad)):
        a, b = got[True][i].double(), got[False][i].double()
        assert (a - b).norm() / b.norm() < 1e-2, i
        assert (a - ref.double()).norm() / ref.norm() < 1e-2, i
