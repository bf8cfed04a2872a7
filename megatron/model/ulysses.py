"""DeepSpeed-Ulysses exchange, fused: one all-to-all for Q, K and V together, one for the output.

DeepSpeed's ``DistributedAttention`` exchanges Q, K and V one by one and makes each contiguous
twice around its all-to-all (before: heads-major, after: sequence-major), and the output twice
more, in forward and again in backward. Here each direction packs every tensor into one send
buffer with one copy (``torch.cat`` of strided views), exchanges it with one
``all_to_all_single``, and hands out views of the receive buffer: for one sequence per rank
(micro batch 1, the long-sequence case) Q, K and V after the exchange need no copy at all.

Shape legend as in attention.py: b batch, s local sequence, S = s x sp, n heads of one tensor,
d head dim. Layout of both buffers: ``[sp, b, s, sum(n_i)/sp, d]``, dim 0 the peer rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _all_to_all(send: torch.Tensor, group) -> torch.Tensor:
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv


def _pack(parts: list) -> torch.Tensor:
    """One contiguous ``[sp, b, s, c, d]`` buffer from ``[sp, b, s, n_i, d]`` views (one copy)."""
    return torch.cat(parts, dim=3) if len(parts) > 1 else parts[0].contiguous()


def seq_to_heads(tensors: list, group) -> list:
    """``[b, s, n_i, d]`` (local tokens, all heads) -> ``[b, S, n_i/sp, d]`` (all tokens, this rank's heads)."""
    sp = dist.get_world_size(group)
    b, s = tensors[0].shape[:2]
    heads = [t.shape[2] // sp for t in tensors]
    send = _pack([t.reshape(b, s, sp, n, t.shape[3]).permute(2, 0, 1, 3, 4) for t, n in zip(tensors, heads)])
    recv = _all_to_all(send, group)  # [sp: whose tokens, b, s, c, d]
    return [x.transpose(0, 1).reshape(b, sp * s, n, x.shape[4]) for x, n in zip(recv.split(heads, dim=3), heads)]


def heads_to_seq(tensors: list, group) -> list:
    """``[b, S, n_i, d]`` (all tokens, this rank's heads) -> ``[b, s, n_i*sp, d]`` (local tokens, all heads)."""
    sp = dist.get_world_size(group)
    b, S = tensors[0].shape[:2]
    s = S // sp
    heads = [t.shape[2] for t in tensors]
    send = _pack([t.reshape(b, sp, s, n, t.shape[3]).transpose(0, 1) for t, n in zip(tensors, heads)])
    recv = _all_to_all(send, group)  # [sp: whose heads, b, s, c, d]
    return [x.permute(1, 2, 0, 3, 4).reshape(b, s, sp * n, x.shape[4]) for x, n in zip(recv.split(heads, dim=3), heads)]


class _Exchange(torch.autograd.Function):
    """One direction of the exchange; its backward is the other direction."""

    @staticmethod
    def forward(ctx, group, to_heads: bool, *tensors):
        ctx.group, ctx.to_heads = group, to_heads
        return tuple((seq_to_heads if to_heads else heads_to_seq)(list(tensors), group))

    @staticmethod
    def backward(ctx, *grads):
        return (None, None, *(heads_to_seq if ctx.to_heads else seq_to_heads)(list(grads), ctx.group))


class FusedUlyssesAttention(torch.nn.Module):
    """``local_attention`` over the whole sequence for this rank's heads, with fused exchanges.

    Called with ``[b, s, h, d]`` query and ``[b, s, g, d]`` key/value (h and g divisible by the
    group size), then the local attention's own arguments (e.g. document ids).
    """

    def __init__(self, local_attention: torch.nn.Module, group):
        super().__init__()
        self.local_attention, self.group = local_attention, group

    def forward(self, q_bshd, k_bsgd, v_bsgd, *args):
        q_bShd, k_bSgd, v_bSgd = _Exchange.apply(self.group, True, q_bshd, k_bsgd, v_bsgd)
        out_bShd = self.local_attention(q_bShd, k_bSgd, v_bSgd, *args)
        (out_bshd,) = _Exchange.apply(self.group, False, out_bShd)
        return out_bshd
