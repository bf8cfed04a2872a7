"""Model weights without training state: the directory ``hf-to-megatron`` writes, and reading
the weights out of our DeepSpeed checkpoints (any ZeRO stage) on the CPU.

A *weights directory* (what ``tools/convert_checkpoint.py hf-to-megatron`` writes)::

    DIR/model_args.json             the flags that fix the model's shape, {flag dest: value}
    DIR/model_args.txt              the same flags as a command-line fragment
    DIR/hf_init/model.safetensors   GPTModel.state_dict() names, the source's dtypes
    DIR/hf_init/hf_source.json      the HF config and tensor layout it came from (for a bit-exact way back)

``pretrain_gpt.py --load DIR`` reads ``model_args.json`` (shape flags given on the command line or
in the YAML must agree) and starts from these weights at iteration 0 with a fresh optimizer, under any SP size
and ZeRO stage; a DIR holding ``latest`` is resumed as before.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from megatron.config import ConfigError, ModelConfig

WEIGHTS_SUBDIR = "hf_init"
WEIGHTS_FILE = "model.safetensors"
MODEL_ARGS_JSON = "model_args.json"
MODEL_ARGS_TXT = "model_args.txt"

# ---------------------------------------------------------------- model args
def model_args_from_config(cfg: ModelConfig) -> dict:
    from megatron.arguments import shape_options

    return {o.key: getattr(cfg, o.name) for o in shape_options()}


def model_args_fragment(args: dict) -> str:
    """``{key: value}`` as flags: ``--num-layers 2 ... --swiglu --disable-bias-linear``."""
    from megatron.arguments import _shape_fragment, shape_options

    by_key = {o.key: o for o in shape_options()}
    return " ".join(f for f in (_shape_fragment(by_key[k], v) for k, v in args.items() if k in by_key) if f)


def read_model_args(path: str) -> dict | None:
    f = os.path.join(path, MODEL_ARGS_JSON)
    if not os.path.isfile(f):
        return None
    with open(f) as fh:
        return json.load(fh)


def config_from_model_args(args: dict, **overrides) -> ModelConfig:
    from megatron.arguments import shape_options

    names = {o.key: o.name for o in shape_options()}
    values = {names[k]: v for k, v in args.items() if k in names}
    values.setdefault("seq_length", min(values.get("max_position_embeddings") or 128, 2048))
    values.update(overrides)
    return ModelConfig(**values)


# ---------------------------------------------------------------- weights directory
def is_weights_dir(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, WEIGHTS_SUBDIR, WEIGHTS_FILE))


def starts_from_weights(load: str | None) -> bool:
    """``--load`` names a weights directory that no training run has saved into yet (no ``latest``)."""
    return is_weights_dir(load) and not is_deepspeed_checkpoint(load)


def write_weights_dir(out: str, state_dict: dict, cfg: ModelConfig, hf_source: dict | None = None) -> None:
    from safetensors.torch import save_file

    os.makedirs(os.path.join(out, WEIGHTS_SUBDIR), exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, os.path.join(out, WEIGHTS_SUBDIR, WEIGHTS_FILE), metadata={"format": "pt"})
    if hf_source is not None:
        with open(os.path.join(out, WEIGHTS_SUBDIR, "hf_source.json"), "w") as f:
            json.dump(hf_source, f, indent=2)
    args = model_args_from_config(cfg)
    with open(os.path.join(out, MODEL_ARGS_JSON), "w") as f:
        json.dump(args, f, indent=2)
    with open(os.path.join(out, MODEL_ARGS_TXT), "w") as f:
        f.write(model_args_fragment(args) + "\n")


def read_weights_dir(path: str) -> tuple[dict, ModelConfig, dict | None]:
    """(state dict, ModelConfig, hf_source or None) of a weights directory."""
    from safetensors.torch import load_file

    args = read_model_args(path)
    if args is None:
        raise ConfigError(f"{path} has {WEIGHTS_SUBDIR}/{WEIGHTS_FILE} but no {MODEL_ARGS_JSON}; re-run the conversion")
    state_dict = load_file(os.path.join(path, WEIGHTS_SUBDIR, WEIGHTS_FILE))
    src = os.path.join(path, WEIGHTS_SUBDIR, "hf_source.json")
    hf_source = None
    if os.path.isfile(src):
        with open(src) as f:
            hf_source = json.load(f)
    return state_dict, config_from_model_args(args), hf_source


def _full_shape(p: nn.Parameter) -> tuple:
    return tuple(p.ds_shape) if hasattr(p, "ds_shape") else tuple(p.shape)


@torch.no_grad()
def load_weights(model: nn.Module, path: str) -> None:
    """Copy a weights directory into ``model`` (built, not yet wrapped by DeepSpeed).

    Under ZeRO-3 each module's parameters are gathered, written on every rank and re-partitioned
    from rank 0 (``GatheredParameters(modifier_rank=0)``). Call before ``deepspeed.initialize``
    so the optimizer's fp32 copies start from these weights.
    """
    from safetensors.torch import load_file

    from megatron.model.gpt import _gathered

    state_dict = load_file(os.path.join(path, WEIGHTS_SUBDIR, WEIGHTS_FILE))
    params = dict(model.named_parameters())
    missing, unexpected = sorted(set(params) - set(state_dict)), sorted(set(state_dict) - set(params))
    if missing or unexpected:
        raise ConfigError(
            f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            f"drop the shape flags and let {MODEL_ARGS_JSON} set them"
        )
    for name, p in params.items():
        if tuple(state_dict[name].shape) != _full_shape(p):
            hint = ""
            if name in ("word_embeddings.weight", "output_layer.weight"):
                hint = (
                    "; the vocabulary differs: the tokenizer's size (padded by --make-vocab-size-divisible-by) "
                    f"must equal the checkpoint's {state_dict[name].shape[0]} rows"
                )
            raise ConfigError(
                f"{path}: {name} has shape {tuple(state_dict[name].shape)} but the model's is {_full_shape(p)}{hint}"
            )
    for mod_name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        with _gathered([p for _, p in own]):
            for pname, p in own:
                p.data.copy_(state_dict[f"{mod_name}.{pname}" if mod_name else pname])


def strip_vocab_padding(state_dict: dict, cfg: ModelConfig) -> tuple[dict, ModelConfig]:
    """Drop the embedding rows beyond ``cfg.vocab_size`` (make_vocab_size_divisible_by becomes 1)."""
    import dataclasses

    out = dict(state_dict)
    for key in ("word_embeddings.weight", "output_layer.weight"):
        if key in out:
            out[key] = out[key][: cfg.vocab_size]
    return out, dataclasses.replace(cfg, make_vocab_size_divisible_by=1)


# ---------------------------------------------------------------- DeepSpeed checkpoints
def is_deepspeed_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "latest"))


def read_deepspeed_checkpoint(path: str, tag: str | None = None) -> tuple[dict, ModelConfig, dict]:
    """(fp32 state dict with padded vocabulary, ModelConfig, client state) of ``pretrain_gpt.py --save`` output.

    ZeRO-3 (and half-precision ZeRO-1/2) weights are consolidated from the optimizer shards with
    DeepSpeed's ``zero_to_fp32`` on the CPU; otherwise the module states file holds them.
    """
    if tag is None:
        latest = os.path.join(path, "latest")
        if not os.path.isfile(latest):
            raise ConfigError(f"{path} has no 'latest' file; give a directory written by pretrain_gpt.py --save")
        with open(latest) as f:
            tag = f.read().strip()
    ckpt = os.path.join(path, tag)
    states_file = os.path.join(ckpt, "mp_rank_00_model_states.pt")
    if not os.path.isfile(states_file):  # ZeRO-3 names the module states per rank
        states_file = os.path.join(ckpt, "zero_pp_rank_0_mp_rank_00_model_states.pt")
    if not os.path.isfile(states_file):
        raise ConfigError(f"{states_file} is missing; the checkpoint is incomplete")
    states = torch.load(states_file, map_location="cpu", weights_only=False)
    run_cfg = states.get("config")
    if not run_cfg:
        raise ConfigError(f"{states_file} has no 'config'; it was not written by pretrain_gpt.py")
    cfg = ModelConfig.from_dict(run_cfg["model"])
    module = states.get("module") or {}
    zero = run_cfg["parallel"]["zero_stage"]
    half = any(v.dtype in (torch.float16, torch.bfloat16) for v in module.values())
    if zero == 3 or (zero in (1, 2) and half):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        shards = [f for f in os.listdir(ckpt) if f.endswith("optim_states.pt")]
        if not shards:
            raise ConfigError(f"{ckpt} has no ZeRO optimizer shards (*optim_states.pt); the checkpoint is incomplete")
        try:
            state_dict = get_fp32_state_dict_from_zero_checkpoint(path, tag=tag)
        except (ValueError, FileNotFoundError, KeyError, AssertionError) as e:
            raise ConfigError(
                f"cannot consolidate the ZeRO-{zero} shards in {ckpt}: {str(e).splitlines()[0]}"
            ) from None
    else:
        state_dict = {k: v.float() for k, v in module.items()}
    return state_dict, cfg, states
