"""Flags and YAML map into the typed config; parallel groups; FLOPs accounting; data layout."""

import json
import re

import pytest

from megatron.arguments import parse_args
from megatron.config import AttentionConfig, ConfigError, ModelConfig
from megatron.parallel_state import build_rank_layout
from megatron.training import metrics
from megatron.training.ds_config import build_deepspeed_config
from megatron.training.lr_schedule import lr_at


def test_flags_fill_every_section():
    cfg = parse_args(
        "--num-layers 3 --hidden-size 96 --num-attention-heads 6 --num-key-value-heads 2 --seq-length 256 "
        "--use-rotary-position-embeddings --normalization RMSNorm --swiglu --disable-bias-linear --micro-batch-size 2 "
        "--global-batch-size 8 --lr 2e-4 --bf16 --zero-stage 3 --ds-sequence-parallel-size 2 --use-flash-attn-triton "
        "--mock-data --save /tmp/x --log-interval 5".split()
    )
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.num_key_value_heads, m.normalization) == (3, 96, 2, "RMSNorm")
    assert m.swiglu and not m.add_bias_linear and cfg.attention.backend == "flash_triton"
    assert m.ffn_hidden_size == 256  # 8/3 * 96 rounded up to a multiple of 64
    assert cfg.train.bf16 and cfg.train.lr == 2e-4 and cfg.train.global_batch_size == 8
    assert cfg.parallel.zero_stage == 3 and cfg.parallel.sequence_parallel_size == 2
    assert cfg.data.mock_data and cfg.checkpoint.save == "/tmp/x" and cfg.logging.log_interval == 5


def test_yaml_with_alst_names_and_flag_override(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("sequence_parallel_size: 4\nmodel:\n  num_layers: 5\n  num_attention_heads: 8\n  hidden_size: 128\nlr: 0.01\n")
    cfg = parse_args(["--config", str(y), "--lr", "0.02"])
    assert cfg.parallel.sequence_parallel_size == 4 and cfg.model.num_layers == 5 and cfg.train.lr == 0.02
    y.write_text("no_such_key: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'no_such_key'"):
        parse_args(["--config", str(y)])


def test_negated_switch_overrides_yaml(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("activation_checkpointing: true\ntiled_mlp_compute: true\n")
    base = ["--config", str(y), "--mock-data"]
    assert parse_args(base).memory.checkpoint_activations
    cfg = parse_args(base + ["--no-checkpoint-activations", "--no-tiled-mlp-compute"])
    assert not cfg.memory.checkpoint_activations and not cfg.memory.tiled_mlp_compute


def test_rank_layout_eight_gpus_sp4():
    layout = build_rank_layout(8, 4)
    assert layout["sequence_parallel"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert layout["data_parallel"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout["sequence_data_parallel"] == [list(range(8))]


def test_deepspeed_config_derived_from_flags_and_conflicts_rejected(tmp_path):
    cfg = parse_args("--mock-data --micro-batch-size 2 --global-batch-size 16 --zero-stage 3 --bf16 --ds-sequence-parallel-size 2".split())
    cfg = cfg.resolve(8)  # DP = 4 -> accumulation 2
    ds = build_deepspeed_config(cfg, 8)
    assert ds["train_batch_size"] == 16 and ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    user = tmp_path / "ds.json"
    user.write_text('{"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3}}')
    cfg = cfg.replace(parallel={"deepspeed_config": str(user)})
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu=4"):
        build_deepspeed_config(cfg, 8)


def test_megatron_deepspeed_flops_formula_gpt13b():
    cfg = ModelConfig(num_layers=24, hidden_size=2048, num_attention_heads=16, seq_length=8192, vocab_size=50257)
    got = metrics.megatron_deepspeed_flops_per_iteration(cfg, 1, 8192, False)
    h, L, s, V = 2048, 24, 8192, 50304
    assert got == pytest.approx(72 * s * L * h * h * (1 + s / (6 * h) + V / (16 * L * h)))
    full = metrics.megatron_deepspeed_flops_per_iteration(cfg, 1, 8192, True)
    assert full == pytest.approx(got * 4 / 3)
    kept = metrics.megatron_deepspeed_flops_per_iteration(cfg, 1, 8192, True, keep_attention=True)
    assert kept == pytest.approx(full - 24 * s * L * h * h * s / (6 * h))  # attention counted x3, not x4


def test_model_flops_close_to_6n_plus_causal_attention():
    cfg = ModelConfig(num_layers=24, hidden_size=2048, num_attention_heads=16, seq_length=2048, vocab_size=50257)
    n = cfg.num_parameters()
    per_token = metrics.model_flops_per_token(cfg, 2048)
    # 6N (dense) minus the non-matmul parameters (biases, norms, position table), plus 6*L*S*h attention
    assert 6 * n < per_token < 6 * n + 6 * 24 * 2048 * 2048 * 1.01
    assert metrics.peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and metrics.peak_flops("cpu") is None


def test_model_flops_with_documents():
    import torch

    cfg = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=8, vocab_size=128)
    one_doc = torch.zeros(3, 8, dtype=torch.long)
    assert metrics.document_square_sum(one_doc) == 3 * 64
    docs = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 1, 1, 1, 1]])
    assert metrics.document_square_sum(docs) == (9 + 4 + 9) + (1 + 49)
    assert metrics.model_flops(cfg, 3 * 8, 3 * 64) == pytest.approx(metrics.model_flops_per_token(cfg, 8) * 3 * 8)
    dense = metrics.model_flops(cfg, 16, 64 * 2)
    assert dense - metrics.model_flops(cfg, 16, 72) == pytest.approx(6 * 2 * 64 * (128 - 72))


