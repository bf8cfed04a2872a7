"""ALST tiled compute: the MLP and the output layer + loss over sequence shards.

Shape legend: b batch, s this rank's slice of the sequence, n = b * s token rows, H hidden,
V padded vocabulary, c rows in one shard/chunk.

At long sequence lengths the largest activations are not attention's but the MLP's
intermediate ``[n, F]`` (F = 3.5-4 x H, twice that for SwiGLU's [gate; up]) and the fp32
logits ``[n, V]`` (V = 32K-128K). Both are per-token computations, so they can run over
token shards: forward keeps only the input, backward recomputes one shard at a time with
grad enabled. Peak memory then holds one shard's intermediates instead of the sequence's.

ZeRO: both recomputations call the model's own modules/parameters, so ZeRO-3's hooks gather
parameters as in a normal forward. Parameter gradients of the tiled MLP come from several
inner backward calls; ``ds_grad_is_ready`` tells DeepSpeed (ZeRO-2/3 reduce hooks) to wait
for the last shard, so each gradient is reduced once. The tiled loss returns its weight
gradient from ``backward`` like any op, so it is reduced once by construction. The shard
count depends only on the local shape, which is the same on every rank (every SP rank holds
seq_length / SP tokens), so all ranks issue the same ZeRO-3 collectives.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
LOGITS_PER_CHUNK = 2**26  # eager tiled-loss chunk: 64M logits = 256 MiB in fp32, as much again for softmax/gradient
LOGITS_PER_CHUNK_FUSED = 2**28  # Triton chunk: 256M bf16 logits = 512 MiB, overwritten by their gradient: same memory


def default_chunk(vocab_rows: int, fused: bool) -> int:
    """Tokens per tiled-loss chunk when none is given. The fused path's chunks are 4x the eager
    path's in logits for the same bytes; larger chunks mean fewer fp32 weight-gradient accumulations
    (one [V, H] fp32 read and write per chunk) and larger GEMMs: -11% loss time at vocabulary 50304,
    -20% at 128256 on an H200 (``benchmarks/results/2026-11-30_tiled_loss_h200/chunk_*.json``)."""
    return max(1, (LOGITS_PER_CHUNK_FUSED if fused else LOGITS_PER_CHUNK) // vocab_rows)


def chunk_bytes(chunk: int, vocab_rows: int, fused: bool) -> int:
    """Bytes of one chunk's logits and their gradient: bf16 in place (fused), fp32 logits + fp32 gradient (eager)."""
    return chunk * vocab_rows * (2 if fused else 8)


def _spans(n: int, shards: int) -> list:
    """``shards`` contiguous [start, end) row ranges covering n rows (at most n of them)."""
    shards = max(1, min(shards, n))
    step = math.ceil(n / shards)
    return [(a, min(a + step, n)) for a in range(0, n, step)]


# ----------------------------------------------------------------------------- tiled MLP
class TiledMLP(torch.autograd.Function):
    """y = run(x) over row shards; keeps only x, recomputes each shard in backward."""

    @staticmethod
    def forward(ctx, run: Callable, x_bsH: torch.Tensor, shards: int, params: list):
        ctx.run, ctx.shards, ctx.params = run, shards, [p for p in params if p.requires_grad]
        ctx.save_for_backward(x_bsH)
        x_nH = x_bsH.reshape(-1, x_bsH.shape[-1])
        y_nH = None
        with torch.no_grad():
            for a, b in _spans(x_nH.shape[0], shards):
                y_cH = run(x_nH[a:b])
                if y_nH is None:
                    y_nH = y_cH.new_empty(x_nH.shape[0], y_cH.shape[-1])
                y_nH[a:b] = y_cH
        return y_nH.view(*x_bsH.shape[:-1], y_nH.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):
        (x_bsH,) = ctx.saved_tensors
        x_nH = x_bsH.detach().reshape(-1, x_bsH.shape[-1])
        g_nH = grad_y.reshape(-1, grad_y.shape[-1])
        needs_x = ctx.needs_input_grad[1]
        dx_nH = torch.empty_like(x_nH) if needs_x else None
        spans = _spans(x_nH.shape[0], ctx.shards)
        try:
            for i, (a, b) in enumerate(spans):
                for p in ctx.params:  # ZeRO-2/3: reduce each parameter's gradient after the last shard only
                    p.ds_grad_is_ready = i == len(spans) - 1
                x_cH = x_nH[a:b].detach().requires_grad_(needs_x)
                with torch.enable_grad():
                    y_cH = ctx.run(x_cH)
                torch.autograd.backward(y_cH, g_nH[a:b])
                if needs_x:
                    dx_nH[a:b] = x_cH.grad
        finally:
            for p in ctx.params:
                p.ds_grad_is_ready = True
        return None, None if dx_nH is None else dx_nH.view_as(x_bsH), None, None


