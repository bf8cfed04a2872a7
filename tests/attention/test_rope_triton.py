"""The fused Triton RoPE kernel against the eager rotate-half formula (fp64 reference for
values, autograd of the eager path for gradients), on strided views of a packed QKV tensor,
with GQA head counts, global (sequence-parallel) positions and scaled RoPE (linear, llama3,
yarn with its attention factor, dynamic). On CPU it runs in Triton's
interpreter (conftest sets TRITON_INTERPRET=1)."""

import pytest
import torch

from megatron.kernels import rope
from megatron.model.rotary import apply_rotary

pytestmark = pytest.mark.skipif(not rope.HAVE_TRITON, reason="triton is not installed")


def _packed(b, s, h, g, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, s, (h + 2 * g) * d, generator=gen, dtype=torch.float64).to(dtype)
    q, k, _ = qkv.split([h * d, g * d, g * d], dim=-1)
    return qkv, q.view(b, s, h, d), k.view(b, s, g, d)


@pytest.mark.parametrize("b,s,h,g,d,offset", [(1, 16, 4, 2, 16, 0), (2, 8, 3, 1, 32, 1000), (1, 5, 8, 8, 8, 70000)])
def test_forward_matches_fp64_eager(b, s, h, g, d, offset):
    _, q, k = _packed(b, s, h, g, d, torch.float32)
    pos = (torch.arange(s) + offset).expand(b, s)  # a later sequence-parallel slice has large global positions
    qf, kf = apply_rotary(q, k, pos, 10000.0, fused=True)
    qr, kr = apply_rotary(q.double(), k.double(), pos, 10000.0, fused=False)
    assert qf.is_contiguous() and qf.shape == q.shape and kf.shape == k.shape
    torch.testing.assert_close(qf.double(), qr, rtol=0, atol=2e-5 * (1 + offset / 1000))
    torch.testing.assert_close(kf.double(), kr, rtol=0, atol=2e-5 * (1 + offset / 1000))


def test_gradients_match_eager_autograd():
    b, s, h, g, d = 2, 12, 4, 2, 16
    qkv, _, _ = _packed(b, s, h, g, d, torch.float32, seed=1)
    pos = (torch.arange(s) + 37).expand(b, s)
    grads = []
    for fused in (True, False):
        x = qkv.clone().requires_grad_(True)
        q, k, _ = x.split([h * d, g * d, g * d], dim=-1)
        qo, ko = apply_rotary(q.view(b, s, h, d), k.view(b, s, g, d), pos, 500000.0, fused=fused)
        w = torch.randn(qo.shape, generator=torch.Generator().manual_seed(2))
        wk = torch.randn(ko.shape, generator=torch.Generator().manual_seed(3))
        ((qo * w).sum() + (ko * wk).sum()).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)
    assert grads[0][..., (h + g) * d :].abs().max() == 0  # v untouched


def test_bf16_close_to_fp64():
    _, q, k = _packed(1, 32, 4, 4, 64, torch.bfloat16, seed=4)
    pos = torch.arange(32)[None]
    qf, _ = apply_rotary(q, k, pos, 10000.0, fused=True)
    qr, _ = apply_rotary(q.double(), k.double(), pos, 10000.0, fused=False)
    assert qf.dtype == torch.bfloat16
    torch.testing.assert_close(qf.double(), qr, rtol=1e-2, atol=1e-2)  # one bf16 rounding of an fp32 result


def test_unsupported_head_dim_is_reported():
    assert not rope.supported(torch.empty(1, 1, 1, 25))  # an odd head dim has no rotate-half pairs
    assert rope.supported(torch.empty(1, 1, 1, 128))


def test_head_dim_whose_half_is_not_a_power_of_two_matches_eager():
    """The halves are masked power-of-two blocks: head dim 24 (half 12) and Phi-3-mini's 96 (half 48) run fused."""
    for d in (24, 96):
        _, q, k = _packed(1, 6, 4, 2, d, torch.float32, seed=5)
        pos = (torch.arange(6) + 300).expand(1, 6)
        assert rope.supported(q)
        qf, kf = apply_rotary(q, k, pos, 10000.0, fused=True)
        qr, kr = apply_rotary(q.double(), k.double(), pos, 10000.0, fused=False)
        torch.testing.assert_close(qf.double(), qr, rtol=0, atol=2e-5)
        torch.testing.assert_close(kf.double(), kr, rtol=0, atol=2e-5)



def _rope_config(d: int, kind=None):
    """A ModelConfig with ``kind`` RoPE scaling (None: plain) at head dim ``d``; yarn with DeepSeek's mscale ratio."""
    from megatron.config import ModelConfig

    extra = {
        None: {},
        "linear": dict(rope_scaling_factor=4.0),
        "llama3": dict(rope_scaling_factor=8.0, rope_original_max_position_embeddings=64),
        "yarn": dict(rope_scaling_factor=4.0, rope_original_max_position_embeddings=64, yarn_mscale=1.0,
                     yarn_mscale_all_dim=0.5),
        "dynamic": dict(rope_scaling_factor=2.0),
    }[kind]  # fmt: skip
    return ModelConfig(hidden_size=4 * d, num_attention_heads=4, seq_length=256, max_position_embeddings=64,
                       use_rotary_position_embeddings=True, rotary_base=5e5, rope_scaling_type=kind, **extra)  # fmt: skip


@pytest.mark.parametrize("kind", ["linear", "llama3", "yarn", "dynamic"])
def test_scaled_rope_forward_and_backward_match_eager(kind):
    """Scaled frequencies and yarn's attention factor (on cos and sin, so on q and k) in the kernel: the
    forward against the fp64 eager formula, the gradients against eager autograd, at positions past the
    original context."""
    from megatron.model.rotary import rope_frequencies

    b, s, h, g, d = 1, 24, 4, 2, 32
    pos = (torch.arange(s) + 200).expand(b, s)
    freqs, factor = rope_frequencies(_rope_config(d, kind), extent=pos.max() + 1)
    assert (factor != 1.0) == (kind == "yarn")
    assert not torch.equal(freqs, rope_frequencies(_rope_config(d))[0])
    qkv, q, k = _packed(b, s, h, g, d, torch.float32, seed=5)
    qf, kf = apply_rotary(q, k, pos, freqs, fused=True, attention_factor=factor)
    qr, kr = apply_rotary(q.double(), k.double(), pos, freqs, fused=False, attention_factor=factor)
    torch.testing.assert_close(qf.double(), qr, rtol=0, atol=1e-5)
    torch.testing.assert_close(kf.double(), kr, rtol=0, atol=1e-5)
    grads = []
    for fused in (True, False):
        x = qkv.clone().requires_grad_(True)
        qx, kx, _ = x.split([h * d, g * d, g * d], dim=-1)
        qo, ko = apply_rotary(qx.view(b, s, h, d), kx.view(b, s, g, d), pos, freqs, fused, factor)
        w = torch.randn(qo.shape, generator=torch.Generator().manual_seed(6))
        wk = torch.randn(ko.shape, generator=torch.Generator().manual_seed(7))
        ((qo * w).sum() + (ko * wk).sum()).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)
