"""In-process checks of the ALST pieces: tiled MLP, tiled loss, offloaded checkpoints, helpers, config."""

import json

import pytest
import torch
import torch.nn.functional as F

from megatron.arguments import parse_args
from megatron.config import ConfigError, ModelConfig
from megatron.model.gpt import MLP, TransformerLayer
from megatron.model.tiled import tiled_cross_entropy, tiled_mlp
from megatron.parallelize import apply_checkpointing, apply_tiled_mlp
from megatron.training import memory
from megatron.training.ds_config import build_deepspeed_config


def _grads(module):
    return [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("swiglu", [False, True])
def test_tiled_mlp_equals_mlp_and_reduces_once(swiglu):
    torch.manual_seed(0)
    mlp = MLP(ModelConfig(hidden_size=16, num_attention_heads=2, swiglu=swiglu)).double()
    x = torch.randn(2, 13, 16, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 13, 16, dtype=torch.float64)
    y = mlp(x)
    y.backward(g)
    ref_dx, ref_dp = x.grad.clone(), _grads(mlp)
    x.grad = None
    mlp.zero_grad(set_to_none=True)
    ready = []  # what DeepSpeed's reduce hook would see at each gradient accumulation
    hook = mlp.fc1.weight.register_post_accumulate_grad_hook(lambda p: ready.append(p.ds_grad_is_ready))
    apply_tiled_mlp(mlp, 4)  # 26 rows in 4 uneven shards
    y_tiled = mlp(x)
    y_tiled.backward(g)
    hook.remove()
    torch.testing.assert_close(y_tiled, y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, ref_dx, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(mlp), ref_dp):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert ready == [False, False, False, True], "only the last shard may release the gradient for reduction"


def test_tiled_mlp_default_shards_follow_sequence_over_hidden():
    calls = []

    def run(x):
        calls.append(x.shape[0])
        return x * 2

    x = torch.randn(1, 40, 8, requires_grad=True)
    tiled_mlp(run, x, None, []).sum().backward()
    assert calls == [8] * 5 * 2, "ceil(40 / 8) = 5 shards, each run in forward and again in backward"


@pytest.mark.parametrize("chunk", [7, 10, 1000])
def test_tiled_cross_entropy_equals_full_logits(chunk):
    torch.manual_seed(0)
    h = torch.randn(2, 19, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (2, 19))
    y[1, 4] = -100
    g = torch.rand(2, 19, dtype=torch.float64)  # any per-token weight (loss mask x scale)
    ref = F.cross_entropy(F.linear(h, w).float().flatten(0, 1), y.flatten(), reduction="none").view(2, 19)
    (ref * g).sum().backward()
    ref_dh, ref_dw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    got = tiled_cross_entropy(h, w, y, chunk)
    (got * g).sum().backward()
    assert got.dtype == torch.float32 and got.shape == (2, 19)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(h.grad, ref_dh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, ref_dw, rtol=1e-5, atol=1e-6)


def test_offloaded_checkpoint_equals_plain_layer_with_dropout():
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=16, num_attention_heads=2, hidden_dropout=0.3)
    layer = TransformerLayer(cfg).double()
    x = torch.randn(2, 8, 16, dtype=torch.float64, requires_grad=True)
    pos = torch.arange(8).expand(2, 8)
    torch.manual_seed(1)
    layer(x, pos).square().sum().backward()
    ref_dx, ref_dp = x.grad.clone(), _grads(layer)
    x.grad = None
    layer.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    memory.offloaded_checkpoint(layer, x, pos, None).square().sum().backward()
    torch.testing.assert_close(x.grad, ref_dx)
    for a, b in zip(_grads(layer), ref_dp):
        torch.testing.assert_close(a, b)


def _layer_stack(device, dtype, n=4, hidden=16, heads=2):
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=hidden, num_attention_heads=heads, hidden_dropout=0.3)
    return torch.nn.ModuleList(TransformerLayer(cfg) for _ in range(n)).to(device, dtype)


def _stack_grads(layers, x, pos, offload: bool):
    """Input and parameter gradients of a layer stack, plain or with every layer's input on one tape."""
    layers.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    tape = memory.OffloadTape()
    torch.manual_seed(1)
    h = x
    for layer in layers:
        h = memory.offloaded_checkpoint(layer, h, pos, None, tape=tape) if offload else layer(h, pos)
    h.square().sum().backward()
    return [x.grad] + _grads(layers), tape


