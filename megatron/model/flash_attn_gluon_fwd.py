"""A warp-specialized FlashAttention forward for Hopper (sm_90) in Triton 3.6's Gluon dialect. Used by
`flash_attn_triton` when `unsupported_reason` is None (causal, bf16, head dim 128, no GQA, no documents,
sequence a multiple of 128, an sm_90 GPU, Triton 3.6); everything else takes the Triton forward.
Written as a prototype in docs/benchmarks/attention_gluon/fwd/ (measurements there).

Same outputs as our Triton forward (megatron/model/flash_attn_triton.py `_fwd_kernel`): out bf16 [b, s, h, d] and
lse fp32 [b, h, s] in log2 units, lse = m + log2(l) with m the running max of q.k * softmax_scale*log2(e), so that
p = exp2(q.k * softmax_scale*log2(e) - lse) (what our fused backward, flash_attn_gluon.backward, consumes).

One program per (query block of BLOCK_M = 128 rows, head, batch); grid (b*h, s/128) with the query block reversed
along grid axis 1, so every head's heaviest (last) causal block is launched before any lighter one.
Per key block (BLOCK_N = 128 keys, or 64): S = Q K^T (wgmma, A = Q smem, B = K^T smem view), online softmax in exp2
(registers), O += P V (wgmma, A = P bf16 in registers, B = V smem); the accumulators stay in registers.
Partitions (gl.warp_specialize), variant "split" (the default, FA3-like):
  default  (4 warps = consumer warpgroup 0, 240 registers): query rows [m0, m0 + 64)
  worker 0 (4 warps = consumer warpgroup 1, 240 registers): query rows [m0 + 64, m0 + 128)
  worker 1 (1 warp, 24 registers): TMA loads of Q once, then K and V blocks into a STAGES-deep ring
           (k_ready / v_ready per stage, completed by the TMA; kv_empty per stage, one arrive per consumer)
  Each consumer warpgroup is its own partition, so its mbarrier arrives sync only its own 128 threads
  (bar.sync 0/2, 128): neither warpgroup waits for the other.
Variants (VARIANTS: OVERLAP, SPLIT, PINGPONG):
  "split"        the above, with intra-warpgroup pipelining (OVERLAP, FA3): in iteration j the S GEMM of block j and
                 the P V GEMM of block j-1 are in flight together; the softmax of block j runs while P_{j-1} V_{j-1}
                 still executes; then O is rescaled and block j-1's K, V stage handed back.
  "split_pp"     "split" + ping-pong: the two warpgroups take turns issuing their GEMMs (two mbarriers, `turn`), so
                 one's softmax overlaps the other's GEMMs.
  "split_simple" "split" without the pipelining: S GEMM, wait, softmax, P V GEMM, wait.
  "overlap"      one default partition of 8 warps (the wgmma layout gives each warpgroup 64 rows) + the loader warp;
                 pipelined; its per-stage arrive syncs all 256 consumer threads (the warpgroups run in lockstep).
  "simple"       as "overlap", unpipelined.
Key-block order: the diagonal block(s) first (ascending, so the first block holds key m0, which every row of the
block sees: the running max is finite from block 0 on), then the rest descending. Only the BLOCK_M / BLOCK_N
diagonal blocks apply the causal mask; they are peeled off the runtime loop (static_range), so the loop has one body
and no masked/unmasked branch (the pattern ptxas 12.8 miscompiled in a 2-stage build of the backward,
docs/benchmarks/attention_gluon/README.md).
The K / V ring is 3 deep (4 at BLOCK_N = 64), never 2.
"""

# ruff: noqa: RUF059  (each partition unpacks the shared buffer / barrier tuples whole)
import torch

from megatron.model import flash_attn_gluon as _bwd  # shared: the guarded Gluon imports, the environment check

