"""FlashAttention forward and backward kernels in Triton: the portable kernels, which run on any GPU Triton
supports (and in its CPU interpreter), and which the dispatcher (interface.py) runs wherever the sm_90 Gluon kernels
do not apply.

Legend: b batch, s sequence, h query heads, g kv heads, d head dim. Tensors are `bshd`.

Grouped-query attention: query head `h` reads kv head `h // (h_q // h_kv)`; K/V are never
repeated. Packed documents come as per-token runs (`interface.document_runs`): a query sees only
keys of its own document, a contiguous run of equal ids (what sequence packing produces).

Kernels (all exp in base 2, with log2(e) folded into the softmax scale):
  _fwd_kernel      one program per (query block, b*h): online softmax over key blocks,
                   writes out and the row logsumexp (log2 units). Heaviest causal blocks launched first
                   (FWD_INTERLEAVED_HEAD_DIMS: of every head, or of one head after another).
  _bwd_delta_kernel  delta = rowsum(out * dout).
  _bwd_dkdv_kernel one program per (key block, b*g): loops over the query heads of the
                   group and their query blocks, so GQA gradients sum in registers.
  _bwd_dq_kernel   one program per (query block, b*h): loops over key blocks.
Sliding window (WINDOW > 0, causal only): query i sees key j iff 0 <= i - j < WINDOW, i.e. the WINDOW keys
ending at itself, intersected with its document. WINDOW is a compile-time constant (0: full causal), so the
kernels without a window are the ones compiled before windows existed.
Key/query block ranges skip fully masked blocks (causal, documents, window); only blocks that
touch the diagonal, a document edge, the window's edge or the sequence tail pay for the element mask, so a
window W costs O(S * W), not O(S^2).
"""

import torch

from megatron.kernels.env import interpreting, tl, triton

LOG2E = 1.4426950408889634  # the kernels' exp2 convention, shared with the Gluon kernels: lse is in log2 units
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)


# Block configs: (BLOCK_M, BLOCK_N, num_warps, num_stages), tuned with `bench/attention.py --sweep`:
# head_dim 128 on H100, 64 on H200.
# fwd and dq need BLOCK_M % BLOCK_N == 0; dkdv needs BLOCK_N % BLOCK_M == 0.
GPU_CONFIGS = {
    "fwd": {64: (128, 64, 8, 3), 128: (128, 128, 8, 3)},
    "dkdv": {64: (64, 64, 4, 2), 128: (64, 128, 8, 3)},
    "dq": {64: (128, 64, 8, 3), 128: (128, 128, 8, 2)},
}
# The forward's launch order by head dim: the heaviest causal query blocks of every head first (grid (b*h, blocks))
# at these head dims, one head's after another's (grid (blocks, b*h)) at the others. On an H200 every head first was
# faster at head dim 64 from 4k to 16k and level at 32k, and slower at head dim 128 from 16k (per-head order keeps a head's keys in L2).
FWD_INTERLEAVED_HEAD_DIMS = (16, 32, 64)
INTERPRETER_CONFIG = (16, 16, 4, 1)  # small blocks so tiny CPU tests cross block edges
# Compiled kernels of the latest launches (fwd, dkdv, dq): registers, spills, shared memory, PTX for bench.
LAST_COMPILED: dict = {}


def _config(kernel: str, head_dim: int):
    if interpreting():
        return INTERPRETER_CONFIG
    table = GPU_CONFIGS[kernel]
    return table.get(head_dim, table[64 if head_dim <= 64 else 128])


