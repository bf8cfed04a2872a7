"""Convert between Hugging Face checkpoints (Llama, Mistral, Qwen2, Qwen3, GPT-2) and ours.

    # HF -> a weights directory that `pretrain_gpt.py --load DIR` starts from (any SP size, ZeRO stage)
    python tools/convert_checkpoint.py hf-to-megatron --input HF_DIR --output DIR
    # ours (a `pretrain_gpt.py --save` directory, any ZeRO stage, or a converted DIR) -> HF
    python tools/convert_checkpoint.py megatron-to-hf --input CKPT_DIR --output HF_DIR [--dtype bfloat16]

Runs on the CPU. Safetensors in and out (sharded with an index json when the source was, or
above --max-shard-size). Tokenizer files next to the weights are copied along. The written
config.json is the source's (family, token ids, RoPE layout) when the directory was converted
from HF, with what the run changed (RoPE for a longer context) rewritten; otherwise it is
generated, with RoPE in both layouts. Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import torch

from megatron.config import ConfigError

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "generation_config.json",
)  # fmt: skip
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _copy_tokenizer(src: str, dst: str) -> list:
    copied = []
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            os.makedirs(dst, exist_ok=True)
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
            copied.append(name)
    return copied


def _check_tokenizer_fits(hf_dir: str, vocab_size: int) -> None:
    """A tokenizer.json next to the weights must not hold more tokens than the embedding has rows."""
    path = os.path.join(hf_dir, "tokenizer.json")
    if not os.path.isfile(path):
        return
    from megatron.tokenizer import HFTokenizer, TokenizerError

    try:
        n = HFTokenizer(hf_dir).vocab_size
    except (TokenizerError, ImportError):
        return  # a tokenizer we cannot read does not block converting the weights
    if n > vocab_size:
        raise ConfigError(
            f"{path} has {n} tokens but the model's embedding has {vocab_size} rows; the tokenizer does not "
            "belong to these weights"
        )


def hf_to_megatron(input_dir: str, output_dir: str) -> str:
    from megatron import hf
    from megatron.training import weights

    config, hf_sd, layout = hf.read_hf_dir(input_dir)
    arch = hf.architecture_of(config)
    state_dict, cfg = hf.hf_to_megatron_state_dict(config, hf_sd)
    _check_tokenizer_fits(input_dir, cfg.vocab_size)
    source = {"architecture": arch, "config": config, "layout": layout}
    weights.write_weights_dir(output_dir, state_dict, cfg, hf_source=source)
    _copy_tokenizer(input_dir, os.path.join(output_dir, "tokenizer"))
    fragment = weights.model_args_fragment(weights.model_args_from_config(cfg))
    return f"{arch} -> {output_dir} ({cfg.num_parameters() / 1e6:.2f}M parameters); model flags: {fragment}"


def _hf_source(input_dir: str) -> dict | None:
    """The HF config and layout a converted directory came from (a run that saved into it keeps them)."""
    from megatron.training import weights

    path = os.path.join(input_dir, weights.WEIGHTS_SUBDIR, "hf_source.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def megatron_to_hf(input_dir: str, output_dir: str, dtype=None, max_shard_bytes: int = 5 * 2**30) -> str:
    from megatron import hf
    from megatron.training import weights

    layout, names, source_config, trained = None, None, None, False
    run_data = None  # the data section of a --save run's config: where its tokenizer came from
    if weights.starts_from_weights(input_dir):  # once a run saved into it, its latest checkpoint wins
        state_dict, cfg, source = weights.read_weights_dir(input_dir)
        if source is not None:
            layout, source_config = source["layout"], source["config"]
            names = list(layout["file_of"])
        tokenizer_src = os.path.join(input_dir, "tokenizer")
    elif weights.is_deepspeed_checkpoint(input_dir):
        state_dict, cfg, states = weights.read_deepspeed_checkpoint(input_dir)
        run_data = states["config"].get("data")
        source, trained = _hf_source(input_dir), True
        if source is not None:  # the trained weights take new shards; the config keeps the source's keys
            source_config, names = source["config"], list(source["layout"]["file_of"])
        tokenizer_src = os.path.join(input_dir, "tokenizer")  # a converted dir trained into keeps its tokenizer
    elif os.path.isdir(input_dir):
        raise ConfigError(
            f"{input_dir} is neither a pretrain_gpt.py --save directory (no 'latest') nor a converted "
            f"weights directory (no {weights.WEIGHTS_SUBDIR}/{weights.WEIGHTS_FILE})"
        )
    else:
        raise ConfigError(f"--input {input_dir} does not exist")
    source_arch = hf.architecture_of(source_config) if source_config is not None else None
    hf_sd, arch = hf.megatron_to_hf_state_dict(cfg, state_dict, names, arch=source_arch)
    if dtype is not None:
        hf_sd = {k: v.to(dtype) for k, v in hf_sd.items()}
        if layout is not None:  # same shards, new sizes
            total = sum(v.numel() * v.element_size() for v in hf_sd.values())
            layout = dict(layout, file_metadata={}, index_metadata={"total_size": total})
    written = dtype or next(iter(hf_sd.values())).dtype
    config = hf.hf_config_from_model(cfg, written, source=source_config)
    if source_config is None or trained or dtype is not None:
        name = str(written).removeprefix("torch.")
        config = dict(config, torch_dtype=name, dtype=name)
    hf.write_hf_dir(output_dir, config, hf_sd, layout, max_shard_bytes)
    from megatron.hf_export import finish_hf_dir

    extras = finish_hf_dir(output_dir, tokenizer_src, run_data)  # tokenizer, bos/eos, generation_config.json
    return f"{input_dir} -> {arch} in {output_dir}; {extras}"


def _size(value: str) -> int:
    units = {"KB": 2**10, "MB": 2**20, "GB": 2**30}
    for unit, mult in units.items():
        if value.upper().endswith(unit):
            return int(float(value[: -len(unit)]) * mult)
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("hf-to-megatron", help="HF directory -> weights directory for pretrain_gpt.py --load")
    a.add_argument("--input", required=True, help="HF model directory (config.json + safetensors)")
    a.add_argument("--output", required=True, help="directory to write")
    b = sub.add_parser("megatron-to-hf", help="pretrain_gpt.py --save directory (or converted DIR) -> HF directory")
    b.add_argument("--input", required=True, help="checkpoint directory holding 'latest', or a converted directory")
    b.add_argument("--output", required=True, help="HF directory to write")
    b.add_argument("--dtype", choices=list(DTYPES), help="cast the weights (default: keep)")
    b.add_argument("--max-shard-size", default="5GB", help="shard above this size, e.g. 2GB (default 5GB)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "hf-to-megatron":
            msg = hf_to_megatron(args.input, args.output)
        else:
            dtype = DTYPES[args.dtype] if args.dtype else None
            msg = megatron_to_hf(args.input, args.output, dtype, _size(args.max_shard_size))
    except (ConfigError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(msg, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
