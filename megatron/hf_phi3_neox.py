"""Phi-3 and GPT-NeoX ``config.json`` <-> our ``ModelConfig``, and their tensor layouts (``megatron.hf_config`` and
``megatron.hf`` dispatch here), as transformers' modeling_phi3.py and modeling_gpt_neox.py compute them.

  Phi3ForCausalLM     a Llama decoder (RMSNorm, SwiGLU, no biases, GQA, untied by default) with fused projections:
                      self_attn.qkv_proj is [q; k; v] by rows, our attention.qkv as it is; mlp.gate_up_proj is
                      [gate; up] (transformers chunks gate first), our mlp.fc1 as it is. RoPE default or longrope
                      ('su' and 'yarn' are Phi-3's old names for it, which transformers' Phi3Config renames);
                      the original length is the top-level original_max_position_embeddings (Phi3Config's,
                      default 4096, which wins over the dict's); the factor defaults to max_position_embeddings /
                      original (only the attention factor uses it). partial_rotary_factor (Phi-4-mini 0.75) is
                      --rotary-percent; sliding_window windows every layer (Phi-3-mini-4k: 2047).
  GPTNeoXForCausalLM  Pythia: LayerNorm with biases, an MLP with biases (hidden_act gelu = exact erf), attention
                      biases, untied embed_out, use_parallel_residual (default true) = --parallel-residual, partial
                      rotary from rotary_pct (default 0.25). attention.query_key_value holds per head [q_h; k_h;
                      v_h] ([heads, 3, d] by rows); ours is [q; k; v] ([3, heads, d]): a permutation each way, and
                      of its bias. transformers 5 takes NeoX's RoPE base from rope_parameters / rope_scaling, else
                      rotary_emb_base (default 10000), and its rotary fraction from there, else rotary_pct: a
                      top-level rope_theta or partial_rotary_factor is ignored, here too.

A config we write carries both RoPE layouts and the top-level keys transformers 4.x (and 5.x, when rope_scaling is
set) reads: rope_theta, partial_rotary_factor, original_max_position_embeddings (Phi-3); rotary_emb_base, rotary_pct
(GPT-NeoX). Refused, one line each: Phi-3-small (Phi3SmallForCausalLM: blocksparse attention, GeGeLU), Phi-3.5-MoE,
Phi-3-vision, Phi-4-multimodal; a Phi-3 activation other than silu or RoPE type other than default / longrope; GPT-NeoX
with attention_bias=false (MLP biases without attention biases) or an activation other than gelu / gelu_new /
gelu_pytorch_tanh.
"""

from __future__ import annotations

import torch

from megatron.config import ModelConfig

PHI3, NEOX = "Phi3ForCausalLM", "GPTNeoXForCausalLM"
PHI3_NEOX_FAMILY = {PHI3: "phi3", NEOX: "gpt_neox"}
PHI3_NEOX_UNSUPPORTED = {
    "Phi3SmallForCausalLM": "Phi-3-small's blocksparse attention, GeGeLU MLP and muP scaling",
    "PhiMoEForCausalLM": "mixture-of-experts layers",
    "Phi3VForCausalLM": "vision inputs (a multimodal model)",
    "Phi4MMForCausalLM": "vision and audio inputs (a multimodal model)",
}
NEOX_QKV = "neox_qkv"  # a tensor-map row's layout marker: NeoX's per-head [h, 3, d] fused QKV rows
_NEOX_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


# ---------------------------------------------------------------- HF -> ours
def _rope(arch: str, config: dict, theta_key: str, partial_key: str, partial_default: float) -> dict:
    """Our RoPE fields (rotary_percent included) as transformers 5's Phi3Config / GPTNeoXConfig standardize them."""
    from megatron.hf_config import rope_from_hf

    params = dict(config.get("rope_scaling") or config.get("rope_parameters") or {})
    kind = params.pop("type", None)
    params.setdefault("rope_type", kind or "default")
    params.setdefault("rope_theta", config.get(theta_key, 10000.0))
    params.setdefault("partial_rotary_factor", config.get(partial_key, partial_default))
    if arch == PHI3 and params["rope_type"] in ("su", "yarn"):
        params["rope_type"] = "longrope"
    if arch == PHI3 and params["rope_type"] == "longrope":  # Phi3Config: its top-level value, default 4096, wins
        params["original_max_position_embeddings"] = config.get("original_max_position_embeddings", 4096)
    max_pos = config.get("max_position_embeddings", 4096 if arch == PHI3 else 2048)
    return rope_from_hf(arch, {"max_position_embeddings": max_pos, "rope_parameters": params}, rotary=True)


