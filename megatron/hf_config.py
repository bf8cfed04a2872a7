"""Hugging Face ``config.json`` <-> our ``ModelConfig``, per family.

Families (architecture: what it adds to a Llama decoder):

  LlamaForCausalLM     RoPE scaling (linear, llama3, dynamic, yarn), explicit head_dim, biases
                       on every linear (attention_bias = mlp_bias)
  MistralForCausalLM   sliding_window on every layer (or none), explicit head_dim (Nemo)
  Qwen2ForCausalLM     q/k/v biases without an output bias (--add-qkv-bias); use_sliding_window
                       with max_window_layers or layer_types
  Qwen3ForCausalLM     per-head RMSNorm of q and k (--qk-layernorm), head_dim 128 by default,
                       windows as Qwen2
  GPT2LMHeadModel      learned positions, LayerNorm, gelu_new
  Phi3ForCausalLM      Llama's with fused qkv_proj / gate_up_proj, longrope (short/long factor lists switched
                       by the global sequence length), partial_rotary_factor (--rotary-percent), a window on
                       every layer; Phi-3-small, Phi-3.5-MoE and the multimodal Phis are refused
  GPTNeoXForCausalLM   Pythia: LayerNorm and GeLU MLP with biases, the per-head fused query_key_value,
                       partial rotary (rotary_pct), parallel residual (--parallel-residual), untied embed_out
                       (megatron.hf_phi3_neox has the Phi-3 and GPT-NeoX details)
  GemmaForCausalLM     embeddings times sqrt(hidden), RMSNorm times (1 + w) in fp32 (GemmaRMSNorm),
                       GeGLU (gelu_pytorch_tanh), head_dim 256, tied
  Gemma2ForCausalLM    Gemma's, plus sandwich norms, query_pre_attn_scalar, attention-logit soft-cap
                       (classic backend only), final-logit soft-cap, interleaved sliding windows
  Gemma3ForCausalLM    Gemma-2's without the attention soft-cap, plus (1 + w) q/k norms, a RoPE base of
                       its own for the sliding layers (rope_local_base_freq) and RoPE scaling on the
                       full-attention layers only (megatron.hf_gemma has the Gemma details)

RoPE is read from either layout, as transformers reads it: ``rope_scaling`` + ``rope_theta``
(transformers 4.x, vLLM) or ``rope_parameters`` (transformers 5.x); ``rope_scaling`` wins when
both are there. A config we write carries both, so transformers 4 and 5 and vLLM read it unchanged. Anything a family
can hold that our model does not compute (mixture of experts, vision towers, partial rotary outside
Phi-3 and GPT-NeoX, other activations; Gemma's bidirectional attention and biases; Gemma-3 with vision, Gemma-3n,
PaliGemma, RecurrentGemma) is a one-line ConfigError naming the feature.
"""

from __future__ import annotations

from megatron.config import ConfigError, ModelConfig
from megatron.hf_gemma import GEMMA_FAMILY, gemma_config, gemma_expresses, gemma_hf_config, gemma_only
from megatron.hf_phi3_neox import (
    PHI3_NEOX_FAMILY,
    PHI3_NEOX_UNSUPPORTED,
    phi3_neox_config,
    phi3_neox_expresses,
    phi3_neox_hf_config,
    phi3_neox_only,
)

LLAMA_FAMILY = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
SUPPORTED_ARCHITECTURES = (*LLAMA_FAMILY, "GPT2LMHeadModel", *GEMMA_FAMILY, *PHI3_NEOX_FAMILY)
_MODEL_TYPES = {**{t: a for a, t in {**LLAMA_FAMILY, **GEMMA_FAMILY, **PHI3_NEOX_FAMILY}.items()},
                "gpt2": "GPT2LMHeadModel"}  # fmt: skip

