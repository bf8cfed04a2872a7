"""Per-layer attention options in every backend: sliding window, softmax scale, logit soft-cap.

classic (fp64) is the reference: it equals the kernels' fp64 test reference with window, scale and documents, and
its soft-cap a hand-written loop; sdpa (fp64) and flash_triton (fp32, Triton's interpreter on CPU) equal it;
a backend without the soft-cap refuses it at build in one line naming classic.
Legend: b batch, S sequence, h query heads, g kv heads, d head dim.
"""

import math

import pytest
import torch

from megatron.config import AttentionConfig, ModelConfig
from megatron.model import attention as att
from tests.attention.test_flash_attn_triton import document_ids_of_lengths, reference_attention

B, S, H, G, D = 2, 40, 4, 2, 16
# (window, softmax_scale, document lengths or None)
OPTIONS = [
    (7, None, None),
    (16, 0.3, None),
    (5, None, (13, 27)),
    (23, 0.7, (16, 9, 15)),
    (100, None, (20, 20)),  # longer than the sequence: full causal
    (None, 0.2, (11, 29)),
]


def _inputs(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, dout = (torch.randn(B, S, H, D, generator=gen, dtype=dtype) for _ in range(2))
    k, v = (torch.randn(B, S, G, D, generator=gen, dtype=dtype) for _ in range(2))
    return q, k, v, dout


def _run(backend, q, k, v, dout, docs):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = backend(q, k, v, docs)
    out.backward(dout)
    return [out.detach(), q.grad, k.grad, v.grad]


@pytest.mark.parametrize("window,scale,lengths", OPTIONS)
def test_classic_equals_the_fp64_reference(window, scale, lengths):
    q, k, v, dout = _inputs()
    docs = document_ids_of_lengths(lengths, B) if lengths else None
    got = _run(att.build_backend(AttentionConfig(backend="classic"), window=window, softmax_scale=scale),
               q, k, v, dout, docs)  # fmt: skip
    q64, k64, v64 = (t.clone().requires_grad_() for t in (q, k, v))
    ref = reference_attention(q64, k64, v64, True, scale or D**-0.5, docs, window=window)
    ref.backward(dout)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, (ref, q64.grad, k64.grad, v64.grad)):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("window,scale,lengths", OPTIONS)
@pytest.mark.parametrize("backend", ["sdpa", "flash_triton", "flash"])  # flash: SDPA on a CPU, with the options
def test_backend_equals_classic(backend, window, scale, lengths):
    if backend == "flash_triton" and att.FlashTritonAttention.supports(torch.device("cpu"), 0.0) is not None:
        pytest.skip(att.FlashTritonAttention.supports(torch.device("cpu"), 0.0))
    q, k, v, dout = _inputs()
    docs = document_ids_of_lengths(lengths, B) if lengths else None
    options = {"window": window, "softmax_scale": scale}
    want = _run(att.build_backend(AttentionConfig(backend="classic"), **options), q, k, v, dout, docs)
    dtype, tol = (torch.float32, 1e-4) if backend == "flash_triton" else (torch.float64, 1e-10)
    got = _run(att.build_backend(AttentionConfig(backend=backend), **options),
               *(t.to(dtype) for t in (q, k, v, dout)), docs)  # fmt: skip
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        err = ((a.double() - b).norm() / b.norm()).item()
        assert err < tol, f"{backend} {name}: rel err {err:.1e}"


def test_classic_softcap_equals_a_hand_written_loop():
    """scores = cap * tanh(q.k * scale / cap), then the causal window, then the softmax: query by query."""
    q, k, v, _ = _inputs(seed=1)
    q = q * 4  # logits large enough for the cap to matter
    cap, scale, window = 2.0, 0.4, 6
    docs = document_ids_of_lengths((15, 25), B)
    got = att.classic_attention(q, k, v, docs, window=window, softmax_scale=scale, softcap=cap)
    want = torch.zeros_like(got)
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            for i in range(S):
                keys = [j for j in range(S) if 0 <= i - j < window and docs[b, i] == docs[b, j]]
                logits = torch.stack([cap * torch.tanh(q[b, i, h] @ k[b, j, g] * scale / cap) for j in keys])
                p = torch.exp(logits - logits.max())
                want[b, i, h] = sum(pj * v[b, j, g] for pj, j in zip(p / p.sum(), keys))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert (got - att.classic_attention(q, k, v, docs, window=window, softmax_scale=scale)).abs().max() > 1e-2