def tiled_mlp(run: Callable, x_bsH: torch.Tensor, shards: int | None, params: list) -> torch.Tensor:
    """``run(x)`` (a per-token MLP calling its own submodules) over ``shards`` sequence shards.

    ``shards=None`` picks ceil(s / H): each shard then has about b x H rows, so its ``[c, F]``
    intermediate is no larger than an ``[H, F]`` weight.
    """
    if shards is None:
        shards = math.ceil(x_bsH.shape[-2] / x_bsH.shape[-1])
    if shards <= 1 and not torch.is_grad_enabled():
        return run(x_bsH)
    return TiledMLP.apply(run, x_bsH, shards, params)


# ----------------------------------------------------------------------------- tiled logits + loss
def softcapped(logits, softcap: float | None):
    """Gemma-2's final-logit soft-cap ``c * tanh(logits / c)`` in the logits' dtype (None: the logits as they are)."""
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


def _chunk_dlogits(h_cH, w_VH, y_c, g_c, softcap=None):
    """d(sum_i g_i * CE(cap(h_i W^T), y_i)) / d(h_i W^T) for one chunk, in fp32 then the input dtype (eager);
    with a soft-cap c the softmax gradient is times its derivative 1 - tanh^2(z / c)."""
    z_cV = F.linear(h_cH, w_VH)
    p_cV = torch.softmax(softcapped(z_cV, softcap).float(), dim=-1)
    valid = y_c != IGNORE_INDEX
    rows = torch.arange(y_c.shape[0], device=y_c.device)
    p_cV[rows, y_c.clamp(min=0)] -= valid.to(p_cV.dtype)
    p_cV.mul_((g_c.float() * valid)[:, None])
    if softcap is not None:
        p_cV.mul_(1 - torch.tanh(z_cV.float() / softcap).square())
    return p_cV.to(h_cH.dtype)


def _fused_chunk_dlogits(h_cH, w_VH, y_c, lse_c, g_c, softcap=None):
    """_chunk_dlogits through the Triton kernel (the logits' gradient in place, in the input dtype); a soft-cap's
    derivative 1 - tanh^2(z / c) is applied in place on the uncapped logits z, in their dtype."""
    z_cV = F.linear(h_cH, w_VH)
    if softcap is None:
        return _kernels().row_grad_(z_cV, y_c, lse_c, g_c, IGNORE_INDEX)
    d_cV = _kernels().row_grad_(softcapped(z_cV, softcap), y_c, lse_c, g_c, IGNORE_INDEX)
    return d_cV.mul_(z_cV.div_(softcap).tanh_().square_().neg_().add_(1))


def _kernels():
    """megatron.kernels.cross_entropy, imported on first use (Triton picks its CPU interpreter at import)."""
    from megatron.kernels import cross_entropy

    return cross_entropy


_ADDMM_INTO_FP32: dict = {}  # device type -> whether addmm(out_dtype=float32) accumulates in place there


def _add_weight_grad_(dw_VH, d_cV, h_cH):
    """``dw_VH += d_cV^T h_cH`` with an fp32 ``dw_VH``: on CUDA one GEMM accumulating into it
    (``addmm(out_dtype=float32)``, beta 1), elsewhere (or where torch lacks it) a product and an add."""
    dev = dw_VH.device.type
    if dw_VH.dtype != d_cV.dtype and dev == "cuda" and _ADDMM_INTO_FP32.get(dev, True):
        try:
            torch.addmm(dw_VH, d_cV.t(), h_cH, out_dtype=dw_VH.dtype, out=dw_VH)
            _ADDMM_INTO_FP32[dev] = True
            return
        except (RuntimeError, TypeError):  # torch without the fp32-output GEMM for this dtype
            _ADDMM_INTO_FP32[dev] = False
    dw_VH += d_cV.t() @ h_cH


