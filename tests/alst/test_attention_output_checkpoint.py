"""Attention-output checkpointing (``apply_checkpointing(model, "attention_output")``): each layer keeps its input,
the core attention's output and log-sum-exp, and runs the attention's backward from them. The loss and every
gradient equal no recomputation's and full recomputation's (fp64 classic; fp32 flash_triton in Triton's
interpreter), with packed documents, GQA, RoPE, dropout, a tiled MLP, a per-layer mix of policies, and SP=2 over
each Ulysses exchange (gloo); the attention's forward runs once per layer per step; backends without a log-sum-exp
are refused in one line. The kernels' ``flash_attention_backward`` from a forward's (out, lse) equals the autograd
backward of ``flash_attention``."""

import os
import socket

import pytest
import torch

if not torch.cuda.is_available():  # before triton is imported (as tests/attention/conftest.py does)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from megatron.config import AttentionConfig, ConfigError, ModelConfig  # noqa: E402
from megatron.model.gpt import GPTModel  # noqa: E402
from megatron.parallelize import CHECKPOINT_POLICIES, apply_checkpointing, apply_tiled_mlp  # noqa: E402

LLAMA = dict(num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
             make_vocab_size_divisible_by=64, use_rotary_position_embeddings=True, normalization="RMSNorm",
             swiglu=True, untie_embeddings_and_output_weights=True, hidden_dropout=0.1)  # fmt: skip


def _model(backend="classic", dtype=torch.float64, seed=0, **shape):
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**LLAMA, **shape})
    return GPTModel(cfg, AttentionConfig(backend=backend)).to(dtype).train()


def _batch(S=16, b=2, documents=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (b, S + 1), generator=g)
    pos = torch.arange(S).expand(b, S)
    docs = None
    if documents:  # documents of 5, 7 and 4 tokens (then 3 and 13), positions restart in each
        docs = torch.tensor([[0] * 5 + [1] * 7 + [2] * (S - 12), [0] * 3 + [1] * (S - 3)])
        starts = torch.cat([torch.ones(b, 1, dtype=torch.bool), docs[:, 1:] != docs[:, :-1]], 1)
        first = torch.cummax(torch.where(starts, torch.arange(S), 0), 1).values
        pos = torch.arange(S) - first
    return ids[:, :-1], pos, ids[:, 1:], docs


def _loss_and_grads(model, batch, policy):
    apply_checkpointing(model, policy)
    ids, pos, labels, docs = batch
    torch.manual_seed(7)  # the same dropout masks in every run
    loss = model(ids, pos, labels, docs).sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_same(ref, got, **tol):
    torch.testing.assert_close(got[0], ref[0], **tol)
    assert ref[1].keys() == got[1].keys()
    for name, g in ref[1].items():
        torch.testing.assert_close(got[1][name], g, **tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("documents", [False, True], ids=["causal", "documents"])
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_classic_equals_full_and_no_recomputation(documents, kv_heads):
    batch = _batch(documents=documents)
    runs = {p: _loss_and_grads(_model(num_key_value_heads=kv_heads), batch, p)
            for p in ("none", "full", "attention_output", "attention_output_offload")}  # fmt: skip
    _assert_same(runs["none"], runs["attention_output"], rtol=1e-10, atol=1e-12)
    _assert_same(runs["full"], runs["attention_output"], rtol=1e-10, atol=1e-12)
    _assert_same(runs["attention_output"], runs["attention_output_offload"], rtol=0, atol=0)


def test_offload_keeps_nothing_for_autograd():
    """attention_output_offload saves none of the layer's tensors for autograd (they wait on its host tape):
    attention_output saves each layer's input, output and LSE."""
    counts = {}
    for policy in ("attention_output", "attention_output_offload"):
        model, saved = _model(num_layers=3), []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t.shape) or t, lambda t: t):
            _loss_and_grads(model, _batch(), policy)
        counts[policy] = len(saved)
    assert counts["attention_output"] - counts["attention_output_offload"] == 3 * 3


