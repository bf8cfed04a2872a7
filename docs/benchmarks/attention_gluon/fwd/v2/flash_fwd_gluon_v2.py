"""Tools around the library's Gluon forward (`megatron/kernels/attention_gluon_fwd_sm90.py`). Its kernel was written
here as prototype v2 (commit 23adb38: the v1 "split" forward extended to grouped-query attention, head dim 64 and
packed documents), passed its first H200 check (../../forward/, gpu_check_v2.py) and moved into the library, where it
compiles to the same PTX; this file now imports it. The design notes are in the library module's docstring.

    PYTHONPATH=/tmp/t36/site python docs/benchmarks/attention_gluon/fwd/v2/flash_fwd_gluon_v2.py --screen    # sm_90
    python docs/benchmarks/attention_gluon/fwd/v2/flash_fwd_gluon_v2.py --emulate  # CPU fp64 replay of the blocks
    PYTHONPATH=/tmp/t36/site python docs/benchmarks/attention_gluon/fwd/v2/flash_fwd_gluon_v2.py --jit-path  # compile
"""

import argparse
import json
import math
import os
import re
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE)))))  # repo root
sys.path.insert(0, ROOT)

from megatron.kernels import attention_gluon_fwd_sm90 as gfwd  # the kernel: the library's, since it moved there
from megatron.kernels.attention_gluon_fwd_sm90 import (
    BLOCK_M,
    BLOCK_N,
    CONSUMER_REGS,
    LAUNCH_OPTIONS,
    LOG2E,
    STAGES,
    WORKER_REGS,
    _attn_fwd_kernel,
    _descriptors,
)
from megatron.kernels.env import GLUON_IMPORT_ERROR
from megatron.kernels.interface import document_runs as _document_runs

LAST_COMPILED = gfwd.LAST_COMPILED
_IMPORT_ERROR = GLUON_IMPORT_ERROR
if _IMPORT_ERROR is None:
    import triton
    from triton.experimental import gluon


def gluon_attention_forward_v2(q, k, v, softmax_scale, run_start=None, run_end=None, block_n=BLOCK_N, stages=STAGES):
    """The library forward (gpu_check_v2.py's entry point). run_end is accepted and not needed: a causal key is in
    the query's document iff key >= doc_start(query). Returns out [b, s, h, d] bf16, lse [b, h, s] fp32 (log2)."""
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"Gluon unavailable: {_IMPORT_ERROR}")
    if q.shape[1] % BLOCK_M or q.shape[-1] not in (64, 128) or q.shape[2] % k.shape[2]:
        raise ValueError(f"unsupported shapes q {tuple(q.shape)}, k {tuple(k.shape)}")
    return gfwd.forward(q, k, v, softmax_scale, run_start, block_n=block_n, stages=stages)


def document_runs(ids):
    """run_start, run_end int32 [b, s] of document ids [b, s] (interface.document_runs)."""
    _, run_start, run_end = _document_runs(ids)
    return run_start, run_end


def ids_from_lengths(lengths_per_batch, seq):
    """Document ids [b, s] from a list (per batch row) of document lengths summing to seq."""
    rows = []
    for lengths in lengths_per_batch:
        assert sum(lengths) == seq, (lengths, seq)
        rows.append(torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)))
    return torch.stack(rows)


# --------------------------------------------------------------------------------------------------------------
# Offline screen (no GPU): compile for sm_90, report registers, spills, shared memory
# --------------------------------------------------------------------------------------------------------------
SCREEN_CONFIGS = [  # (name, head dim, group, documents, block_n, stages)
    ("hd128 MHA", 128, 1, False, 128, 3),
    ("hd128 GQA 4", 128, 4, False, 128, 3),
    ("hd64 GQA 4", 64, 4, False, 128, 3),
    ("hd128 documents", 128, 1, True, 128, 3),
    ("hd64 documents", 64, 1, True, 128, 3),
    ("hd128 GQA 4 + documents", 128, 4, True, 128, 3),
    ("hd64 GQA 8 + documents", 64, 8, True, 128, 3),
    ("hd64 MHA, 4 stages", 64, 1, False, 128, 4),
    ("hd128 documents, BN 64, 4 stages", 128, 1, True, 64, 4),
]


