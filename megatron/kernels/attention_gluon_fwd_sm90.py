"""A warp-specialized FlashAttention forward for Hopper (sm_90) in Triton 3.6's Gluon dialect. The dispatcher
(interface.py) runs it when `unsupported_reason` is None: causal, bf16, head dim 128, with or without grouped-query
attention, with or without packed documents, sequence a multiple of 128, an sm_90 GPU, Triton 3.6. Everything else
takes the Triton forward (attention_triton.py). The kernel also supports head dim 64, where the Triton forward measured faster. Written
as prototypes first (v1: MHA, head dim 128; v2: GQA, head dim 64, documents); measured on an H200 in
benchmarks/results/2026-11-30_attention_kernels_h200/.

Same outputs as our Triton forward (attention_triton.py `_fwd_kernel`): out bf16 [b, s, h, d] and
lse fp32 [b, h, s] in log2 units, lse = m + log2(l) with m the running max of q.k * softmax_scale*log2(e), so that
p = exp2(q.k * softmax_scale*log2(e) - lse) (what our fused backward, attention_gluon_bwd_sm90.backward, consumes).

One program per (query block of BLOCK_M = 128 rows, query head, batch); grid (b*h, s/128) with the query block
reversed along grid axis 1, so every head's heaviest (last) causal block is launched before any lighter one.
Per key block (BLOCK_N = 128 keys, or 64): S = Q K^T (wgmma, A = Q smem, B = K^T smem view), online softmax in exp2
(registers), O += P V (wgmma, A = P bf16 in registers, B = V smem); the accumulators stay in registers.
Partitions (gl.warp_specialize):
  default  (4 warps = consumer warpgroup 0, 240 registers): query rows [m0, m0 + 64)
  worker 0 (4 warps = consumer warpgroup 1, 240 registers): query rows [m0 + 64, m0 + 128)
  worker 1 (1 warp, 24 registers): TMA loads of Q once, then K and V blocks of kv head h // GROUP into a 3-deep ring
           (k_ready / v_ready per stage, completed by the TMA; kv_empty per stage, one arrive per consumer)
  Each consumer warpgroup is its own partition, so its mbarrier arrives sync only its own 128 threads: neither
  warpgroup waits for the other. Each is pipelined (as FA3): in step j the S GEMM of block j and the P V GEMM of
  block j-1 are in flight together; the softmax of block j runs while P_{j-1} V_{j-1} still executes; then O is
  rescaled and block j-1's K, V stage handed back.
Grouped-query attention: k / v are [b, s, g, d] with g dividing h. K / V are never repeated: their TMA descriptors
are over the 2-D [b*s, g*d] view and loads use column (h // GROUP) * D. GROUP is a runtime argument, so MHA and GQA
share one binary.

Key blocks visited, kb0 = m0 / BN, ND = BM / BN diagonal blocks:
  lo = doc_start(m0) // BN  (0 without documents): the block holding the first query's document start;
  order: the ND diagonal blocks kb0 .. kb0+ND-1 ascending, then kb0-1, kb0-2, .. lo descending.
Three phases, each its own code, so no runtime loop holds a masked/unmasked branch (the pattern ptxas 12.8
miscompiled in a 2-stage build of our backward):
  diagonal  (static_range, peeled): mask key <= query (and key >= doc_start(query) with documents);
  full      (runtime loop) blocks kb0-1 .. full_lo with full_lo = max(ceil(doc_start(m0+BM-1) / BN), lo): every key
            of these blocks is at or after every row's document start, so no mask;
  edge      (runtime loop, documents only) blocks full_lo-1 .. lo: mask key >= doc_start(query) (causality holds:
            key < m0 <= query).
  A causal key is in the query's document iff key >= doc_start(query), so only run_start is read.
Running max: with BN = BM the first block (the diagonal) holds every row's own key, which is in the row's document,
so m is finite from block 0 on. With BN = 64 and documents a row of the second warpgroup can have every key of block
kb0 masked; the diagonal phase then keeps exp2 off -inf - (-inf) (m_use = 0 where m is still -inf, as the Triton
forward does). After the diagonal phase every row has seen its own key: a fully masked row later has p = 0, alpha = 1.
The K / V ring is 3 deep, never 2.
"""

# ruff: noqa: RUF059  (each partition unpacks the shared buffer / barrier tuples whole)
import torch