_MOE, _VISION = "mixture-of-experts layers", "vision inputs (a multimodal model)"
UNSUPPORTED_FEATURES = {
    "MixtralForCausalLM": _MOE, "Qwen2MoeForCausalLM": _MOE, "Qwen3MoeForCausalLM": _MOE,
    "DeepseekV3ForCausalLM": _MOE, "Llama4ForConditionalGeneration": _MOE + " and " + _VISION,
    "MllamaForConditionalGeneration": _VISION, "LlavaForConditionalGeneration": _VISION,
    "Qwen2VLForConditionalGeneration": _VISION, "Qwen2_5_VLForConditionalGeneration": _VISION,
    "Qwen3VLForConditionalGeneration": _VISION, "Mistral3ForConditionalGeneration": _VISION,
    "Gemma3ForConditionalGeneration": _VISION + " (convert its text model as Gemma3ForCausalLM)",
    "PaliGemmaForConditionalGeneration": _VISION, "Gemma3nForConditionalGeneration": _VISION + " and audio inputs",
    "Gemma3nForCausalLM": "Gemma-3n's per-layer embeddings, AltUp and Laurel blocks",
    "RecurrentGemmaForCausalLM": "recurrent (RG-LRU) layers",
    **PHI3_NEOX_UNSUPPORTED,
}  # fmt: skip
_FEATURE_KEYS = {
    "num_local_experts": _MOE, "num_experts": _MOE, "n_routed_experts": _MOE, "moe_intermediate_size": _MOE,
    "vision_config": _VISION, "audio_config": "audio inputs (a multimodal model)",
}  # fmt: skip

# ---------------------------------------------------------------- RoPE in both layouts
_ROPE_KEYS = {
    "rope_type", "type", "rope_theta", "factor", "original_max_position_embeddings", "low_freq_factor",
    "high_freq_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "truncate",
    "partial_rotary_factor", "short_factor", "long_factor",
}  # fmt: skip
ROPE_FIELDS = (
    "rotary_base", "rope_scaling_type", "rope_scaling_factor", "rope_original_max_position_embeddings",
    "rope_low_freq_factor", "rope_high_freq_factor", "yarn_beta_fast", "yarn_beta_slow", "yarn_mscale",
    "yarn_mscale_all_dim", "yarn_truncate", "rope_attention_factor", "rope_short_factor", "rope_long_factor",
    "rotary_percent",
)  # fmt: skip


def rope_from_hf(arch: str, config: dict, rotary: bool = False) -> dict:
    """Our RoPE fields for an HF config, from ``rope_scaling`` + ``rope_theta`` or ``rope_parameters``.
    ``rotary``: the family rotates part of each head (Phi-3, GPT-NeoX), partial_rotary_factor is --rotary-percent;
    elsewhere it is refused (transformers' Llama-family attention rotates whole heads)."""
    params = dict(config.get("rope_scaling") or config.get("rope_parameters") or {})
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "linear", "llama3", "yarn", "dynamic", "longrope"):
        raise _unsupported(arch, f"rope type {kind!r}")
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial != 1.0 and not rotary:
        raise _unsupported(arch, f"partial_rotary_factor={partial} (RoPE on part of each head)")
    rotary_percent = dict(rotary_percent=float(partial)) if rotary else {}
    unknown = sorted(set(params) - _ROPE_KEYS)
    if unknown:
        raise _unsupported(arch, f"RoPE parameters {', '.join(unknown)}")
    if kind == "default":
        return dict(rotary_base=theta, **rotary_percent)
    max_pos = config.get("max_position_embeddings", 2048)
    # transformers: a top-level original_max_position_embeddings wins (Phi-3's), else the dict's, else max_pos
    original = config.get("original_max_position_embeddings", params.get("original_max_position_embeddings", max_pos))
    factor = params.get("factor")
    if factor is None and kind in ("yarn", "longrope"):
        factor = max_pos / original
    if factor is None:
        raise _unsupported(arch, f"rope type {kind!r} without a factor")
    out = dict(rotary_base=theta, rope_scaling_type=kind, rope_scaling_factor=float(factor), **rotary_percent)
    if kind == "llama3":
        out.update(rope_original_max_position_embeddings=int(original),
                   rope_low_freq_factor=float(params["low_freq_factor"]),
                   rope_high_freq_factor=float(params["high_freq_factor"]))  # fmt: skip
    if kind == "yarn":
        out.update(
            rope_original_max_position_embeddings=int(original),
            yarn_beta_fast=float(params.get("beta_fast") or 32), yarn_beta_slow=float(params.get("beta_slow") or 1),
            yarn_mscale=params.get("mscale"), yarn_mscale_all_dim=params.get("mscale_all_dim"),
            yarn_truncate=bool(params.get("truncate", True)), rope_attention_factor=params.get("attention_factor"),
        )  # fmt: skip
    if kind == "longrope":
        if not (params.get("short_factor") and params.get("long_factor")):
            raise _unsupported(arch, "rope type 'longrope' without short_factor and long_factor")
        out.update(rope_original_max_position_embeddings=int(original),
                   rope_attention_factor=params.get("attention_factor"),
                   rope_short_factor=[float(x) for x in params["short_factor"]],
                   rope_long_factor=[float(x) for x in params["long_factor"]])  # fmt: skip
    return out