def _chunk_grads_liger(h_cH, w_VH, y_c, g_c):
    """d(h, W) of the chunk through liger-kernel's fused kernel (uniform non-zero g only, else None)."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    nonzero = g_c[g_c != 0]
    if nonzero.numel() == 0 or not bool((nonzero == nonzero[0]).all()):
        return None
    y_c = torch.where(g_c != 0, y_c, torch.full_like(y_c, IGNORE_INDEX))
    h = h_cH.detach().requires_grad_()
    w = w_VH.detach().requires_grad_()
    with torch.enable_grad():
        loss = LigerFusedLinearCrossEntropyLoss(reduction="sum", ignore_index=IGNORE_INDEX)(w, h, y_c)
        dh, dw = torch.autograd.grad(loss * nonzero[0].to(loss.dtype), [h, w])
    return dh, dw


class TiledLogitsLoss(torch.autograd.Function):
    """Per-token fp32 cross-entropy of ``cap(h W^T)`` over token chunks (``softcap``: None or Gemma-2's final-logit
    soft-cap); backward recomputes each chunk."""

    @staticmethod
    def forward(ctx, h_bsH, w_VH, labels_bs, chunk: int, use_liger: bool, fused: bool, softcap=None):
        if use_liger and softcap is not None:
            raise ValueError("liger-kernel's fused loss has no final-logit soft-cap; drop use_liger")
        ctx.chunk, ctx.use_liger, ctx.fused, ctx.softcap = chunk, use_liger, fused, softcap
        h_nH, y_n = h_bsH.reshape(-1, h_bsH.shape[-1]), labels_bs.reshape(-1)
        loss_n = torch.empty(y_n.shape, dtype=torch.float32, device=h_bsH.device)
        lse_n = torch.empty(y_n.shape if fused else (0,), dtype=torch.float32, device=h_bsH.device)
        with torch.no_grad():
            for a in range(0, y_n.shape[0], chunk):
                sl = slice(a, a + chunk)
                logits_cV = softcapped(F.linear(h_nH[sl], w_VH), softcap)
                if fused:  # logits stay in the input dtype; the kernel reads them once
                    loss_n[sl], lse_n[sl] = _kernels().row_loss(logits_cV, y_n[sl], IGNORE_INDEX)
                else:
                    loss_n[sl] = F.cross_entropy(logits_cV.float(), y_n[sl], reduction="none")
        ctx.save_for_backward(h_bsH, w_VH, labels_bs, lse_n)
        return loss_n.view(labels_bs.shape)

    @staticmethod
    def backward(ctx, grad_loss_bs):
        h_bsH, w_VH, labels_bs, lse_n = ctx.saved_tensors
        h_nH, y_n, g_n = h_bsH.reshape(-1, h_bsH.shape[-1]), labels_bs.reshape(-1), grad_loss_bs.reshape(-1)
        dh_nH = torch.empty_like(h_nH)
        dw_VH = torch.zeros(w_VH.shape, dtype=torch.promote_types(w_VH.dtype, torch.float32), device=w_VH.device)
        for a in range(0, y_n.shape[0], ctx.chunk):
            sl = slice(a, a + ctx.chunk)
            grads = _chunk_grads_liger(h_nH[sl], w_VH, y_n[sl], g_n[sl]) if ctx.use_liger else None
            if grads is not None:
                dh_nH[sl], dw = grads
                dw_VH += dw
                continue
            if ctx.fused:
                d_cV = _fused_chunk_dlogits(h_nH[sl], w_VH, y_n[sl], lse_n[sl], g_n[sl], ctx.softcap)
            else:
                d_cV = _chunk_dlogits(h_nH[sl], w_VH, y_n[sl], g_n[sl], ctx.softcap)
            torch.mm(d_cV, w_VH, out=dh_nH[sl])
            _add_weight_grad_(dw_VH, d_cV, h_nH[sl])
        dh = dh_nH.view_as(h_bsH) if ctx.needs_input_grad[0] else None
        dw = dw_VH.to(w_VH.dtype) if ctx.needs_input_grad[1] else None
        return dh, dw, None, None, None, None, None


def fused_loss_available(device: torch.device) -> bool:
    """Whether tiled_cross_entropy runs its Triton kernels by default on this device (CUDA with Triton)."""
    return torch.device(device).type == "cuda" and importlib.util.find_spec("triton") is not None


def tiled_cross_entropy(
    h_bsH: torch.Tensor,
    w_VH: torch.Tensor,
    labels_bs: torch.Tensor,
    chunk: int | None = None,
    use_liger=False,
    fused: bool | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """``F.cross_entropy(cap(h @ W^T), labels, reduction='none')`` as fp32 ``[b, s]``, never holding all logits.

    ``chunk`` tokens at a time (default: ``default_chunk``); the weight gradient is accumulated
    in fp32 over chunks and returned once. ``fused`` (default: on CUDA when Triton is present) runs
    each chunk's softmax and gradient as the kernels of ``megatron.kernels.cross_entropy``
    instead of the eager fp32 ops. ``softcap`` (Gemma-2's final-logit soft-cap c): the logits are
    c * tanh(logits / c), as ``GPTModel``'s full-logits loss caps them; not with ``use_liger``.
    """
    if fused is None:
        fused = fused_loss_available(h_bsH.device)
    if chunk is None:
        chunk = default_chunk(w_VH.shape[0], fused)
    return TiledLogitsLoss.apply(h_bsH, w_VH, labels_bs, chunk, use_liger, fused, softcap)