from megatron.kernels import gluon_sm90
from megatron.kernels.attention_triton import LOG2E
from megatron.kernels.env import (
    HAVE_GLUON,
    TensorDescriptor,
    fence_async_shared,
    gl,
    gluon,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

BLOCK_M = 128  # query rows per program (64 per consumer warpgroup; gluon_sm90.SEQ_MULTIPLE)
BLOCK_N = 128  # keys per ring stage (64 also supported)
STAGES = 3  # depth of the K / V ring (not 2: see the module docstring of attention_gluon_bwd_sm90.py)
WORKER_REGS = 24
CONSUMER_REGS = 240
MAXNREG = 168  # 12 warps * 32 * 168 <= 64K registers: 240 + 240 + 24 per warpgroup
LAUNCH_OPTIONS = {"num_warps": 4, "maxnreg": MAXNREG}


# fmt: off
if HAVE_GLUON:
    from megatron.kernels.gluon_sm90 import mma_layout

    # Shared tuples handed to every partition:
    #   descs = (q_desc, k_desc, v_desc)
    #   smem  = (q_bufs, k_bufs, v_bufs)              (q_bufs: 2 row halves; k / v: STAGES-deep rings)
    #   bars  = (q_bar, k_ready, v_ready, kv_empty)   (per stage but q_bar)

    @gluon.jit
    def _key_block(j, m0, BM: gl.constexpr, BN: gl.constexpr):
        """Index of the j-th key block processed: the BM/BN diagonal blocks ascending, then the rest descending."""
        ND: gl.constexpr = BM // BN
        kb0 = m0 // BN
        return gl.where(j < ND, kb0 + j, kb0 + ND - 1 - j)

    @gluon.jit
    def _loader(descs, smem, bars, O, LSE, seg_base, b, h, kvh, m0, n_full, n_blocks, S, H, qk_scale,
                BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, HAS_DOC: gl.constexpr):
        """Worker (1 warp): Q (two 64-row halves) once, then K and V of kv head kvh for each key block."""
        q_desc, k_desc, v_desc = descs
        q_bufs, k_bufs, v_bufs = smem
        q_bar, k_ready, v_ready, kv_empty = bars
        mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
        for i in gl.static_range(2):
            tma.async_copy_global_to_shared(q_desc, [b * S + m0 + i * (BM // 2), h * D], q_bar, q_bufs.index(i))
        for j in range(n_blocks):
            s = j % STAGES
            mbarrier.wait(kv_empty.index(s), ((j // STAGES) & 1) ^ 1)  # fresh barriers pass phase 1 at once
            row = b * S + _key_block(j, m0, BM, BN) * BN
            mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [row, kvh * D], k_ready.index(s), k_bufs.index(s))
            mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [row, kvh * D], v_ready.index(s), v_bufs.index(s))

    @gluon.jit
    def _softmax(s_acc, m_i, l_i, kb, row0, ds_row, qk_scale, MODE: gl.constexpr, HAS_DOC: gl.constexpr,
                 ROWS: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr):
        """Online softmax of key block kb's scores (fp32, mma layout). Returns p (fp32), the new m and l, alpha.
        MODE: 0 no mask, 1 diagonal block, 2 document edge. ds_row: each row's document start (documents only)."""
        mma_s: gl.constexpr = mma_layout([4, 1], BN)
        GUARD: gl.constexpr = (MODE == 1) and HAS_DOC and (BN < BM)  # a row may see no key of the first block
        if MODE == 1:  # diagonal block: key <= query (and in the query's document)
            offs_m = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, mma_s))
            offs_n = kb * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, mma_s))
            keep = offs_m[:, None] >= offs_n[None, :]
            if HAS_DOC:
                keep = keep & (offs_n[None, :] >= ds_row[:, None])
            s_acc = gl.where(keep, s_acc, float("-inf"))
        if MODE == 2:  # document edge (off the diagonal: key < m0 <= query)
            offs_n = kb * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, mma_s))
            s_acc = gl.where(offs_n[None, :] >= ds_row[:, None], s_acc, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s_acc, axis=1) * qk_scale)
        m_use = m_new
        if GUARD:
            m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
        p = gl.exp2(s_acc * qk_scale - m_use[:, None])
        alpha = gl.exp2(m_i - m_use)
        l_i = l_i * alpha + gl.sum(p, axis=1)
        return p, m_new, l_i, alpha

    @gluon.jit
    def _overlap_step(j, acc, p_op, m_i, l_i, q_s, smem, bars, m0, row0, ds_row, qk_scale, MODE: gl.constexpr,
                      HAS_DOC: gl.constexpr, ROWS: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
                      D: gl.constexpr, STAGES: gl.constexpr):
        """Key block j (j >= 1), pipelined: S_j = Q K_j^T and O += P_{j-1} V_{j-1} in flight together; the softmax
        of S_j runs under the second; then O is rescaled and K_{j-1}, V_{j-1} handed back to the loader."""
        q_bufs, k_bufs, v_bufs = smem
        q_bar, k_ready, v_ready, kv_empty = bars
        mma_s: gl.constexpr = mma_layout([4, 1], BN)
        mma_o: gl.constexpr = mma_layout([4, 1], D)
        a_o: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_o, k_width=2)
        s = j % STAGES
        sp = (j - 1) % STAGES  # stage of block j-1
        mbarrier.wait(k_ready.index(s), (j // STAGES) & 1)
        mbarrier.wait(v_ready.index(sp), ((j - 1) // STAGES) & 1)
        s_acc = warpgroup_mma(q_s, k_bufs.index(s).permute((1, 0)), gl.zeros([ROWS, BN], gl.float32, mma_s),
                              use_acc=False, is_async=True)
        acc = warpgroup_mma(p_op, v_bufs.index(sp), acc, is_async=True)
        s_acc = warpgroup_mma_wait(num_outstanding=1, deps=(s_acc,))  # S_j done; P_{j-1} V_{j-1} running
        kb = _key_block(j, m0, BM, BN)
        p, m_i, l_i, alpha = _softmax(s_acc, m_i, l_i, kb, row0, ds_row, qk_scale, MODE, HAS_DOC, ROWS, BM, BN)
        acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))
        mbarrier.arrive(kv_empty.index(sp), count=1)  # block j-1's K and V are no longer read
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, mma_o))[:, None]
        p_op = gl.convert_layout(p.to(gl.bfloat16), a_o)
        return acc, p_op, m_i, l_i

    @gluon.jit
    def _consume(q_s, smem, bars, O, LSE, seg_base, b, h, m0, row0, n_full, n_blocks, S, H, qk_scale,
                 ROWS: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                 HAS_DOC: gl.constexpr):
        """Query rows [row0, row0 + ROWS) over 4 warps: the GEMMs and the online softmax; writes their out, lse."""
        q_bufs, k_bufs, v_bufs = smem
        q_bar, k_ready, v_ready, kv_empty = bars
        ND: gl.constexpr = BM // BN
        mma_s: gl.constexpr = mma_layout([4, 1], BN)
        mma_o: gl.constexpr = mma_layout([4, 1], D)
        a_o: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_o, k_width=2)
        row_s: gl.constexpr = gl.SliceLayout(1, mma_s)
        row_o: gl.constexpr = gl.SliceLayout(1, mma_o)
        m_i = gl.full([ROWS], float("-inf"), gl.float32, row_s)
        l_i = gl.zeros([ROWS], gl.float32, row_s)
        acc = gl.zeros([ROWS, D], gl.float32, mma_o)
        zero_s = gl.zeros([ROWS, BN], gl.float32, mma_s)
        offs_ms = row0 + gl.arange(0, ROWS, layout=row_s)
        ds_row = offs_ms  # placeholder without documents (never read)
        if HAS_DOC:
            ds_row = gl.load(seg_base + offs_ms)  # each row's document start
        mbarrier.wait(q_bar, 0)
        # Diagonal phase (peeled). Block 0: S, softmax -> P_0 (kept for the next step's P V GEMM).
        mbarrier.wait(k_ready.index(0), 0)
        s_acc = warpgroup_mma(q_s, k_bufs.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        s_acc = warpgroup_mma_wait(num_outstanding=0, deps=(s_acc,))
        p, m_i, l_i, alpha = _softmax(s_acc, m_i, l_i, m0 // BN, row0, ds_row, qk_scale, 1, HAS_DOC, ROWS, BM, BN)
        p_op = gl.convert_layout(p.to(gl.bfloat16), a_o)
        for jd in gl.static_range(1, ND):  # the other diagonal blocks (BN < BM)
            acc, p_op, m_i, l_i = _overlap_step(jd, acc, p_op, m_i, l_i, q_s, smem, bars, m0, row0, ds_row,
                                                qk_scale, 1, HAS_DOC, ROWS, BM, BN, D, STAGES)
        # Full phase: no mask.
        for j in range(ND, ND + n_full):
            acc, p_op, m_i, l_i = _overlap_step(j, acc, p_op, m_i, l_i, q_s, smem, bars, m0, row0, ds_row,
                                                qk_scale, 0, HAS_DOC, ROWS, BM, BN, D, STAGES)
        # Edge phase (documents): key >= doc_start(query).
        if HAS_DOC:
            for j in range(ND + n_full, n_blocks):
                acc, p_op, m_i, l_i = _overlap_step(j, acc, p_op, m_i, l_i, q_s, smem, bars, m0, row0, ds_row,
                                                    qk_scale, 2, HAS_DOC, ROWS, BM, BN, D, STAGES)
        sl = (n_blocks - 1) % STAGES
        mbarrier.wait(v_ready.index(sl), ((n_blocks - 1) // STAGES) & 1)
        acc = warpgroup_mma(p_op, v_bufs.index(sl), acc, is_async=True)
        acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))
        mbarrier.arrive(kv_empty.index(sl), count=1)
        # Epilogue: out = O / l (bf16, [b, s, h, d]); lse = m + log2(l) (log2 units, [b, h, s]).
        l_o = gl.convert_layout(l_i, row_o)
        out = (acc / l_o[:, None]).to(gl.bfloat16)
        offs_m = row0 + gl.arange(0, ROWS, layout=row_o)
        offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, mma_o))
        o_offs = (b.to(gl.int64) * S * H + h) * D + offs_m.to(gl.int64)[:, None] * (H * D) + offs_d[None, :]
        gl.store(O + o_offs, out)
        gl.store(LSE + (b.to(gl.int64) * H + h) * S + offs_ms, m_i + gl.log2(l_i))

    @gluon.jit
    def _consumer0(descs, smem, bars, O, LSE, seg_base, b, h, kvh, m0, n_full, n_blocks, S, H, qk_scale,
                   BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, HAS_DOC: gl.constexpr):
        """Default partition (4 warps): query rows [m0, m0 + BM/2)."""
        q_bufs, k_bufs, v_bufs = smem
        _consume(q_bufs.index(0), smem, bars, O, LSE, seg_base, b, h, m0, m0, n_full, n_blocks, S, H, qk_scale,
                 BM // 2, BM, BN, D, STAGES, HAS_DOC)

    @gluon.jit
    def _consumer1(descs, smem, bars, O, LSE, seg_base, b, h, kvh, m0, n_full, n_blocks, S, H, qk_scale,
                   BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, HAS_DOC: gl.constexpr):
        """Worker (4 warps): query rows [m0 + BM/2, m0 + BM)."""
        q_bufs, k_bufs, v_bufs = smem
        _consume(q_bufs.index(1), smem, bars, O, LSE, seg_base, b, h, m0, m0 + BM // 2, n_full, n_blocks, S, H,
                 qk_scale, BM // 2, BM, BN, D, STAGES, HAS_DOC)

    @gluon.jit(do_not_specialize=["GROUP"])  # MHA and GQA share one binary (one division per program)
    def _attn_fwd_kernel(q_desc, k_desc, v_desc, O, LSE, RUN_START, S, H, GROUP, qk_scale,
                            BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                            HAS_DOC: gl.constexpr,
                            WORKER_REGS: gl.constexpr, CONSUMER_REGS: gl.constexpr):
        pid_bh = gl.program_id(0)
        pid_m = gl.num_programs(1) - 1 - gl.program_id(1)  # heaviest causal query blocks first, all heads
        b = pid_bh // H
        h = pid_bh % H
        kvh = h // GROUP
        m0 = pid_m * BM
        ND: gl.constexpr = BM // BN
        kb0 = m0 // BN
        n_full = kb0  # unmasked off-diagonal blocks kb0-1 .. 0
        n_blocks = kb0 + ND  # key blocks lo .. diagonal
        seg_base = RUN_START + b.to(gl.int64) * S  # this sequence's per-token document starts
        if HAS_DOC:
            ds_first = gl.load(seg_base + m0)  # document start of the first query
            ds_last = gl.load(seg_base + m0 + BM - 1)  # and of the last (the largest: starts never decrease)
            lo = ds_first // BN
            full_lo = gl.maximum((ds_last + BN - 1) // BN, lo)  # blocks >= full_lo: no key before any row's start
            n_full = gl.maximum(kb0 - full_lo, 0)
            n_blocks = kb0 + ND - lo

        q_bufs = gl.allocate_shared_memory(gl.bfloat16, [2, BM // 2, D], q_desc.layout)
        k_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BN, D], k_desc.layout)
        v_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BN, D], v_desc.layout)
        bar_l: gl.constexpr = mbarrier.MBarrierLayout()
        q_bar = gl.allocate_shared_memory(gl.int64, [1], bar_l)
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_l)
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_l)
        kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_l)
        mbarrier.init(q_bar, count=1)
        for st in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(st), count=1)
            mbarrier.init(v_ready.index(st), count=1)
            mbarrier.init(kv_empty.index(st), count=2)  # one arrive per consumer partition
        fence_async_shared()

        descs = (q_desc, k_desc, v_desc)
        smem = (q_bufs, k_bufs, v_bufs)
        bars = (q_bar, k_ready, v_ready, kv_empty)
        gl.warp_specialize([
            (_consumer0, (descs, smem, bars, O, LSE, seg_base, b, h, kvh, m0, n_full, n_blocks, S, H, qk_scale,
                          BM, BN, D, STAGES, HAS_DOC)),
            (_consumer1, (descs, smem, bars, O, LSE, seg_base, b, h, kvh, m0, n_full, n_blocks, S, H, qk_scale,
                          BM, BN, D, STAGES, HAS_DOC)),
            (_loader, (descs, smem, bars, O, LSE, seg_base, b, h, kvh, m0, n_full, n_blocks, S, H, qk_scale,
                       BM, BN, D, STAGES, HAS_DOC)),
        ], [4, 1], [CONSUMER_REGS, WORKER_REGS])

