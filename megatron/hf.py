"""Hugging Face interop: Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma-2, Gemma-3, Phi-3, GPT-NeoX and GPT-2
checkpoints <-> our ``GPTModel``.

    from megatron.hf import load_hf_checkpoint
    model, cfg = load_hf_checkpoint("path/to/hf_dir")   # our GPTModel (eval mode) and its ModelConfig
    logits_bsV = model(input_ids_bs)                    # [batch, seq, HF vocab size]

Tensor maps (ours <- HF), per layer ``i``:

  Llama, Mistral, Qwen2, Qwen3: qkv <- cat(q_proj, k_proj, v_proj) (and their biases; RoPE is
         rotate-half in both, so no permutation), dense <- o_proj, fc1 <- cat(gate_proj, up_proj),
         fc2 <- down_proj, input_norm <- input_layernorm, post_attention_norm <-
         post_attention_layernorm, attention.q_norm / k_norm <- self_attn.q_norm / k_norm (Qwen3).
  Gemma: as Llama (its norms' weights are Gemma's offsets from 1, kept as they are: GemmaRMSNorm).
  Gemma-2, Gemma-3: as Llama but for the sandwich norms: attention_output_norm <- post_attention_layernorm,
         post_attention_norm (the MLP's input norm) <- pre_feedforward_layernorm, mlp_output_norm <-
         post_feedforward_layernorm; q_norm / k_norm (Gemma-3).
  GPT-2: Conv1D weights are [in, out], ours [out, in]: every linear is transposed.
         qkv <- c_attn (already [q; k; v]), dense <- attn.c_proj, fc1 <- c_fc, fc2 <- mlp.c_proj,
         input_norm <- ln_1, post_attention_norm <- ln_2, gelu_new = --activation gelu_tanh.
  Phi-3: as Llama but fused: qkv <- self_attn.qkv_proj (already [q; k; v]), fc1 <- mlp.gate_up_proj (already
         [gate; up]); no biases.
  GPT-NeoX: qkv <- attention.query_key_value permuted from its per-head [heads, 3, d] rows to [3, heads, d]
         (weight and bias), dense <- attention.dense, fc1 <- mlp.dense_h_to_4h, fc2 <- mlp.dense_4h_to_h, norms
         input_layernorm / post_attention_layernorm / final_layer_norm with biases, output_layer <- embed_out
         (``gpt_neox.`` prefix; embed_out has none). The permutation is exact both ways.

config.json <-> ModelConfig per family (RoPE scaling in both layouts, windows, head dim) is
``megatron.hf_config``. Converted models use ``make_vocab_size_divisible_by = 1`` so our padded
vocabulary is HF's.
Concatenation, splitting and transposition are exact, so HF -> ours -> HF is bit-exact; the
source's config.json and tensor layout (names, shards) travel along in ``hf_source.json``.
Everything here runs on the CPU and needs ``safetensors``; only the tests need ``transformers``.
"""

from __future__ import annotations

import dataclasses
import json
import os

import torch

from megatron.config import ConfigError, ModelConfig
from megatron.hf_config import (  # noqa: F401  (the loader's public names)
    GEMMA_FAMILY,
    LLAMA_FAMILY,
    SUPPORTED_ARCHITECTURES,
    architecture_of,
    hf_architecture_for,
    hf_config_from_model,
    model_config_from_hf,
)
from megatron.hf_phi3_neox import (
    NEOX_QKV,
    PHI3_NEOX_FAMILY,
    neox_qkv_from_hf,
    neox_qkv_to_hf,
    output_layer_name,
    phi3_neox_layer_rows,
    phi3_neox_prefix,
    phi3_neox_top_rows,
)

# Buffers some HF checkpoints carry that hold no weights.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias", ".attention.bias",
                     ".attention.masked_bias")  # fmt: skip  (GPT-2's and old GPT-NeoX files' causal-mask buffers)


