"""Prototype (not library code): a 5-GEMM-unit FlashAttention backward for Hopper (sm_90) in Triton 3.6's
experimental Gluon dialect. Causal, head dim 128, bf16, no GQA, no documents, seq a multiple of 128.

One program per (key block of BLOCK_N = 128 keys, head, batch). dK and dV accumulate in registers over the
query blocks (BLOCK_M = 64) from the causal diagonal to the end. Per query block, 5 wgmma GEMMs:

    S^T  = K Q^T        [128 x 64],  A = K (smem),      B = Q^T   (smem view)
    dP^T = V dO^T       [128 x 64],  A = V (smem),      B = dO^T  (smem view)
    dV  += P^T dO       [128 x 128], A = P^T (regs),    B = dO    (smem)
    dK  += dS^T Q       [128 x 128], A = dS^T (regs),   B = Q     (smem)
    dQ_p = dS K         [64 x 128],  A = dS (smem view of dS^T), B = K (smem)

with P^T = exp2(S^T * scale*log2(e) - lse) (lse in log2 units, as our forward saves it) and
dS^T = P^T * (dP^T - delta). dQ_p (times softmax_scale) is added into an fp32 [b, s, h, d] buffer by a TMA
reduce-add (cp.reduce.async.bulk.tensor) from shared memory; a torch cast makes the bf16 dq.

Variants:
  "ws"    warp-specialized: the default partition (8 warps = 2 warpgroups, keys split 64/64 between them)
          does the GEMMs and the softmax math; worker 0 (1 warp) issues the TMA loads of K, V (once) and
          Q, dO, lse, delta (STAGES-deep ring, mbarriers); worker 1 (1 warp) issues the dQ reduce-adds.
          Register reallocation with setmaxnreg (workers 24 registers, maxnreg 168 -> default 240).
  "plain" one partition of 8 warps doing the same, issuing its own TMA loads STAGES blocks ahead (a stage
          is refilled as soon as its block's GEMMs are done) and its own dQ reduce-adds.

    PYTHONPATH=/tmp/t36/site python docs/benchmarks/attention_gluon/flash_bwd_gluon.py --screen   # offline, sm_90
    python docs/benchmarks/attention_gluon/flash_bwd_gluon.py --emulate   # CPU fp64 check of the block math
    PYTHONPATH=/tmp/t36/site python docs/benchmarks/attention_gluon/flash_bwd_gluon.py --jit-path  # real call path, compile only
"""

# ruff: noqa: RUF059  (each partition unpacks the shared descriptor / buffer / barrier tuples whole)
import argparse
import json
import math
import os
import re
import sys

import torch

LOG2E = 1.4426950408889634
VARIANTS = ("ws", "plain")
BLOCK_M = 64  # queries per step
BLOCK_N = 128  # keys per program
HEAD_DIM = 128
STAGES = 2  # depth of the Q / dO / lse / delta ring
WS_WORKER_REGS = 24
WS_MAXNREG = 168  # (8 + 4 warps) * 32 * 168 <= 64K registers; the default partition gets (12*168 - 4*24) / 8 = 240

try:
    import triton
    from triton._C.libtriton import ir as _ir
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language._core import builtin as _gl_builtin
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    _IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001 (no Triton, or a Triton without Gluon: reported on use)
    _IMPORT_ERROR = e


