"""A fused FlashAttention backward for Hopper (sm_90) in Triton's Gluon dialect: 5 GEMM units per
block pair instead of the split backward's 7 (attention_triton.py). The dispatcher (interface.py) runs it
when `unsupported_reason` is None (causal, bf16, head dim 64 or 128, grouped-query attention or not, packed
documents or not, sequence a multiple of 128, an sm_90 GPU, Triton 3.6: the check shared with the Gluon
forward, gluon_sm90.py); everything else takes the split backward.

One program per (key block of BLOCK_N = 128 keys, kv head, batch); the kernel keeps one program per SM and CUDA
starts programs in grid order. Two launch orders, both starting each head's heaviest causal key block (the first:
it sees the most queries) before its lighter ones:
  per-head     grid (s / 128, b * kv heads): one head's key blocks after another's. Programs that run together read
               the same few heads' Q and dO (L2 hits), but the last heads' heavy blocks start late: at 8k with 8 kv
               heads in groups of 4 the busiest SM ends 24% after the ideal balance.
  interleaved  grid (b * kv heads, s / 128): every head's key block 0, then every head's key block 1, ...: balanced,
               with less L2 reuse.
`backward` chooses by head dim and shape (`interleaved_order`): at head dim 64 the interleaved order where it
balances the SMs at least 3% better by the per-program work (short sequences, few heads), per-head elsewhere; at
head dim 128 per-head (on the H200 faster at 4k, 16k and 32k, level at 8k). dK and dV accumulate in registers over the
query blocks (of BLOCK_M_BY_HEAD_DIM queries: 64 at head dim 128, 128 at 64) from the causal diagonal to the end,
of each query head of the kv head's group in turn. Per query block, 5 wgmma GEMMs (shapes at head dim 128):

    S^T  = K Q^T        [128 x 64],  A = K (smem),      B = Q^T   (smem view)
    dP^T = V dO^T       [128 x 64],  A = V (smem),      B = dO^T  (smem view)
    dV  += P^T dO       [128 x 128], A = P^T (regs),    B = dO    (smem)
    dK  += dS^T Q       [128 x 128], A = dS^T (regs),   B = Q     (smem)
    dQ_p = dS K         [64 x 128],  A = dS (smem view of dS^T), B = K (smem)

with P^T = exp2(S^T * scale*log2(e) - lse) (lse in log2 units, as the forward saves it) and
dS^T = P^T * (dP^T - delta). dQ_p (times softmax_scale) is added into an fp32 [b, s, h, d] buffer by a
TMA reduce-add (cp.reduce.async.bulk.tensor) from shared memory, then cast to the input dtype.

Variants:
  "ws"    (default) warp-specialized: the default partition (8 warps = 2 warpgroups, keys split 64/64)
          does the GEMMs and the softmax math; worker 0 (1 warp) issues the TMA loads of K, V (once) and
          Q, dO, lse, delta (STAGES-deep ring, mbarriers); worker 1 (1 warp) issues the dQ reduce-adds.
          Register reallocation with setmaxnreg (workers 24 registers, default partition 240).
  "plain" one partition of 8 warps doing the same, issuing its own loads and reduce-adds. Slower
          (measured on the H200); kept for comparison runs.

The Q/dO ring is 3 deep: with 2 stages the gradients were wrong on the H200 once the ring wrapped
(a ptxas 12.8 code-generation fault).
"""

# ruff: noqa: RUF059  (each partition unpacks the shared descriptor / buffer / barrier tuples whole)
import functools
import heapq

import torch