def compile_offline(dim, group, has_doc, block_n=BLOCK_N, stages=STAGES, arch=90):
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.runtime.jit import mangle_type

    from bench.kernel_resources import _ptxas_report, mma_counts, sass_report

    bsz, seq, heads = 1, 1024, 2 * group
    q = torch.empty(bsz, seq, heads, dim, dtype=torch.bfloat16)
    kv = torch.empty(bsz, seq, heads // group, dim, dtype=torch.bfloat16)
    descs = _descriptors(q, kv, kv, block_n)
    fn = _attn_fwd_kernel
    names = fn.arg_names
    sig = {n: mangle_type(descs[i]) for i, n in enumerate(names[:3])}
    sig.update(
        {"O": "*bf16", "LSE": "*fp32", "RUN_START": "*i32", "S": "i32", "H": "i32", "GROUP": "i32", "qk_scale": "fp32"}
    )
    constexprs = {"BM": BLOCK_M, "BN": block_n, "D": dim, "STAGES": stages, "HAS_DOC": has_doc,
                  "WORKER_REGS": WORKER_REGS, "CONSUMER_REGS": CONSUMER_REGS}  # fmt: skip
    for n in constexprs:
        sig[n] = "constexpr"
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ("O", "LSE", "RUN_START", "S", "H")}
    src = gluon._runtime.GluonASTSource(
        fn, sig, constexprs={(names.index(k),): v for k, v in constexprs.items()}, attrs=attrs
    )
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(LAUNCH_OPTIONS))
    ptx = compiled.asm["ptx"]
    rep = _ptxas_report(get_ptxas(arch).path, ptx, arch)
    rep.update(sass_report(compiled.asm.get("cubin"), get_ptxas(arch).path))
    return {
        "tile": {
            "BLOCK_M": BLOCK_M,
            "BLOCK_N": block_n,
            "HEAD_DIM": dim,
            "STAGES": stages,
            "GROUP": group,
            "HAS_DOC": has_doc,
        },
        "options": LAUNCH_OPTIONS,
        **rep,
        "shared_bytes": compiled.metadata.shared,
        "shared_limit_bytes": 232448,
        **mma_counts(ptx),
        "setmaxnreg": sorted(set(re.findall(r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+)", ptx))),
        "num_warps_total": compiled.metadata.num_warps,
        "ptxas": get_ptxas(arch).path,
    }, compiled


def screen(out_path, configs=SCREEN_CONFIGS):
    report = {"triton": triton.__version__, "arch": 90, "command": " ".join(["python", *sys.argv]),
              "note": "registers: ptxas -v (launch-level = maxnreg under warp specialization). "
                      "sass_max_register_index: highest register named in the SASS (busiest partition, vs 240). "
                      "sass_local_memory_instructions: LDL/STL.", "configs": []}  # fmt: skip
    for name, dim, group, has_doc, block_n, stages in configs:
        try:
            row, _ = compile_offline(dim, group, has_doc, block_n, stages)
        except Exception as e:  # noqa: BLE001 (reported, the screen goes on)
            row = {"error": f"{type(e).__name__}: {str(e)[-3000:]}"}
        row = {"name": name, **row}
        report["configs"].append(row)
        print(json.dumps(row), flush=True)
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {out_path}")
    return report


def jit_path_check():
    """Compile (not run) through gluon_attention_forward_v2 -> JIT launch, with a stub sm_90 driver."""
    from bench.kernel_resources import compile_only_sm90

    with compile_only_sm90() as launched:
        for heads, kv_heads, dim, docs, block_n in [(4, 4, 128, False, 128), (8, 2, 128, False, 128),
                                                     (8, 2, 64, False, 128), (4, 4, 128, True, 128),
                                                     (4, 1, 64, True, 128), (4, 2, 128, True, 64)]:  # fmt: skip
            seq = 512
            q = torch.randn(2, seq, heads, dim).bfloat16()
            k, v = (torch.randn(2, seq, kv_heads, dim).bfloat16() for _ in range(2))
            rs = re_ = None
            if docs:
                rs, re_ = document_runs(ids_from_lengths([[100, 300, 112], [512]], seq))
            gluon_attention_forward_v2(q, k, v, 0.088, rs, re_, block_n=block_n)
            _, grid, kernel = launched[-1]
            shared, warps, consts = kernel.metadata.shared, kernel.metadata.num_warps, kernel.src.constants
            print(f"jit path h={heads} g={kv_heads} d={dim} docs={docs} BN={block_n}: grid {grid}, shared {shared} B, "
                  f"{warps} warps, constants {sorted(consts.values(), key=str)}")  # fmt: skip
    print("jit path PASSED (compiled)")


# --------------------------------------------------------------------------------------------------------------
# CPU emulation in fp64 of the kernel's block loop: ranges, order, masks, guard, pipelined O updates, GQA
# --------------------------------------------------------------------------------------------------------------
def emulate_forward(q, k, v, scale, run_start=None, bm=BLOCK_M, bn=BLOCK_N):
    """Replays _attn_fwd_kernel per program and per consumer warpgroup (rows split bm/2 + bm/2), including the
    block ranges computed from run_start exactly as the kernel does. Returns out, lse (log2) and block counts."""
    bsz, seq, heads, dim = q.shape
    group = heads // k.shape[2]
    qk_scale = scale * LOG2E
    out = torch.zeros_like(q)
    lse = torch.zeros(bsz, heads, seq, dtype=q.dtype)
    nd = bm // bn
    ninf = float("-inf")
    stats = {"blocks": 0, "diag": 0, "full": 0, "edge": 0, "guarded_rows": 0}
    for b in range(bsz):
        for h in range(heads):
            kvh = h // group
            for m0 in range(0, seq, bm):  # one program
                kb0 = m0 // bn
                n_full, n_blocks = kb0, kb0 + nd
                if run_start is not None:
                    ds_first, ds_last = int(run_start[b, m0]), int(run_start[b, m0 + bm - 1])
                    lo = ds_first // bn
                    full_lo = max((ds_last + bn - 1) // bn, lo)
                    n_full = max(kb0 - full_lo, 0)
                    n_blocks = kb0 + nd - lo
                for row0 in (m0, m0 + bm // 2):  # the two consumer warpgroups
                    rows = bm // 2
                    qb = q[b, row0 : row0 + rows, h]
                    offs_m = torch.arange(row0, row0 + rows)
                    ds_row = run_start[b, row0 : row0 + rows].long() if run_start is not None else None
                    m_i = torch.full((rows,), ninf, dtype=q.dtype)
                    l_i = torch.zeros(rows, dtype=q.dtype)
                    acc = torch.zeros(rows, dim, dtype=q.dtype)
                    p_prev = v_prev = None
                    for j in range(n_blocks):
                        mode = 1 if j < nd else (0 if j < nd + n_full else 2)
                        if run_start is None:
                            assert mode != 2
                        kb = kb0 + j if j < nd else kb0 + nd - 1 - j
                        assert kb >= 0
                        if row0 == m0:
                            stats["blocks"] += 1
                            stats[("full", "diag", "edge")[mode]] += 1
                        kk, vv = k[b, kb * bn : kb * bn + bn, kvh], v[b, kb * bn : kb * bn + bn, kvh]
                        s = qb @ kk.T
                        offs_n = torch.arange(kb * bn, kb * bn + bn)
                        if mode == 1:
                            keep = offs_m[:, None] >= offs_n[None, :]
                            if ds_row is not None:
                                keep = keep & (offs_n[None, :] >= ds_row[:, None])
                            s = torch.where(keep, s, torch.full_like(s, ninf))
                        elif mode == 2:
                            s = torch.where(offs_n[None, :] >= ds_row[:, None], s, torch.full_like(s, ninf))
                        m_new = torch.maximum(m_i, s.max(1).values * qk_scale)
                        m_use = m_new
                        if mode == 1 and ds_row is not None and bn < bm:
                            m_use = torch.where(m_new == ninf, torch.zeros_like(m_new), m_new)
                            stats["guarded_rows"] += int((m_new == ninf).sum())  # rows that needed the guard
                        p = torch.exp2(s * qk_scale - m_use[:, None])
                        alpha = torch.exp2(m_i - m_use)
                        assert not torch.isnan(p).any() and not torch.isnan(alpha).any(), (b, h, m0, j)
                        l_i = l_i * alpha + p.sum(1)
                        if p_prev is not None:  # pipelined: acc += P_{j-1} V_{j-1}, then the rescale by alpha_j
                            acc = acc + p_prev @ v_prev
                        acc = acc * alpha[:, None]
                        p_prev, v_prev = p, vv
                        m_i = m_new
                    acc = acc + p_prev @ v_prev
                    out[b, row0 : row0 + rows, h] = acc / l_i[:, None]
                    lse[b, h, row0 : row0 + rows] = m_i + torch.log2(l_i)
    return out, lse, stats


def reference_forward(q, k, v, scale, ids=None):
    """Plain causal (and document-masked) softmax attention; GQA by repeating K / V. lse in log2 units."""
    seq, heads = q.shape[1], q.shape[2]
    group = heads // k.shape[2]
    kr, vr = (t.repeat_interleave(group, dim=2) for t in (k, v))
    s = torch.einsum("bmhd,bnhd->bhmn", q, kr) * scale
    keep = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()[None]
    if ids is not None:
        keep = keep & (ids[:, :, None] == ids[:, None, :])
    s = s.masked_fill(~keep[:, None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1) * LOG2E
    out = torch.einsum("bhmn,bnhd->bmhd", torch.softmax(s, dim=-1), vr)
    return out, lse


EMULATE_CASES = [  # (b, s, h, g, d, bm, bn, document lengths per batch row or None)
    (1, 256, 2, 2, 8, 64, 64, None),
    (2, 256, 4, 1, 8, 64, 32, None),  # MQA, 2 diagonal blocks
    (1, 384, 4, 2, 8, 128, 128, None),
    (2, 256, 4, 2, 8, 64, 64, [[64, 128, 64], [256]]),  # edges on block boundaries
    (2, 256, 4, 2, 8, 64, 64, [[50, 13, 100, 93], [1, 255]]),  # edges off boundaries, a 1-token document
    (1, 512, 2, 1, 8, 64, 32, [[40, 24, 200, 7, 1, 240]]),  # BN < BM: the guard (a row sees none of block kb0)
    (1, 512, 4, 4, 8, 128, 128, [[130, 126, 256]]),  # edge inside the query block, block 1 straddles
    (1, 512, 4, 2, 8, 128, 64, [[200, 40, 10, 262]]),
    (2, 384, 6, 3, 8, 128, 128, "random"),
    (2, 512, 8, 2, 8, 64, 32, "random"),
]


def _random_lengths(seq, gen):
    lengths, left = [], seq
    while left > 0:
        n = int(torch.randint(1, min(left, seq // 2) + 1, (1,), generator=gen))
        lengths.append(n)
        left -= n
    return lengths


def emulate_check():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    ok = True
    for bsz, seq, heads, kv_heads, dim, bm, bn, docs in EMULATE_CASES:
        q = torch.randn(bsz, seq, heads, dim, dtype=torch.float64)
        k, v = (torch.randn(bsz, seq, kv_heads, dim, dtype=torch.float64) for _ in range(2))
        scale = 1.0 / math.sqrt(dim)
        ids = run_start = None
        if docs is not None:
            lengths = [_random_lengths(seq, gen) for _ in range(bsz)] if docs == "random" else docs
            ids = ids_from_lengths(lengths, seq)
            run_start, _ = document_runs(ids)
        ref, ref_lse = reference_forward(q, k, v, scale, ids)
        out, lse, stats = emulate_forward(q, k, v, scale, run_start, bm, bn)
        e_out = ((out - ref).norm() / ref.norm()).item()
        e_lse = (lse - ref_lse).abs().max().item()
        case_ok = e_out < 1e-10 and e_lse < 1e-10
        ok &= case_ok
        dense = bsz * heads * (seq // bm) * ((seq // bm) * (bm // bn) + (bm // bn)) // 2  # causal block count
        print(f"emulate b={bsz} s={seq} h={heads} g={kv_heads} bm={bm} bn={bn} docs={docs if docs != 'random' else lengths}: "
              f"out rel err {e_out:.1e}, lse max abs err {e_lse:.1e}; blocks per warpgroup {stats} "
              f"(causal-only {dense // 1}) {'ok' if case_ok else 'FAIL'}", flush=True)  # fmt: skip
    print("emulation", "PASSED" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--screen", action="store_true", help="compile each config offline for sm_90")
    p.add_argument("--emulate", action="store_true", help="CPU fp64 replay of the block loop")
    p.add_argument("--jit-path", action="store_true", help="compile through the real launch path (stub driver)")
    p.add_argument("--out", default=os.path.join(HERE, "sm90_screen_v2.json"))
    a = p.parse_args()
    if a.emulate:
        emulate_check()
    if a.screen:
        screen(a.out)
    if a.jit_path:
        jit_path_check()