# Kernels and their launches keep argument lists packed (strides of one tensor on one line):
# one argument per line would double this file without making it easier to read.
# fmt: off
if triton is not None:

    @triton.jit
    def _mask_block(
        x, fill, offs_row, seg_row, offs_col, seg_base, S,
        COLS_ARE_KEYS: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, WINDOW: tl.constexpr,
    ):
        """x [rows, cols] of a block that touches the causal diagonal, a document edge, the window's edge or the
        sequence tail, with `fill` where a (query, key) pair is masked: the column past the sequence, the key after
        the query (causal), the key WINDOW or more before the query (WINDOW > 0), or the two in different documents. The rows are this program's block, the columns the loop's: queries x
        keys in the forward and dq loops, keys x queries (COLS_ARE_KEYS False) in the dK/dV loop; the columns'
        document ids are read here. Each orientation keeps its comparisons' operand order, so the kernels compile
        to the same PTX as with the mask written out in each loop."""
        keep = offs_col[None, :] < S
        if CAUSAL:
            if COLS_ARE_KEYS:
                keep = keep & (offs_row[:, None] >= offs_col[None, :])
            else:
                keep = keep & (offs_col[None, :] >= offs_row[:, None])
        if WINDOW > 0:
            if COLS_ARE_KEYS:
                keep = keep & (offs_row[:, None] - offs_col[None, :] < WINDOW)
            else:
                keep = keep & (offs_col[None, :] - offs_row[:, None] < WINDOW)
        if HAS_DOC:
            if COLS_ARE_KEYS:  # padding ids differ between queries (-2) and keys (-1), as where the rows are read
                seg_col = tl.load(seg_base + offs_col, mask=offs_col < S, other=-1)
                keep = keep & (seg_row[:, None] == seg_col[None, :])
            else:
                seg_col = tl.load(seg_base + offs_col, mask=offs_col < S, other=-2)
                keep = keep & (seg_col[None, :] == seg_row[:, None])
        return tl.where(keep, x, fill)

    @triton.jit
    def _fwd_block_loop(
        acc, l_i, m_i, q, offs_m, seg_q, k_base, v_base, seg_base,
        stride_ks, stride_vs, lo, hi, S, qk_scale,
        BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
        MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, WINDOW: tl.constexpr,
    ):
        offs_d = tl.arange(0, HEAD_DIM)
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k_ptrs = k_base + offs_n[:, None] * stride_ks + offs_d[None, :]
            v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :]
            if MASKED:
                k = tl.load(k_ptrs, mask=offs_n[:, None] < S, other=0.0)
            else:
                k = tl.load(k_ptrs)
            qk = tl.dot(q, tl.trans(k))
            if MASKED:
                qk = _mask_block(qk, float("-inf"), offs_m, seg_q, offs_n, seg_base, S, True, CAUSAL, HAS_DOC, WINDOW)
            # Running max in scaled log2 units; qk * qk_scale - m is one FMA per score.
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_use = m_new
            if MASKED:
                # A row can be fully masked so far (document edges): keep exp2 off -inf - -inf.
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(qk * qk_scale - m_use[:, None])
            alpha = tl.math.exp2(m_i - m_use)
            l_i = l_i * alpha + tl.sum(p, 1)
            if MASKED:
                v = tl.load(v_ptrs, mask=offs_n[:, None] < S, other=0.0)
            else:
                v = tl.load(v_ptrs)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        return acc, l_i, m_i

    @triton.jit
    def _key_block_ranges(
        RUN_START, RUN_END, b64, m0, S,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr,
        WINDOW: tl.constexpr,
    ):
        """Key range [lo, hi) of the query block [m0, m0 + BLOCK_M) (forward and dq kernels), and the
        part [full_lo, full_hi) that needs no element mask; [lo, full_lo) and [full_hi, hi) do."""
        lo = 0
        hi = S
        full_hi = (S // BLOCK_N) * BLOCK_N
        if CAUSAL:
            hi = tl.minimum(S, m0 + BLOCK_M)
            full_hi = tl.minimum(full_hi, m0)
        full_lo = lo
        if HAS_DOC:
            m_last = tl.minimum(m0 + BLOCK_M, S) - 1
            doc_start = tl.load(RUN_START + b64 * S + m0)
            lo = (doc_start // BLOCK_N) * BLOCK_N
            hi = tl.minimum(hi, tl.load(RUN_END + b64 * S + m_last))
            # Queries all in one document: key blocks wholly inside it (and causal-visible) are unmasked.
            one_doc = tl.load(RUN_START + b64 * S + m_last) == doc_start
            full_lo = tl.cdiv(doc_start, BLOCK_N) * BLOCK_N
            full_hi = tl.where(one_doc, tl.minimum(full_hi, (hi // BLOCK_N) * BLOCK_N), full_lo)
            full_hi = tl.maximum(full_hi, full_lo)
        if WINDOW > 0:
            # The first query's window starts at key m0 - WINDOW + 1; key blocks from the last query's window
            # start (m0 + BLOCK_M - WINDOW) on are inside every query's window.
            lo = tl.maximum(lo, (tl.maximum(m0 - (WINDOW - 1), 0) // BLOCK_N) * BLOCK_N)
            full_lo = tl.maximum(full_lo, tl.cdiv(tl.maximum(m0 + BLOCK_M - WINDOW, 0), BLOCK_N) * BLOCK_N)
            full_hi = tl.maximum(full_hi, full_lo)
        return lo, hi, full_lo, full_hi

    @triton.jit
    def _fwd_kernel(
        Q, K, V, O, LSE, SEG, RUN_START, RUN_END,
        stride_qb, stride_qs, stride_qh,
        stride_kb, stride_ks, stride_kh,
        stride_vb, stride_vs, stride_vh,
        stride_ob, stride_os, stride_oh,
        S, H, GROUP, qk_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
        CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, WINDOW: tl.constexpr, INTERLEAVED: tl.constexpr,
    ):
        # Causal: the last query blocks see the most keys; launch them first (shorter tail): every head's first on
        # grid (b*h, blocks) when INTERLEAVED (CUDA starts programs in grid order), else one head's after another's
        # on grid (blocks, b*h).
        if INTERLEAVED:
            pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
            pid_bh = tl.program_id(0)
        else:
            pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
            pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        kvh = h // GROUP
        m0 = pid_m * BLOCK_M
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < S

        q_base = Q + b.to(tl.int64) * stride_qb + h * stride_qh
        k_base = K + b.to(tl.int64) * stride_kb + kvh * stride_kh
        v_base = V + b.to(tl.int64) * stride_vb + kvh * stride_vh
        q = tl.load(q_base + offs_m[:, None] * stride_qs + offs_d[None, :], mask=row_ok[:, None], other=0.0)

        seg_base = SEG + b.to(tl.int64) * S
        seg_q = offs_m
        if HAS_DOC:
            seg_q = tl.load(seg_base + offs_m, mask=row_ok, other=-2)
        lo, hi, full_lo, full_hi = _key_block_ranges(
            RUN_START, RUN_END, b.to(tl.int64), m0, S, BLOCK_M, BLOCK_N, CAUSAL, HAS_DOC, WINDOW
        )

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        if HAS_DOC or WINDOW > 0:  # a document's or window's first, partial key blocks (else full_lo == lo)
            acc, l_i, m_i = _fwd_block_loop(
                acc, l_i, m_i, q, offs_m, seg_q, k_base, v_base, seg_base, stride_ks, stride_vs,
                lo, tl.minimum(full_lo, hi), S, qk_scale, BLOCK_N, HEAD_DIM, True, CAUSAL, HAS_DOC, WINDOW,
            )
        acc, l_i, m_i = _fwd_block_loop(
            acc, l_i, m_i, q, offs_m, seg_q, k_base, v_base, seg_base, stride_ks, stride_vs,
            full_lo, full_hi, S, qk_scale, BLOCK_N, HEAD_DIM, False, CAUSAL, HAS_DOC, WINDOW,
        )
        acc, l_i, m_i = _fwd_block_loop(
            acc, l_i, m_i, q, offs_m, seg_q, k_base, v_base, seg_base, stride_ks, stride_vs,
            tl.maximum(full_lo, full_hi), hi, S, qk_scale, BLOCK_N, HEAD_DIM, True, CAUSAL, HAS_DOC, WINDOW,
        )
        out = acc / l_i[:, None]
        o_base = O + b.to(tl.int64) * stride_ob + h * stride_oh
        tl.store(o_base + offs_m[:, None] * stride_os + offs_d[None, :], out.to(O.dtype.element_ty), mask=row_ok[:, None])
        # logsumexp of the scaled scores, in log2 units.
        tl.store(LSE + pid_bh.to(tl.int64) * S + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)

    @triton.jit
    def _bwd_delta_kernel(
        O, DO, DELTA,
        stride_ob, stride_os, stride_oh,
        stride_db, stride_ds, stride_dh,
        S, H,
        BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < S
        o = tl.load(O + b.to(tl.int64) * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + b.to(tl.int64) * stride_db + h * stride_dh + offs_m[:, None] * stride_ds + offs_d[None, :],
                     mask=row_ok[:, None], other=0.0)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(DELTA + pid_bh.to(tl.int64) * S + offs_m, delta, mask=row_ok)

    @triton.jit
    def _bwd_dkdv_block_loop(
        dk, dv, k, v, offs_n, seg_k, q_base, do_base, lse_base, delta_base, seg_base,
        stride_qs, stride_dos, lo, hi, S, qk_scale,
        BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
        MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, WINDOW: tl.constexpr,
    ):
        offs_d = tl.arange(0, HEAD_DIM)
        for start_m in range(lo, hi, BLOCK_M):
            start_m = tl.multiple_of(start_m, BLOCK_M)
            offs_m = start_m + tl.arange(0, BLOCK_M)
            q_ptrs = q_base + offs_m[:, None] * stride_qs + offs_d[None, :]
            do_ptrs = do_base + offs_m[:, None] * stride_dos + offs_d[None, :]
            if MASKED:
                row_ok = offs_m < S
                q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
                lse = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf"))
            else:
                q = tl.load(q_ptrs)
                lse = tl.load(lse_base + offs_m)
            # Transposed scores: rows are keys, columns queries.
            s_t = tl.dot(k, tl.trans(q)) * qk_scale
            p_t = tl.math.exp2(s_t - lse[None, :])
            if MASKED:
                p_t = _mask_block(p_t, 0.0, offs_n, seg_k, offs_m, seg_base, S, False, CAUSAL, HAS_DOC, WINDOW)
                do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0)
                delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
            else:
                do = tl.load(do_ptrs)
                delta = tl.load(delta_base + offs_m)
            dv += tl.dot(p_t.to(do.dtype), do)
            dp_t = tl.dot(v, tl.trans(do))
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q)
        return dk, dv

    @triton.jit
    def _bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, DK, DV, SEG, RUN_START, RUN_END,
        stride_qb, stride_qs, stride_qh,
        stride_kb, stride_ks, stride_kh,
        stride_vb, stride_vs, stride_vh,
        stride_dob, stride_dos, stride_doh,
        stride_dkb, stride_dks, stride_dkh,
        stride_dvb, stride_dvs, stride_dvh,
        S, H, KV_H, GROUP, qk_scale, sm_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
        CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, WINDOW: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_bg = tl.program_id(1)
        b = pid_bg // KV_H
        kvh = pid_bg % KV_H
        n0 = pid_n * BLOCK_N
        offs_n = n0 + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        col_ok = offs_n < S
        b64 = b.to(tl.int64)
        k = tl.load(K + b64 * stride_kb + kvh * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        v = tl.load(V + b64 * stride_vb + kvh * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)

        # Query blocks [full_lo, full_hi) need no element mask; the rest of [lo, hi) do.
        lo = 0
        hi = S
        full_lo = 0
        if CAUSAL:
            lo = n0
            full_lo = n0 + BLOCK_N
        full_hi = (S // BLOCK_M) * BLOCK_M
        seg_base = SEG + b64 * S
        seg_k = offs_n
        if HAS_DOC:
            seg_k = tl.load(seg_base + offs_n, mask=col_ok, other=-1)
            n_last = tl.minimum(n0 + BLOCK_N, S) - 1
            doc_start = tl.load(RUN_START + b64 * S + n0)
            lo = tl.maximum(lo, (doc_start // BLOCK_M) * BLOCK_M)
            hi = tl.load(RUN_END + b64 * S + n_last)
            # Keys all in one document: query blocks wholly inside it (and causal-visible) are unmasked.
            one_doc = tl.load(RUN_START + b64 * S + n_last) == doc_start
            full_lo = tl.maximum(full_lo, tl.cdiv(doc_start, BLOCK_M) * BLOCK_M)
            full_hi = tl.where(one_doc, tl.minimum(full_hi, (hi // BLOCK_M) * BLOCK_M), full_lo)
        if WINDOW > 0:
            # The last key's window ends before query n0 + BLOCK_N - 1 + WINDOW; query blocks ending by n0 + WINDOW
            # are inside the first key's window.
            hi = tl.minimum(hi, n0 + BLOCK_N - 1 + WINDOW)
            full_hi = tl.minimum(full_hi, ((n0 + WINDOW) // BLOCK_M) * BLOCK_M)
        full_lo = tl.maximum(full_lo, lo)
        full_hi = tl.maximum(full_hi, full_lo)

        dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        for g in range(GROUP):  # query heads sharing this kv head
            h = kvh * GROUP + g
            q_base = Q + b64 * stride_qb + h * stride_qh
            do_base = DO + b64 * stride_dob + h * stride_doh
            lse_base = LSE + (b64 * H + h) * S
            delta_base = DELTA + (b64 * H + h) * S
            dk, dv = _bwd_dkdv_block_loop(
                dk, dv, k, v, offs_n, seg_k, q_base, do_base, lse_base, delta_base, seg_base,
                stride_qs, stride_dos, lo, tl.minimum(full_lo, hi), S, qk_scale,
                BLOCK_M, HEAD_DIM, True, CAUSAL, HAS_DOC, WINDOW,
            )
            dk, dv = _bwd_dkdv_block_loop(
                dk, dv, k, v, offs_n, seg_k, q_base, do_base, lse_base, delta_base, seg_base,
                stride_qs, stride_dos, full_lo, full_hi, S, qk_scale,
                BLOCK_M, HEAD_DIM, False, CAUSAL, HAS_DOC, WINDOW,
            )
            dk, dv = _bwd_dkdv_block_loop(
                dk, dv, k, v, offs_n, seg_k, q_base, do_base, lse_base, delta_base, seg_base,
                stride_qs, stride_dos, tl.maximum(full_lo, full_hi), hi, S, qk_scale,
                BLOCK_M, HEAD_DIM, True, CAUSAL, HAS_DOC, WINDOW,
            )
        dk = dk * sm_scale
        tl.store(DK + b64 * stride_dkb + kvh * stride_dkh + offs_n[:, None] * stride_dks + offs_d[None, :],
                 dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
        tl.store(DV + b64 * stride_dvb + kvh * stride_dvh + offs_n[:, None] * stride_dvs + offs_d[None, :],
                 dv.to(DV.dtype.element_ty), mask=col_ok[:, None])

    @triton.jit
    def _bwd_dq_block_loop(
        dq, q, do, lse, delta, offs_m, seg_q, k_base, v_base, seg_base,
        stride_ks, stride_vs, lo, hi, S, qk_scale,
        BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
        MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, WINDOW: tl.constexpr,
    ):
        offs_d = tl.arange(0, HEAD_DIM)
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k_ptrs = k_base + offs_n[:, None] * stride_ks + offs_d[None, :]
            v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :]
            if MASKED:
                k = tl.load(k_ptrs, mask=offs_n[:, None] < S, other=0.0)
                v = tl.load(v_ptrs, mask=offs_n[:, None] < S, other=0.0)
            else:
                k = tl.load(k_ptrs)
                v = tl.load(v_ptrs)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            p = tl.math.exp2(s - lse[:, None])
            if MASKED:
                p = _mask_block(p, 0.0, offs_m, seg_q, offs_n, seg_base, S, True, CAUSAL, HAS_DOC, WINDOW)
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k)
        return dq

    @triton.jit
    def _bwd_dq_kernel(
        Q, K, V, DO, LSE, DELTA, DQ, SEG, RUN_START, RUN_END,
        stride_qb, stride_qs, stride_qh,
        stride_kb, stride_ks, stride_kh,
        stride_vb, stride_vs, stride_vh,
        stride_dob, stride_dos, stride_doh,
        stride_dqb, stride_dqs, stride_dqh,
        S, H, GROUP, qk_scale, sm_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
        CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, WINDOW: tl.constexpr,
    ):
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # heaviest query blocks first
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        kvh = h // GROUP
        b64 = b.to(tl.int64)
        m0 = pid_m * BLOCK_M
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < S
        q = tl.load(Q + b64 * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + b64 * stride_dob + h * stride_doh + offs_m[:, None] * stride_dos + offs_d[None, :],
                     mask=row_ok[:, None], other=0.0)
        lse = tl.load(LSE + pid_bh.to(tl.int64) * S + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + pid_bh.to(tl.int64) * S + offs_m, mask=row_ok, other=0.0)
        k_base = K + b64 * stride_kb + kvh * stride_kh
        v_base = V + b64 * stride_vb + kvh * stride_vh

        seg_base = SEG + b64 * S
        seg_q = offs_m
        if HAS_DOC:
            seg_q = tl.load(seg_base + offs_m, mask=row_ok, other=-2)
        lo, hi, full_lo, full_hi = _key_block_ranges(
            RUN_START, RUN_END, b64, m0, S, BLOCK_M, BLOCK_N, CAUSAL, HAS_DOC, WINDOW
        )

        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        if HAS_DOC or WINDOW > 0:  # as in the forward
            dq = _bwd_dq_block_loop(
                dq, q, do, lse, delta, offs_m, seg_q, k_base, v_base, seg_base, stride_ks, stride_vs,
                lo, tl.minimum(full_lo, hi), S, qk_scale, BLOCK_N, HEAD_DIM, True, CAUSAL, HAS_DOC, WINDOW,
            )
        dq = _bwd_dq_block_loop(
            dq, q, do, lse, delta, offs_m, seg_q, k_base, v_base, seg_base, stride_ks, stride_vs,
            full_lo, full_hi, S, qk_scale, BLOCK_N, HEAD_DIM, False, CAUSAL, HAS_DOC, WINDOW,
        )
        dq = _bwd_dq_block_loop(
            dq, q, do, lse, delta, offs_m, seg_q, k_base, v_base, seg_base, stride_ks, stride_vs,
            tl.maximum(full_lo, full_hi), hi, S, qk_scale, BLOCK_N, HEAD_DIM, True, CAUSAL, HAS_DOC, WINDOW,
        )
        dq = dq * sm_scale
        tl.store(DQ + b64 * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqs + offs_d[None, :],
                 dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


def _strides3(x):
    return x.stride(0), x.stride(1), x.stride(2)


def _no_documents(device):
    return (torch.empty(1, dtype=torch.int32, device=device),) * 3


def _window_constant(causal: bool, window) -> int:
    """The kernels' WINDOW: 0 for none, else the window (which needs causal attention)."""
    if window is None:
        return 0
    if not causal or window < 1:
        raise ValueError(f"a sliding window needs causal attention and window >= 1 (got causal={causal}, {window})")
    return int(window)


def forward(q, k, v, causal: bool, softmax_scale: float, runs=None, window=None):
    """out [b, s, h, d] (q's dtype) and lse [b, h, s] fp32 in log2 units. q [b, s, h, d], k, v [b, s, g, d] with
    unit last-dim stride; runs: None, or (seg, run_start, run_end) of the packed documents (interface.document_runs);
    window: None, or W (causal): query i sees key j iff 0 <= i - j < W. Each W compiles its own kernels."""
    bsz, seq, heads, head_dim = q.shape
    seg, run_start, run_end = runs if runs is not None else _no_documents(q.device)
    out = torch.empty_like(q)
    lse = torch.empty(bsz, heads, seq, dtype=torch.float32, device=q.device)
    block_m, block_n, warps, stages = _config("fwd", head_dim)
    interleaved = head_dim in FWD_INTERLEAVED_HEAD_DIMS
    grid = (bsz * heads, triton.cdiv(seq, block_m)) if interleaved else (triton.cdiv(seq, block_m), bsz * heads)
    LAST_COMPILED["fwd"] = _fwd_kernel[grid](
        q, k, v, out, lse, seg, run_start, run_end,
        *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(out),
        seq, heads, heads // k.shape[2], softmax_scale * LOG2E,
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim, CAUSAL=causal, HAS_DOC=runs is not None,
        WINDOW=_window_constant(causal, window), INTERLEAVED=interleaved, num_warps=warps, num_stages=stages,
    )
    return out, lse


def row_delta(out, dout):
    """delta = rowsum(out * dout), [b, h, s] fp32: what either backward (split or fused) needs besides lse."""
    bsz, seq, heads, head_dim = out.shape
    delta = torch.empty(bsz, heads, seq, dtype=torch.float32, device=out.device)
    block_m = 16 if interpreting() else 128
    _bwd_delta_kernel[(triton.cdiv(seq, block_m), bsz * heads)](
        out, dout, delta, *_strides3(out), *_strides3(dout), seq, heads,
        BLOCK_M=block_m, HEAD_DIM=head_dim,
    )
    return delta


def backward(q, k, v, dout, lse, delta, causal: bool, softmax_scale: float, runs=None, window=None):
    """dq, dk, dv by the split kernels (dK/dV, then dQ). lse and delta [b, h, s] as `forward` and `row_delta` give
    them; runs and window as for `forward`."""
    bsz, seq, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    seg, run_start, run_end = runs if runs is not None else _no_documents(q.device)
    has_doc = runs is not None
    window = _window_constant(causal, window)
    scale = softmax_scale
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    block_m, block_n, warps, stages = _config("dkdv", head_dim)
    LAST_COMPILED["dkdv"] = _bwd_dkdv_kernel[(triton.cdiv(seq, block_n), bsz * kv_heads)](
        q, k, v, dout, lse, delta, dk, dv, seg, run_start, run_end,
        *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(dout), *_strides3(dk), *_strides3(dv),
        seq, heads, kv_heads, group, scale * LOG2E, scale,
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim, CAUSAL=causal, HAS_DOC=has_doc, WINDOW=window,
        num_warps=warps, num_stages=stages,
    )
    block_m, block_n, warps, stages = _config("dq", head_dim)
    LAST_COMPILED["dq"] = _bwd_dq_kernel[(triton.cdiv(seq, block_m), bsz * heads)](
        q, k, v, dout, lse, delta, dq, seg, run_start, run_end,
        *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(dout), *_strides3(dq),
        seq, heads, group, scale * LOG2E, scale,
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim, CAUSAL=causal, HAS_DOC=has_doc, WINDOW=window,
        num_warps=warps, num_stages=stages,
    )
    return dq, dk, dv

# fmt: on