def rope_to_hf(cfg: ModelConfig) -> tuple:
    """(rope_theta, rope_scaling or None, rope_parameters) for ``cfg``: transformers 4.x / vLLM and 5.x."""
    kind = cfg.rope_scaling_type
    scaling = None
    if kind is not None:
        scaling = {"rope_type": kind, "factor": cfg.rope_scaling_factor}
        if kind == "llama3":
            scaling.update(original_max_position_embeddings=cfg.rope_original_max_position_embeddings,
                           low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor)  # fmt: skip
        if kind == "yarn":
            scaling.update(original_max_position_embeddings=cfg.rope_original_max_position_embeddings,
                           beta_fast=cfg.yarn_beta_fast, beta_slow=cfg.yarn_beta_slow)  # fmt: skip
            optional = {"mscale": cfg.yarn_mscale, "mscale_all_dim": cfg.yarn_mscale_all_dim,
                        "attention_factor": cfg.rope_attention_factor}  # fmt: skip
            scaling.update({k: v for k, v in optional.items() if v is not None})
            if not cfg.yarn_truncate:
                scaling["truncate"] = False
        if kind == "longrope":
            scaling.update(original_max_position_embeddings=cfg.rope_original_max_position_embeddings,
                           short_factor=list(cfg.rope_short_factor),
                           long_factor=list(cfg.rope_long_factor))  # fmt: skip
            if cfg.rope_attention_factor is not None:
                scaling["attention_factor"] = cfg.rope_attention_factor
    parameters = {"rope_type": kind or "default", "rope_theta": cfg.rotary_base}
    if cfg.rotary_percent != 1.0:
        parameters["partial_rotary_factor"] = cfg.rotary_percent
    parameters.update({k: v for k, v in (scaling or {}).items() if k != "rope_type"})
    return cfg.rotary_base, scaling, parameters