# ---------------------------------------------------------------- safetensors directories
def read_hf_dir(path: str) -> tuple[dict, dict, dict]:
    """(config.json, state dict, layout) of an HF model directory; sharded or not.

    ``layout`` records where each tensor lived so ``write_hf_dir`` can reproduce the files.
    """
    from safetensors import safe_open

    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise ConfigError(f"{path} has no config.json; give a Hugging Face model directory")
    with open(cfg_file) as f:
        config = json.load(f)
    model_config_from_hf(config)  # an unsupported architecture fails before any tensor is read
    index_file = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index_file):
        with open(index_file) as f:
            index = json.load(f)
        weight_map = index["weight_map"]
        index_metadata = index.get("metadata")
    elif os.path.isfile(single):
        weight_map, index_metadata = None, None
    else:
        raise ConfigError(f"{path} has neither model.safetensors nor model.safetensors.index.json (.bin is not read)")
    files = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
    for name in files:
        if not os.path.isfile(os.path.join(path, name)):
            raise ConfigError(f"shard {name} listed in {index_file} is missing from {path}")
    state_dict, file_of, file_metadata = {}, {}, {}
    for name in files:
        with safe_open(os.path.join(path, name), framework="pt") as f:
            file_metadata[name] = f.metadata()
            for key in f.keys():
                state_dict[key] = f.get_tensor(key)
                file_of[key] = name
    layout = {"file_of": file_of, "file_metadata": file_metadata, "index_metadata": index_metadata,
              "sharded": weight_map is not None}  # fmt: skip
    return config, state_dict, layout


def write_hf_dir(path: str, config: dict, state_dict: dict, layout: dict | None = None,
                 max_shard_bytes: int = 5 * 2**30) -> None:  # fmt: skip
    """Write config.json and safetensors (with an index when sharded) in HF's layout."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if layout and set(layout["file_of"]) == set(tensors):
        file_of, sharded = layout["file_of"], layout["sharded"]
        file_metadata, index_metadata = layout["file_metadata"], layout["index_metadata"]
    else:
        file_of, size, shard = {}, 0, 0
        for k, v in tensors.items():
            nbytes = v.numel() * v.element_size()
            if size and size + nbytes > max_shard_bytes:
                shard, size = shard + 1, 0
            file_of[k], size = shard, size + nbytes
        n = shard + 1
        sharded = n > 1
        file_of = {k: (f"model-{s + 1:05d}-of-{n:05d}.safetensors" if sharded else "model.safetensors")
                   for k, s in file_of.items()}  # fmt: skip
        file_metadata = {name: {"format": "pt"} for name in set(file_of.values())}
        index_metadata = {"total_size": sum(v.numel() * v.element_size() for v in tensors.values())}
    for name in sorted(set(file_of.values())):
        part = {k: v for k, v in tensors.items() if file_of[k] == name}
        save_file(part, os.path.join(path, name), metadata=file_metadata.get(name))
    if sharded:
        index = {"metadata": index_metadata, "weight_map": dict(sorted(file_of.items()))}
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
            f.write("\n")


# ---------------------------------------------------------------- tensor maps
def _llama_layout(arch: str) -> bool:
    """Llama's tensor names (model. prefix, q/k/v and gate/up projections): the Llama and Gemma families."""
    return arch in LLAMA_FAMILY or arch in GEMMA_FAMILY


def _norm_rows(arch: str, o: str, h: str) -> list:
    """(ours, [hf]) for a decoder layer's norms (Gemma-2/3: sandwich norms, HF's names shifted)."""
    if arch in ("Gemma2ForCausalLM", "Gemma3ForCausalLM"):
        return [
            (o + "input_norm.weight", [h + "input_layernorm.weight"]),
            (o + "attention_output_norm.weight", [h + "post_attention_layernorm.weight"]),
            (o + "post_attention_norm.weight", [h + "pre_feedforward_layernorm.weight"]),
            (o + "mlp_output_norm.weight", [h + "post_feedforward_layernorm.weight"]),
        ]
    return [
        (o + "input_norm.weight", [h + "input_layernorm.weight"]),
        (o + "post_attention_norm.weight", [h + "post_attention_layernorm.weight"]),
    ]