def test_offload_tape_prefetches_each_layer_input_for_the_layer_below():
    """Four layers on one tape: the same gradients as plain layers (each layer recomputes from its own
    input, not a neighbour's), and every input but the first one backward asks for was prefetched."""
    layers = _layer_stack("cpu", torch.float64)
    x = torch.randn(2, 8, 16, dtype=torch.float64)
    pos = torch.arange(8).expand(2, 8)
    ref, _ = _stack_grads(layers, x, pos, offload=False)
    got, tape = _stack_grads(layers, x, pos, offload=True)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)
    assert tape.prefetched == len(layers) - 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offload_tape_side_stream_copies_match_plain_layers_on_gpu():
    """On a GPU the copies run on a side stream (device-to-host in forward, host-to-device prefetch in
    backward); the gradients equal plain layers' up to the attention backward's non-deterministic
    accumulation (~1e-5 in fp32), so no copy is read before it has landed (that would be O(1))."""
    layers = _layer_stack("cuda", torch.float32, n=6, hidden=256, heads=4)
    x = torch.randn(1, 16384, 256, device="cuda")  # 16 MB per layer input
    pos = torch.arange(16384, device="cuda").unsqueeze(0)
    ref, _ = _stack_grads(layers, x, pos, offload=False)
    for _ in range(3):
        got, tape = _stack_grads(layers, x, pos, offload=True)
        torch.cuda.synchronize()
        for a, b in zip(got, ref):
            assert ((a - b).norm() / b.norm()).item() < 1e-4
        assert tape.prefetched == len(layers) - 1


def _count_calls(module, counts, key):
    run = module.forward

    def counted(*a, **k):
        counts[key] = counts.get(key, 0) + 1
        return run(*a, **k)

    module.forward = counted


@pytest.mark.parametrize("mode", ["plain", "full", "keep_attention"])
def test_keep_attention_checkpoint_equals_plain_layer_and_runs_attention_once(mode):
    """--checkpoint-keep-attention: the same outputs and gradients as the plain layer (fp64, dropout on,
    GQA, RoPE), the core attention runs once per step as without checkpointing (full checkpointing runs
    it twice), and the projections and MLP run twice (they are recomputed)."""
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, hidden_dropout=0.3,
                      use_rotary_position_embeddings=True, swiglu=True)  # fmt: skip
    layer = TransformerLayer(cfg).double()
    x = torch.randn(2, 12, 32, dtype=torch.float64, requires_grad=True)
    pos = torch.arange(12).expand(2, 12)
    torch.manual_seed(1)
    ref = layer(x, pos)
    ref.square().sum().backward()
    ref_dx, ref_dp = x.grad.clone(), _grads(layer)
    x.grad = None
    layer.zero_grad(set_to_none=True)
    counts = {}
    _count_calls(layer.attention.core_attention, counts, "attention")
    _count_calls(layer.attention.qkv, counts, "qkv")
    _count_calls(layer.mlp, counts, "mlp")
    if mode == "keep_attention":
        apply_checkpointing(layer, "keep_attention")
    torch.manual_seed(1)
    if mode == "full":
        out = torch.utils.checkpoint.checkpoint(layer, x, pos, use_reentrant=False)
    else:
        out = layer(x, pos)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, ref_dx)
    for a, b in zip(_grads(layer), ref_dp):
        torch.testing.assert_close(a, b)
    expected = {"plain": (1, 1), "full": (2, 2), "keep_attention": (1, 2)}[mode]
    assert (counts["attention"], counts["qkv"]) == expected and counts["mlp"] == expected[1]


def test_keep_attention_needs_checkpointing_and_does_not_combine_with_offload():
    with pytest.raises(ConfigError, match="add --checkpoint-activations"):
        parse_args(["--checkpoint-keep-attention", "--mock-data"])
    with pytest.raises(ConfigError, match="do not combine"):
        parse_args(["--checkpoint-activations", "--checkpoint-keep-attention", "--checkpoint-in-cpu", "--mock-data"])
    cfg = parse_args(["--checkpoint-activations", "--checkpoint-keep-attention", "--mock-data"])
    assert cfg.memory.checkpoint_keep_attention