from megatron.kernels import gluon_sm90
from megatron.kernels.attention_triton import LOG2E
from megatron.kernels.env import (
    HAVE_GLUON,
    TensorDescriptor,
    fence_async_shared,
    gl,
    gluon,
    gluon_builtin,
    gluon_ir,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

VARIANTS = ("ws", "plain")
# Queries per step by head dim (the default of `backward`'s block_m): 128 at head dim 64 gives its small GEMMs
# twice the width (S^T, dP^T [128 x 128]); head dim 128 has the registers for 64 only.
BLOCK_M_BY_HEAD_DIM = {64: 128, 128: 64}
# Launch order by head dim (the default of `backward`'s interleaved; module docstring): None chooses by shape
# (`interleaved_order`), False is always per-head.
INTERLEAVED_BY_HEAD_DIM = {64: None, 128: False}
INTERLEAVE_GAIN = 1.03  # interleave where the per-head order's busiest SM ends this much later, by the work model
BLOCK_N = 128  # keys per program (gluon_sm90.SEQ_MULTIPLE)
STAGES = 3  # depth of the Q / dO / lse / delta ring
WS_WORKER_REGS = 24
WS_MAXNREG = 168  # (8 + 4 warps) * 32 * 168 <= 64K registers; the default partition gets (12*168 - 4*24) / 8 = 240


# fmt: off
if HAVE_GLUON:
    from megatron.kernels.gluon_sm90 import mma_layout

    @gluon_builtin
    def _tma_reduce_add(tensor_desc, coord, src, _semantic=None):
        """TMA reduce-add (cp.reduce.async.bulk.tensor .add) of a shared-memory tile into global memory.
        Gluon 3.6 has no Python wrapper for it; its op builder has one (create_async_tma_reduce). Completion is
        tracked like a TMA store's (tma.store_wait)."""
        coord = _semantic._convert_to_ir_values(coord, require_i64=False)
        _semantic.builder.create_async_tma_reduce(gluon_ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord, src.handle)

    # Shared tuples handed to every partition:
    #   descs = (q_desc, k_desc, v_desc, do_desc, dq_desc, lse_desc, delta_desc)
    #   smem  = (k_s, v_s, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_s, dq_s)   (*_bufs: STAGES-deep rings)
    #   bars  = (kv_bar, q_ready, do_ready, stage_empty, dq_ready, dq_empty)    (q_ready .. stage_empty: per stage)

    @gluon.jit
    def _issue_q_do_loads(descs, smem, bars, s, b, h, m0, S, H, pred, D: gl.constexpr):
        """TMA loads of query block m0 into ring stage s: Q + lse complete q_ready[s], dO + delta do_ready[s]."""
        q_desc, k_desc, v_desc, do_desc, dq_desc, lse_desc, delta_desc = descs
        k_s, v_s, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_s, dq_s = smem
        kv_bar, q_ready, do_ready, stage_empty, dq_ready, dq_empty = bars
        row = b * S + m0
        vec = (b * H + h) * S + m0
        q_bar = q_ready.index(s)
        do_bar = do_ready.index(s)
        mbarrier.expect(q_bar, q_desc.block_type.nbytes + lse_desc.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(q_desc, [row, h * D], q_bar, q_bufs.index(s), pred=pred)
        tma.async_copy_global_to_shared(lse_desc, [vec], q_bar, lse_bufs.index(s), pred=pred)
        mbarrier.expect(do_bar, do_desc.block_type.nbytes + delta_desc.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(do_desc, [row, h * D], do_bar, do_bufs.index(s), pred=pred)
        tma.async_copy_global_to_shared(delta_desc, [vec], do_bar, delta_bufs.index(s), pred=pred)

    @gluon.jit
    def _bwd_step(t, i, n0, dk, dv, smem, bars, qk_scale, sm_scale, seg_base, MASKED: gl.constexpr,
                  BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, HAS_DOC: gl.constexpr):
        """Query block i (ring slot t) of this key block: the 5 GEMMs. Returns dk, dv and the scaled dQ
        partial (registers)."""
        k_s, v_s, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_s, dq_s = smem
        kv_bar, q_ready, do_ready, stage_empty, dq_ready, dq_empty = bars
        mma_s: gl.constexpr = mma_layout([8, 1], BM)  # S^T, dP^T: [BN keys, BM queries]
        mma_kv: gl.constexpr = mma_layout([8, 1], D)  # dK, dV: [BN, D]
        mma_dq: gl.constexpr = mma_layout([4, 2], D // 2)  # dQ partial: [BM, D], D split between warpgroups
        a_kv: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_kv, k_width=2)
        col_l: gl.constexpr = gl.SliceLayout(0, mma_s)  # along queries
        row_l: gl.constexpr = gl.SliceLayout(1, mma_s)  # along keys
        s = t % STAGES
        phase = (t // STAGES) & 1
        q_s = q_bufs.index(s)
        do_s = do_bufs.index(s)

        mbarrier.wait(q_ready.index(s), phase)
        st = warpgroup_mma(k_s, q_s.permute((1, 0)), gl.zeros([BN, BM], gl.float32, mma_s), use_acc=False,
                           is_async=True)
        mbarrier.wait(do_ready.index(s), phase)
        dpt = warpgroup_mma(v_s, do_s.permute((1, 0)), gl.zeros([BN, BM], gl.float32, mma_s), use_acc=False,
                            is_async=True)
        st = warpgroup_mma_wait(num_outstanding=1, deps=(st,))  # dP^T still running under the exp2
        lse = lse_bufs.index(s).load(col_l)
        pt = gl.exp2(st * qk_scale - lse[None, :])  # P^T; lse is in log2 units
        if MASKED:  # causal diagonal, or a document edge: keep query >= key (in the same document)
            offs_q = n0 + i * BM + gl.arange(0, BM, layout=col_l)
            offs_k = n0 + gl.arange(0, BN, layout=row_l)
            keep = offs_q[None, :] >= offs_k[:, None]
            if HAS_DOC:  # a causal key is in the query's document iff it is at or after the document's start
                keep = keep & (offs_k[:, None] >= gl.load(seg_base + offs_q)[None, :])
            pt = gl.where(keep, pt, 0.0)
        dpt = warpgroup_mma_wait(num_outstanding=0, deps=(dpt,))
        delta = delta_bufs.index(s).load(col_l)
        dst = (pt * (dpt - delta[None, :])).to(gl.bfloat16)  # dS^T
        # P^T and dS^T are bf16 register A operands; fp32 P^T and dP^T are dead once these two are issued.
        dv = warpgroup_mma(gl.convert_layout(pt.to(gl.bfloat16), a_kv), do_s, dv, is_async=True)
        dk = warpgroup_mma(gl.convert_layout(dst, a_kv), q_s, dk, is_async=True)
        ds_s.store(dst)
        fence_async_shared()
        gl.thread_barrier()  # both warpgroups' halves of dS^T are in shared memory before the dQ GEMM reads it
        dq = warpgroup_mma(ds_s.permute((1, 0)), k_s, gl.zeros([BM, D], gl.float32, mma_dq), use_acc=False,
                           is_async=True)
        dv, dk, dq = warpgroup_mma_wait(num_outstanding=0, deps=(dv, dk, dq))
        return dk, dv, dq * sm_scale

    @gluon.jit
    def _bwd_slot(t, n_iter, n0, full_hi, dk, dv, smem, bars, qk_scale, sm_scale, seg_base,
                  BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, HAS_DOC: gl.constexpr):
        """Ring slot t: query block t % n_iter of the current query head, masked on the causal diagonal and
        past a document edge. Returns dk, dv and the scaled dQ partial."""
        i = t % n_iter
        masked = i * BM < BN  # on the causal diagonal
        if HAS_DOC:
            masked = masked | (n0 + i * BM >= full_hi)  # or past a document edge
        if masked:
            dk, dv, dq = _bwd_step(t, i, n0, dk, dv, smem, bars, qk_scale, sm_scale, seg_base, True,
                                   BM, BN, D, STAGES, HAS_DOC)
        else:
            dk, dv, dq = _bwd_step(t, i, n0, dk, dv, smem, bars, qk_scale, sm_scale, seg_base, False,
                                   BM, BN, D, STAGES, HAS_DOC)
        return dk, dv, dq

    @gluon.jit
    def _program_ids(INTERLEAVED: gl.constexpr):
        """(key block, batch * kv heads + kv head) of this program: grid (b * kv heads, key blocks) when INTERLEAVED
        (every head's key block 0 first), else (key blocks, b * kv heads) (one head's blocks after another's)."""
        if INTERLEAVED:
            return gl.program_id(1), gl.program_id(0)
        return gl.program_id(0), gl.program_id(1)

    @gluon.jit
    def _store_dkdv(dk, dv, DK, DV, S, KV_H, sm_scale, BN: gl.constexpr, D: gl.constexpr, INTERLEAVED: gl.constexpr):
        # Program ids re-read here rather than kept live across the loop.
        pid_n, pid_bg = _program_ids(INTERLEAVED)
        n0 = pid_n * BN
        g = pid_bg % KV_H  # kv head
        b = pid_bg // KV_H
        mma_kv: gl.constexpr = mma_layout([8, 1], D)
        offs_n = n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, mma_kv))
        offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, mma_kv))
        offs = (b.to(gl.int64) * S * KV_H + g) * D + offs_n.to(gl.int64)[:, None] * (KV_H * D) + offs_d[None, :]
        gl.store(DK + offs, (dk * sm_scale).to(gl.bfloat16))
        gl.store(DV + offs, dv.to(gl.bfloat16))

    # ---------------------------------------------------------------------------------------------------------
    # Warp-specialized variant: three partitions
    # ---------------------------------------------------------------------------------------------------------
    @gluon.jit
    def _ws_compute(descs, smem, bars, DK, DV, n0, S, KV_H, n_iter, full_hi, seg_base, qk_scale, sm_scale,
                    BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, GROUP: gl.constexpr,
                    HAS_DOC: gl.constexpr, INTERLEAVED: gl.constexpr):
        """Default partition (8 warps): the GEMMs and the elementwise math; dQ partials to dq_s."""
        k_s, v_s, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_s, dq_s = smem
        kv_bar, q_ready, do_ready, stage_empty, dq_ready, dq_empty = bars
        mma_kv: gl.constexpr = mma_layout([8, 1], D)
        dk = gl.zeros([BN, D], gl.float32, mma_kv)
        dv = gl.zeros([BN, D], gl.float32, mma_kv)
        mbarrier.wait(kv_bar, 0)
        for t in range(GROUP * n_iter):  # the group's query heads one after the other, n_iter blocks each
            dk, dv, dq = _bwd_slot(t, n_iter, n0, full_hi, dk, dv, smem, bars, qk_scale, sm_scale, seg_base,
                                   BM, BN, D, STAGES, HAS_DOC)
            mbarrier.wait(dq_empty, (t & 1) ^ 1)  # the previous reduce-add has read dq_s (fresh barrier: passes)
            dq_s.store(dq)
            fence_async_shared()  # also orders this step's generic reads of lse / delta before their TMA refill
            # One arrive (Triton puts a bar.sync of the 256 threads before it): dq_s is written and this block's
            # GEMMs are done with its Q / dO stage, which the dq writer then hands back to the loader.
            mbarrier.arrive(dq_ready, count=1)
        _store_dkdv(dk, dv, DK, DV, S, KV_H, sm_scale, BN, D, INTERLEAVED)

    @gluon.jit
    def _ws_loader(descs, smem, bars, b, g, n0, S, H, n_iter,
                   BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, GROUP: gl.constexpr):
        """Worker (1 warp): TMA loads of K, V once, then Q, dO, lse, delta per query block into the ring."""
        q_desc, k_desc, v_desc, do_desc, dq_desc, lse_desc, delta_desc = descs
        k_s, v_s, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_s, dq_s = smem
        kv_bar, q_ready, do_ready, stage_empty, dq_ready, dq_empty = bars
        mbarrier.expect(kv_bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [b * S + n0, g * D], kv_bar, k_s)
        tma.async_copy_global_to_shared(v_desc, [b * S + n0, g * D], kv_bar, v_s)
        for t in range(GROUP * n_iter):
            s = t % STAGES
            mbarrier.wait(stage_empty.index(s), ((t // STAGES) & 1) ^ 1)  # fresh barriers pass phase 1 at once
            h = g * GROUP + t // n_iter
            _issue_q_do_loads(descs, smem, bars, s, b, h, n0 + (t % n_iter) * BM, S, H, True, D)

    @gluon.jit
    def _ws_dq_writer(descs, smem, bars, b, g, n0, S, n_iter,
                      BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, GROUP: gl.constexpr):
        """Worker (1 warp): TMA reduce-add of each dQ partial from dq_s into the fp32 dq buffer."""
        q_desc, k_desc, v_desc, do_desc, dq_desc, lse_desc, delta_desc = descs
        k_s, v_s, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_s, dq_s = smem
        kv_bar, q_ready, do_ready, stage_empty, dq_ready, dq_empty = bars
        for t in range(GROUP * n_iter):
            mbarrier.wait(dq_ready, t & 1)
            mbarrier.arrive(stage_empty.index(t % STAGES), count=1)  # block t's GEMMs are done with Q, dO
            h = g * GROUP + t // n_iter
            _tma_reduce_add(dq_desc, [b * S + n0 + (t % n_iter) * BM, h * D], dq_s)
            tma.store_wait(0)
            mbarrier.arrive(dq_empty, count=1)

    # ---------------------------------------------------------------------------------------------------------
    # Plain variant: one partition of 8 warps
    # ---------------------------------------------------------------------------------------------------------
    @gluon.jit
    def _plain_body(descs, smem, bars, DK, DV, b, g, n0, S, H, KV_H, n_iter, full_hi, seg_base, qk_scale, sm_scale,
                    BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, GROUP: gl.constexpr,
                    HAS_DOC: gl.constexpr, INTERLEAVED: gl.constexpr):
        q_desc, k_desc, v_desc, do_desc, dq_desc, lse_desc, delta_desc = descs
        k_s, v_s, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_s, dq_s = smem
        kv_bar, q_ready, do_ready, stage_empty, dq_ready, dq_empty = bars
        mbarrier.expect(kv_bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [b * S + n0, g * D], kv_bar, k_s)
        tma.async_copy_global_to_shared(v_desc, [b * S + n0, g * D], kv_bar, v_s)
        n_total = GROUP * n_iter
        for st in gl.static_range(STAGES):  # prologue: slots 0 .. STAGES-1
            h = g * GROUP + st // n_iter
            _issue_q_do_loads(descs, smem, bars, st, b, h, n0 + (st % n_iter) * BM, S, H, st < n_total, D)
        mma_kv: gl.constexpr = mma_layout([8, 1], D)
        dk = gl.zeros([BN, D], gl.float32, mma_kv)
        dv = gl.zeros([BN, D], gl.float32, mma_kv)
        mbarrier.wait(kv_bar, 0)
        for t in range(n_total):
            dk, dv, dq = _bwd_slot(t, n_iter, n0, full_hi, dk, dv, smem, bars, qk_scale, sm_scale, seg_base,
                                   BM, BN, D, STAGES, HAS_DOC)
            tma.store_wait(0)  # the previous reduce-add has read dq_s
            gl.thread_barrier()
            dq_s.store(dq)
            fence_async_shared()  # also orders this step's generic reads of lse / delta before their refill
            gl.thread_barrier()
            _tma_reduce_add(dq_desc, [b * S + n0 + (t % n_iter) * BM, (g * GROUP + t // n_iter) * D], dq_s)
            # Refill the stage just consumed (its GEMMs were waited on) with slot t + STAGES.
            j = t + STAGES
            h = g * GROUP + j // n_iter
            _issue_q_do_loads(descs, smem, bars, t % STAGES, b, h, n0 + (j % n_iter) * BM, S, H, j < n_total, D)
        tma.store_wait(0)
        _store_dkdv(dk, dv, DK, DV, S, KV_H, sm_scale, BN, D, INTERLEAVED)

    # ---------------------------------------------------------------------------------------------------------
    # The kernel: one program per (key block, head, batch)
    # ---------------------------------------------------------------------------------------------------------
    @gluon.jit
    def _attn_bwd_kernel(q_desc, k_desc, v_desc, do_desc, dq_desc, lse_desc, delta_desc, DK, DV,
                         RUN_START, RUN_END, S, H, KV_H, qk_scale, sm_scale,
                         BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                         WS: gl.constexpr, WORKER_REGS: gl.constexpr, GROUP: gl.constexpr, HAS_DOC: gl.constexpr,
                         INTERLEAVED: gl.constexpr):
        pid_n, pid_bg = _program_ids(INTERLEAVED)  # key block 0 has the most query blocks
        g = pid_bg % KV_H  # kv head: its GROUP query heads are g * GROUP ...
        b = pid_bg // KV_H
        n0 = pid_n * BN
        n_iter = (S - n0) // BM  # query blocks from the diagonal to the end
        full_hi = S  # query blocks from n0 + BN up to full_hi need no mask
        seg_base = RUN_START + b.to(gl.int64) * S  # the masked steps read each query's document start
        if HAS_DOC:  # RUN_START / RUN_END: each token's document's [start, end)
            run_base = b.to(gl.int64) * S
            doc_start = gl.load(RUN_START + run_base + n0)
            hi = gl.load(RUN_END + run_base + n0 + BN - 1)  # queries past the last key's document see none
            n_iter = (hi - n0 + BM - 1) // BM
            one_doc = gl.load(RUN_START + run_base + n0 + BN - 1) == doc_start
            full_hi = gl.where(one_doc, (hi // BM) * BM, n0)  # keys in two documents: every block masked

        k_s = gl.allocate_shared_memory(gl.bfloat16, [BN, D], k_desc.layout)
        v_s = gl.allocate_shared_memory(gl.bfloat16, [BN, D], v_desc.layout)
        q_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BM, D], q_desc.layout)
        do_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BM, D], do_desc.layout)
        lse_bufs = gl.allocate_shared_memory(gl.float32, [STAGES, BM], lse_desc.layout)
        delta_bufs = gl.allocate_shared_memory(gl.float32, [STAGES, BM], delta_desc.layout)
        ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, BM], gl.bfloat16)
        ds_s = gl.allocate_shared_memory(gl.bfloat16, [BN, BM], ds_layout)
        dq_s = gl.allocate_shared_memory(gl.float32, [BM, D], dq_desc.layout)

        bar_l: gl.constexpr = mbarrier.MBarrierLayout()
        kv_bar = gl.allocate_shared_memory(gl.int64, [1], bar_l)
        q_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_l)
        do_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_l)
        stage_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_l)
        dq_ready = gl.allocate_shared_memory(gl.int64, [1], bar_l)
        dq_empty = gl.allocate_shared_memory(gl.int64, [1], bar_l)
        mbarrier.init(kv_bar, count=1)
        mbarrier.init(dq_ready, count=1)
        mbarrier.init(dq_empty, count=1)
        for st in gl.static_range(STAGES):
            mbarrier.init(q_ready.index(st), count=1)
            mbarrier.init(do_ready.index(st), count=1)
            mbarrier.init(stage_empty.index(st), count=1)
        fence_async_shared()

        descs = (q_desc, k_desc, v_desc, do_desc, dq_desc, lse_desc, delta_desc)
        smem = (k_s, v_s, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_s, dq_s)
        bars = (kv_bar, q_ready, do_ready, stage_empty, dq_ready, dq_empty)
        if WS:
            gl.warp_specialize([
                (_ws_compute, (descs, smem, bars, DK, DV, n0, S, KV_H, n_iter, full_hi, seg_base, qk_scale,
                               sm_scale, BM, BN, D, STAGES, GROUP, HAS_DOC, INTERLEAVED)),
                (_ws_loader, (descs, smem, bars, b, g, n0, S, H, n_iter, BM, BN, D, STAGES, GROUP)),
                (_ws_dq_writer, (descs, smem, bars, b, g, n0, S, n_iter, BM, BN, D, STAGES, GROUP)),
            ], [1, 1], [WORKER_REGS, WORKER_REGS])
        else:
            _plain_body(descs, smem, bars, DK, DV, b, g, n0, S, H, KV_H, n_iter, full_hi, seg_base, qk_scale,
                        sm_scale, BM, BN, D, STAGES, GROUP, HAS_DOC, INTERLEAVED)