@pytest.mark.parametrize(
    "extra",
    [dict(), dict(kv_channels=24), dict(kv_channels=24, add_qkv_bias=True, add_bias_linear=False),
     dict(kv_channels=16, qk_layernorm=True, add_bias_linear=False, untie_embeddings_and_output_weights=True)],
    ids=["llama", "head-dim", "qkv-bias", "qk-norm"],
)  # fmt: skip
def test_num_parameters_and_flops_follow_head_dim_biases_and_qk_norms(extra):
    """num_parameters() counts what GPTModel builds; attention FLOPs are heads x head dim wide."""
    from megatron.model.gpt import GPTModel

    cfg = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=8, num_key_value_heads=2, seq_length=32,
                      vocab_size=100, make_vocab_size_divisible_by=1, use_rotary_position_embeddings=True,
                      normalization="RMSNorm", swiglu=True, **extra)  # fmt: skip
    assert cfg.num_parameters() == sum(p.numel() for p in GPTModel(cfg).parameters())
    q = 8 * cfg.head_dim
    attention = metrics.model_flops_per_token(cfg, 32) - metrics.model_flops_per_token(cfg, 0)
    assert attention == 6 * 2 * 32 * q
    assert metrics.model_flops(cfg, 32, 32 * 32) == pytest.approx(metrics.model_flops_per_token(cfg, 32) * 32)


def test_model_flops_count_the_pairs_windowed_layers_attend():
    """A layer with a window W < S attends attended_pairs(S, W) pairs (about S x W), a full layer S^2 / 2."""
    cfg = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=8, seq_length=64, vocab_size=128,
                      use_rotary_position_embeddings=True, normalization="RMSNorm", swiglu=True, kv_channels=16,
                      sliding_window=8, layer_types=["sliding_attention", "full_attention"])  # fmt: skip
    q = 8 * 16
    attention = metrics.model_flops_per_token(cfg, 64) - metrics.model_flops_per_token(cfg, 0)
    assert attention == pytest.approx(6 * 64 * q + 12 * q * metrics.attended_pairs(64, 8) / 64)
    assert metrics.attended_pairs(64, 8) == 8 * 9 // 2 + 56 * 8
    assert metrics.model_flops(cfg, 3 * 64, 3 * 64 * 64) == pytest.approx(metrics.model_flops_per_token(cfg, 64) * 192)
    full = ModelConfig(**{**cfg.__dict__, "sliding_window": None, "layer_types": []})
    assert metrics.model_flops(cfg, 192, 3 * 64 * 64) < metrics.model_flops(full, 192, 3 * 64 * 64)
    # a window of at least the sequence is full attention
    wide = ModelConfig(**{**cfg.__dict__, "sliding_window": 64})
    assert metrics.model_flops_per_token(wide, 64) == metrics.model_flops_per_token(full, 64)