def _phi3_config(config: dict) -> ModelConfig:
    from megatron.hf_config import _unsupported

    heads, hidden, layers = config["num_attention_heads"], config["hidden_size"], config["num_hidden_layers"]
    if config.get("hidden_act", "silu") != "silu":
        raise _unsupported(PHI3, f"hidden_act={config['hidden_act']}")
    rope = _rope(PHI3, config, "rope_theta", "partial_rotary_factor", 1.0)
    if rope.get("rope_scaling_type") not in (None, "longrope"):
        raise _unsupported(PHI3, f"rope type {rope['rope_scaling_type']!r} (Phi3Config takes default or longrope)")
    head_dim = config.get("head_dim") or hidden // heads
    max_pos = config.get("max_position_embeddings", 4096)
    return ModelConfig(
        num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
        num_key_value_heads=config.get("num_key_value_heads") or heads,
        kv_channels=None if head_dim * heads == hidden else head_dim,
        ffn_hidden_size=config.get("intermediate_size", 8192), seq_length=min(max_pos, 2048),
        max_position_embeddings=max_pos, vocab_size=config.get("vocab_size", 32064), make_vocab_size_divisible_by=1,
        use_rotary_position_embeddings=True, **rope, normalization="RMSNorm",
        norm_epsilon=config.get("rms_norm_eps", 1e-5), swiglu=True, add_bias_linear=False,
        sliding_window=config.get("sliding_window"),
        untie_embeddings_and_output_weights=not config.get("tie_word_embeddings", False),
    )  # fmt: skip


def _neox_config(config: dict) -> ModelConfig:
    from megatron.hf_config import _unsupported

    act = _NEOX_ACTIVATIONS.get(config.get("hidden_act", "gelu"))
    if act is None:
        raise _unsupported(NEOX, f"hidden_act={config['hidden_act']} (our GeLU MLP computes gelu or its tanh form)")
    if not config.get("attention_bias", True):
        raise _unsupported(NEOX, "attention_bias=false (MLP biases without attention biases)")
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    max_pos = config.get("max_position_embeddings", 2048)
    return ModelConfig(
        num_layers=config["num_hidden_layers"], hidden_size=hidden, num_attention_heads=heads,
        ffn_hidden_size=config.get("intermediate_size", 24576), seq_length=min(max_pos, 2048),
        max_position_embeddings=max_pos, vocab_size=config.get("vocab_size", 50432), make_vocab_size_divisible_by=1,
        use_rotary_position_embeddings=True, **_rope(NEOX, config, "rotary_emb_base", "rotary_pct", 0.25),
        normalization="LayerNorm", norm_epsilon=config.get("layer_norm_eps", 1e-5), activation=act,
        add_bias_linear=True, parallel_residual=bool(config.get("use_parallel_residual", True)),
        untie_embeddings_and_output_weights=not config.get("tie_word_embeddings", False),
    )  # fmt: skip


def phi3_neox_config(arch: str, config: dict) -> ModelConfig:
    """Our ModelConfig for a Phi-3 or GPT-NeoX config.json."""
    return _phi3_config(config) if arch == PHI3 else _neox_config(config)


# ---------------------------------------------------------------- ours -> HF
def phi3_neox_only(cfg: ModelConfig) -> bool:
    """``cfg`` computes something only these families express here (partial rotary, the parallel residual)."""
    return cfg.parallel_residual or cfg.rotary_percent != 1.0


def phi3_neox_expresses(arch: str, cfg: ModelConfig) -> bool:
    """``arch`` computes what our model with ``cfg`` computes."""
    from megatron.hf_gemma import gemma_only

    windows = [cfg.window(i) for i in range(cfg.num_layers)]
    if not cfg.use_rotary_position_embeddings or cfg.qk_layernorm or gemma_only(cfg):
        return False
    if arch == NEOX:
        return (cfg.normalization == "LayerNorm" and not cfg.gated_mlp and cfg.add_bias_linear
                and cfg.num_key_value_heads == cfg.num_attention_heads and not cfg.kv_channels
                and all(w is None for w in windows))  # fmt: skip
    # Phi3Config checks the factor lists against hidden / heads, so longrope needs the default head dim
    longrope_ok = cfg.rope_scaling_type is None or (cfg.rope_scaling_type == "longrope" and not cfg.kv_channels)
    return (cfg.normalization == "RMSNorm" and cfg.swiglu and not (cfg.add_bias_linear or cfg.add_qkv_bias)
            and not cfg.parallel_residual and longrope_ok
            and (all(w is not None for w in windows) or all(w is None for w in windows)))  # fmt: skip