@pytest.mark.parametrize("backend", ["sdpa", "flash", "flash_triton"])
def test_softcap_is_refused_in_one_line_naming_classic(backend):
    with pytest.raises(RuntimeError) as e:
        att.build_backend(AttentionConfig(backend=backend), softcap=50.0)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"--attention-backend {backend} cannot run: ")
    assert "soft-cap (softcap=50.0)" in msg and "--attention-backend classic runs it" in msg


def test_option_values_are_checked():
    for options, needle in (({"window": 0}, "window must be a positive"), ({"window": 2.5}, "window must be"),
                            ({"softmax_scale": 0.0}, "softmax_scale must be positive"),
                            ({"softcap": -1.0}, "softcap must be positive")):  # fmt: skip
        with pytest.raises(ValueError, match=needle):
            att.build_backend(AttentionConfig(backend="classic"), **options)


def test_the_flash_package_gets_its_window_size_and_scale(monkeypatch):
    """flash_attn's window_size=(W - 1, 0) is the W keys ending at the query; the scale goes as softmax_scale."""
    calls = []

    def fake_flash_attn(q, k, v, dropout_p=0.0, causal=False, softmax_scale=None, window_size=(-1, -1)):
        calls.append({"causal": causal, "softmax_scale": softmax_scale, "window_size": window_size})
        window = window_size[0] + 1 if window_size[0] >= 0 else None
        return att.classic_attention(q, k, v, window=window, softmax_scale=softmax_scale)

    monkeypatch.setattr(att, "_flash_attn_package", lambda: (fake_flash_attn, "flash_attn (v2)"))
    q, k, v, _ = _inputs()
    backend = att.FlashAttnPackage(window=9, softmax_scale=0.25)
    torch.testing.assert_close(backend(q, k, v), att.classic_attention(q, k, v, window=9, softmax_scale=0.25))
    assert calls == [{"causal": True, "softmax_scale": 0.25, "window_size": (8, 0)}]
    backend = att.FlashAttnPackage()
    backend(q, k, v)
    assert calls[-1] == {"causal": True, "softmax_scale": None, "window_size": (-1, -1)}  # the call as before
    # Packed documents go to SDPA's mask, the window and scale with them.
    docs = document_ids_of_lengths((10, 30), B)
    got = att.FlashAttnPackage(window=9, softmax_scale=0.25)(q, k, v, docs)
    torch.testing.assert_close(got, att.classic_attention(q, k, v, docs, window=9, softmax_scale=0.25))
    assert len(calls) == 2


def test_each_layer_builds_its_backend_with_its_options(capsys):
    cfg = ModelConfig(hidden_size=32, num_attention_heads=4, seq_length=S)
    local = att.ParallelAttention(cfg, AttentionConfig(backend="sdpa"), window=8, softmax_scale=1 / 12)
    full = att.ParallelAttention(cfg, AttentionConfig(backend="sdpa"))
    assert (local.core_attention.window, local.core_attention.softmax_scale) == (8, 1 / 12)
    assert (full.core_attention.window, full.core_attention.softmax_scale, full.core_attention.softcap) == (None,) * 3
    assert local.core_attention.description.endswith("; sliding window 8, softmax scale 0.08333333333333333")
    scaled = att.ParallelAttention(cfg, AttentionConfig(backend="sdpa"), softmax_scale=1 / 12)
    scaled.load_state_dict(local.state_dict())
    x, pos = torch.randn(1, S, 32, generator=torch.Generator().manual_seed(2)), torch.arange(S)[None]
    a, b = local(x, pos), scaled(x, pos)
    torch.testing.assert_close(a[:, :8], b[:, :8])  # the first 8 queries see every causal key within the window
    assert (a[:, 8:] - b[:, 8:]).abs().amax(-1).min() > 1e-6  # every later one misses some


def test_default_scale_is_one_over_sqrt_head_dim():
    q, k, v, _ = _inputs()
    torch.testing.assert_close(att.classic_attention(q, k, v, softmax_scale=1 / math.sqrt(D)),
                               att.classic_attention(q, k, v), rtol=1e-14, atol=1e-14)  # fmt: skip
