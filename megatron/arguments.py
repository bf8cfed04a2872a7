"""Megatron-compatible command line (and ``--config FILE.yaml``) -> typed ``Config``, in one place.

Only entry points call ``parse_args``. Precedence: dataclass defaults < YAML file < flags.
YAML keys are flag names with underscores (``num_layers: 24``), optionally nested under
``model:``/``train:``/``parallel:``/``data:``/``logging:``, plus ALST's names
(``sequence_parallel_size``). Flags that old Megatron-DeepSpeed scripts pass and that mean
nothing here are accepted; tensor/pipeline parallelism and unknown flags are rejected.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from megatron.config import ATTENTION_BACKENDS, ULYSSES_EXCHANGES, Config, ConfigError, DataConfig, LoggingConfig, ModelConfig
from megatron.config import ParallelConfig, TrainConfig

# dest -> (section, field). Everything a flag sets lands in exactly one dataclass field.
_FIELDS = {
    # model
    "num_layers": ("model", "num_layers"),
    "hidden_size": ("model", "hidden_size"),
    "ffn_hidden_size": ("model", "ffn_hidden_size"),
    "num_attention_heads": ("model", "num_attention_heads"),
    "num_key_value_heads": ("model", "num_key_value_heads"),
    "seq_length": ("model", "seq_length"),
    "max_position_embeddings": ("model", "max_position_embeddings"),
    "vocab_size": ("model", "vocab_size"),
    "make_vocab_size_divisible_by": ("model", "make_vocab_size_divisible_by"),
    "use_rotary_position_embeddings": ("model", "use_rotary_position_embeddings"),
    "rotary_base": ("model", "rotary_base"),
    "normalization": ("model", "normalization"),
    "norm_epsilon": ("model", "norm_epsilon"),
    "swiglu": ("model", "swiglu"),
    "add_bias_linear": ("model", "add_bias_linear"),
    "untie_embeddings_and_output_weights": ("model", "untie_embeddings_and_output_weights"),
    "init_method_std": ("model", "init_method_std"),
    "attention_dropout": ("model", "attention_dropout"),
    "hidden_dropout": ("model", "hidden_dropout"),
    "attention_backend": ("model", "attention_backend"),
    "ulysses_exchange": ("model", "ulysses_exchange"),
    "ulysses_overlap_chunks": ("model", "ulysses_overlap_chunks"),
    "activation": ("model", "activation"),
    # training
    "micro_batch_size": ("train", "micro_batch_size"),
    "global_batch_size": ("train", "global_batch_size"),
    "train_iters": ("train", "train_iters"),
    "lr": ("train", "lr"),
    "min_lr": ("train", "min_lr"),
    "lr_decay_style": ("train", "lr_decay_style"),
    "lr_warmup_iters": ("train", "lr_warmup_iters"),
    "lr_decay_iters": ("train", "lr_decay_iters"),
    "weight_decay": ("train", "weight_decay"),
    "adam_beta1": ("train", "adam_beta1"),
    "adam_beta2": ("train", "adam_beta2"),
    "adam_eps": ("train", "adam_eps"),
    "clip_grad": ("train", "clip_grad"),
    "max_skipped_steps": ("train", "max_skipped_steps"),
    "bf16": ("train", "bf16"),
    "fp16": ("train", "fp16"),
    "seed": ("train", "seed"),
    "eval_interval": ("train", "eval_interval"),
    "eval_iters": ("train", "eval_iters"),
    # parallelism
    "ds_sequence_parallel_size": ("parallel", "sequence_parallel_size"),
    "zero_stage": ("parallel", "zero_stage"),
    "deepspeed_config": ("parallel", "deepspeed_config"),
    "checkpoint_activations": ("parallel", "checkpoint_activations"),
    "seq_parallel_communication_data_type": ("parallel", "seq_parallel_communication_data_type"),
    "reduce_bucket_size": ("parallel", "reduce_bucket_size"),
    "distributed_backend": ("parallel", "distributed_backend"),
    "distributed_timeout_minutes": ("parallel", "distributed_timeout_minutes"),
    "tiled_mlp_compute": ("parallel", "tiled_mlp_compute"),
    "tiled_mlp_shards": ("parallel", "tiled_mlp_shards"),
    "tiled_logits_loss": ("parallel", "tiled_logits_loss"),
    "tiled_logits_chunk_size": ("parallel", "tiled_logits_chunk_size"),
    "use_liger_kernel": ("parallel", "use_liger_kernel"),
    "checkpoint_in_cpu": ("parallel", "checkpoint_in_cpu"),
    "checkpoint_keep_attention": ("parallel", "checkpoint_keep_attention"),
    "offload_param": ("parallel", "offload_param"),
    "offload_optimizer": ("parallel", "offload_optimizer"),
    "zero3_leaf_layers": ("parallel", "zero3_leaf_layers"),
    # data
    "mock_data": ("data", "mock_data"),
    "data_path": ("data", "data_path"),
    "split": ("data", "split"),
    "train_data_path": ("data", "train_data_path"),
    "valid_data_path": ("data", "valid_data_path"),
    "test_data_path": ("data", "test_data_path"),
    "data_cache_path": ("data", "data_cache_path"),
    "tokenizer_type": ("data", "tokenizer_type"),
    "tokenizer_model": ("data", "tokenizer_model"),
    "vocab_file": ("data", "vocab_file"),
    "merge_file": ("data", "merge_file"),
    "reset_position_ids": ("data", "reset_position_ids"),
    "reset_attention_mask": ("data", "reset_attention_mask"),
    "eod_mask_loss": ("data", "eod_mask_loss"),
    "mock_document_length": ("data", "mock_document_length"),
    "num_workers": ("data", "num_workers"),
    # logging and checkpoints
    "log_interval": ("logging", "log_interval"),
    "metrics_file": ("logging", "metrics_file"),
    "tensorboard_dir": ("logging", "tensorboard_dir"),
    "save": ("logging", "save"),
    "load": ("logging", "load"),
    "save_interval": ("logging", "save_interval"),
    "exit_interval": ("logging", "exit_interval"),
    "exit_signal_handler": ("logging", "exit_signal_handler"),
    "exit_signal": ("logging", "exit_signal"),
    "exit_duration_in_mins": ("logging", "exit_duration_in_mins"),
    "keep_last_n_checkpoints": ("logging", "keep_last_n_checkpoints"),
}

# Names used by ALST / ArcticTraining / Oumi YAML files for the same fields.
_YAML_ALIASES = {
    "sequence_parallel_size": "ds_sequence_parallel_size",
    "ulysses_sequence_parallel_size": "ds_sequence_parallel_size",
    "activation_checkpointing": "checkpoint_activations",
    "gradient_checkpointing": "checkpoint_activations",
    "activation_checkpoint_cpu_offload": "checkpoint_in_cpu",
}

_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "parallel": ParallelConfig, "data": DataConfig, "logging": LoggingConfig}


def _full_recompute(value: str) -> bool:
    if value != "full":
        raise argparse.ArgumentTypeError(
            f"only 'full' is supported (got {value!r}): Megatron's 'selective' recomputes the core attention, "
            "which FlashAttention-style kernels never store; use --recompute-granularity full, and add "
            "--checkpoint-keep-attention to keep the attention instead of recomputing it"
        )
    return True


def _bool_flag(p, name, dest=None, help=""):
    """``--x`` sets True, ``--no-x`` sets False, neither leaves the YAML/default value (None)."""
    dest = dest or name.lstrip("-").replace("-", "_")
    p.add_argument(name, dest=dest, action="store_true", default=None, help=help)
    p.add_argument("--no-" + name.lstrip("-"), dest=dest, action="store_false", default=None, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pretrain_gpt.py",
        description="GPT pretraining with DeepSpeed-Ulysses sequence parallelism.",
        allow_abbrev=False,
        argument_default=None,
    )
    p.add_argument("--config", help="YAML file with the same fields (flags given on the command line win)")
    g = p.add_argument_group("model")
    for flag, typ in [
        ("--num-layers", int), ("--hidden-size", int), ("--ffn-hidden-size", int), ("--num-attention-heads", int),
        ("--num-key-value-heads", int), ("--seq-length", int), ("--max-position-embeddings", int),
        ("--vocab-size", int), ("--make-vocab-size-divisible-by", int), ("--rotary-base", float),
        ("--norm-epsilon", float), ("--init-method-std", float), ("--attention-dropout", float),
        ("--hidden-dropout", float),
    ]:  # fmt: skip
        g.add_argument(flag, type=typ)
    g.add_argument("--num-query-groups", dest="num_key_value_heads", type=int, help="alias of --num-key-value-heads")
    g.add_argument("--normalization", choices=["LayerNorm", "RMSNorm"])
    _bool_flag(g, "--use-rotary-position-embeddings")
    _bool_flag(g, "--swiglu")
    g.add_argument("--disable-bias-linear", dest="add_bias_linear", action="store_false", default=None)
    _bool_flag(g, "--untie-embeddings-and-output-weights")
    g.add_argument("--attention-backend", choices=list(ATTENTION_BACKENDS))
    g.add_argument("--activation", choices=["gelu", "gelu_tanh"], help="MLP activation without --swiglu")
    g.add_argument("--ulysses-exchange", choices=list(ULYSSES_EXCHANGES),
                   help="SP all-to-all: deepspeed (default; DistributedAttention), fused (Q, K, V in one) "
                   "or overlap (fused, pipelined over head chunks with the attention)")
    g.add_argument("--ulysses-overlap-chunks", type=int, help="--ulysses-exchange overlap: head chunks per rank (default 2)")
    g.add_argument("--use-flash-attn", "--use-flash-attn-v2", dest="attention_backend", action="store_const", const="flash")
    g.add_argument("--use-flash-attn-triton", dest="attention_backend", action="store_const", const="flash_triton")

    g = p.add_argument_group("training")
    for flag, typ in [
        ("--micro-batch-size", int), ("--global-batch-size", int), ("--train-iters", int), ("--lr", float),
        ("--min-lr", float), ("--lr-warmup-iters", int), ("--lr-decay-iters", int), ("--weight-decay", float),
        ("--adam-beta1", float), ("--adam-beta2", float), ("--adam-eps", float), ("--clip-grad", float),
        ("--seed", int), ("--eval-interval", int), ("--eval-iters", int), ("--max-skipped-steps", int),
    ]:  # fmt: skip
        g.add_argument(flag, type=typ)
    g.add_argument("--lr-decay-style", choices=["constant", "linear", "cosine"])
    _bool_flag(g, "--bf16")
    _bool_flag(g, "--fp16")

    g = p.add_argument_group("parallelism")
    g.add_argument("--ds-sequence-parallel-size", "--sequence-parallel-size", dest="ds_sequence_parallel_size", type=int)
    g.add_argument("--zero-stage", type=int)
    g.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config")
    _bool_flag(g, "--checkpoint-activations")
    g.add_argument("--recompute-granularity", dest="checkpoint_activations", type=_full_recompute,
                   help="'full' is an alias of --checkpoint-activations")  # fmt: skip
    _bool_flag(g, "--checkpoint-keep-attention",
               help="with --checkpoint-activations: run the core attention and its all-to-alls once, recompute the rest")
    g.add_argument("--seq-parallel-communication-data-type", choices=["fp32", "bf16", "fp16"])
    g.add_argument("--reduce-bucket-size", type=lambda v: int(float(v)))
    g.add_argument("--distributed-backend", choices=["nccl", "gloo"])
    g.add_argument("--distributed-timeout-minutes", type=float)
    g = p.add_argument_group("long sequences (ALST memory features)")
    _bool_flag(g, "--tiled-mlp-compute", help="MLP over sequence shards, recomputed in backward")
    g.add_argument("--tiled-mlp-shards", type=int, help="default: ceil(local sequence / hidden size)")
    _bool_flag(g, "--tiled-logits-loss", help="output layer + loss over token chunks (default: on when SP > 1)")
    g.add_argument("--tiled-logits-chunk-size", type=int, help="tokens per tiled-loss chunk")
    _bool_flag(g, "--use-liger-kernel", help="liger-kernel fused linear cross-entropy (pip install liger-kernel)")
    _bool_flag(g, "--checkpoint-in-cpu", help="checkpointed layer inputs in pinned host memory")
    _bool_flag(g, "--offload-param", help="ZeRO-3 parameters in CPU memory")
    _bool_flag(g, "--offload-optimizer", help="optimizer states and step on the CPU")
    _bool_flag(g, "--zero3-leaf-layers", help="ZeRO-3 gathers each transformer layer's parameters at once (default: on with ZeRO-3; --no-zero3-leaf-layers)")
    _bool_flag(g, "--deepspeed", help="accepted: DeepSpeed is always used")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--local_rank", "--local-rank", type=int, help="set by the DeepSpeed launcher")

    g = p.add_argument_group("data")
    _bool_flag(g, "--mock-data")
    for flag in ("--data-path", "--train-data-path", "--valid-data-path", "--test-data-path"):
        g.add_argument(flag, nargs="+")
    for flag in ("--split", "--data-cache-path", "--tokenizer-type", "--tokenizer-model", "--vocab-file", "--merge-file"):
        g.add_argument(flag)
    _bool_flag(g, "--reset-position-ids")
    _bool_flag(g, "--reset-attention-mask")
    _bool_flag(g, "--eod-mask-loss")
    g.add_argument("--mock-document-length", type=int, help="--mock-data in documents of N tokens ending in EOD")
    g.add_argument("--num-workers", type=int)

    g = p.add_argument_group("logging and checkpoints")
    for flag, typ in [("--log-interval", int), ("--save-interval", int), ("--exit-interval", int),
                      ("--exit-duration-in-mins", float), ("--keep-last-n-checkpoints", int)]:  # fmt: skip
        g.add_argument(flag, type=typ)
    _bool_flag(g, "--exit-signal-handler")
    g.add_argument("--exit-signal")
    for flag in ("--metrics-file", "--tensorboard-dir", "--save", "--load"):
        g.add_argument(flag)

    g = p.add_argument_group("accepted for compatibility with Megatron-DeepSpeed scripts (no effect)")
    for flag in (
        "--no-pipeline-parallel", "--no-masked-softmax-fusion", "--no-bias-gelu-fusion", "--no-bias-dropout-fusion",
        "--no-gradient-accumulation-fusion", "--no-query-key-layer-scaling", "--no-async-tensor-model-parallel-allreduce",
        "--deepspeed-activation-checkpointing", "--use-mcore-models", "--no-load-optim", "--no-load-rng",
    ):  # fmt: skip
        g.add_argument(flag, action="store_true", dest="_ignored_" + flag.strip("-").replace("-", "_"))
    for flag in ("--data-impl", "--checkpoint-num-layers"):
        g.add_argument(flag, dest="_ignored_" + flag.strip("-").replace("-", "_"))
    return p


def _flatten_yaml(data: dict, path: str) -> dict:
    out = {}
    for key, value in (data or {}).items():
        if key in _SECTIONS and isinstance(value, dict):
            for k, v in value.items():
                out[k] = v
        else:
            out[key] = value
    resolved = {}
    field_names = {f for _, f in _FIELDS.values()}
    for key, value in out.items():
        k = key.replace("-", "_")
        k = _YAML_ALIASES.get(k, k)
        if k not in _FIELDS:
            # a dataclass field name that differs from the flag (e.g. sequence_parallel_size) maps back
            matches = [d for d, (_, f) in _FIELDS.items() if f == k]
            if k in field_names and matches:
                k = matches[0]
            else:
                raise ConfigError(f"{path}: unknown key '{key}'; see `pretrain_gpt.py --help` for the accepted names")
        if k in ("data_path", "train_data_path", "valid_data_path", "test_data_path") and isinstance(value, str):
            value = value.split()
        resolved[k] = value
    return resolved


def parse_args(argv: Optional[Sequence[str]] = None) -> Config:
    """Parse flags (and the optional YAML) into a validated Config; raises ConfigError."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    values = {}
    if pre.config:
        import yaml

        try:
            with open(pre.config) as f:
                values = _flatten_yaml(yaml.safe_load(f), pre.config)
        except FileNotFoundError:
            raise ConfigError(f"--config {pre.config} does not exist; give the path of a YAML file") from None
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ConfigError(f"unrecognized arguments: {' '.join(unknown)}; see `pretrain_gpt.py --help`")
    for dest in _FIELDS:
        v = getattr(args, dest, None)
        if v is not None:
            values[dest] = v
    for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
        if getattr(args, name) != 1:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} {getattr(args, name)} is not supported: DeepSpeed-Ulysses does not combine with tensor or "
                "pipeline parallelism; use --ds-sequence-parallel-size and ZeRO (--zero-stage 3) instead"
            )
    return config_from_values(values)


def config_from_values(values: dict) -> Config:
    """Build the Config from a {flag dest: value} mapping; dataclass validation runs here."""
    sections = {name: {} for name in _SECTIONS}
    for dest, value in values.items():
        section, field = _FIELDS[dest]
        sections[section][field] = value
    return Config(**{name: cls(**sections[name]) for name, cls in _SECTIONS.items()})