def _layer_map(arch: str, i: int) -> list:
    """[(ours, [hf names], transpose)] for decoder layer i (HF names without the model prefix)."""
    if arch in PHI3_NEOX_FAMILY:
        return phi3_neox_layer_rows(arch, i)
    o = f"layers.{i}."
    if _llama_layout(arch):
        h = f"layers.{i}."
        a, m = h + "self_attn.", h + "mlp."
        rows = _norm_rows(arch, o, h) + [
            (o + "attention.qkv.weight", [a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"]),
            (o + "attention.qkv.bias", [a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"]),
            (o + "attention.dense.weight", [a + "o_proj.weight"]),
            (o + "attention.dense.bias", [a + "o_proj.bias"]),
            (o + "mlp.fc1.weight", [m + "gate_proj.weight", m + "up_proj.weight"]),
            (o + "mlp.fc1.bias", [m + "gate_proj.bias", m + "up_proj.bias"]),
            (o + "mlp.fc2.weight", [m + "down_proj.weight"]),
            (o + "mlp.fc2.bias", [m + "down_proj.bias"]),
            (o + "attention.q_norm.weight", [a + "q_norm.weight"]),
            (o + "attention.k_norm.weight", [a + "k_norm.weight"]),
        ]
        return [(ours, hf, False) for ours, hf in rows]
    h = f"h.{i}."
    rows = []
    for ours, hf in (("input_norm", "ln_1"), ("post_attention_norm", "ln_2")):
        rows += [(o + f"{ours}.{p}", [h + f"{hf}.{p}"], False) for p in ("weight", "bias")]
    for ours, hf in (("attention.qkv", "attn.c_attn"), ("attention.dense", "attn.c_proj"),
                     ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):  # fmt: skip
        rows += [(o + f"{ours}.weight", [h + f"{hf}.weight"], True), (o + f"{ours}.bias", [h + f"{hf}.bias"], False)]
    return rows


def _tensor_map(arch: str, cfg: ModelConfig) -> list:
    """[(ours, [hf names without prefix], transpose)] for every tensor of the model (transpose: True, False or
    NEOX_QKV, GPT-NeoX's per-head fused QKV)."""
    if arch in PHI3_NEOX_FAMILY:
        rows = phi3_neox_top_rows(arch)
    elif _llama_layout(arch):
        rows = [
            ("word_embeddings.weight", ["embed_tokens.weight"], False),
            ("final_norm.weight", ["norm.weight"], False),
        ]
    else:
        rows = [
            ("word_embeddings.weight", ["wte.weight"], False),
            ("position_embeddings.weight", ["wpe.weight"], False),
        ]
        rows += [("final_norm.weight", ["ln_f.weight"], False), ("final_norm.bias", ["ln_f.bias"], False)]
    for i in range(cfg.num_layers):
        rows += _layer_map(arch, i)
    qkv_bias = cfg.add_bias_linear or cfg.add_qkv_bias
    if not cfg.add_bias_linear:  # only the Llama family drops biases (its norms have none)
        rows = [r for r in rows if not r[0].endswith(".bias") or (qkv_bias and r[0].endswith("attention.qkv.bias"))]
    if not cfg.qk_layernorm:
        rows = [r for r in rows if not r[0].endswith(("attention.q_norm.weight", "attention.k_norm.weight"))]
    return rows


def _prefix(arch: str) -> str:
    if arch in PHI3_NEOX_FAMILY:
        return phi3_neox_prefix(arch)
    return "model." if _llama_layout(arch) else "transformer."


def hf_to_megatron_state_dict(config: dict, hf_state_dict: dict) -> tuple[dict, ModelConfig]:
    """Our state dict (source dtypes kept) and ModelConfig from an HF config and state dict."""
    arch = architecture_of(config)
    cfg = model_config_from_hf(config)
    prefix = _prefix(arch)
    sd = {}
    for k, v in hf_state_dict.items():
        if k.endswith(_IGNORED_SUFFIXES):
            continue
        sd[k.removeprefix(prefix)] = v
    out = {}
    for ours, hf_names, transpose in _tensor_map(arch, cfg):
        missing = [n for n in hf_names if n not in sd]
        if missing:
            raise ConfigError(f"{arch} checkpoint lacks {prefix}{missing[0]}; the files do not match config.json")
        parts = [sd.pop(n) for n in hf_names]
        if transpose == NEOX_QKV:
            out[ours] = neox_qkv_from_hf(parts[0], cfg.num_attention_heads)
            continue
        out[ours] = torch.cat([p.t() if transpose else p for p in parts], dim=0).contiguous()
    lm_head = sd.pop("lm_head.weight", None)
    if arch in PHI3_NEOX_FAMILY:  # GPT-NeoX files name it embed_out (outside the gpt_neox. prefix)
        lm_head = sd.pop("embed_out.weight", lm_head)
    if cfg.untie_embeddings_and_output_weights:
        if lm_head is None:
            raise ConfigError(f"{arch} has tie_word_embeddings=false but no lm_head.weight; a shard is missing")
        out["output_layer.weight"] = lm_head
    if sd:
        raise ConfigError(f"{arch} checkpoint has tensors we cannot map: {', '.join(sorted(sd)[:4])}")
    rows = out["word_embeddings.weight"].shape[0]
    if rows != cfg.vocab_size:
        cfg = dataclasses.replace(cfg, vocab_size=rows)
    return out, cfg


def megatron_to_hf_state_dict(cfg: ModelConfig, state_dict: dict, names: list | None = None,
                              arch: str | None = None) -> tuple[dict, str]:  # fmt: skip
    """(HF state dict, architecture) from our state dict; padded vocabulary rows are dropped.

    ``names`` (the source's tensor names, if it came from HF) keeps the GPT-2 prefix and a
    tied ``lm_head.weight`` exactly as the source had them; ``arch`` (the source's) is the
    family to write when it computes what ``cfg`` does.
    """
    arch = hf_architecture_for(cfg, prefer=arch)
    prefix = _prefix(arch)
    if names is not None and arch == "GPT2LMHeadModel" and not any(n.startswith(prefix) for n in names):
        prefix = ""  # original OpenAI-style GPT-2 files name tensors without "transformer."
    sd = dict(state_dict)
    for key in ("word_embeddings.weight", "output_layer.weight"):
        if key in sd:
            sd[key] = sd[key][: cfg.vocab_size]
    out = {}
    for ours, hf_names, transpose in _tensor_map(arch, cfg):
        if ours not in sd:
            raise ConfigError(f"checkpoint lacks {ours}; it does not match its own config")
        t = sd[ours]
        if transpose == NEOX_QKV:
            out[prefix + hf_names[0]] = neox_qkv_to_hf(t, cfg.num_attention_heads)
            continue
        sizes = _split_sizes(arch, cfg, ours, t.shape[0])
        for name, part in zip(hf_names, torch.split(t, sizes, dim=0)):
            out[prefix + name] = (part.t() if transpose else part).contiguous()
    head = output_layer_name(arch, names)
    if cfg.untie_embeddings_and_output_weights:
        out[head] = sd["output_layer.weight"].contiguous()
    elif names is not None and head in names:
        out[head] = sd["word_embeddings.weight"].clone()
    return out, arch


def _split_sizes(arch: str, cfg: ModelConfig, ours: str, rows: int) -> list:
    if ours.endswith(("attention.qkv.weight", "attention.qkv.bias")) and _llama_layout(arch):
        q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        return [q, kv, kv]
    if ours.endswith(("mlp.fc1.weight", "mlp.fc1.bias")) and _llama_layout(arch):
        return [cfg.ffn_hidden_size, cfg.ffn_hidden_size]
    return [rows]


# ---------------------------------------------------------------- loading models
def build_model(cfg: ModelConfig, state_dict: dict, device="cpu", dtype: torch.dtype = torch.float32):
    """Our GPTModel (eval mode, single process, SDPA attention; the classic backend for Gemma-2's attention-logit
    soft-cap, which only it computes) holding ``state_dict``; no random init is spent."""
    from megatron.config import AttentionConfig
    from megatron.model.gpt import GPTModel

    device = torch.device(device)
    attention = AttentionConfig(backend="classic" if cfg.attention_softcap is not None else "sdpa")
    with torch.device("meta"):
        model = GPTModel(cfg, attention, device=device)
    model = model.to_empty(device=device)
    model.load_state_dict(state_dict, strict=True)
    return model.to(dtype).eval()


def load_hf_checkpoint(path: str, device="cpu", dtype: torch.dtype = torch.float32):
    """(GPTModel, ModelConfig) for an HF directory of one of ``SUPPORTED_ARCHITECTURES``."""
    config, hf_sd, _ = read_hf_dir(path)
    state_dict, cfg = hf_to_megatron_state_dict(config, hf_sd)
    return build_model(cfg, state_dict, device, dtype), cfg


def load_checkpoint_any(path: str, device="cpu", dtype: torch.dtype = torch.float32):
    """(GPTModel, ModelConfig) from an HF directory, a converted weights directory or a
    ``pretrain_gpt.py --save`` directory (any ZeRO stage); logits have the unpadded vocabulary."""
    from megatron.training import weights

    if os.path.isfile(os.path.join(path, "config.json")):
        return load_hf_checkpoint(path, device, dtype)
    if weights.starts_from_weights(path):  # a converted dir a run has saved into is a --save dir
        state_dict, cfg, _ = weights.read_weights_dir(path)
    elif weights.is_deepspeed_checkpoint(path):
        state_dict, cfg, _ = weights.read_deepspeed_checkpoint(path)
    else:
        raise ConfigError(
            f"{path} is not a checkpoint: expected config.json (HF), {weights.WEIGHTS_SUBDIR}/ (converted) "
            "or 'latest' (pretrain_gpt.py --save)"
        )
    state_dict, cfg = weights.strip_vocab_padding(state_dict, cfg)
    return build_model(cfg, state_dict, device, dtype), cfg