def phi3_neox_hf_config(cfg: ModelConfig, arch: str) -> dict:
    """The config.json of a Phi-3 or GPT-NeoX model: both RoPE layouts and the family's top-level RoPE keys."""
    from megatron.hf_config import rope_to_hf

    theta, scaling, parameters = rope_to_hf(cfg)
    common = {
        "architectures": [arch], "model_type": PHI3_NEOX_FAMILY[arch], "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads, "max_position_embeddings": cfg.max_position_embeddings,
        "vocab_size": cfg.vocab_size, "tie_word_embeddings": not cfg.untie_embeddings_and_output_weights,
        "rope_scaling": scaling, "rope_parameters": parameters,
    }  # fmt: skip
    if arch == NEOX:
        return {
            **common, "hidden_act": "gelu" if cfg.activation == "gelu" else "gelu_pytorch_tanh",
            "layer_norm_eps": cfg.norm_epsilon, "use_parallel_residual": cfg.parallel_residual,
            "attention_bias": True, "rotary_emb_base": theta, "rotary_pct": cfg.rotary_percent,
            "attention_dropout": 0.0, "hidden_dropout": 0.0,
        }  # fmt: skip
    out = {
        **common, "hidden_act": "silu", "num_key_value_heads": cfg.num_key_value_heads,
        "rms_norm_eps": cfg.norm_epsilon, "sliding_window": cfg.sliding_window, "rope_theta": theta,
        "partial_rotary_factor": cfg.rotary_percent,
        "original_max_position_embeddings": cfg.rope_original_max_position_embeddings or cfg.max_position_embeddings,
        "attention_dropout": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
    }  # fmt: skip
    if cfg.kv_channels:
        out["head_dim"] = cfg.kv_channels
    if cfg.vocab_size <= 32000:  # Phi3Config's default pad_token_id 32000 would lie outside the embedding table
        out["pad_token_id"] = None
    return out


# ---------------------------------------------------------------- tensor layouts
def phi3_neox_prefix(arch: str) -> str:
    return "model." if arch == PHI3 else "gpt_neox."


def phi3_neox_top_rows(arch: str) -> list:
    """[(ours, [hf names without the prefix], layout)] outside the decoder layers (the output layer: megatron.hf)."""
    if arch == PHI3:
        return [("word_embeddings.weight", ["embed_tokens.weight"], False),
                ("final_norm.weight", ["norm.weight"], False)]  # fmt: skip
    return [("word_embeddings.weight", ["embed_in.weight"], False),
            ("final_norm.weight", ["final_layer_norm.weight"], False),
            ("final_norm.bias", ["final_layer_norm.bias"], False)]  # fmt: skip


def phi3_neox_layer_rows(arch: str, i: int) -> list:
    """[(ours, [hf names], layout)] of decoder layer ``i``; layout NEOX_QKV marks NeoX's per-head fused QKV."""
    o, h = f"layers.{i}.", f"layers.{i}."
    if arch == PHI3:
        return [(o + ours, [h + hf], False) for ours, hf in (
            ("input_norm.weight", "input_layernorm.weight"),
            ("post_attention_norm.weight", "post_attention_layernorm.weight"),
            ("attention.qkv.weight", "self_attn.qkv_proj.weight"),
            ("attention.dense.weight", "self_attn.o_proj.weight"),
            ("mlp.fc1.weight", "mlp.gate_up_proj.weight"), ("mlp.fc2.weight", "mlp.down_proj.weight"),
        )]  # fmt: skip
    rows = []
    for ours, hf in (("input_norm", "input_layernorm"), ("post_attention_norm", "post_attention_layernorm"),
                     ("attention.qkv", "attention.query_key_value"), ("attention.dense", "attention.dense"),
                     ("mlp.fc1", "mlp.dense_h_to_4h"), ("mlp.fc2", "mlp.dense_4h_to_h")):  # fmt: skip
        layout = NEOX_QKV if ours == "attention.qkv" else False
        rows += [(o + f"{ours}.{p}", [h + f"{hf}.{p}"], layout) for p in ("weight", "bias")]
    return rows


def neox_qkv_from_hf(t: torch.Tensor, heads: int) -> torch.Tensor:
    """NeoX's query_key_value rows [heads, 3, d] (weight [.., H] or bias) -> ours [3, heads, d] ([q; k; v])."""
    return t.reshape(heads, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()


def neox_qkv_to_hf(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Ours [3, heads, d] -> NeoX's [heads, 3, d] rows (the inverse of ``neox_qkv_from_hf``)."""
    return t.reshape(3, heads, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()


def output_layer_name(arch: str, names: list | None) -> str:
    """The HF name of the output layer: GPT-NeoX files call it embed_out (transformers 5 renames it on load,
    4.x expects it) unless the source named it lm_head."""
    if arch == NEOX and not (names is not None and "lm_head.weight" in names):
        return "embed_out.weight"
    return "lm_head.weight"