def test_lr_schedule_warmup_then_cosine_to_min():
    from megatron.config import TrainConfig

    t = TrainConfig(lr=1.0, min_lr=0.1, lr_warmup_iters=10, train_iters=110)
    assert lr_at(0, t) == pytest.approx(0.1) and lr_at(9, t) == pytest.approx(1.0)
    assert lr_at(60, t) == pytest.approx(0.55) and lr_at(110, t) == pytest.approx(0.1)


def test_mock_data_depends_only_on_seed_and_index():
    from megatron.data.mock import MockGPTDataset

    a, b = MockGPTDataset(32, 100, seed=3), MockGPTDataset(32, 100, seed=3)
    assert (a[5]["tokens"] == b[5]["tokens"]).all() and not (a[5]["tokens"] == a[6]["tokens"]).all()
    assert a[5]["tokens"].shape == (33,) and a[5]["tokens"].max() < 100


def test_zero3_leaf_layers_default_follows_the_zero_stage():
    base = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32", "--mock-data"]
    assert parse_args(base + ["--zero-stage", "3"]).parallel.use_zero3_leaf_layers
    assert not parse_args(base + ["--zero-stage", "3", "--no-zero3-leaf-layers"]).parallel.use_zero3_leaf_layers
    assert not parse_args(base + ["--zero-stage", "1"]).parallel.use_zero3_leaf_layers
    with pytest.raises(ConfigError, match="needs ZeRO-3"):
        parse_args(base + ["--zero-stage", "1", "--zero3-leaf-layers"])
    assert parse_args(base).attention.ulysses_exchange == "deepspeed"
    with pytest.raises(ConfigError, match="ulysses-exchange"):
        AttentionConfig(ulysses_exchange="ring")
    with pytest.raises(ConfigError, match="ulysses-overlap-chunks 0"):
        AttentionConfig(ulysses_overlap_chunks=0)
    assert parse_args(base + ["--ulysses-exchange", "overlap", "--ulysses-overlap-chunks", "4"]).attention.ulysses_overlap_chunks == 4


def test_zero3_uses_plain_linear_unless_the_user_json_says_otherwise(tmp_path):
    cfg = parse_args("--mock-data --micro-batch-size 1 --global-batch-size 2 --zero-stage 3".split())
    cfg = cfg.resolve(2)
    assert build_deepspeed_config(cfg, 2)["zero_optimization"]["memory_efficient_linear"] is False
    user = tmp_path / "ds.json"
    user.write_text('{"zero_optimization": {"stage": 3, "memory_efficient_linear": true}}')
    cfg = cfg.replace(parallel={"deepspeed_config": str(user)})
    assert build_deepspeed_config(cfg, 2)["zero_optimization"]["memory_efficient_linear"] is True
    cfg = parse_args("--mock-data --micro-batch-size 1 --global-batch-size 2 --zero-stage 1".split())
    cfg = cfg.resolve(2)
    assert "memory_efficient_linear" not in build_deepspeed_config(cfg, 2)["zero_optimization"]


