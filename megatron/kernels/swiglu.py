"""SwiGLU's silu(gate) * up fused: one Triton kernel forward, one backward.

The MLP's fc1 writes [gate; up] along the last dimension (y [..., 2F]). Eager, the forward runs silu and then a
multiply (an intermediate written and read back, and kept for the backward), and the backward runs two multiplies,
silu's backward and the concatenation that rebuilds dy from the two halves' gradients. Here the forward reads gate
and up once and writes act [..., F]; the backward reads gate, up and dact and writes dy [..., 2F] in place of the
concatenation, recomputing silu; only y is kept for the backward (eager also keeps silu(gate), F values per token).
The math is fp32 and each result is rounded once to y's dtype (eager rounds silu(gate) and the products in between,
so bf16 results differ from eager's within bf16 rounding, and are nearer the fp64 value).

On CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests compare them with
the eager formula; the model uses them on CUDA only (``supported``).
"""

from __future__ import annotations

import torch

from megatron.kernels.env import HAVE_TRITON, tl, triton

BLOCK = 1024  # columns per program

if HAVE_TRITON:

    @triton.jit
    def _swiglu_fwd_kernel(Y, OUT, F, stride_y, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < F
        g = tl.load(Y + row * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(Y + row * stride_y + F + cols, mask=mask, other=0.0).to(tl.float32)
        act = g * tl.sigmoid(g) * u
        tl.store(OUT + row * F + cols, act.to(OUT.dtype.element_ty), mask=mask)

    @triton.jit
    def _swiglu_bwd_kernel(Y, DOUT, DY, F, stride_y, stride_do, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < F
        g = tl.load(Y + row * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(Y + row * stride_y + F + cols, mask=mask, other=0.0).to(tl.float32)
        do = tl.load(DOUT + row * stride_do + cols, mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(g)
        silu = g * sig
        dg = do * u * sig * (1.0 + g * (1.0 - sig))  # d silu(g) / dg = sig * (1 + g * (1 - sig))
        tl.store(DY + row * 2 * F + cols, dg.to(DY.dtype.element_ty), mask=mask)
        tl.store(DY + row * 2 * F + F + cols, (do * silu).to(DY.dtype.element_ty), mask=mask)


def supported(y: torch.Tensor) -> bool:
    """Whether the model runs the fused kernels on ``y``: CUDA, Triton, a float dtype, an even last dimension."""
    return (HAVE_TRITON and y.is_cuda and y.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and y.shape[-1] % 2 == 0)  # fmt: skip


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[rows, last] with a unit stride along the last dimension (a copy only where the input has none)."""
    t = t if t.stride(-1) == 1 else t.contiguous()
    return t.reshape(-1, t.shape[-1])


def _grid(rows: int, F: int):
    return (rows, triton.cdiv(F, BLOCK))


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        y2 = _rows(y)
        F = y2.shape[1] // 2
        out = torch.empty(y2.shape[0], F, dtype=y.dtype, device=y.device)
        if y2.shape[0]:
            _swiglu_fwd_kernel[_grid(y2.shape[0], F)](y2, out, F, y2.stride(0), BLOCK=BLOCK)
        ctx.save_for_backward(y2)
        ctx.shape = y.shape
        return out.view(*y.shape[:-1], F)

    @staticmethod
    def backward(ctx, dout):
        (y2,) = ctx.saved_tensors
        F = y2.shape[1] // 2
        do2 = _rows(dout)
        dy = torch.empty_like(y2, memory_format=torch.contiguous_format)
        if y2.shape[0]:
            _swiglu_bwd_kernel[_grid(y2.shape[0], F)](y2, do2, dy, F, y2.stride(0), do2.stride(0), BLOCK=BLOCK)
        return dy.view(ctx.shape)


def swiglu(y: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of y = [gate; up] (the last dimension's halves), as one kernel each way."""
    if y.shape[-1] % 2:
        raise ValueError(f"swiglu needs an even last dimension ([gate; up]), got {tuple(y.shape)}")
    return _SwiGLU.apply(y)


def swiglu_reference(y: torch.Tensor) -> torch.Tensor:
    """The eager formula the model runs without the kernels."""
    gate, up = y.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
