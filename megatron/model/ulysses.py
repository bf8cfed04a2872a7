"""DeepSpeed-Ulysses exchanges, each a module around the local attention with one call signature,
``forward(q_bshd, k_bsgd, v_bsgd, *local_attention_args) -> out_bshd``: DeepSpeed's own
(``DeepSpeedUlyssesAttention``), fused: one all-to-all for Q, K and V together, one for the output;
and overlapped: the same, pipelined over head chunks so that each chunk's all-to-all runs while
another chunk's attention computes (``OverlappedUlyssesAttention``).

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


def _async_all_to_all(send: torch.Tensor, group):
    recv = torch.empty_like(send)
    return recv, dist.all_to_all_single(recv, send, group=group, async_op=True)


def _pack(parts: list) -> torch.Tensor:
    """One contiguous ``[sp, b, s, c, d]`` buffer from ``[sp, b, s, n_i, d]`` views (one copy)."""
    return torch.cat(parts, dim=3) if len(parts) > 1 else parts[0].contiguous()


# Layouts, shared by the fused and the overlapped exchange (the fused one is one chunk).
def _chunk_to_heads_send(tensors: list, sp: int, chunks: int, c: int) -> torch.Tensor:
    """Send buffer ``[sp, b, s, sum(n_i)/(sp*chunks), d]`` of head chunk ``c`` of every peer's heads."""
    b, s = tensors[0].shape[:2]
    views = []
    for t in tensors:
        n = t.shape[2] // (sp * chunks)
        views.append(t.reshape(b, s, sp, chunks, n, t.shape[3])[:, :, :, c].permute(2, 0, 1, 3, 4))
    return _pack(views)


def _split_heads_recv(recv: torch.Tensor, heads: list) -> list:
    """``[sp: whose tokens, b, s, c, d]`` -> ``[b, S, n_i, d]`` per tensor."""
    sp, b, s = recv.shape[:3]
    return [x.transpose(0, 1).reshape(b, sp * s, n, x.shape[4]) for x, n in zip(recv.split(heads, dim=3), heads)]