# fmt: on


def _descriptors(q, k, v, dout, dq_acc, lse, delta, block_m):
    bsz, seq, heads, dim = q.shape
    bf16 = gl.bfloat16
    lay_m = gl.NVMMASharedLayout.get_default_for([block_m, dim], bf16)
    lay_n = gl.NVMMASharedLayout.get_default_for([BLOCK_N, dim], bf16)
    lay_dq = gl.NVMMASharedLayout.get_default_for([block_m, dim], gl.float32)
    lay_vec = gl.NVMMASharedLayout.get_default_for([block_m], gl.float32)
    two_d = lambda t: t.view(bsz * seq, t.shape[2] * dim)  # [b*s, heads*d]: a block is rows of one head
    return (
        TensorDescriptor.from_tensor(two_d(q), [block_m, dim], lay_m),
        TensorDescriptor.from_tensor(two_d(k), [BLOCK_N, dim], lay_n),
        TensorDescriptor.from_tensor(two_d(v), [BLOCK_N, dim], lay_n),
        TensorDescriptor.from_tensor(two_d(dout), [block_m, dim], lay_m),
        TensorDescriptor.from_tensor(two_d(dq_acc), [block_m, dim], lay_dq),
        TensorDescriptor.from_tensor(lse.view(-1), [block_m], lay_vec),
        TensorDescriptor.from_tensor(delta.view(-1), [block_m], lay_vec),
    )