def test_expandable_segments_set_unless_user_configured():
    env = {}
    assert memory.set_expandable_segments(env) and env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    env = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}
    assert not memory.set_expandable_segments(env) and env["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"


def test_offload_host_memory_check(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable:   1048576 kB\n")  # 1 GiB
    ckpt = memory.checkpoint_offload_bytes(2, 1, 1024, 64, 2)
    assert memory.check_host_memory(checkpoint_bytes_per_rank=ckpt, local_ranks=2, meminfo=str(meminfo)) == 2 * ckpt
    big = memory.checkpoint_offload_bytes(32, 1, 131072, 4096, 2)  # Llama-8B layer inputs at 128k: 32 GiB
    with pytest.raises(ConfigError, match=r"need about 32.0 GiB \(--checkpoint-in-cpu 32.0 GiB\)"):
        memory.check_host_memory(checkpoint_bytes_per_rank=big, meminfo=str(meminfo))
    # ZeRO-Offload of 8B parameters on one GPU: 16 GiB of bf16 parameters + 128 GiB of fp32 optimizer state
    n = 8 * 2**30
    with pytest.raises(ConfigError, match=r"--offload-param 16.0 \+ --offload-optimizer 128.0 GiB"):
        memory.check_host_memory(num_params=n, offload_param=True, offload_optimizer=True, meminfo=str(meminfo))
    # the same over 512 ranks of 8 per host fits in 1 GiB x 0.9 (8 x 144 GiB / 512 = 2.25 GiB does not; 2048 does)
    with pytest.raises(ConfigError, match="the 8 rank"):
        memory.check_host_memory(num_params=n, zero_shards=512, offload_param=True, offload_optimizer=True,
                                 local_ranks=8, meminfo=str(meminfo))  # fmt: skip
    assert memory.check_host_memory(num_params=n, zero_shards=2048, offload_param=True, offload_optimizer=True,
                                    local_ranks=8, meminfo=str(meminfo)) == n * 18 * 8 // 2048  # fmt: skip
    assert memory.check_host_memory(num_params=n, meminfo=str(meminfo)) == 0  # nothing offloaded: no check


def test_alst_flags_and_yaml_names(tmp_path):
    cfg = parse_args(["--ds-sequence-parallel-size", "2"]).memory
    assert cfg.use_tiled_logits_loss, "tiled loss is on by default with SP > 1"
    assert not parse_args(["--ds-sequence-parallel-size", "2", "--no-tiled-logits-loss"]).memory.use_tiled_logits_loss
    assert not parse_args([]).memory.use_tiled_logits_loss
    yaml = tmp_path / "alst.yaml"
    yaml.write_text(
        "parallel:\n  tiled_mlp_compute: true\n  checkpoint_activations: true\n"
        "  activation_checkpoint_cpu_offload: true\n  zero_stage: 3\n  offload_param: true\n"
    )
    p = parse_args(["--config", str(yaml), "--tiled-mlp-shards", "4"]).memory
    assert p.tiled_mlp_compute and p.tiled_mlp_shards == 4 and p.checkpoint_in_cpu and p.offload_param
    for argv, msg in [
        (["--checkpoint-in-cpu"], "add --checkpoint-activations"),
        (["--offload-param", "--zero-stage", "1"], "needs ZeRO-3"),
        (["--tiled-mlp-shards", "0"], "must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            parse_args(argv)


def test_ds_config_honours_comm_dtype_bucket_and_offload():
    from deepspeed.runtime.config import DeepSpeedConfig

    argv = ["--seq-parallel-communication-data-type", "bf16", "--reduce-bucket-size", "2e6", "--zero-stage", "3",
            "--offload-param", "--offload-optimizer", "--micro-batch-size", "1"]  # fmt: skip
    cfg = parse_args(argv).resolve(1)
    ds = build_deepspeed_config(cfg, 1)
    assert ds["seq_parallel_communication_data_type"] == "bf16"
    zero = ds["zero_optimization"]
    assert zero["reduce_bucket_size"] == 2_000_000
    assert zero["offload_param"]["device"] == "cpu" and zero["offload_optimizer"]["device"] == "cpu"
    parsed = DeepSpeedConfig(json.loads(json.dumps(ds)))  # what deepspeed.initialize parses
    assert parsed.seq_parallel_communication_data_type == torch.bfloat16
    assert parsed.zero_config.reduce_bucket_size == 2_000_000
    assert parsed.zero_config.offload_param.device == "cpu"
    assert parsed.zero_config.offload_optimizer.device == "cpu"


@pytest.mark.parametrize("vocab", [512, 50304, 128256, 262144])
def test_fused_loss_chunks_take_the_eager_chunks_bytes(vocab):
    """The Triton path's default chunk holds 4x the logits in bf16, in place: the eager chunk's memory."""
    from megatron.model.tiled import chunk_bytes, default_chunk

    fused, eager = default_chunk(vocab, True), default_chunk(vocab, False)
    assert fused >= 4 * eager
    assert chunk_bytes(fused, vocab, True) == pytest.approx(chunk_bytes(eager, vocab, False), rel=1e-3)
    assert chunk_bytes(fused, vocab, True) <= 2**29
