"""Gemma, Gemma-2 and Gemma-3 (text) ``config.json`` <-> our ``ModelConfig`` (``megatron.hf_config`` dispatches here).

What each family computes beyond a Llama decoder, as transformers' modeling_gemma*.py does, and our field for it:

  all three   embeddings times sqrt(hidden) in their dtype (scale_embeddings); RMSNorm in fp32 times (1 + w)
              (normalization GemmaRMSNorm); gated GeLU MLP, gelu_pytorch_tanh = gelu_tanh (geglu, activation);
              explicit head_dim (kv_channels), GQA, tied embeddings by default, no biases
  Gemma-2     sandwich norms (sandwich_norm), scores times query_pre_attn_scalar**-0.5 (query_pre_attn_scalar),
              attention-logit soft-cap (attention_softcap: classic backend only), final-logit soft-cap
              (final_logit_softcap), sliding windows on the layers layer_types names
  Gemma-3     Gemma-2's without the attention soft-cap (transformers' Gemma-3 does not apply one), q/k norms of
              the (1 + w) form (qk_layernorm), sliding layers rotating at rope_local_base_freq
              (rotary_base_local) and RoPE scaling on the full-attention layers only

RoPE of Gemma-3 in either layout: ``rope_theta`` + ``rope_local_base_freq`` + ``rope_scaling`` (transformers
4.x, vLLM) or ``rope_parameters`` keyed by layer type (5.x); written in both. A key a config.json leaves out
takes transformers' class default (Gemma-2's soft-caps 50 and 30 included). Refused, one line each:
bidirectional attention, attention biases, non-GeLU activations, local RoPE scaling, a Gemma-3 attention
soft-cap, a Gemma-3 rope_scaling spelled with the legacy 'type' key only (transformers 4 and 5 disagree on it),
sliding layers without a window, other layer types.
"""

from __future__ import annotations

from megatron.config import ModelConfig

GEMMA_FAMILY = {"GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3_text"}

# transformers' config class defaults for the keys a config.json may leave out
_DEFAULTS = {
    "gemma": dict(num_key_value_heads=16, hidden_act="gelu_pytorch_tanh", max_position_embeddings=8192),
    "gemma2": dict(num_key_value_heads=4, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192,
                   query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=30.0,
                   attn_logit_softcapping=50.0),
    "gemma3_text": dict(num_key_value_heads=4, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131072,
                        query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=None,
                        attn_logit_softcapping=None, rope_theta=1e6, rope_local_base_freq=10000.0),
}  # fmt: skip
_COMMON_DEFAULTS = dict(head_dim=256, rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
                        use_bidirectional_attention=None)  # fmt: skip


def _getter(family: str, config: dict):
    defaults = {**_COMMON_DEFAULTS, **_DEFAULTS[family]}
    return lambda key: config.get(key, defaults.get(key))