def _makespan(work, sms: int) -> float:
    """When the last of `sms` SMs finishes, each taking the next program (in launch order) as soon as it is free."""
    free = [0.0] * sms
    for w in work:
        heapq.heappush(free, heapq.heappop(free) + w)
    return max(free)


@functools.lru_cache(maxsize=256)
def interleaved_order(units: int, blocks: int, group: int, sms: int) -> bool:
    """True where the interleaved launch order balances `sms` SMs INTERLEAVE_GAIN better than the per-head order
    for `units` (batch x kv heads) of `blocks` causal key blocks: key block n does group * (blocks - n) query steps
    (any query block size). Long sequences balance either way and keep the per-head order (its L2 reuse)."""
    if units * blocks > 64 * sms:  # every SM runs many programs of each head: both orders balance
        return False
    per_head = [group * (blocks - n) for _ in range(units) for n in range(blocks)]
    interleaved = [group * (blocks - n) for n in range(blocks) for _ in range(units)]
    return _makespan(per_head, sms) > INTERLEAVE_GAIN * _makespan(interleaved, sms)


def _launch_options(variant):
    if variant == "ws":
        return {"num_warps": 8, "maxnreg": WS_MAXNREG}
    return {"num_warps": 8}


LAST_COMPILED = {}  # variant -> compiled kernel of the latest launch