# fmt: on


# --------------------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------------------
def _descriptors(q, k, v, block_n):
    bsz, seq, heads, dim = q.shape
    lay_m = gl.NVMMASharedLayout.get_default_for([BLOCK_M // 2, dim], gl.bfloat16)
    lay_n = gl.NVMMASharedLayout.get_default_for([block_n, dim], gl.bfloat16)
    two_d = lambda t: t.view(bsz * seq, t.shape[2] * dim)  # [b*s, heads*d]: a box is rows of one head
    return (
        TensorDescriptor.from_tensor(two_d(q), [BLOCK_M // 2, dim], lay_m),
        TensorDescriptor.from_tensor(two_d(k), [block_n, dim], lay_n),
        TensorDescriptor.from_tensor(two_d(v), [block_n, dim], lay_n),
    )


LAST_COMPILED = {}  # "fwd" -> compiled kernel of the latest launch


def unsupported_reason(q, k, causal: bool):
    """None when this forward runs on these inputs, else why not (one short phrase): the fused backward's inputs
    (causal, bf16, head dim 64 or 128, sequence a multiple of 128 = BLOCK_M, sm_90, Triton 3.6; the check shared
    with it, gluon_sm90.unsupported_reason), at head dim 128 only. At head dim 64 the kernel is correct (GPU tests call `forward` directly) but the Triton
    forward measured faster on the H200 (benchmarks/results/2026-11-30_attention_backends_h200/hd64_fwd_sweep.json)."""
    if reason := gluon_sm90.unsupported_reason(q, k, causal):
        return reason
    if q.shape[-1] != 128:
        return f"head dim {q.shape[-1]} (the Triton forward is faster there)"
    return None


def forward(q, k, v, softmax_scale, run_start=None, block_n=BLOCK_N, stages=STAGES):
    """Causal attention forward. q [b, s, h, d], k, v [b, s, g, d] bf16 (g divides h; d 64 or 128; s % 128 == 0);
    run_start: None, or int32 [b, s], each token's document start (interface.document_runs).
    Returns out [b, s, h, d] bf16 and lse [b, h, s] fp32 in log2 units. Check `unsupported_reason` first."""
    if block_n not in (64, 128):
        raise ValueError(f"block_n {block_n} not in (64, 128)")
    bsz, seq, heads, dim = q.shape
    kv_heads = k.shape[2]
    q, k, v = (t.contiguous() for t in (q, k, v))
    out = torch.empty_like(q)
    lse = torch.empty(bsz, heads, seq, dtype=torch.float32, device=q.device)
    has_doc = run_start is not None
    if has_doc:
        if tuple(run_start.shape) != (bsz, seq):
            raise ValueError(f"run_start must be [b, s] = {(bsz, seq)}, got {tuple(run_start.shape)}")
        run_start = run_start.to(torch.int32).contiguous()
    else:
        run_start = torch.empty(1, dtype=torch.int32, device=q.device)
    grid = (bsz * heads, seq // BLOCK_M)
    LAST_COMPILED["fwd"] = _attn_fwd_kernel[grid](
        *_descriptors(q, k, v, block_n), out, lse, run_start, seq, heads, heads // kv_heads, softmax_scale * LOG2E,
        BLOCK_M, block_n, dim, stages, has_doc, WORKER_REGS, CONSUMER_REGS,
        **LAUNCH_OPTIONS,
    )  # fmt: skip
    return out, lse