@pytest.mark.parametrize(
    "user,expected",
    [
        ({"gradient_clipping": 0.5}, "gradient_clipping=0.5 but --clip-grad is 1.0; remove it from the JSON and pass --clip-grad 0.5"),
        ({"optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "weight_decay": 0.1}}},
         "optimizer block (AdamW), but the optimizer is AdamW built from the flags; remove the block and pass "
         "--lr 0.0003 --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95"),
        ({"scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 100, "total_num_steps": 1000}}},
         "scheduler block (WarmupDecayLR), but the learning rate follows the flags"),
        ({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}},
         "zero_optimization.offload_optimizer.device=cpu; offload is set by --offload-optimizer"),
        ({"zero_optimization": {"offload_param": {"device": "nvme"}}}, "NVMe is not supported"),
        ({"zero_optimization": {"reduce_bucket_size": 1e6}}, "reduce_bucket_size=1000000.0 but --reduce-bucket-size is 2000"),
        ({"seq_parallel_communication_data_type": "fp32"}, "seq_parallel_communication_data_type=fp32 but"),
    ],
)  # fmt: skip
def test_deepspeed_config_keys_that_disagree_with_the_flags_are_refused(tmp_path, user, expected):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    flags = "--mock-data --zero-stage 3 --reduce-bucket-size 2000 --seq-parallel-communication-data-type bf16"
    cfg = parse_args([*flags.split(), "--deepspeed_config", str(path)]).resolve(2)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build_deepspeed_config(cfg, 2)


def test_deepspeed_config_keys_without_flags_are_kept(tmp_path):
    path = tmp_path / "ds.json"
    user = {"fp16": {"initial_scale_power": 12, "loss_scale_window": 500}, "bf16": {"immediate_grad_update": True},
            "zero_optimization": {"stage3_prefetch_bucket_size": 1234}, "gradient_clipping": "auto",
            "comms_logger": {"enabled": False}, "steps_per_print": 5}  # fmt: skip
    path.write_text(json.dumps(user))
    fp16 = build_deepspeed_config(parse_args(["--mock-data", "--fp16", "--deepspeed_config", str(path)]).resolve(1), 1)
    assert fp16["fp16"] == {"enabled": True, "initial_scale_power": 12, "loss_scale_window": 500, "hysteresis": 2}
    assert fp16["gradient_clipping"] == 1.0 and fp16["comms_logger"] == {"enabled": False} and fp16["steps_per_print"] == 5
    bf16 = build_deepspeed_config(parse_args(["--mock-data", "--bf16", "--zero-stage", "3", "--deepspeed_config", str(path)])
                                  .resolve(1), 1)  # fmt: skip
    assert bf16["bf16"] == {"immediate_grad_update": True, "enabled": True}
    assert bf16["zero_optimization"]["stage3_prefetch_bucket_size"] == 1234


def test_deepcompile_sets_the_json_and_agrees_with_a_users_file(tmp_path):
    cfg = parse_args("--mock-data --micro-batch-size 1 --global-batch-size 2 --deepcompile".split())
    assert build_deepspeed_config(cfg.resolve(2), 2)["compile"] == {"deepcompile": True}
    plain = parse_args("--mock-data --micro-batch-size 1 --global-batch-size 2".split()).resolve(2)
    assert "compile" not in build_deepspeed_config(plain, 2)
    user = tmp_path / "ds.json"
    user.write_text('{"compile": {"deepcompile": true, "free_activation": true}}')
    assert build_deepspeed_config(cfg.replace(parallel={"deepspeed_config": str(user)}), 2)["compile"] == {
        "deepcompile": True, "free_activation": True}  # fmt: skip
    with pytest.raises(ConfigError, match="compile.deepcompile=True but --deepcompile is off; pass --deepcompile"):
        build_deepspeed_config(plain.replace(parallel={"deepspeed_config": str(user)}), 2)
    for stage in ("0", "2", "3"):
        with pytest.raises(ConfigError, match=f"--deepcompile runs with ZeRO-1 only \\(got --zero-stage {stage};"):
            parse_args(f"--mock-data --zero-stage {stage} --deepcompile".split())
    with pytest.raises(ConfigError, match="--deepcompile does not trace the tiled loss's backward"):
        parse_args("--mock-data --ds-sequence-parallel-size 2 --deepcompile".split())  # SP > 1: tiled loss by default