def unsupported_reason(q, k, causal: bool):
    """None when the fused backward can run on these inputs, else why not (one short phrase): the check shared with
    the Gluon forward (gluon_sm90.unsupported_reason)."""
    return gluon_sm90.unsupported_reason(q, k, causal)


def backward(q, k, v, dout, lse, delta, softmax_scale, variant="ws", stages=STAGES, documents=None, block_m=None,
             interleaved=None):
    """dq, dk, dv of causal attention. q, dout [b, s, h, d], k, v [b, s, g, d] (g divides h: grouped-query
    attention; a program's dK and dV sum over its group's query heads) bf16; lse [b, h, s] fp32 in log2 units
    (the forward's); delta = rowsum(out * dout) [b, h, s] fp32. documents: None, or int32 [b, s] tensors
    (run_start, run_end): each token's document's start and end (exclusive), as interface.document_runs
    gives them. block_m: queries per step, 64 or 128 (None: BLOCK_M_BY_HEAD_DIM); interleaved: the launch order
    (None: INTERLEAVED_BY_HEAD_DIM). Check `unsupported_reason` first."""
    bsz, seq, heads, dim = q.shape
    block_m = block_m or BLOCK_M_BY_HEAD_DIM[dim]
    if block_m not in (64, 128):
        raise ValueError(f"block_m {block_m}: 64 or 128")
    kv_heads = k.shape[2]
    q, k, v, dout, lse, delta = (t.contiguous() for t in (q, k, v, dout, lse, delta))
    dq_acc = torch.zeros(bsz, seq, heads, dim, dtype=torch.float32, device=q.device)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    descs = _descriptors(q, k, v, dout, dq_acc, lse, delta, block_m)
    units, blocks = bsz * kv_heads, seq // BLOCK_N
    if interleaved is None:
        interleaved = INTERLEAVED_BY_HEAD_DIM[dim]
    if interleaved is None:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count
        interleaved = interleaved_order(units, blocks, heads // kv_heads, sms)
    grid = (units, blocks) if interleaved else (blocks, units)  # launch order: the module docstring
    has_doc = documents is not None
    if not has_doc:
        documents = (torch.empty(1, dtype=torch.int32, device=q.device),) * 2
    LAST_COMPILED[variant] = _attn_bwd_kernel[grid](
        *descs, dk, dv, *documents, seq, heads, kv_heads, softmax_scale * LOG2E, softmax_scale,
        block_m, BLOCK_N, dim, stages, variant == "ws", WS_WORKER_REGS, heads // kv_heads, has_doc, interleaved,
        **_launch_options(variant),
    )  # fmt: skip
    return dq_acc.to(q.dtype), dk, dv
