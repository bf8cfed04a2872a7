"""The command line, YAML keys, flag reference and model_args.json keys all come from the config dataclasses."""

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron import arguments
from megatron.arguments import build_parser, flag_reference, options, parse_args, shape_options
from megatron.config import SECTIONS, ConfigError, ModelConfig
from megatron.training import weights

ROOT = Path(__file__).resolve().parents[2]


def test_every_flag_has_help_text():
    for action in build_parser()._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"{action.option_strings} has no --help text"


def test_help_lists_every_config_field():
    out = subprocess.run([sys.executable, str(ROOT / "pretrain_gpt.py"), "--help"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    for o in options():
        assert (o.negate or o.flag) in out, o.dest
    n_fields = sum(len(dataclasses.fields(cls)) for cls in SECTIONS.values())
    assert len(options()) == n_fields


def test_flag_reference_is_generated_from_the_config():
    assert (ROOT / "docs" / "flags.md").read_text() == flag_reference(), (
        "docs/flags.md is stale: python -m megatron.arguments --markdown > docs/flags.md"
    )


def test_model_args_keys_are_the_shape_fields():
    keys = set(weights.model_args_from_config(ModelConfig()))
    assert keys == {o.key for o in shape_options()}
    assert {"num_layers", "hidden_size", "vocab_size", "add_bias_linear", "activation"} <= keys
    assert not keys & {"seq_length", "hidden_dropout", "init_method_std"}  # the user's choice, not the weights'
    frag = weights.model_args_fragment(weights.model_args_from_config(ModelConfig(swiglu=True, add_bias_linear=False)))
    cfg = parse_args(frag.split())
    assert cfg.model.swiglu and not cfg.model.add_bias_linear


def test_precedence_defaults_yaml_model_args_command_line(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model_args.json").write_text(json.dumps({"hidden_size": 96, "num_attention_heads": 6}))
    y = tmp_path / "run.yaml"
    y.write_text(f"lr: 0.01\nseq_length: 64\nload: {ckpt}\n")
    cfg = parse_args(["--config", str(y), "--lr", "0.02"])
    assert cfg.train.lr == 0.02 and cfg.model.seq_length == 64  # command line over YAML over defaults
    assert cfg.model.hidden_size == 96 and cfg.model.num_attention_heads == 6  # from model_args.json
    y.write_text(f"hidden_size: 128\nload: {ckpt}\n")
    with pytest.raises(ConfigError, match="--hidden-size 128 disagrees with hidden_size=96"):
        parse_args(["--config", str(y)])  # a shape from YAML that contradicts the weights
    assert parse_args(["--config", str(y), "--load", str(tmp_path)]).model.hidden_size == 128  # no model_args there


def test_yaml_accepts_sections_field_names_and_flag_names(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("attention:\n  backend: classic\nmemory:\n  checkpoint_activations: true\n"
                 "ulysses_exchange: fused\ncheckpoint:\n  save: /tmp/s\n")  # fmt: skip
    cfg = parse_args(["--config", str(y)])
    assert cfg.attention.backend == "classic" and cfg.attention.ulysses_exchange == "fused"
    assert cfg.memory.checkpoint_activations and cfg.checkpoint.save == "/tmp/s"
    assert parse_args(["--config", str(y), "--attention-backend", "sdpa"]).attention.backend == "sdpa"


def test_megatron_deepspeed_spellings_keep_working():
    cfg = parse_args("--use-flash-attn-v2 --num-query-groups 2 --num-attention-heads 4 --sequence-parallel-size 2 "
                     "--recompute-granularity full --deepspeed --no-masked-softmax-fusion --data-impl mmap "
                     "--deepspeed-config x.json".split())  # fmt: skip
    assert cfg.attention.backend == "flash" and cfg.model.num_key_value_heads == 2
    assert cfg.parallel.sequence_parallel_size == 2 and cfg.memory.checkpoint_activations
    assert cfg.parallel.deepspeed_config == "x.json"


def test_resolved_config_is_frozen_and_complete():
    cfg = parse_args("--mock-data --micro-batch-size 2 --ds-sequence-parallel-size 2".split())
    assert cfg.train.global_batch_size is None
    run = cfg.resolve(8, vocab_size=1000)
    assert run.train.global_batch_size == 8 and run.model.vocab_size == 1000 and run.memory.use_tiled_logits_loss
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.train.lr = 1.0
    assert arguments.config_from_values({"model.num_layers": 3}).model.num_layers == 3


def test_rope_flags_change_a_loaded_checkpoint_and_say_so(tmp_path, capsys):
    """RoPE fields change the numerics, not the weights: on --load they override model_args.json with a
    one-line note; every other shape field that disagrees is still refused."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    saved = weights.model_args_from_config(ModelConfig(use_rotary_position_embeddings=True, max_position_embeddings=64,
                                                       normalization="RMSNorm", swiglu=True))  # fmt: skip
    (ckpt / "model_args.json").write_text(json.dumps(saved))
    flags = ["--load", str(ckpt), "--rope-scaling-type", "yarn", "--rope-scaling-factor", "4",
             "--rope-original-max-position-embeddings", "64", "--max-position-embeddings", "256"]  # fmt: skip
    m = parse_args(flags).model
    assert (m.rope_scaling_type, m.rope_scaling_factor, m.max_position_embeddings) == ("yarn", 4.0, 256)
    note = capsys.readouterr().out.strip().splitlines()
    assert len(note) == 1 and "RoPE changed for continued pretraining" in note[0]
    assert "rope_scaling_type None -> yarn" in note[0] and "max_position_embeddings 64 -> 256" in note[0]
    with pytest.raises(ConfigError, match="--kv-channels 32 disagrees"):
        parse_args(flags + ["--kv-channels", "32"])
    assert "--layer-types full_attention sliding_attention" in weights.model_args_fragment(
        {"layer_types": ["full_attention", "sliding_attention"], "kv_channels": None, "yarn_truncate": True}
    )


@pytest.mark.parametrize(
    "fields,match",
    [
        (dict(rope_scaling_type="longrope", rope_original_max_position_embeddings=32), "needs --rope-short-factor"),
        (dict(rope_scaling_type="yarn", rope_scaling_factor=4.0), "needs --rope-original-max-position-embeddings"),
        (dict(rope_scaling_type="dynamic", rope_original_max_position_embeddings=32), "scales from"),
        (dict(sliding_window=8, layer_types=["sliding_attention"]), "names 1 layers"),
        (dict(layer_types=["sliding_attention", "full_attention"]), "no --sliding-window"),
        (dict(hidden_size=60, num_attention_heads=8), "or give --kv-channels"),
    ],
    ids=["longrope", "yarn-original", "dynamic-original", "layer-count", "no-window", "head-dim"],
)  # fmt: skip
def test_rope_and_window_fields_are_checked(fields, match):
    base = dict(use_rotary_position_embeddings=True, max_position_embeddings=64, num_layers=2)
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**{**base, **fields})
    assert ModelConfig(**{**base, "hidden_size": 60, "num_attention_heads": 8, "kv_channels": 16}).head_dim == 16