@pytest.mark.gpu
def test_offload_on_cuda_equals_attention_output_with_less_memory():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    batch = [t.cuda() if t is not None else None for t in _batch(S=2048, b=1)]
    peaks, runs = {}, {}
    for policy in ("attention_output", "attention_output_offload"):
        model = _model(backend="flash_triton", dtype=torch.bfloat16, num_layers=4, hidden_size=512,
                       num_attention_heads=4, num_key_value_heads=4, hidden_dropout=0.0).cuda()  # fmt: skip
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ids, pos, labels, docs = batch
        apply_checkpointing(model, policy)
        loss = model(ids, pos, labels, docs).sum()
        peaks[policy] = torch.cuda.max_memory_allocated() - base
        loss.backward()
        runs[policy] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    _assert_same(runs["attention_output"], runs["attention_output_offload"], rtol=0, atol=0)
    assert peaks["attention_output_offload"] < peaks["attention_output"]


def test_window_and_tiled_mlp():
    """A sliding window (with packed documents) and a tiled MLP."""
    batch = _batch(documents=True)
    ref = _loss_and_grads(_model(sliding_window=6), batch, "none")
    model = _model(sliding_window=6)
    apply_tiled_mlp(model, 2)
    _assert_same(ref, _loss_and_grads(model, batch, "attention_output"), rtol=1e-10, atol=1e-12)


def test_classic_backward_from_lse_equals_autograd_with_softcap_scale_window():
    """The classic backend's backward from (out, lse): soft-cap (Gemma-2), softmax scale, window, documents, GQA."""
    from megatron.model.attention import classic_attention, classic_attention_backward, classic_attention_lse

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 12, 4, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 12, 2, 8, generator=g, dtype=torch.float64) for _ in range(2))
    dout = torch.randn_like(q)
    docs = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])
    opts = dict(window=4, softmax_scale=0.4, softcap=2.0)
    out, lse = classic_attention_lse(q, k, v, docs, **opts)
    grads = classic_attention_backward(q, k, v, out, lse, dout, docs, **opts)
    qkv = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = classic_attention(*qkv, docs, **opts)
    ref.backward(dout)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-12, atol=1e-12)
    for a, t in zip(grads, qkv):
        torch.testing.assert_close(a, t.grad, rtol=1e-10, atol=1e-12)


def test_per_layer_policy_list_mixing_every_policy():
    batch = _batch(documents=True)
    ref = _loss_and_grads(_model(num_layers=5), batch, "none")
    mixed = list(reversed(CHECKPOINT_POLICIES))  # full, keep_attention, attention_output(_offload), none
    _assert_same(ref, _loss_and_grads(_model(num_layers=5), batch, mixed), rtol=1e-10, atol=1e-12)
    with pytest.raises(ConfigError, match="needs 4 names"):
        apply_checkpointing(_model(num_layers=4), ["full", "none"])
    with pytest.raises(ConfigError, match="'keep' is unknown"):
        apply_checkpointing(_model(), ["full", "keep"])


def test_attention_forward_runs_once_per_layer_per_step():
    model = _model()
    counts = {"forward": 0, "forward_lse": 0, "backward_lse": 0}
    for layer in model.layers:
        core = layer.attention.core_attention
        for what in counts:
            run = getattr(core, what)

            def counted(*a, _run=run, _what=what, **k):
                counts[_what] += 1
                return _run(*a, **k)

            setattr(core, what, counted)
    _loss_and_grads(model, _batch(), "attention_output")
    assert counts == {"forward": 0, "forward_lse": 2, "backward_lse": 2}


def test_backend_without_lse_is_refused_in_one_line():
    from megatron.model.attention import CoreAttention

    class NoLSE(CoreAttention):  # as the flash_attn package's backend: no log-sum-exp
        name = "flash"

    model = _model()
    for layer in model.layers:
        layer.attention.core_attention = NoLSE()
    with pytest.raises(ConfigError) as e:
        apply_checkpointing(model, "attention_output")
    assert str(e.value) == ("attention-output checkpointing needs a backend that returns its log-sum-exp "
                            "(--attention-backend flash does not); use --attention-backend flash_triton, sdpa or "
                            "classic")


def test_checkpoint_policy_reads_recompute():
    from types import SimpleNamespace

    from megatron.parallelize import checkpoint_policy

    memory = SimpleNamespace(recompute="attention_output", checkpoint_activations=False,
                             checkpoint_keep_attention=False)  # fmt: skip
    assert checkpoint_policy(SimpleNamespace(memory=memory)) == "attention_output"
    memory.recompute, memory.checkpoint_activations = None, True
    assert checkpoint_policy(SimpleNamespace(memory=memory)) == "full"