LOG2E = 1.4426950408889634
# variant -> (OVERLAP, SPLIT, PINGPONG). SPLIT: the two consumer warpgroups are two partitions of 4 warps (each with
# its own mbarrier arrives, so neither waits for the other); else one default partition of 8 warps. PINGPONG (SPLIT
# only): the warpgroups take turns issuing their GEMMs (two mbarriers), so one's softmax overlaps the other's GEMMs.
VARIANTS = {
    "split": (True, True, False),
    "split_pp": (True, True, True),
    "split_simple": (False, True, False),
    "overlap": (True, False, False),
    "simple": (False, False, False),
}
BLOCK_M = 128  # query rows per program (64 per consumer warpgroup)
BLOCK_N = 128  # keys per ring stage (64 also supported)
HEAD_DIM = 128
DEFAULT_VARIANT = "split"
STAGES = 3  # depth of the K / V ring (not 2: see the module docstring of megatron/model/flash_attn_gluon.py)
WORKER_REGS = 24
CONSUMER_REGS = 240  # the second consumer warpgroup (SPLIT)
MAXNREG = 168  # 12 warps * 32 * 168 <= 64K registers; the consumer warpgroups get 240 each, the loader's 24

_IMPORT_ERROR = _bwd._IMPORT_ERROR  # the same guarded Gluon imports as the backward's
if _IMPORT_ERROR is None:
    from megatron.model.flash_attn_gluon import (
        TensorDescriptor,
        fence_async_shared,
        gl,
        gluon,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )


# fmt: off
if _IMPORT_ERROR is None:

    @gluon.constexpr_function
    def _mma_layout(n, warps):
        """wgmma accumulator layout: warps [warps, 1] (with 8 warps the two warpgroups split the rows)."""
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[warps, 1], instr_shape=[16, n, 16])

    # Shared tuples handed to every partition (all partitions take the same arguments):
    #   descs = (q_desc, k_desc, v_desc)
    #   smem  = (q_bufs, k_bufs, v_bufs)                   (q_bufs: NQ = 1 or 2 row halves; k/v: STAGES-deep rings)
    #   bars  = (q_bar, k_ready, v_ready, kv_empty, turn)  (per stage but q_bar; turn: one per consumer warpgroup)

    @gluon.jit
    def _key_block(j, m0, BM: gl.constexpr, BN: gl.constexpr):
        """Index of the j-th key block processed: the BM/BN diagonal blocks ascending, then the rest descending."""
        ND: gl.constexpr = BM // BN
        kb0 = m0 // BN
        return gl.where(j < ND, kb0 + j, kb0 + ND - 1 - j)

    @gluon.jit
    def _loader(descs, smem, bars, O, LSE, b, h, m0, n_blocks, S, H, qk_scale,
                OVERLAP: gl.constexpr, SPLIT: gl.constexpr, PINGPONG: gl.constexpr,
                BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
        """Worker (1 warp): Q once, then K and V of each key block into the ring."""
        q_desc, k_desc, v_desc = descs
        q_bufs, k_bufs, v_bufs = smem
        q_bar, k_ready, v_ready, kv_empty, turn = bars
        NQ: gl.constexpr = 2 if SPLIT else 1
        mbarrier.expect(q_bar, NQ * q_desc.block_type.nbytes)
        for i in gl.static_range(NQ):
            tma.async_copy_global_to_shared(q_desc, [b * S + m0 + i * (BM // NQ), h * D], q_bar, q_bufs.index(i))
        for j in range(n_blocks):
            s = j % STAGES
            mbarrier.wait(kv_empty.index(s), ((j // STAGES) & 1) ^ 1)  # fresh barriers pass phase 1 at once
            row = b * S + _key_block(j, m0, BM, BN) * BN
            mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [row, h * D], k_ready.index(s), k_bufs.index(s))
            mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [row, h * D], v_ready.index(s), v_bufs.index(s))

    @gluon.jit
    def _softmax(s_acc, m_i, l_i, j, m0, row0, qk_scale, MASKED: gl.constexpr,
                 ROWS: gl.constexpr, WARPS: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr):
        """Online softmax of one block of scores (fp32, mma layout). Returns p (fp32), the new m and l, alpha."""
        mma_s: gl.constexpr = _mma_layout(BN, WARPS)
        if MASKED:  # diagonal block: keep key <= query
            offs_m = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, mma_s))
            offs_n = (m0 // BN + j) * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, mma_s))  # j < BM/BN here
            s_acc = gl.where(offs_m[:, None] >= offs_n[None, :], s_acc, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s_acc, axis=1) * qk_scale)  # finite: block 0 holds key m0 for every row
        p = gl.exp2(s_acc * qk_scale - m_new[:, None])
        alpha = gl.exp2(m_i - m_new)
        l_i = l_i * alpha + gl.sum(p, axis=1)
        return p, m_new, l_i, alpha

    @gluon.jit
    def _turn_wait(turn, k, WG: gl.constexpr, PINGPONG: gl.constexpr):
        """Ping-pong: wait for this warpgroup's k-th turn to issue GEMMs (warpgroup 0's first turn is free)."""
        if PINGPONG:
            mbarrier.wait(turn.index(WG), (k & 1) ^ (1 - WG))

    @gluon.jit
    def _turn_pass(turn, WG: gl.constexpr, PINGPONG: gl.constexpr):
        """Ping-pong: this warpgroup's GEMMs are issued; the other warpgroup's turn."""
        if PINGPONG:
            mbarrier.arrive(turn.index(1 - WG), count=1)

    @gluon.jit
    def _overlap_step(j, acc, p_op, m_i, l_i, q_s, smem, bars, m0, row0, qk_scale, MASKED: gl.constexpr,
                      WG: gl.constexpr, PINGPONG: gl.constexpr, ROWS: gl.constexpr, WARPS: gl.constexpr,
                      BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
        """Key block j (j >= 1), pipelined: S_j = Q K_j^T and O += P_{j-1} V_{j-1} in flight together; the softmax
        of S_j runs under the second; then O is rescaled and K_{j-1}, V_{j-1} handed back to the loader."""
        q_bufs, k_bufs, v_bufs = smem
        q_bar, k_ready, v_ready, kv_empty, turn = bars
        mma_s: gl.constexpr = _mma_layout(BN, WARPS)
        mma_o: gl.constexpr = _mma_layout(D, WARPS)
        a_o: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_o, k_width=2)
        s = j % STAGES
        sp = (j - 1) % STAGES  # stage of block j-1
        mbarrier.wait(k_ready.index(s), (j // STAGES) & 1)
        mbarrier.wait(v_ready.index(sp), ((j - 1) // STAGES) & 1)
        _turn_wait(turn, j, WG, PINGPONG)
        s_acc = warpgroup_mma(q_s, k_bufs.index(s).permute((1, 0)), gl.zeros([ROWS, BN], gl.float32, mma_s),
                              use_acc=False, is_async=True)
        acc = warpgroup_mma(p_op, v_bufs.index(sp), acc, is_async=True)
        _turn_pass(turn, WG, PINGPONG)
        s_acc = warpgroup_mma_wait(num_outstanding=1, deps=(s_acc,))  # S_j done; P_{j-1} V_{j-1} running
        p, m_i, l_i, alpha = _softmax(s_acc, m_i, l_i, j, m0, row0, qk_scale, MASKED, ROWS, WARPS, BM, BN)
        acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))
        mbarrier.arrive(kv_empty.index(sp), count=1)  # block j-1's K and V are no longer read
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, mma_o))[:, None]
        p_op = gl.convert_layout(p.to(gl.bfloat16), a_o)
        return acc, p_op, m_i, l_i

    @gluon.jit
    def _simple_step(j, acc, m_i, l_i, q_s, smem, bars, m0, row0, qk_scale, MASKED: gl.constexpr,
                     ROWS: gl.constexpr, WARPS: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr,
                     STAGES: gl.constexpr):
        """Key block j, unpipelined: S GEMM, wait, softmax, P V GEMM, wait."""
        q_bufs, k_bufs, v_bufs = smem
        q_bar, k_ready, v_ready, kv_empty, turn = bars
        mma_s: gl.constexpr = _mma_layout(BN, WARPS)
        mma_o: gl.constexpr = _mma_layout(D, WARPS)
        a_o: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_o, k_width=2)
        s = j % STAGES
        ph = (j // STAGES) & 1
        mbarrier.wait(k_ready.index(s), ph)
        s_acc = warpgroup_mma(q_s, k_bufs.index(s).permute((1, 0)), gl.zeros([ROWS, BN], gl.float32, mma_s),
                              use_acc=False, is_async=True)
        s_acc = warpgroup_mma_wait(num_outstanding=0, deps=(s_acc,))
        p, m_i, l_i, alpha = _softmax(s_acc, m_i, l_i, j, m0, row0, qk_scale, MASKED, ROWS, WARPS, BM, BN)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, mma_o))[:, None]
        p_op = gl.convert_layout(p.to(gl.bfloat16), a_o)
        mbarrier.wait(v_ready.index(s), ph)
        acc = warpgroup_mma(p_op, v_bufs.index(s), acc, is_async=True)
        acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))
        mbarrier.arrive(kv_empty.index(s), count=1)
        return acc, m_i, l_i

    @gluon.jit
    def _consume(q_s, smem, bars, O, LSE, b, h, m0, row0, n_blocks, S, H, qk_scale, OVERLAP: gl.constexpr,
                 WG: gl.constexpr, PINGPONG: gl.constexpr, ROWS: gl.constexpr, WARPS: gl.constexpr,
                 BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
        """Query rows [row0, row0 + ROWS) of this program over WARPS warps: the GEMMs and the online softmax;
        writes out and lse of those rows."""
        q_bufs, k_bufs, v_bufs = smem
        q_bar, k_ready, v_ready, kv_empty, turn = bars
        ND: gl.constexpr = BM // BN
        mma_s: gl.constexpr = _mma_layout(BN, WARPS)
        mma_o: gl.constexpr = _mma_layout(D, WARPS)
        a_o: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_o, k_width=2)
        row_s: gl.constexpr = gl.SliceLayout(1, mma_s)
        row_o: gl.constexpr = gl.SliceLayout(1, mma_o)
        m_i = gl.full([ROWS], float("-inf"), gl.float32, row_s)
        l_i = gl.zeros([ROWS], gl.float32, row_s)
        acc = gl.zeros([ROWS, D], gl.float32, mma_o)
        zero_s = gl.zeros([ROWS, BN], gl.float32, mma_s)
        mbarrier.wait(q_bar, 0)
        # The ND = BM/BN diagonal blocks (masked) are peeled off the runtime loop: one loop body, no branch in it
        # (a masked/unmasked branch inside the loop is what ptxas 12.8 miscompiled in our backward).
        if OVERLAP:
            # Block 0 (diagonal): S, softmax -> P_0 (kept in registers for the next iteration's P V GEMM).
            mbarrier.wait(k_ready.index(0), 0)
            _turn_wait(turn, 0, WG, PINGPONG)
            s_acc = warpgroup_mma(q_s, k_bufs.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
            _turn_pass(turn, WG, PINGPONG)
            s_acc = warpgroup_mma_wait(num_outstanding=0, deps=(s_acc,))
            p, m_i, l_i, alpha = _softmax(s_acc, m_i, l_i, 0, m0, row0, qk_scale, True, ROWS, WARPS, BM, BN)
            p_op = gl.convert_layout(p.to(gl.bfloat16), a_o)
            for jd in gl.static_range(1, ND):  # the other diagonal blocks (BN < BM)
                acc, p_op, m_i, l_i = _overlap_step(jd, acc, p_op, m_i, l_i, q_s, smem, bars, m0, row0, qk_scale,
                                                    True, WG, PINGPONG, ROWS, WARPS, BM, BN, D, STAGES)
            for j in range(ND, n_blocks):
                acc, p_op, m_i, l_i = _overlap_step(j, acc, p_op, m_i, l_i, q_s, smem, bars, m0, row0, qk_scale,
                                                    False, WG, PINGPONG, ROWS, WARPS, BM, BN, D, STAGES)
            sl = (n_blocks - 1) % STAGES
            mbarrier.wait(v_ready.index(sl), ((n_blocks - 1) // STAGES) & 1)
            _turn_wait(turn, n_blocks, WG, PINGPONG)
            acc = warpgroup_mma(p_op, v_bufs.index(sl), acc, is_async=True)
            _turn_pass(turn, WG, PINGPONG)
            acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))
            mbarrier.arrive(kv_empty.index(sl), count=1)
        else:
            for jd in gl.static_range(ND):
                acc, m_i, l_i = _simple_step(jd, acc, m_i, l_i, q_s, smem, bars, m0, row0, qk_scale, True,
                                             ROWS, WARPS, BM, BN, D, STAGES)
            for j in range(ND, n_blocks):
                acc, m_i, l_i = _simple_step(j, acc, m_i, l_i, q_s, smem, bars, m0, row0, qk_scale, False,
                                             ROWS, WARPS, BM, BN, D, STAGES)
        # Epilogue: out = O / l (bf16, [b, s, h, d]); lse = m + log2(l) (log2 units, [b, h, s]).
        l_o = gl.convert_layout(l_i, row_o)
        out = (acc / l_o[:, None]).to(gl.bfloat16)
        offs_m = row0 + gl.arange(0, ROWS, layout=row_o)
        offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, mma_o))
        o_offs = (b.to(gl.int64) * S * H + h) * D + offs_m.to(gl.int64)[:, None] * (H * D) + offs_d[None, :]
        gl.store(O + o_offs, out)
        offs_ms = row0 + gl.arange(0, ROWS, layout=row_s)
        gl.store(LSE + (b.to(gl.int64) * H + h) * S + offs_ms, m_i + gl.log2(l_i))

    @gluon.jit
    def _consumer_default(descs, smem, bars, O, LSE, b, h, m0, n_blocks, S, H, qk_scale,
                          OVERLAP: gl.constexpr, SPLIT: gl.constexpr, PINGPONG: gl.constexpr,
                          BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
        """Default partition. SPLIT: 4 warps, query rows [m0, m0 + BM/2); else 8 warps, all BM rows (the mma
        layout gives each warpgroup 64 of them)."""
        q_bufs, k_bufs, v_bufs = smem
        if SPLIT:
            _consume(q_bufs.index(0), smem, bars, O, LSE, b, h, m0, m0, n_blocks, S, H, qk_scale, OVERLAP,
                     0, PINGPONG, BM // 2, 4, BM, BN, D, STAGES)
        else:
            _consume(q_bufs.index(0), smem, bars, O, LSE, b, h, m0, m0, n_blocks, S, H, qk_scale, OVERLAP,
                     0, False, BM, 8, BM, BN, D, STAGES)

    @gluon.jit
    def _consumer_worker(descs, smem, bars, O, LSE, b, h, m0, n_blocks, S, H, qk_scale,
                         OVERLAP: gl.constexpr, SPLIT: gl.constexpr, PINGPONG: gl.constexpr,
                         BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
        """Worker (4 warps, SPLIT only): the second consumer warpgroup, query rows [m0 + BM/2, m0 + BM)."""
        q_bufs, k_bufs, v_bufs = smem
        _consume(q_bufs.index(1), smem, bars, O, LSE, b, h, m0, m0 + BM // 2, n_blocks, S, H, qk_scale, OVERLAP,
                 1, PINGPONG, BM // 2, 4, BM, BN, D, STAGES)

    @gluon.jit
    def _attn_fwd_kernel(q_desc, k_desc, v_desc, O, LSE, S, H, qk_scale,
                         BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                         OVERLAP: gl.constexpr, SPLIT: gl.constexpr, PINGPONG: gl.constexpr,
                         WORKER_REGS: gl.constexpr, CONSUMER_REGS: gl.constexpr):
        pid_bh = gl.program_id(0)
        pid_m = gl.num_programs(1) - 1 - gl.program_id(1)  # heaviest causal query blocks first, all heads
        b = pid_bh // H
        h = pid_bh % H
        m0 = pid_m * BM
        n_blocks = (m0 + BM) // BN  # key blocks 0 .. diagonal

        NQ: gl.constexpr = 2 if SPLIT else 1
        q_bufs = gl.allocate_shared_memory(gl.bfloat16, [NQ, BM // NQ, D], q_desc.layout)
        k_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BN, D], k_desc.layout)
        v_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BN, D], v_desc.layout)
        bar_l: gl.constexpr = mbarrier.MBarrierLayout()
        q_bar = gl.allocate_shared_memory(gl.int64, [1], bar_l)
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_l)
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_l)
        kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_l)
        turn = gl.allocate_shared_memory(gl.int64, [2, 1], bar_l)
        mbarrier.init(q_bar, count=1)
        mbarrier.init(turn.index(0), count=1)
        mbarrier.init(turn.index(1), count=1)
        for st in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(st), count=1)
            mbarrier.init(v_ready.index(st), count=1)
            mbarrier.init(kv_empty.index(st), count=NQ)  # one arrive per consumer partition
        fence_async_shared()

        descs = (q_desc, k_desc, v_desc)
        smem = (q_bufs, k_bufs, v_bufs)
        bars = (q_bar, k_ready, v_ready, kv_empty, turn)
        # (argument tuples written out in the call: a tuple variable would turn the constexprs into tensors)
        if SPLIT:
            gl.warp_specialize([
                (_consumer_default, (descs, smem, bars, O, LSE, b, h, m0, n_blocks, S, H, qk_scale,
                                     OVERLAP, SPLIT, PINGPONG, BM, BN, D, STAGES)),
                (_consumer_worker, (descs, smem, bars, O, LSE, b, h, m0, n_blocks, S, H, qk_scale,
                                    OVERLAP, SPLIT, PINGPONG, BM, BN, D, STAGES)),
                (_loader, (descs, smem, bars, O, LSE, b, h, m0, n_blocks, S, H, qk_scale,
                           OVERLAP, SPLIT, PINGPONG, BM, BN, D, STAGES)),
            ], [4, 1], [CONSUMER_REGS, WORKER_REGS])
        else:
            gl.warp_specialize([
                (_consumer_default, (descs, smem, bars, O, LSE, b, h, m0, n_blocks, S, H, qk_scale,
                                     OVERLAP, SPLIT, PINGPONG, BM, BN, D, STAGES)),
                (_loader, (descs, smem, bars, O, LSE, b, h, m0, n_blocks, S, H, qk_scale,
                           OVERLAP, SPLIT, PINGPONG, BM, BN, D, STAGES)),
            ], [1], [WORKER_REGS])