# ---------------------------------------------------------------- HF -> ours
def architecture_of(config: dict) -> str:
    archs = config.get("architectures") or []
    arch = archs[0] if archs else _MODEL_TYPES.get(config.get("model_type"))
    name = arch or config.get("model_type")
    if name in UNSUPPORTED_FEATURES:
        raise ConfigError(
            f"architecture {name!r} is not supported: it has {UNSUPPORTED_FEATURES[name]}, which our model does not "
            f"implement; convert one of {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(f"architecture {name!r} is not supported; convert one of {', '.join(SUPPORTED_ARCHITECTURES)}")
    for key, feature in _FEATURE_KEYS.items():
        if config.get(key):
            raise _unsupported(arch, f"{feature} ({key}={config[key]})")
    return arch


def _unsupported(arch: str, what: str) -> ConfigError:
    return ConfigError(f"{arch} with {what} is not supported by our model; convert a checkpoint without it")


def _windows_from_hf(family: str, config: dict, num_layers: int) -> tuple:
    """(sliding_window, layer_types) as transformers' modeling files apply them."""
    if family == "mistral":
        return config.get("sliding_window"), []
    if family not in ("qwen2", "qwen3") or not config.get("use_sliding_window"):
        return None, []
    window = config.get("sliding_window")
    if window is None:
        return None, []
    first = config.get("max_window_layers", num_layers)
    types = config.get("layer_types") or [
        "sliding_attention" if i >= first else "full_attention" for i in range(num_layers)
    ]
    return window, list(types)


def _llama_family_config(arch: str, config: dict) -> ModelConfig:
    family = LLAMA_FAMILY[arch]
    heads, hidden, layers = config["num_attention_heads"], config["hidden_size"], config["num_hidden_layers"]
    if config.get("hidden_act", "silu") != "silu":
        raise _unsupported(arch, f"hidden_act={config['hidden_act']}")
    head_dim = config.get("head_dim") or (128 if family == "qwen3" else hidden // heads)
    if family == "qwen2":
        qkv_bias, bias = True, False
    elif family == "mistral":
        qkv_bias, bias = False, False
    elif family == "qwen3":
        if config.get("attention_bias"):
            raise _unsupported(arch, "attention_bias=true (an output-projection bias without MLP biases)")
        qkv_bias, bias = False, False
    else:
        bias = bool(config.get("attention_bias", False))
        if bool(config.get("mlp_bias", False)) != bias:
            raise _unsupported(arch, "attention_bias != mlp_bias")
        qkv_bias = False
    window, layer_types = _windows_from_hf(family, config, layers)
    max_pos = config.get("max_position_embeddings", 2048)
    return ModelConfig(
        num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
        num_key_value_heads=config.get("num_key_value_heads") or heads,
        kv_channels=None if head_dim * heads == hidden else head_dim,
        ffn_hidden_size=config["intermediate_size"], seq_length=min(max_pos, 2048), max_position_embeddings=max_pos,
        vocab_size=config["vocab_size"], make_vocab_size_divisible_by=1, use_rotary_position_embeddings=True,
        **rope_from_hf(arch, config),
        normalization="RMSNorm", norm_epsilon=config.get("rms_norm_eps", 1e-6), qk_layernorm=family == "qwen3",
        swiglu=True, add_bias_linear=bias, add_qkv_bias=qkv_bias, sliding_window=window, layer_types=layer_types,
        untie_embeddings_and_output_weights=not config.get("tie_word_embeddings", False),
    )  # fmt: skip


def _gpt2_config(arch: str, config: dict) -> ModelConfig:
    act = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(
        config.get("activation_function", "gelu_new")
    )
    if act is None:
        raise _unsupported(arch, f"activation_function={config['activation_function']}")
    for key, ok in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        if config.get(key, ok) != ok:
            raise _unsupported(arch, f"{key}={config[key]}")
    hidden = config["n_embd"]
    return ModelConfig(
        num_layers=config["n_layer"], hidden_size=hidden, num_attention_heads=config["n_head"],
        ffn_hidden_size=config.get("n_inner") or 4 * hidden, seq_length=config["n_positions"],
        max_position_embeddings=config["n_positions"], vocab_size=config["vocab_size"], make_vocab_size_divisible_by=1,
        normalization="LayerNorm", norm_epsilon=config.get("layer_norm_epsilon", 1e-5), activation=act,
        untie_embeddings_and_output_weights=not config.get("tie_word_embeddings", True),
    )  # fmt: skip


def model_config_from_hf(config: dict) -> ModelConfig:
    """Our ModelConfig for an HF config.json (vocabulary unpadded: make_vocab_size_divisible_by=1)."""
    arch = architecture_of(config)
    if arch in LLAMA_FAMILY:
        return _llama_family_config(arch, config)
    if arch in GEMMA_FAMILY:
        return gemma_config(arch, config)
    if arch in PHI3_NEOX_FAMILY:
        return phi3_neox_config(arch, config)
    return _gpt2_config(arch, config)


# ---------------------------------------------------------------- ours -> HF
def _expresses(arch: str, cfg: ModelConfig) -> bool:
    """``arch`` computes what our model with ``cfg`` computes."""
    if arch in PHI3_NEOX_FAMILY:
        return phi3_neox_expresses(arch, cfg)
    if phi3_neox_only(cfg):  # partial rotary, the parallel residual
        return False
    if arch in GEMMA_FAMILY:
        return gemma_expresses(arch, cfg)
    if gemma_only(cfg):  # embedding scale, (1 + w) norms, GeGLU, sandwich norms, soft-caps, local RoPE
        return False
    windows = [cfg.window(i) for i in range(cfg.num_layers)]
    windowed, all_windowed = any(w is not None for w in windows), all(w is not None for w in windows)
    if arch == "GPT2LMHeadModel":
        plain = not (cfg.qk_layernorm or cfg.add_qkv_bias or cfg.kv_channels or windowed)
        return (plain and not cfg.use_rotary_position_embeddings and cfg.normalization == "LayerNorm"
                and not cfg.swiglu and cfg.add_bias_linear and cfg.num_key_value_heads == cfg.num_attention_heads)  # fmt: skip
    if not (cfg.use_rotary_position_embeddings and cfg.normalization == "RMSNorm" and cfg.swiglu):
        return False
    qk, no_bias = cfg.qk_layernorm, not (cfg.add_bias_linear or cfg.add_qkv_bias)
    qkv_only = cfg.add_qkv_bias and not cfg.add_bias_linear
    return {
        "LlamaForCausalLM": not qk and not qkv_only and not windowed,
        "MistralForCausalLM": not qk and no_bias and (all_windowed or not windowed),
        "Qwen2ForCausalLM": not qk and qkv_only,
        "Qwen3ForCausalLM": qk and no_bias,
    }[arch]


def hf_architecture_for(cfg: ModelConfig, prefer: str | None = None) -> str:
    """The HF class that computes what our model with ``cfg`` computes (``prefer`` when it does, e.g.
    the source's family); ConfigError if none does."""
    if prefer in SUPPORTED_ARCHITECTURES and _expresses(prefer, cfg):
        return prefer
    for arch in ("Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "GPT2LMHeadModel",
                 "Gemma3ForCausalLM", "Gemma2ForCausalLM", "GemmaForCausalLM", *PHI3_NEOX_FAMILY):  # fmt: skip
        if _expresses(arch, cfg):
            return arch
    if phi3_neox_only(cfg):
        raise ConfigError(
            "partial rotary (--rotary-percent) and --parallel-residual have a Hugging Face equivalent here only as "
            "Phi3ForCausalLM (RMSNorm + SwiGLU, no biases, no --parallel-residual, RoPE default or longrope) or "
            "GPTNeoXForCausalLM (LayerNorm + GeLU with biases, no GQA, no --kv-channels, no sliding window)"
        )
    if gemma_only(cfg):
        raise ConfigError(
            "this Gemma-style model has no Hugging Face equivalent here: Gemma needs --normalization GemmaRMSNorm "
            "--geglu --scale-embeddings with RoPE and no biases; Gemma-2 adds --sandwich-norm (no --qk-layernorm, "
            "no --rotary-base-local); Gemma-3 adds --sandwich-norm --qk-layernorm (no --attention-softcap)"
        )
    if cfg.qk_layernorm and cfg.use_rotary_position_embeddings:
        raise ConfigError("--qk-layernorm with biases has no Hugging Face equivalent here (Qwen3 has none); "
                          "drop --add-qkv-bias and use --disable-bias-linear")  # fmt: skip
    if cfg.sliding_window is not None and cfg.use_rotary_position_embeddings:
        raise ConfigError(
            "sliding windows on some layers only (or with biases) need Qwen2's q/k/v biases (--add-qkv-bias) or "
            "Qwen3's q/k norms (--qk-layernorm) to have a Hugging Face equivalent here"
        )
    raise ConfigError(
        "this model shape has no Hugging Face equivalent here: use RoPE + RMSNorm + SwiGLU (Llama, Mistral, Qwen2, "
        "Qwen3), RoPE + GemmaRMSNorm + GeGLU + scaled embeddings (Gemma, Gemma-2, Gemma-3) or learned positions + LayerNorm + GeLU + biases, no GQA (GPT2LMHeadModel)"
    )


def _set_rope(out: dict, cfg: ModelConfig) -> dict:
    theta, scaling, parameters = rope_to_hf(cfg)
    out.update(rope_theta=theta, rope_scaling=scaling, rope_parameters=parameters)
    return out


def _llama_family_hf_config(cfg: ModelConfig, arch: str) -> dict:
    family = LLAMA_FAMILY[arch]
    out = {
        "architectures": [arch], "model_type": family, "hidden_act": "silu",
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_position_embeddings, "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.norm_epsilon, "tie_word_embeddings": not cfg.untie_embeddings_and_output_weights,
    }  # fmt: skip
    if family == "llama":
        out.update(attention_bias=cfg.add_bias_linear, mlp_bias=cfg.add_bias_linear)
    if family == "mistral":
        out["sliding_window"] = cfg.sliding_window
    if family in ("qwen2", "qwen3"):
        types = [("sliding_attention" if cfg.window(i) else "full_attention") for i in range(cfg.num_layers)]
        first = types.index("sliding_attention") if "sliding_attention" in types else cfg.num_layers
        out.update(use_sliding_window=cfg.sliding_window is not None, sliding_window=cfg.sliding_window,
                   max_window_layers=first, layer_types=types)  # fmt: skip
    if family == "qwen3":
        out["attention_bias"] = False
    return out


def _gpt2_hf_config(cfg: ModelConfig) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "activation_function": "gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
        "n_embd": cfg.hidden_size, "n_head": cfg.num_attention_heads, "n_layer": cfg.num_layers,
        "n_inner": cfg.ffn_hidden_size, "n_positions": cfg.max_position_embeddings, "vocab_size": cfg.vocab_size,
        "layer_norm_epsilon": cfg.norm_epsilon, "scale_attn_weights": True,
        "tie_word_embeddings": not cfg.untie_embeddings_and_output_weights,
        "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
    }  # fmt: skip


def _same_model(a: ModelConfig, b: ModelConfig) -> bool:
    from megatron.training.weights import model_args_from_config

    ignore = ("make_vocab_size_divisible_by",)
    strip = lambda c: {k: v for k, v in model_args_from_config(c).items() if k not in ignore}
    return strip(a) == strip(b)


def hf_config_from_model(cfg: ModelConfig, dtype=None, source: dict | None = None) -> dict:
    """The config.json of ``cfg``, RoPE in both layouts. ``source`` (the config it was converted from) is
    kept as it is when ``cfg`` still computes what it describes; otherwise the keys that ``cfg`` decides
    (shapes, RoPE, windows) are rewritten and the rest (token ids, ...) kept."""
    import torch

    dtype_name = str(dtype or torch.float32).removeprefix("torch.")
    if source is not None:
        try:
            unchanged = _same_model(model_config_from_hf(source), cfg)
        except ConfigError:
            unchanged = False
        if unchanged:
            return dict(source)
    source_arch = architecture_of(source) if source is not None else None
    arch = hf_architecture_for(cfg, prefer=source_arch)
    if arch == "GPT2LMHeadModel":
        generated = _gpt2_hf_config(cfg)
    elif arch in GEMMA_FAMILY:
        generated = gemma_hf_config(cfg, arch)
    elif arch in PHI3_NEOX_FAMILY:
        generated = phi3_neox_hf_config(cfg, arch)
    else:
        generated = _set_rope(_llama_family_hf_config(cfg, arch), cfg)
    if arch == source_arch:
        return {**source, **generated}
    return {**generated, "torch_dtype": dtype_name, "dtype": dtype_name}
