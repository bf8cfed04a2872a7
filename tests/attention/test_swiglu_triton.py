"""The fused SwiGLU kernels (megatron.kernels.swiglu, Triton's interpreter on CPU) against the eager formula and an
fp64 reference: output and gradient, odd widths, strided inputs, no rows; and a SwiGLU model with them gives the
eager model's loss and gradients."""

import pytest
import torch

from megatron.kernels import swiglu as sk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on CPU the kernels run in Triton's interpreter


def _y(rows, F, dtype=torch.float32, seed=0, extra=0):
    g = torch.Generator().manual_seed(seed)
    full = (torch.randn(rows, 2 * F + extra, generator=g) * 3).to(DEVICE)
    return full[:, extra:].to(dtype)  # extra > 0: a view whose rows are longer than 2F (fc1 output of a slice)


@pytest.mark.parametrize(("rows", "F", "extra"), [(7, 40, 0), (3, 1500, 0), (5, 64, 6)], ids=["odd-width", "two-blocks", "strided"])
def test_fp32_equals_eager_forward_and_backward(rows, F, extra):
    y = _y(rows, F, extra=extra).requires_grad_()
    dout = torch.randn(rows, F, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    got = sk.swiglu(y)
    (dy,) = torch.autograd.grad(got, y, dout)
    y_ref = y.detach().clone().requires_grad_()
    want = sk.swiglu_reference(y_ref)
    (dy_ref,) = torch.autograd.grad(want, y_ref, dout)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dy, dy_ref, rtol=1e-6, atol=1e-6)
    assert got.shape == (rows, F) and dy.shape == y.shape


def test_bf16_is_as_near_fp64_as_eager():
    """Rounded once instead of at each eager step: on the GPU the kernels' bf16 error against fp64 is no larger
    than eager's. Triton's CPU interpreter truncates fp32 to bf16 instead of rounding to nearest, which doubles the
    error of a rounding: there the bound is twice eager's."""
    device = DEVICE
    y = _y(64, 256, torch.bfloat16).requires_grad_()
    dout = torch.randn(64, 256, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).to(device)
    y64 = y.detach().double().requires_grad_()
    want = sk.swiglu_reference(y64)
    (dy64,) = torch.autograd.grad(want, y64, dout.double())
    errors = {}
    for name, fn in (("fused", sk.swiglu), ("eager", sk.swiglu_reference)):
        yy = y.detach().clone().requires_grad_()
        out = fn(yy)
        (dy,) = torch.autograd.grad(out, yy, dout)
        errors[name] = [((a.double() - b).norm() / b.norm()).item() for a, b in ((out, want), (dy, dy64))]
    bound = 1.01 if device == "cuda" else 2.0
    for fused, eager in zip(errors["fused"], errors["eager"]):
        assert fused <= eager * bound + 1e-6, errors
        assert fused < 1e-2, errors


def test_leading_dimensions_and_no_rows():
    y = _y(6, 24).view(2, 3, 48).requires_grad_()
    out = sk.swiglu(y)
    assert out.shape == (2, 3, 24)
    out.sum().backward()
    assert y.grad.shape == (2, 3, 48)
    empty = torch.zeros(0, 3, 48, device=DEVICE, requires_grad=True)
    assert sk.swiglu(empty).shape == (0, 3, 24)


def test_odd_last_dimension_is_refused():
    with pytest.raises(ValueError, match=r"swiglu needs an even last dimension \(\[gate; up\]\), got \(2, 5\)"):
        sk.swiglu(torch.zeros(2, 5))


def test_supported_only_on_cuda():
    assert not sk.supported(torch.zeros(2, 4))
    if torch.cuda.is_available():
        assert sk.supported(torch.zeros(2, 4, device="cuda", dtype=torch.bfloat16))


def test_model_with_fused_swiglu_equals_eager(monkeypatch):
    """A Llama-shaped model through the kernels (made to run on the CPU too) gives the eager model's loss and grads."""
    from megatron.config import AttentionConfig, ModelConfig
    from megatron.model.gpt import GPTModel

    shape = dict(num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                 make_vocab_size_divisible_by=64, use_rotary_position_embeddings=True, normalization="RMSNorm",
                 swiglu=True, untie_embeddings_and_output_weights=True)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, 17), generator=g).to(DEVICE)
    runs = {}
    calls = []
    real = sk.swiglu
    monkeypatch.setattr(sk, "supported", lambda y: True)
    monkeypatch.setattr(sk, "swiglu", lambda y: calls.append(y.shape) or real(y))
    for fused in (True, False):
        torch.manual_seed(0)
        model = GPTModel(ModelConfig(**shape, fused_swiglu=fused), AttentionConfig(backend="classic")).to(DEVICE)
        loss = model(ids[:, :-1], torch.arange(16, device=DEVICE).expand(2, 16), ids[:, 1:]).sum()
        loss.backward()
        runs[fused] = loss.detach(), {n: p.grad for n, p in model.named_parameters()}
    assert len(calls) == 2  # one per layer, fused run only
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=1e-6, atol=1e-6)
    for name, grad in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], grad, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