def _to_seq_send(tensors: list, sp: int) -> torch.Tensor:
    """``[b, S, n_i, d]`` (this rank's chunk heads, all tokens) -> send ``[sp: whose tokens, b, s, sum n_i, d]``."""
    b, S = tensors[0].shape[:2]
    return _pack([t.reshape(b, sp, S // sp, t.shape[2], t.shape[3]).transpose(0, 1) for t in tensors])


def _assemble_seq(recvs: list, index: int, heads: list, chunks: int) -> torch.Tensor:
    """Tensor ``index`` as ``[b, s, sp*chunks*n, d]`` from each chunk's ``[sp: whose heads, b, s, c, d]``."""
    sp, b, s, _, d = recvs[0].shape
    n = heads[index]
    off = sum(heads[:index])
    out = recvs[0].new_empty(b, s, sp, chunks, n, d)
    for c, recv in enumerate(recvs):
        out[:, :, :, c] = recv[:, :, :, off : off + n].permute(1, 2, 0, 3, 4)
    return out.view(b, s, sp * chunks * n, d)


def seq_to_heads(tensors: list, group) -> list:
    """``[b, s, n_i, d]`` (local tokens, all heads) -> ``[b, S, n_i/sp, d]`` (all tokens, this rank's heads)."""
    sp = dist.get_world_size(group)
    recv = _all_to_all(_chunk_to_heads_send(tensors, sp, 1, 0), group)  # [sp: whose tokens, b, s, c, d]
    return _split_heads_recv(recv, [t.shape[2] // sp for t in tensors])


def heads_to_seq(tensors: list, group) -> list:
    """``[b, S, n_i, d]`` (all tokens, this rank's heads) -> ``[b, s, n_i*sp, d]`` (local tokens, all heads)."""
    recv = _all_to_all(_to_seq_send(tensors, dist.get_world_size(group)), group)  # [sp: whose heads, b, s, c, d]
    heads = [t.shape[2] for t in tensors]
    return [_assemble_seq([recv], i, heads, 1) for i in range(len(tensors))]


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


# ----------------------------------------------------------------------------- overlapped (head chunks)
class _Pending:
    """The in-flight all-to-alls of one overlapped call, shared by its autograd nodes. A handle is
    dropped once waited on, so that nothing here keeps a buffer alive."""

    def __init__(self):
        self.works = {}

    def put(self, key, work) -> None:
        self.works[key] = work

    def wait(self, key) -> None:
        self.works.pop(key).wait()


class _ScatterHeads(torch.autograd.Function):
    """Q, K, V ``[b, s, n_i, d]`` -> one receive buffer ``[sp, b, s, sum n_i/(sp*C), d]`` per head
    chunk, every chunk's all-to-all started at once (the buffers fill as they arrive: ``_WaitHeads``
    waits). Backward: the chunk buffers hold dQ, dK, dV exchanged back by ``_WaitHeads``; wait for
    them all and assemble."""

    @staticmethod
    def forward(ctx, pending, group, chunks, heads, q, k, v):
        sp = dist.get_world_size(group)
        ctx.pending, ctx.chunks, ctx.heads = pending, chunks, heads
        recvs = []
        for c in range(chunks):
            recv, work = _async_all_to_all(_chunk_to_heads_send([q, k, v], sp, chunks, c), group)
            pending.put(("heads", c), work)
            recvs.append(recv)
        return tuple(recvs)

    @staticmethod
    def backward(ctx, *grad_recvs):
        for c in range(ctx.chunks):
            ctx.pending.wait(("grads", c))
        return (None, None, None, None, *(_assemble_seq(list(grad_recvs), i, ctx.heads, ctx.chunks) for i in range(3)))


class _WaitHeads(torch.autograd.Function):
    """Chunk ``c``'s Q, K, V ``[b, S, n_i, d]`` once its exchange has arrived. Backward: start the
    exchange of this chunk's dQ, dK, dV back to sequence shards and hand its receive buffer on."""

    @staticmethod
    def forward(ctx, pending, group, c, heads, recv):
        pending.wait(("heads", c))
        ctx.pending, ctx.group, ctx.c = pending, group, c
        return tuple(_split_heads_recv(recv, heads))

    @staticmethod
    def backward(ctx, *grads):
        sp = dist.get_world_size(ctx.group)
        recv, work = _async_all_to_all(_to_seq_send(list(grads), sp), ctx.group)
        ctx.pending.put(("grads", ctx.c), work)
        return None, None, None, None, recv


class _SendOut(torch.autograd.Function):
    """Start chunk ``c``'s output exchange ``[b, S, n, d]`` -> ``[sp: whose heads, b, s, n, d]``
    (``_GatherOut`` waits). Backward: wait for this chunk's gradient exchange (started by
    ``_GatherOut``) and return it in the attention's layout."""

    @staticmethod
    def forward(ctx, pending, group, c, out):
        sp = dist.get_world_size(group)
        recv, work = _async_all_to_all(_to_seq_send([out], sp), group)
        pending.put(("out", c), work)
        ctx.pending, ctx.c = pending, c
        return recv

    @staticmethod
    def backward(ctx, grad_recv):
        ctx.pending.wait(("grad_out", ctx.c))
        (g,) = _split_heads_recv(grad_recv, [grad_recv.shape[3]])
        return None, None, None, g


class _GatherOut(torch.autograd.Function):
    """Wait for every chunk's output exchange and assemble ``[b, s, h, d]``. Backward: start the
    gradient's exchange chunk by chunk, last chunk first (the order autograd runs them in)."""

    @staticmethod
    def forward(ctx, pending, group, *recvs):
        for c in range(len(recvs)):
            pending.wait(("out", c))
        ctx.pending, ctx.group, ctx.chunks = pending, group, len(recvs)
        return _assemble_seq(list(recvs), 0, [recvs[0].shape[3]], len(recvs))

    @staticmethod
    def backward(ctx, grad_out):
        sp = dist.get_world_size(ctx.group)
        grads = [None] * ctx.chunks
        for c in reversed(range(ctx.chunks)):
            grads[c], work = _async_all_to_all(_chunk_to_heads_send([grad_out], sp, ctx.chunks, c), ctx.group)
            ctx.pending.put(("grad_out", c), work)
        return (None, None, *grads)


class OverlappedUlyssesAttention(torch.nn.Module):
    """``FusedUlyssesAttention`` pipelined over ``chunks`` head chunks per rank: while one chunk's
    attention runs, the next chunk's Q, K, V and the previous chunk's output are exchanged.

    ``chunks`` must divide the key/value heads per rank (``apply_ulysses`` picks the largest
    count up to the requested one that does); with one chunk nothing overlaps.
    """

    def __init__(self, local_attention: torch.nn.Module, group, chunks: int):
        super().__init__()
        self.local_attention, self.group, self.chunks = local_attention, group, chunks

    def forward(self, q_bshd, k_bsgd, v_bsgd, *args):
        # Ordinary autograd nodes (no nested graphs), so activation checkpointing drops and
        # recomputes everything here as it does for any other layer.
        sp = dist.get_world_size(self.group)
        heads = [t.shape[2] // (sp * self.chunks) for t in (q_bshd, k_bsgd, v_bsgd)]
        pending = _Pending()
        recvs = _ScatterHeads.apply(pending, self.group, self.chunks, heads, q_bshd, k_bsgd, v_bsgd)
        outs = []
        for c, recv in enumerate(recvs):
            q_c, k_c, v_c = _WaitHeads.apply(pending, self.group, c, heads, recv)
            outs.append(_SendOut.apply(pending, self.group, c, self.local_attention(q_c, k_c, v_c, *args)))
        return _GatherOut.apply(pending, self.group, *outs)


# ----------------------------------------------------------------------------- DeepSpeed's, same signature
class DeepSpeedUlyssesAttention(torch.nn.Module):
    """DeepSpeed's ``DistributedAttention`` (one all-to-all per tensor) behind the call signature of the
    exchanges above: ``forward(q_bshd, k_bsgd, v_bsgd, *local_attention_args)``."""

    def __init__(self, local_attention: torch.nn.Module, group):
        super().__init__()
        from deepspeed.sequence.layer import DistributedAttention

        self.local_attention, self.group = local_attention, group
        self.inner = DistributedAttention(local_attention, group, scatter_idx=2, gather_idx=1)

    def forward(self, q_bshd, k_bsgd, v_bsgd, *args):
        return self.inner(q_bshd, k_bsgd, v_bsgd, 0, None, *args)  # batch dim 0, no rotary inside