# ---------------------------------------------------------------- HF -> ours
def _activation(arch: str, family: str, get) -> str:
    from megatron.hf_config import _unsupported

    if family == "gemma":  # transformers 5 reads hidden_act and takes the legacy "gelu" as the tanh approximation
        act = get("hidden_act")
        names = {"gelu": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
        key = "hidden_act"
    else:
        act = get("hidden_activation")
        names = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
        key = "hidden_activation"
    if act not in names:
        raise _unsupported(arch, f"{key}={act} (the gated MLP computes gelu_pytorch_tanh or gelu)")
    return names[act]


def _windows(arch: str, family: str, config: dict, get, layers: int) -> tuple:
    """(sliding_window, layer_types) as transformers' Gemma-2/3 configs fill them."""
    from megatron.hf_config import _unsupported

    if family == "gemma":
        return None, []
    types = config.get("layer_types")
    if not types:
        pattern = 2 if family == "gemma2" else config.get("sliding_window_pattern", 6)
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
    other = sorted(set(types) - {"sliding_attention", "full_attention"})
    if other:
        raise _unsupported(arch, f"layer_types {', '.join(other)}")
    window = get("sliding_window")
    if "sliding_attention" in types and window is None:
        raise _unsupported(arch, "sliding_attention layers without a sliding_window")
    return window, list(types)


def _gemma3_rope(arch: str, config: dict, get) -> dict:
    """Our RoPE fields for Gemma-3: the full-attention layers' RoPE (scaling included) and the local base."""
    from megatron.hf_config import _unsupported, rope_from_hf

    params = dict(config.get("rope_parameters") or {})
    by_type = "full_attention" in params or "sliding_attention" in params
    full = dict(params.get("full_attention") or {}) if by_type else params
    local = dict(params.get("sliding_attention") or {}) if by_type else {}
    scaling = config.get("rope_scaling")
    if scaling:  # transformers: the 4.x rope_scaling updates the full-attention layers' RoPE
        if "type" in scaling and "rope_type" not in scaling:
            raise _unsupported(arch, f"rope_scaling {{'type': {scaling['type']!r}}} (transformers 4.x applies it, 5.x "
                                     "reads Gemma-3's scaling from 'rope_type' only); write 'rope_type' instead")  # fmt: skip
        full.update(scaling)
    full.setdefault("rope_theta", get("rope_theta"))
    local.setdefault("rope_theta", get("rope_local_base_freq"))
    kind = local.get("rope_type", local.get("type", "default"))
    if kind != "default" or set(local) - {"rope_type", "type", "rope_theta"}:
        raise _unsupported(arch, f"RoPE scaling on the sliding-window layers (rope type {kind!r})")
    rope = rope_from_hf(arch, {**config, "rope_scaling": None, "rope_parameters": full})
    return {**rope, "rotary_base_local": float(local["rope_theta"])}


def gemma_config(arch: str, config: dict) -> ModelConfig:
    """Our ModelConfig for a Gemma / Gemma-2 / Gemma-3 text config.json."""
    from megatron.hf_config import _unsupported, rope_from_hf

    family = GEMMA_FAMILY[arch]
    get = _getter(family, config)
    heads, hidden, layers = config["num_attention_heads"], config["hidden_size"], config["num_hidden_layers"]
    if get("use_bidirectional_attention"):
        raise _unsupported(arch, "use_bidirectional_attention=true (our attention is causal)")
    if get("attention_bias"):
        raise _unsupported(arch, "attention_bias=true (q/k/v/o biases without MLP biases)")
    if family == "gemma3_text" and get("attn_logit_softcapping") is not None:
        raise _unsupported(arch, f"attn_logit_softcapping={get('attn_logit_softcapping')} (transformers' Gemma-3 "
                                 "does not apply it either; set it to null)")  # fmt: skip
    head_dim = get("head_dim") or hidden // heads
    window, layer_types = _windows(arch, family, config, get, layers)
    rope = _gemma3_rope(arch, config, get) if family == "gemma3_text" else rope_from_hf(arch, config)
    max_pos = get("max_position_embeddings")
    gemma1 = family == "gemma"
    return ModelConfig(
        num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
        num_key_value_heads=get("num_key_value_heads") or heads,
        kv_channels=None if head_dim * heads == hidden else head_dim,
        ffn_hidden_size=config["intermediate_size"], seq_length=min(max_pos, 2048), max_position_embeddings=max_pos,
        vocab_size=config["vocab_size"], make_vocab_size_divisible_by=1, use_rotary_position_embeddings=True, **rope,
        normalization="GemmaRMSNorm", norm_epsilon=get("rms_norm_eps"), qk_layernorm=family == "gemma3_text",
        sandwich_norm=not gemma1, geglu=True, activation=_activation(arch, family, get), scale_embeddings=True,
        query_pre_attn_scalar=None if gemma1 else float(get("query_pre_attn_scalar")),
        attention_softcap=None if gemma1 else get("attn_logit_softcapping"),
        final_logit_softcap=None if gemma1 else get("final_logit_softcapping"),
        add_bias_linear=False, sliding_window=window, layer_types=layer_types,
        untie_embeddings_and_output_weights=not get("tie_word_embeddings"),
    )  # fmt: skip


# ---------------------------------------------------------------- ours -> HF
def gemma_only(cfg: ModelConfig) -> bool:
    """``cfg`` computes something only the Gemma families express."""
    return bool(cfg.normalization == "GemmaRMSNorm" or cfg.geglu or cfg.sandwich_norm or cfg.scale_embeddings
                or cfg.query_pre_attn_scalar is not None or cfg.attention_softcap is not None
                or cfg.final_logit_softcap is not None or cfg.rotary_base_local is not None)  # fmt: skip


def gemma_expresses(arch: str, cfg: ModelConfig) -> bool:
    """Gemma family ``arch`` computes what our model with ``cfg`` computes."""
    windowed = any(cfg.window(i) is not None for i in range(cfg.num_layers))
    base = (cfg.use_rotary_position_embeddings and cfg.normalization == "GemmaRMSNorm" and cfg.geglu
            and cfg.scale_embeddings and not (cfg.add_bias_linear or cfg.add_qkv_bias))  # fmt: skip
    if not base:
        return False
    if arch == "GemmaForCausalLM":
        gemma2_features = (cfg.sandwich_norm, cfg.qk_layernorm, windowed, cfg.query_pre_attn_scalar,
                           cfg.attention_softcap, cfg.final_logit_softcap, cfg.rotary_base_local)  # fmt: skip
        return cfg.activation == "gelu_tanh" and all(x in (None, False) for x in gemma2_features)
    if arch == "Gemma2ForCausalLM":
        return cfg.sandwich_norm and not cfg.qk_layernorm and cfg.rotary_base_local is None
    # Gemma-3: sliding layers rotate with plain RoPE at their own base
    local_plain = cfg.rotary_base_local is not None or cfg.rope_scaling_type is None or not windowed
    return cfg.sandwich_norm and cfg.qk_layernorm and cfg.attention_softcap is None and local_plain


def _number(x: float):
    """An integral float as an int (transformers types query_pre_attn_scalar as int)."""
    return int(x) if float(x).is_integer() else x


def gemma_hf_config(cfg: ModelConfig, arch: str) -> dict:
    """The config.json of a Gemma family model (every key written, RoPE in both layouts)."""
    from megatron.hf_config import rope_to_hf

    family = GEMMA_FAMILY[arch]
    out = {
        "architectures": [arch], "model_type": family,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_position_embeddings, "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.norm_epsilon, "tie_word_embeddings": not cfg.untie_embeddings_and_output_weights,
        "attention_bias": False, "use_bidirectional_attention": False,
    }  # fmt: skip
    act = "gelu_pytorch_tanh" if cfg.activation == "gelu_tanh" else "gelu"
    theta, scaling, parameters = rope_to_hf(cfg)
    if family == "gemma":
        out.update(hidden_act=act, rope_theta=theta, rope_scaling=scaling, rope_parameters=parameters)
        return out
    types = [("sliding_attention" if cfg.window(i) else "full_attention") for i in range(cfg.num_layers)]
    scalar = cfg.query_pre_attn_scalar if cfg.query_pre_attn_scalar is not None else cfg.head_dim
    out.update(
        hidden_activation=act, query_pre_attn_scalar=_number(scalar), sliding_window=cfg.sliding_window,
        layer_types=types, final_logit_softcapping=cfg.final_logit_softcap,
        attn_logit_softcapping=cfg.attention_softcap,
    )  # fmt: skip
    if family == "gemma2":
        out.update(rope_theta=theta, rope_scaling=scaling, rope_parameters=parameters)
        return out
    local = cfg.rotary_base_local if cfg.rotary_base_local is not None else cfg.rotary_base
    out.update(
        rope_theta=theta, rope_local_base_freq=local, rope_scaling=scaling,
        rope_parameters={"full_attention": parameters, "sliding_attention": {"rope_type": "default", "rope_theta": local}},
    )  # fmt: skip
    return out