# ----------------------------------------------------------------------------- flash_triton (interpreter on CPU)
def _triton_or_skip():
    from megatron import kernels

    ok, why = kernels.is_available()
    if not ok:
        pytest.skip(why)


@pytest.mark.parametrize("documents", [False, True], ids=["causal", "documents"])
def test_flash_attention_backward_from_lse_equals_autograd(documents):
    _triton_or_skip()
    from megatron.kernels import flash_attention, flash_attention_backward, flash_attention_forward

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 16, 4, 16, generator=g)
    k, v, dout = torch.randn(1, 16, 2, 16, generator=g), torch.randn(1, 16, 2, 16, generator=g), torch.randn_like(q)
    docs = torch.tensor([[0] * 6 + [1] * 10]) if documents else None
    opts = dict(softmax_scale=0.3, document_ids=docs, window=5 if documents else None)
    out, lse = flash_attention_forward(q, k, v, **opts)
    dq, dk, dv = flash_attention_backward(q, k, v, out, lse, dout, **opts)
    qkv = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = flash_attention(*qkv, **opts)
    ref.backward(dout)
    torch.testing.assert_close(out, ref.detach(), rtol=0, atol=0)
    for a, t in zip((dq, dk, dv), qkv):
        torch.testing.assert_close(a, t.grad, rtol=0, atol=0)


def test_flash_triton_equals_full_recomputation():
    _triton_or_skip()
    shape = dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, num_layers=1)  # head dim 16, GQA
    batch = _batch(S=16, b=2, documents=True)
    full = _loss_and_grads(_model("flash_triton", torch.float32, **shape), batch, "full")
    got = _loss_and_grads(_model("flash_triton", torch.float32, **shape), batch, "attention_output")
    _assert_same(full, got, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- SP=2 (gloo, two processes)
def _sp_worker(rank, world, port, exchange, results):
    import torch.distributed as dist

    from megatron.parallelize import apply_ulysses

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ids, pos, labels, docs = _batch(S=16, b=2, documents=True)
        ref = _loss_and_grads(_model(hidden_dropout=0.0), (ids, pos, labels, docs), "full")
        model = _model(hidden_dropout=0.0)
        apply_ulysses(model, dist.group.WORLD, exchange, chunks=2)
        s = ids.shape[1] // world
        local = slice(rank * s, (rank + 1) * s)
        apply_checkpointing(model, "attention_output")
        torch.manual_seed(7)
        loss = model(ids[:, local], pos[:, local], labels[:, local], docs).sum()
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        got = {}
        for n, p in model.named_parameters():
            dist.all_reduce(p.grad)
            got[n] = p.grad
        _assert_same((ref[0], ref[1]), (total, got), rtol=1e-9, atol=1e-11)
        results[rank] = "ok"
    except Exception as e:  # noqa: BLE001 (reported to the parent)
        results[rank] = f"{type(e).__name__}: {e}"
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("exchange", ["fused", "overlap", "deepspeed"])
def test_sp2_equals_sp1_full_recomputation(exchange):
    """Without dropout's dependence on the rank: hidden dropout 0.1 draws the same masks on both ranks only when
    the local shapes match SP=1's, so dropout is off here (the single-process tests cover it)."""
    if exchange == "deepspeed":
        pytest.importorskip("deepspeed")
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_sp_worker, args=(2, port, exchange, results), nprocs=2, join=True)
    assert dict(results) == {0: "ok", 1: "ok"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("documents", [False, True], ids=["causal", "documents"])
def test_gpu_bf16_backward_from_lse_equals_autograd(documents):
    """On the GPU (the Gluon forward and fused backward on Hopper): the entry from (out, lse) equals autograd."""
    from megatron.kernels import flash_attention, flash_attention_backward, flash_attention_forward

    torch.manual_seed(0)
    q = torch.randn(1, 1024, 8, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 1024, 2, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    dout = torch.randn_like(q)
    docs = (torch.arange(1024, device="cuda") // 300)[None] if documents else None
    out, lse = flash_attention_forward(q, k, v, document_ids=docs)
    dq, dk, dv = flash_attention_backward(q, k, v, out, lse, dout, document_ids=docs)
    qkv = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = flash_attention(*qkv, document_ids=docs)
    ref.backward(dout)
    torch.testing.assert_close(out, ref.detach(), rtol=0, atol=0)
    for a, t in zip((dq, dk, dv), qkv):
        torch.testing.assert_close(a, t.grad, rtol=0, atol=0)