# Gluon code keeps argument lists packed, as the library's Triton kernels do (one argument a line would triple it).
# fmt: off
if _IMPORT_ERROR is None:

    @_gl_builtin
    def _tma_reduce_add(tensor_desc, coord, src, _semantic=None):
        """TMA reduce-add (cp.reduce.async.bulk.tensor .add) of a shared-memory tile into global memory.
        Gluon 3.6 has no Python wrapper for it; its op builder has one (create_async_tma_reduce). Completion is
        tracked like a TMA store's (tma.store_wait)."""
        coord = _semantic._convert_to_ir_values(coord, require_i64=False)
        _semantic.builder.create_async_tma_reduce(_ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord, src.handle)

    @gluon.constexpr_function
    def _mma_layout(warps, n):
        """wgmma accumulator layout. warps [8, 1]: rows split 64 / 64 between the two warpgroups."""
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=warps, instr_shape=[16, n, 16])

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
    def _bwd_step(i, n0, dk, dv, smem, bars, qk_scale, sm_scale, MASKED: gl.constexpr,
                  BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
        """Query block i of this key block: the 5 GEMMs. Returns dk, dv and the scaled dQ partial (registers)."""
        k_s, v_s, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_s, dq_s = smem
        kv_bar, q_ready, do_ready, stage_empty, dq_ready, dq_empty = bars
        mma_s: gl.constexpr = _mma_layout([8, 1], BM)  # S^T, dP^T: [BN keys, BM queries]
        mma_kv: gl.constexpr = _mma_layout([8, 1], D)  # dK, dV: [BN, D]
        mma_dq: gl.constexpr = _mma_layout([4, 2], D // 2)  # dQ partial: [BM, D], D split between warpgroups
        a_kv: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_kv, k_width=2)
        col_l: gl.constexpr = gl.SliceLayout(0, mma_s)  # along queries
        row_l: gl.constexpr = gl.SliceLayout(1, mma_s)  # along keys
        s = i % STAGES
        phase = (i // STAGES) & 1
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
        if MASKED:  # causal diagonal: keep query >= key
            offs_q = n0 + i * BM + gl.arange(0, BM, layout=col_l)
            offs_k = n0 + gl.arange(0, BN, layout=row_l)
            pt = gl.where(offs_q[None, :] >= offs_k[:, None], pt, 0.0)
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
    def _store_dkdv(dk, dv, DK, DV, S, H, sm_scale, BN: gl.constexpr, D: gl.constexpr):
        # Program ids re-read here rather than kept live across the loop.
        n0 = gl.program_id(0) * BN
        h = gl.program_id(1)
        b = gl.program_id(2)
        mma_kv: gl.constexpr = _mma_layout([8, 1], D)
        offs_n = n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, mma_kv))
        offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, mma_kv))
        offs = (b.to(gl.int64) * S * H + h) * D + offs_n.to(gl.int64)[:, None] * (H * D) + offs_d[None, :]
        gl.store(DK + offs, (dk * sm_scale).to(gl.bfloat16))
        gl.store(DV + offs, dv.to(gl.bfloat16))

    # ---------------------------------------------------------------------------------------------------------
    # Warp-specialized variant: three partitions
    # ---------------------------------------------------------------------------------------------------------
    @gluon.jit
    def _ws_compute(descs, smem, bars, DK, DV, b, h, n0, S, H, n_iter, qk_scale, sm_scale,
                    BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
        """Default partition (8 warps): the GEMMs and the elementwise math; dQ partials to dq_s."""
        k_s, v_s, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_s, dq_s = smem
        kv_bar, q_ready, do_ready, stage_empty, dq_ready, dq_empty = bars
        mma_kv: gl.constexpr = _mma_layout([8, 1], D)
        dk = gl.zeros([BN, D], gl.float32, mma_kv)
        dv = gl.zeros([BN, D], gl.float32, mma_kv)
        mbarrier.wait(kv_bar, 0)
        for i in range(n_iter):
            if i * BM < BN:  # the blocks on the causal diagonal
                dk, dv, dq = _bwd_step(i, n0, dk, dv, smem, bars, qk_scale, sm_scale, True, BM, BN, D, STAGES)
            else:
                dk, dv, dq = _bwd_step(i, n0, dk, dv, smem, bars, qk_scale, sm_scale, False, BM, BN, D, STAGES)
            mbarrier.wait(dq_empty, (i & 1) ^ 1)  # the previous reduce-add has read dq_s (fresh barrier: passes)
            dq_s.store(dq)
            fence_async_shared()  # also orders this step's generic reads of lse / delta before their TMA refill
            # One arrive (Triton puts a bar.sync of the 256 threads before it): dq_s is written and this block's
            # GEMMs are done with its Q / dO stage, which the dq writer then hands back to the loader.
            mbarrier.arrive(dq_ready, count=1)
        _store_dkdv(dk, dv, DK, DV, S, H, sm_scale, BN, D)

    @gluon.jit
    def _ws_loader(descs, smem, bars, b, h, n0, S, H, n_iter,
                   BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
        """Worker (1 warp): TMA loads of K, V once, then Q, dO, lse, delta per query block into the ring."""
        q_desc, k_desc, v_desc, do_desc, dq_desc, lse_desc, delta_desc = descs
        k_s, v_s, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_s, dq_s = smem
        kv_bar, q_ready, do_ready, stage_empty, dq_ready, dq_empty = bars
        mbarrier.expect(kv_bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [b * S + n0, h * D], kv_bar, k_s)
        tma.async_copy_global_to_shared(v_desc, [b * S + n0, h * D], kv_bar, v_s)
        for i in range(n_iter):
            s = i % STAGES
            mbarrier.wait(stage_empty.index(s), ((i // STAGES) & 1) ^ 1)  # fresh barriers pass phase 1 at once
            _issue_q_do_loads(descs, smem, bars, s, b, h, n0 + i * BM, S, H, True, D)

    @gluon.jit
    def _ws_dq_writer(descs, smem, bars, b, h, n0, S, H, n_iter,
                      BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
        """Worker (1 warp): TMA reduce-add of each dQ partial from dq_s into the fp32 dq buffer."""
        q_desc, k_desc, v_desc, do_desc, dq_desc, lse_desc, delta_desc = descs
        k_s, v_s, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_s, dq_s = smem
        kv_bar, q_ready, do_ready, stage_empty, dq_ready, dq_empty = bars
        for i in range(n_iter):
            mbarrier.wait(dq_ready, i & 1)
            mbarrier.arrive(stage_empty.index(i % STAGES), count=1)  # block i's GEMMs are done with Q, dO
            _tma_reduce_add(dq_desc, [b * S + n0 + i * BM, h * D], dq_s)
            tma.store_wait(0)
            mbarrier.arrive(dq_empty, count=1)

    # ---------------------------------------------------------------------------------------------------------
    # Plain variant: one partition of 8 warps
    # ---------------------------------------------------------------------------------------------------------
    @gluon.jit
    def _plain_body(descs, smem, bars, DK, DV, b, h, n0, S, H, n_iter, qk_scale, sm_scale,
                    BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
        q_desc, k_desc, v_desc, do_desc, dq_desc, lse_desc, delta_desc = descs
        k_s, v_s, q_bufs, do_bufs, lse_bufs, delta_bufs, ds_s, dq_s = smem
        kv_bar, q_ready, do_ready, stage_empty, dq_ready, dq_empty = bars
        mbarrier.expect(kv_bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [b * S + n0, h * D], kv_bar, k_s)
        tma.async_copy_global_to_shared(v_desc, [b * S + n0, h * D], kv_bar, v_s)
        for st in gl.static_range(STAGES):  # prologue: blocks 0 .. STAGES-1
            _issue_q_do_loads(descs, smem, bars, st, b, h, n0 + st * BM, S, H, st < n_iter, D)
        mma_kv: gl.constexpr = _mma_layout([8, 1], D)
        dk = gl.zeros([BN, D], gl.float32, mma_kv)
        dv = gl.zeros([BN, D], gl.float32, mma_kv)
        mbarrier.wait(kv_bar, 0)
        for i in range(n_iter):
            if i * BM < BN:
                dk, dv, dq = _bwd_step(i, n0, dk, dv, smem, bars, qk_scale, sm_scale, True, BM, BN, D, STAGES)
            else:
                dk, dv, dq = _bwd_step(i, n0, dk, dv, smem, bars, qk_scale, sm_scale, False, BM, BN, D, STAGES)
            tma.store_wait(0)  # the previous reduce-add has read dq_s
            gl.thread_barrier()
            dq_s.store(dq)
            fence_async_shared()  # also orders this step's generic reads of lse / delta before their refill
            gl.thread_barrier()
            _tma_reduce_add(dq_desc, [b * S + n0 + i * BM, h * D], dq_s)
            # Refill the stage just consumed (its GEMMs were waited on) with block i + STAGES.
            j = i + STAGES
            _issue_q_do_loads(descs, smem, bars, i % STAGES, b, h, n0 + j * BM, S, H, j < n_iter, D)
        tma.store_wait(0)
        _store_dkdv(dk, dv, DK, DV, S, H, sm_scale, BN, D)

    # ---------------------------------------------------------------------------------------------------------
    # The kernel: one program per (key block, head, batch)
    # ---------------------------------------------------------------------------------------------------------
    @gluon.jit
    def _attn_bwd_kernel(q_desc, k_desc, v_desc, do_desc, dq_desc, lse_desc, delta_desc, DK, DV,
                         S, H, qk_scale, sm_scale,
                         BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                         WS: gl.constexpr, WORKER_REGS: gl.constexpr):
        pid_n = gl.program_id(0)  # key block 0 has the most query blocks: launched first
        h = gl.program_id(1)
        b = gl.program_id(2)
        n0 = pid_n * BN
        n_iter = (S - n0) // BM  # query blocks from the diagonal to the end

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
                (_ws_compute, (descs, smem, bars, DK, DV, b, h, n0, S, H, n_iter, qk_scale, sm_scale,
                               BM, BN, D, STAGES)),
                (_ws_loader, (descs, smem, bars, b, h, n0, S, H, n_iter, BM, BN, D, STAGES)),
                (_ws_dq_writer, (descs, smem, bars, b, h, n0, S, H, n_iter, BM, BN, D, STAGES)),
            ], [1, 1], [WORKER_REGS, WORKER_REGS])
        else:
            _plain_body(descs, smem, bars, DK, DV, b, h, n0, S, H, n_iter, qk_scale, sm_scale, BM, BN, D, STAGES)

# fmt: on


# --------------------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------------------
def _descriptors(q, k, v, dout, dq_acc, lse, delta):
    bsz, seq, heads, dim = q.shape
    bf16 = gl.bfloat16
    lay_m = gl.NVMMASharedLayout.get_default_for([BLOCK_M, dim], bf16)
    lay_n = gl.NVMMASharedLayout.get_default_for([BLOCK_N, dim], bf16)
    lay_dq = gl.NVMMASharedLayout.get_default_for([BLOCK_M, dim], gl.float32)
    lay_vec = gl.NVMMASharedLayout.get_default_for([BLOCK_M], gl.float32)
    two_d = lambda t: t.view(bsz * seq, heads * dim)
    return (
        TensorDescriptor.from_tensor(two_d(q), [BLOCK_M, dim], lay_m),
        TensorDescriptor.from_tensor(two_d(k), [BLOCK_N, dim], lay_n),
        TensorDescriptor.from_tensor(two_d(v), [BLOCK_N, dim], lay_n),
        TensorDescriptor.from_tensor(two_d(dout), [BLOCK_M, dim], lay_m),
        TensorDescriptor.from_tensor(two_d(dq_acc), [BLOCK_M, dim], lay_dq),
        TensorDescriptor.from_tensor(lse.view(-1), [BLOCK_M], lay_vec),
        TensorDescriptor.from_tensor(delta.view(-1), [BLOCK_M], lay_vec),
    )


def _launch_options(variant):
    if variant == "ws":
        return {"num_warps": 8, "maxnreg": WS_MAXNREG}
    return {"num_warps": 8}


LAST_COMPILED = {}  # variant -> compiled kernel of the latest launch


def gluon_attention_backward(q, k, v, out, dout, lse, softmax_scale, variant="ws", delta=None, stages=STAGES):
    """dq, dk, dv of causal attention. q, k, v, out, dout [b, s, h, 128] bf16 contiguous; lse [b, h, s] fp32 in
    log2 units (our Triton forward's). delta = rowsum(out * dout) [b, h, s] is computed if not given."""
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"Gluon unavailable: {_IMPORT_ERROR}")
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} not in {VARIANTS}")
    bsz, seq, heads, dim = q.shape
    if dim != HEAD_DIM or seq % BLOCK_N or k.shape != q.shape or v.shape != q.shape or q.dtype != torch.bfloat16:
        raise ValueError(f"prototype supports bf16 [b, s, h, 128], s % 128 == 0, no GQA; got {tuple(q.shape)}")
    q, k, v, dout = (t.contiguous() for t in (q, k, v, dout))
    lse = lse.contiguous()
    if delta is None:
        delta = compute_delta(out, dout)
    dq_acc = torch.zeros(bsz, seq, heads, dim, dtype=torch.float32, device=q.device)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    descs = _descriptors(q, k, v, dout, dq_acc, lse, delta)
    grid = (seq // BLOCK_N, heads, bsz)
    LAST_COMPILED[variant] = _attn_bwd_kernel[grid](
        *descs,
        dk,
        dv,
        seq,
        heads,
        softmax_scale * LOG2E,
        softmax_scale,
        BLOCK_M,
        BLOCK_N,
        dim,
        stages,
        variant == "ws",
        WS_WORKER_REGS,
        **_launch_options(variant),
    )
    return dq_acc.to(q.dtype), dk, dv


def compute_delta(out, dout):
    """delta = rowsum(out * dout), [b, h, s] fp32, with our library's Triton kernel."""
    sys.path.insert(0, _repo_root())
    from megatron.model import flash_attn_triton as fat

    bsz, seq, heads, dim = out.shape
    delta = torch.empty(bsz, heads, seq, dtype=torch.float32, device=out.device)
    fat._bwd_delta_kernel[(triton.cdiv(seq, 128), bsz * heads)](
        out,
        dout,
        delta,
        out.stride(0),
        out.stride(1),
        out.stride(2),
        dout.stride(0),
        dout.stride(1),
        dout.stride(2),
        seq,
        heads,
        BLOCK_M=128,
        HEAD_DIM=dim,
    )
    return delta


def _repo_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


# --------------------------------------------------------------------------------------------------------------
# Offline screen (no GPU): compile each variant for sm_90, report registers, spills, shared memory, wgmma, setmaxnreg
# --------------------------------------------------------------------------------------------------------------
def compile_offline(variant, stages=STAGES, arch=90):
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import mangle_type

    sys.path.insert(0, _repo_root())
    from bench.kernel_resources import _ptxas_report, mma_counts

    bsz, seq, heads = 1, 1024, 2
    mk = lambda *shape, dt=torch.bfloat16: torch.empty(*shape, dtype=dt)
    q = mk(bsz, seq, heads, HEAD_DIM)
    descs = _descriptors(
        q,
        q,
        q,
        q,
        mk(bsz, seq, heads, HEAD_DIM, dt=torch.float32),
        mk(bsz, heads, seq, dt=torch.float32),
        mk(bsz, heads, seq, dt=torch.float32),
    )
    fn = _attn_bwd_kernel
    names = fn.arg_names
    sig = {}
    for i, n in enumerate(names[:7]):
        sig[n] = mangle_type(descs[i])
    sig.update({"DK": "*bf16", "DV": "*bf16", "S": "i32", "H": "i32", "qk_scale": "fp32", "sm_scale": "fp32"})
    constexprs = {
        "BM": BLOCK_M,
        "BN": BLOCK_N,
        "D": HEAD_DIM,
        "STAGES": stages,
        "WS": variant == "ws",
        "WORKER_REGS": WS_WORKER_REGS,
    }
    for n in constexprs:
        sig[n] = "constexpr"
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ("DK", "DV", "S", "H")}
    src = gluon._runtime.GluonASTSource(
        fn, sig, constexprs={(names.index(k),): v for k, v in constexprs.items()}, attrs=attrs
    )
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=_launch_options(variant))
    ptx = compiled.asm["ptx"]
    from triton.backends.nvidia.compiler import get_ptxas

    rep = _ptxas_report(get_ptxas(arch).path, ptx, arch)
    rep.update(_sass_local_memory(compiled.asm.get("cubin"), get_ptxas(arch).path))
    return {
        "variant": variant,
        "tile": {"BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "HEAD_DIM": HEAD_DIM, "STAGES": stages},
        "options": _launch_options(variant),
        **rep,
        "shared_bytes": compiled.metadata.shared,
        **mma_counts(ptx),
        "setmaxnreg": sorted(set(re.findall(r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+)", ptx))),
        "tma_reduce_in_ptx": len(re.findall(r"cp\.reduce\.async\.bulk\.tensor", ptx)),
        "tma_load_in_ptx": len(re.findall(r"cp\.async\.bulk\.tensor", ptx)),
        "bar_sync_in_ptx": len(re.findall(r"\bbar\.sync|barrier\.sync", ptx)),
        "num_warps_total": compiled.metadata.num_warps,
    }, compiled


def _sass_local_memory(cubin, ptxas_path):
    """Local-memory (spill) instructions in the SASS, from the nvdisasm next to Triton's ptxas: how many, and how
    many of them sit inside a loop (between a label and a later conditional backward branch to it; the
    unconditional jumps back from out-of-line mbarrier spin-waits are not loops)."""
    import subprocess
    import tempfile

    nvdisasm = os.path.join(os.path.dirname(ptxas_path), "nvdisasm")
    if not cubin or not os.path.exists(nvdisasm):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([nvdisasm, "-c", f.name], check=True, capture_output=True, text=True).stdout
    lines = sass.splitlines()
    labels = {m[1]: i for i, line in enumerate(lines) if (m := re.match(r"^\.(L_x_\d+):", line.strip()))}
    loops = [
        (labels[m[1]], i)
        for i, line in enumerate(lines)
        if (m := re.search(r"@!?U?P\w+\s+BRA `\(\.(L_x_\d+)\)", line)) and labels.get(m[1], i + 1) < i
    ]
    local = [i for i, line in enumerate(lines) if re.search(r"\b(LDL|STL)\b", line)]
    # Spin-wait loops on mbarriers are loops too, but hold no local-memory instructions.
    in_loop = [i for i in local if any(a <= i <= b for a, b in loops)]
    return {"sass_local_memory_instructions": len(local), "sass_local_memory_instructions_in_loops": len(in_loop)}


def screen(out_path, stages_list=(STAGES, 3)):
    report = {
        "triton": triton.__version__ if _IMPORT_ERROR is None else None,
        "arch": 90,
        "command": " ".join(["python", *sys.argv]),
        "note": "registers: ptxas -v of the whole kernel; for ws that is the launch-level count (= maxnreg), and the "
        "default partition raises itself to setmaxnreg.inc's value. sass_local_memory_*: LDL/STL in the SASS.",
        "variants": [],
    }
    if _IMPORT_ERROR is not None:
        report["error"] = repr(_IMPORT_ERROR)
    for variant in VARIANTS if _IMPORT_ERROR is None else ():
        for stages in stages_list:
            try:
                row, _ = compile_offline(variant, stages)
            except Exception as e:  # noqa: BLE001 (reported, and the screen goes on to the next one)
                row = {"variant": variant, "stages": stages, "error": f"{type(e).__name__}: {str(e)[-3000:]}"}
            row["default"] = stages == STAGES
            report["variants"].append(row)
            print(json.dumps(row), flush=True)
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {out_path}")
    return report


def jit_path_check():
    """Compile (not run) both variants through the real call path, gluon_attention_backward -> JIT launch, with a
    stub driver for an sm_90 target: catches argument, specialization and option mistakes without a GPU."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    class _StubDriver:
        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    previous = driver._active  # reset_active() would build the real driver, which needs a GPU
    driver.set_active(_StubDriver())
    run = JITFunction.run
    seen = []

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        seen.append((grid, kernel.metadata.shared, kernel.metadata.num_warps))
        return kernel

    JITFunction.run = compile_only
    try:
        bsz, seq, heads = 2, 512, 3
        q, k, v, o, do = (torch.randn(bsz, seq, heads, HEAD_DIM).bfloat16() for _ in range(5))
        lse, delta = torch.randn(bsz, heads, seq), torch.randn(bsz, heads, seq)
        for variant in VARIANTS:
            for stages in (STAGES, 3):
                gluon_attention_backward(q, k, v, o, do, lse, 0.088, variant=variant, delta=delta, stages=stages)
                grid, shared, warps = seen[-1]
                print(f"jit path {variant} stages={stages}: grid {grid}, shared {shared} B, {warps} warps", flush=True)
    finally:
        JITFunction.run = run
        driver._active = previous


# --------------------------------------------------------------------------------------------------------------
# CPU emulation of the kernel's block loop in fp64 (the math only: same block order, masks, log2 lse, scaling)
# --------------------------------------------------------------------------------------------------------------
def emulate_backward(q, k, v, dout, lse2, delta, scale, bm=BLOCK_M, bn=BLOCK_N):
    """q, k, v, dout [b, s, h, d]; lse2 [b, h, s] in log2 units; returns dq, dk, dv as the kernel computes them."""
    bsz, seq, heads, dim = q.shape
    qk_scale = scale * LOG2E
    dq = torch.zeros_like(q)
    dk = torch.zeros_like(k)
    dv = torch.zeros_like(v)
    for b in range(bsz):
        for h in range(heads):
            for n0 in range(0, seq, bn):  # one program
                kb, vb = k[b, n0 : n0 + bn, h], v[b, n0 : n0 + bn, h]
                dkb = torch.zeros_like(kb)
                dvb = torch.zeros_like(vb)
                for i in range((seq - n0) // bm):
                    m0 = n0 + i * bm
                    qb, dob = q[b, m0 : m0 + bm, h], dout[b, m0 : m0 + bm, h]
                    st = kb @ qb.T  # [bn, bm]
                    pt = torch.exp2(st * qk_scale - lse2[b, h, m0 : m0 + bm][None, :])
                    if i * bm < bn:
                        keep = torch.arange(m0, m0 + bm)[None, :] >= torch.arange(n0, n0 + bn)[:, None]
                        pt = torch.where(keep, pt, torch.zeros_like(pt))
                    dvb += pt @ dob
                    dpt = vb @ dob.T
                    dst = pt * (dpt - delta[b, h, m0 : m0 + bm][None, :])
                    dkb += dst @ qb
                    dq[b, m0 : m0 + bm, h] += (dst.T @ kb) * scale
                dk[b, n0 : n0 + bn, h] = dkb * scale
                dv[b, n0 : n0 + bn, h] = dvb
    return dq, dk, dv


def emulate_check():
    torch.manual_seed(0)
    ok = True
    for bsz, seq, heads, dim in [(1, 128, 2, 32), (2, 256, 2, 16), (1, 384, 1, 8)]:
        q, k, v = (torch.randn(bsz, seq, heads, dim, dtype=torch.float64, requires_grad=True) for _ in range(3))
        dout = torch.randn(bsz, seq, heads, dim, dtype=torch.float64)
        scale = 1.0 / math.sqrt(dim)
        s = torch.einsum("bmhd,bnhd->bhmn", q, k) * scale
        mask = torch.ones(seq, seq, dtype=torch.bool).tril()
        s = s.masked_fill(~mask, float("-inf"))
        p = torch.softmax(s, dim=-1)
        out = torch.einsum("bhmn,bnhd->bmhd", p, v)
        out.backward(dout)
        lse2 = torch.logsumexp(s, dim=-1) * LOG2E  # log2 units, as our forward saves it
        delta = (out * dout).sum(-1).permute(0, 2, 1).contiguous()
        with torch.no_grad():
            got = emulate_backward(q.detach(), k.detach(), v.detach(), dout, lse2.detach(), delta.detach(), scale)
        for name, g, ref in zip(("dq", "dk", "dv"), got, (q.grad, k.grad, v.grad)):
            err = ((g - ref).norm() / ref.norm()).item()
            ok &= err < 1e-10
            print(f"emulate b={bsz} s={seq} h={heads} d={dim} {name}: rel err {err:.2e}", flush=True)
    print("emulation", "PASSED" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--screen", action="store_true", help="compile each variant offline for sm_90")
    p.add_argument("--emulate", action="store_true", help="CPU fp64 check of the block loop math")
    p.add_argument("--jit-path", action="store_true", help="compile through the real launch path (stub driver)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "sm90_screen.json"))
    a = p.parse_args()
    if a.emulate:
        emulate_check()
    if a.screen:
        screen(a.out)
    if a.jit_path:
        jit_path_check()
