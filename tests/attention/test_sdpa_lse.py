"""The SDPA backend's log-sum-exp path (attention-output checkpointing with --attention-backend sdpa): the forward
that returns its LSE and the backward from (out, lse) equal the classic reference's output and autograd gradients
(fp64 on the CPU's flash kernel; bf16 against fp32 on cuDNN), with GQA, packed documents, a sliding window and a
softmax scale; and a model on attention-output checkpointing with the SDPA backend gives the losses and gradients
of no recomputation and of full recomputation."""

import pytest
import torch

from megatron.config import AttentionConfig, ModelConfig
from megatron.model.attention import classic_attention, sdpa_attention_backward, sdpa_attention_lse
from megatron.model.gpt import GPTModel
from megatron.parallelize import apply_checkpointing


def _inputs(S, heads, kv_heads, head_dim, dtype, device, documents, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(2, S, heads, head_dim, dtype=dtype, device=device, generator=g)
    k, v = (torch.randn(2, S, kv_heads, head_dim, dtype=dtype, device=device, generator=g) for _ in range(2))
    dout = torch.randn(2, S, heads, head_dim, dtype=dtype, device=device, generator=g)
    docs = None
    if documents:  # uneven documents, different per sequence
        pos = torch.arange(S, device=device)
        docs = torch.stack([pos // (S // 3 + 1), (pos >= S // 5).long() + (pos >= S - 3).long()])
    return q, k, v, dout, docs


def _reference(q, k, v, dout, docs, window, scale):
    """classic attention's output and autograd gradients, in fp64."""
    qkv = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = classic_attention(*qkv, docs, window=window, softmax_scale=scale)
    return out.detach(), torch.autograd.grad(out, qkv, dout.double())


CASES = [  # kv heads, documents, window, softmax scale
    pytest.param(4, False, None, None, id="mha"),
    pytest.param(2, False, None, 0.3, id="gqa-scale"),
    pytest.param(2, True, None, None, id="gqa-documents"),
    pytest.param(4, True, 5, None, id="documents-window"),
    pytest.param(1, False, 7, 0.5, id="mqa-window-scale"),
]


@pytest.mark.parametrize(("kv_heads", "documents", "window", "scale"), CASES)
def test_forward_lse_and_backward_equal_classic_autograd(kv_heads, documents, window, scale):
    q, k, v, dout, docs = _inputs(16, 4, kv_heads, 8, torch.float64, "cpu", documents)
    ref_out, ref_grads = _reference(q, k, v, dout, docs, window, scale)
    out, lse = sdpa_attention_lse(q, k, v, docs, window=window, softmax_scale=scale)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    assert lse.shape == (2, 4, 16)
    grads = sdpa_attention_backward(q, k, v, out, lse, dout, docs, window=window, softmax_scale=scale)
    for name, got, want in zip("qkv", grads, ref_grads):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11, msg=lambda m, name=name: f"d{name}: {m}")


def test_backward_uses_the_given_lse():
    """The backward rebuilds the softmax from the lse it is given (no forward of its own): a shifted lse scales
    dv by exp(-shift)."""
    q, k, v, dout, _ = _inputs(16, 4, 4, 8, torch.float64, "cpu", False)
    out, lse = sdpa_attention_lse(q, k, v)
    dv = sdpa_attention_backward(q, k, v, out, lse, dout)[2]
    dv_shifted = sdpa_attention_backward(q, k, v, out, lse + 1.0, dout)[2]
    torch.testing.assert_close(dv_shifted, dv * torch.exp(torch.tensor(-1.0, dtype=torch.float64)))


LLAMA = dict(num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
             make_vocab_size_divisible_by=64, use_rotary_position_embeddings=True, normalization="RMSNorm",
             swiglu=True, untie_embeddings_and_output_weights=True, hidden_dropout=0.1)  # fmt: skip


def _loss_and_grads(policy, documents, **shape):
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(**{**LLAMA, **shape}), AttentionConfig(backend="sdpa")).double().train()
    apply_checkpointing(model, policy)
    S, g = 16, torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, S + 1), generator=g)
    docs = torch.tensor([[0] * 5 + [1] * 7 + [2] * 4, [0] * 3 + [1] * 13]) if documents else None
    torch.manual_seed(7)  # the same dropout masks in every run
    loss = model(ids[:, :-1], torch.arange(S).expand(2, S), ids[:, 1:], docs).sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("documents", [False, True], ids=["causal", "documents"])
def test_model_attention_output_checkpointing_with_sdpa_equals_none_and_full(documents):
    runs = {p: _loss_and_grads(p, documents, sliding_window=6 if documents else None)
            for p in ("none", "full", "attention_output")}  # fmt: skip
    for ref in ("none", "full"):
        torch.testing.assert_close(runs["attention_output"][0], runs[ref][0], rtol=1e-10, atol=1e-12)
        for name, grad in runs[ref][1].items():
            torch.testing.assert_close(runs["attention_output"][1][name], grad, rtol=1e-10, atol=1e-12,
                                       msg=lambda m, name=name, ref=ref: f"{name} vs {ref}: {m}")  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize(("kv_heads", "documents", "window", "scale"), CASES)
def test_gpu_cudnn_bf16_forward_lse_and_backward_near_fp64(head_dim, kv_heads, documents, window, scale):
    """cuDNN's SDPA kernels in bf16 against the fp64 reference, within bf16's error (and as close as SDPA's own
    autograd in bf16 gets)."""
    q, k, v, dout, docs = _inputs(256, 4, kv_heads, head_dim, torch.bfloat16, "cuda", documents)
    ref_out, ref_grads = _reference(q, k, v, dout, docs, window, scale)
    out, lse = sdpa_attention_lse(q, k, v, docs, window=window, softmax_scale=scale)
    grads = sdpa_attention_backward(q, k, v, out, lse, dout, docs, window=window, softmax_scale=scale)
    for name, got, want in zip("oqkv", (out, *grads), (ref_out, *ref_grads)):
        err = (got.double() - want).norm() / want.norm()
        assert err < 2e-2, f"{name}: relative error {err:.2e}"