# fmt: on


# --------------------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------------------
def _descriptors(q, k, v, block_n, split):
    bsz, seq, heads, dim = q.shape
    q_rows = BLOCK_M // 2 if split else BLOCK_M
    lay_m = gl.NVMMASharedLayout.get_default_for([q_rows, dim], gl.bfloat16)
    lay_n = gl.NVMMASharedLayout.get_default_for([block_n, dim], gl.bfloat16)
    two_d = lambda t: t.view(bsz * seq, heads * dim)
    return (
        TensorDescriptor.from_tensor(two_d(q), [q_rows, dim], lay_m),
        TensorDescriptor.from_tensor(two_d(k), [block_n, dim], lay_n),
        TensorDescriptor.from_tensor(two_d(v), [block_n, dim], lay_n),
    )


def _launch_options(variant):
    return {"num_warps": 4 if VARIANTS[variant][1] else 8, "maxnreg": MAXNREG}


LAST_COMPILED = {}  # variant -> compiled kernel of the latest launch


def unsupported_reason(q, k, causal: bool, has_doc: bool):
    """None when this forward can run on these inputs, else why not (one short phrase)."""
    if not causal:
        return "not causal"
    if has_doc:
        return "document masks"
    if q.dtype != torch.bfloat16:
        return f"{q.dtype} (bf16 only)"
    if q.shape[-1] != HEAD_DIM:
        return f"head dim {q.shape[-1]} (128 only)"
    if k.shape[2] != q.shape[2]:
        return "grouped-query attention"
    if q.shape[1] % BLOCK_M:
        return f"sequence {q.shape[1]} not a multiple of {BLOCK_M}"
    return _bwd.environment_reason(q.device)


def forward(q, k, v, softmax_scale, variant=DEFAULT_VARIANT, block_n=BLOCK_N, stages=STAGES):
    """Causal attention forward. q, k, v [b, s, h, 128] bf16; returns out [b, s, h, 128] bf16 and lse [b, h, s]
    fp32 in log2 units (as the Triton forward saves it). Check `unsupported_reason` first."""
    bsz, seq, heads, dim = q.shape
    q, k, v = (t.contiguous() for t in (q, k, v))
    out = torch.empty_like(q)
    lse = torch.empty(bsz, heads, seq, dtype=torch.float32, device=q.device)
    overlap, split, pingpong = VARIANTS[variant]
    descs = _descriptors(q, k, v, block_n, split)
    grid = (bsz * heads, seq // BLOCK_M)
    LAST_COMPILED[variant] = _attn_fwd_kernel[grid](
        *descs, out, lse, seq, heads, softmax_scale * LOG2E,
        BLOCK_M, block_n, dim, stages, overlap, split, pingpong, WORKER_REGS, CONSUMER_REGS,
        **_launch_options(variant),
    )  # fmt: skip
    return out, lse
