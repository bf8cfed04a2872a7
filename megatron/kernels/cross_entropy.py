"""Cross-entropy over a chunk of logits rows as two Triton kernels (used by the tiled loss).

The eager chunk (``megatron.model.tiled._chunk_dlogits``) casts the bf16 logits ``[c, V]`` to
fp32 and runs softmax, an indexed subtract, a multiply and a cast back: five passes over a
tensor twice the logits' size, and the forward's ``F.cross_entropy`` three more. Here:

* ``row_loss``: one program per row streams the logits once (online max and sum of exp in
  fp32) and writes the row's loss and log-sum-exp;
* ``row_grad_``: one program per row writes ``(softmax - onehot) * g`` over the logits in
  place, from the saved log-sum-exp, in one read and one write of bf16.

Ignored rows (label ``IGNORE_INDEX``) get loss 0 and gradient 0, like ``F.cross_entropy``
with ``reduction='none'``. A label outside ``[0, V)`` is treated the same way rather than read out
of bounds; the trainer stops on such data before it reaches the model (``megatron.training.batches.check_token_ids``).
On CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests
compare them with the eager path.
"""

from __future__ import annotations

import torch

from megatron.kernels.env import HAVE_TRITON, tl, triton  # without Triton callers take the eager path

BLOCK_V = 4096


if HAVE_TRITON:

    @triton.jit
    def _loss_kernel(X, Y, LOSS, LSE, stride_x, V, IGNORE: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = X + row * stride_x
        cols = tl.arange(0, BLOCK)
        m = tl.full([BLOCK], -1e30, tl.float32)  # finite, so that exp(m - m_new) is never nan
        acc = tl.zeros([BLOCK], tl.float32)
        for start in range(0, V, BLOCK):
            mask = start + cols < V
            x = tl.load(x_row + start + cols, mask=mask, other=-1e30).to(tl.float32)
            m_new = tl.maximum(m, x)
            acc = acc * tl.exp(m - m_new) + tl.where(mask, tl.exp(x - m_new), 0.0)
            m = m_new
        m_row = tl.max(m, 0)
        lse = m_row + tl.log(tl.sum(acc * tl.exp(m - m_row), 0))
        y = tl.load(Y + row)
        valid = (y != IGNORE) & (y >= 0) & (y < V)
        x_y = tl.load(x_row + tl.where(valid, y, 0)).to(tl.float32)
        tl.store(LOSS + row, tl.where(valid, lse - x_y, 0.0))
        tl.store(LSE + row, lse)

    @triton.jit
    def _grad_kernel(X, Y, LSE, G, stride_x, V, IGNORE: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = X + row * stride_x
        cols = tl.arange(0, BLOCK)
        y = tl.load(Y + row)
        valid = (y != IGNORE) & (y >= 0) & (y < V)
        g = tl.where(valid, tl.load(G + row).to(tl.float32), 0.0)
        lse = tl.load(LSE + row)
        for start in range(0, V, BLOCK):
            mask = start + cols < V
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            d = (tl.exp(x - lse) - tl.where(start + cols == y, 1.0, 0.0)) * g
            tl.store(x_row + start + cols, d.to(X.dtype.element_ty), mask=mask)


def _check_rows(logits_cV: torch.Tensor) -> None:
    if logits_cV.dim() != 2 or logits_cV.stride(1) != 1:
        raise ValueError(f"expected [rows, vocab] logits with contiguous rows, got shape {tuple(logits_cV.shape)} "
                         f"and strides {logits_cV.stride()}")  # fmt: skip


def row_loss(logits_cV: torch.Tensor, y_c: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row fp32 cross-entropy and log-sum-exp of ``logits_cV`` (any float dtype, contiguous rows)."""
    _check_rows(logits_cV)
    c, v = logits_cV.shape
    loss = torch.empty(c, dtype=torch.float32, device=logits_cV.device)
    lse = torch.empty(c, dtype=torch.float32, device=logits_cV.device)
    if c:
        _loss_kernel[(c,)](logits_cV, y_c.contiguous(), loss, lse, logits_cV.stride(0), v,
                           IGNORE=ignore_index, BLOCK=min(BLOCK_V, triton.next_power_of_2(v)), num_warps=8)  # fmt: skip
    return loss, lse


def row_grad_(
    logits_cV: torch.Tensor, y_c: torch.Tensor, lse_c: torch.Tensor, g_c: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Overwrite ``logits_cV`` with d(sum_i g_i * CE_i)/d(logits): ``(softmax - onehot(y)) * g``."""
    _check_rows(logits_cV)
    c, v = logits_cV.shape
    if c:
        _grad_kernel[(c,)](logits_cV, y_c.contiguous(), lse_c.contiguous(), g_c.contiguous(), logits_cV.stride(0), v,
                           IGNORE=ignore_index, BLOCK=min(BLOCK_V, triton.next_power_of_2(v)), num_warps=8)  # fmt: skip
    return logits_cV
