"""Fused rotary embedding (rotate-half convention) as one Triton kernel per tensor.

The eager version (``megatron.model.rotary``) materializes cos/sin ``[b, s, 1, d]``, splits,
negates and concatenates, and multiplies strided views of the fused QKV output: about ten
kernels per tensor, most on non-contiguous memory (11% of a GPT-1.3B step at 32k on an H100,
profiled with ``bench/profile_step.py``). Here one program per (batch, token) computes the
angles in fp32 from the global position and ``inv_freq`` (the same fp32 values as the eager
path, RoPE scaling included: longrope's per-dimension factors are already in ``inv_freq``, and
its short/long choice is made before the call), multiplies cos and sin by the attention factor
(yarn's, longrope's; 1 otherwise), reads any strided ``[b, s, heads, d]`` view and writes a
contiguous output. Backward is the same rotation by the negative angle, with the same factor.

Partial rotary (GPT-NeoX's rotary_pct, HF's partial_rotary_factor): ``inv_freq`` holds
``rotary dim / 2`` frequencies, fewer than ``d / 2``; the first ``rotary dim`` dimensions of
each head are rotated (rotate-half within them, as transformers' NeoX and Phi-3 do) and the rest
are copied through unchanged (their gradient too), in the same kernel. Rotating in the kernel
rather than routing partial rotary to the eager path keeps one kernel per tensor and a
contiguous output for Pythia's 25% and Phi-4-mini's 75%; the rotated and the copied parts are
each a masked power-of-two block, so any even head dim and rotary dim run (Phi-3-mini's 96,
whose half of 48 is not a power of two, included).

On CPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests
compare it with the eager reference.
"""

from __future__ import annotations

import torch

from megatron.kernels.env import HAVE_TRITON, tl, triton  # without Triton callers take the eager path

if HAVE_TRITON:

    @triton.jit
    def _rope_kernel(
        X, OUT, POS, INV_FREQ, SCALE,
        stride_xb, stride_xs, stride_xh,
        stride_ob, stride_os, stride_oh,
        S, H,
        SIGN: tl.constexpr, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, PASS: tl.constexpr,
        BLOCK_PASS: tl.constexpr, BLOCK_H: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        b = pid // S
        s = pid % S
        pos = tl.load(POS + pid).to(tl.float32)
        i = tl.arange(0, BLOCK_HALF)
        in_half = i < HALF
        angle = pos * tl.load(INV_FREQ + i, mask=in_half, other=0.0)
        cos = (tl.cos(angle) * SCALE)[None, :]
        sin = (tl.sin(angle) * SCALE * SIGN)[None, :]
        h = tl.arange(0, BLOCK_H)[:, None]
        mask = (h < H) & in_half[None, :]
        x_row = X + b * stride_xb + s * stride_xs + h * stride_xh
        o_row = OUT + b * stride_ob + s * stride_os + h * stride_oh
        x1 = tl.load(x_row + i[None, :], mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_row + HALF + i[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(o_row + i[None, :], (x1 * cos - x2 * sin).to(OUT.dtype.element_ty), mask=mask)
        tl.store(o_row + HALF + i[None, :], (x2 * cos + x1 * sin).to(OUT.dtype.element_ty), mask=mask)
        if PASS > 0:  # partial rotary: the dimensions past the rotary ones are copied as they are
            j = tl.arange(0, BLOCK_PASS)
            pass_mask = (h < H) & (j < PASS)[None, :]
            kept = tl.load(x_row + 2 * HALF + j[None, :], mask=pass_mask, other=0.0)
            tl.store(o_row + 2 * HALF + j[None, :], kept.to(OUT.dtype.element_ty), mask=pass_mask)


def _rotate(x_bshd: torch.Tensor, pos_bs: torch.Tensor, inv_freq: torch.Tensor, scale: float,
            sign: float) -> torch.Tensor:  # fmt: skip
    b, s, h, d = x_bshd.shape
    half = inv_freq.numel()
    if x_bshd.stride(-1) != 1:
        x_bshd = x_bshd.contiguous()
    out = torch.empty((b, s, h, d), dtype=x_bshd.dtype, device=x_bshd.device)
    rest = d - 2 * half
    _rope_kernel[(b * s,)](
        x_bshd, out, pos_bs, inv_freq, float(scale),
        x_bshd.stride(0), x_bshd.stride(1), x_bshd.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        s, h,
        SIGN=sign, HALF=half, BLOCK_HALF=triton.next_power_of_2(half), PASS=rest,
        BLOCK_PASS=triton.next_power_of_2(max(rest, 1)), BLOCK_H=triton.next_power_of_2(h),
    )  # fmt: skip
    return out


class _FusedRope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_bshd, pos_bs, inv_freq, scale):
        ctx.save_for_backward(pos_bs, inv_freq)
        ctx.scale = scale
        return _rotate(x_bshd, pos_bs, inv_freq, scale, 1.0)

    @staticmethod
    def backward(ctx, grad_out):
        pos_bs, inv_freq = ctx.saved_tensors
        return _rotate(grad_out, pos_bs, inv_freq, ctx.scale, -1.0), None, None, None


def supported(x_bshd: torch.Tensor) -> bool:
    """The fused kernel handles this tensor (Triton present, an even head dim; any rotary dim up to it)."""
    d = x_bshd.shape[-1]
    return HAVE_TRITON and d >= 2 and d % 2 == 0


def fused_rotary(x_bshd: torch.Tensor, position_ids_bs: torch.Tensor, inv_freq: torch.Tensor,
                 attention_factor: float = 1.0) -> torch.Tensor:  # fmt: skip
    """Rotate ``x_bshd`` ([b, s, heads, d], any strides) by RoPE at the given global positions, cos and
    sin times ``attention_factor``; ``inv_freq`` [r / 2] holds the (scaled) frequencies of the first ``r``
    dimensions (r = d: full RoPE; r < d: partial rotary, the other d - r dimensions pass through)."""
    if 2 * inv_freq.numel() > x_bshd.shape[-1]:
        raise ValueError(f"{inv_freq.numel()} RoPE frequencies rotate more than the head dim {x_bshd.shape[-1]}")
    pos = position_ids_bs.expand(x_bshd.shape[0], x_bshd.shape[1]).contiguous()
    return _FusedRope.apply(x_bshd, pos, inv_freq.float().contiguous(), float(attention_factor))
