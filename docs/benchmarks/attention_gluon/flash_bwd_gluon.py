"""Tools around the fused Gluon backward (`megatron/kernels/attention_gluon_bwd_sm90.py`): an offline sm_90 screen,
a compile-only pass through the real launch path, a CPU fp64 replay of the block math, and
`gluon_attention_backward`, which `gpu_check.py` and `diag.py` call with a chosen variant ("ws" or
"plain") and Q/dO ring depth. The kernels were first written here as a prototype (commit 22f32d8) and
moved into the library; this file now imports them.

    PYTHONPATH=/tmp/t36/site python docs/benchmarks/attention_gluon/flash_bwd_gluon.py --screen   # offline, sm_90
    python docs/benchmarks/attention_gluon/flash_bwd_gluon.py --emulate   # CPU fp64 check of the block math
    PYTHONPATH=/tmp/t36/site python docs/benchmarks/attention_gluon/flash_bwd_gluon.py --jit-path  # real call path, compile only
"""

import argparse
import json
import math
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
from megatron.kernels import attention_gluon_bwd_sm90 as fag
from megatron.kernels.attention_gluon_bwd_sm90 import BLOCK_M, BLOCK_N, LOG2E, STAGES, VARIANTS, WS_WORKER_REGS
from megatron.kernels.env import GLUON_IMPORT_ERROR

HEAD_DIM = 128
LAST_COMPILED = fag.LAST_COMPILED
_IMPORT_ERROR = GLUON_IMPORT_ERROR
if _IMPORT_ERROR is None:
    import triton
    from triton.experimental import gluon


def gluon_attention_backward(q, k, v, out, dout, lse, softmax_scale, variant="ws", delta=None, stages=STAGES):
    """dq, dk, dv of causal attention through the library kernel, with a chosen variant and ring depth.
    delta = rowsum(out * dout) [b, h, s] is computed if not given."""
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"Gluon unavailable: {_IMPORT_ERROR}")
    if delta is None:
        delta = compute_delta(out, dout)
    return fag.backward(q, k, v, dout, lse, delta, softmax_scale, variant=variant, stages=stages)


def compute_delta(out, dout):
    """delta = rowsum(out * dout), [b, h, s] fp32, with our library's Triton kernel."""
    from megatron.kernels import attention_triton

    return attention_triton.row_delta(out, dout)


def _repo_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


# --------------------------------------------------------------------------------------------------------------
# Offline screen (no GPU): compile each variant for sm_90, report registers, spills, shared memory, wgmma, setmaxnreg
# --------------------------------------------------------------------------------------------------------------
def compile_offline(variant, stages=STAGES, arch=90, head_dim=HEAD_DIM, group=1, has_doc=False):
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import mangle_type

    sys.path.insert(0, _repo_root())
    from bench.kernel_resources import _ptxas_report, mma_counts

    bsz, seq, heads = 1, 1024, 4
    mk = lambda *shape, dt=torch.bfloat16: torch.empty(*shape, dtype=dt)
    q = mk(bsz, seq, heads, head_dim)
    kv = mk(bsz, seq, heads // group, head_dim)
    fp32 = torch.float32
    descs = fag._descriptors(
        q, kv, kv, q, mk(bsz, seq, heads, head_dim, dt=fp32), mk(bsz, heads, seq, dt=fp32), mk(bsz, heads, seq, dt=fp32)
    )
    fn = fag._attn_bwd_kernel
    names = fn.arg_names
    sig = {n: mangle_type(descs[i]) for i, n in enumerate(names[:7])}
    sig.update({"DK": "*bf16", "DV": "*bf16", "RUN_START": "*i32", "RUN_END": "*i32", "S": "i32",
                "H": "i32", "KV_H": "i32", "qk_scale": "fp32", "sm_scale": "fp32"})  # fmt: skip
    constexprs = {"BM": BLOCK_M, "BN": BLOCK_N, "D": head_dim, "STAGES": stages, "WS": variant == "ws",
                  "WORKER_REGS": WS_WORKER_REGS, "GROUP": group, "HAS_DOC": has_doc}  # fmt: skip
    for n in constexprs:
        sig[n] = "constexpr"
    attrs = {
        (names.index(n),): [["tt.divisibility", 16]] for n in ("DK", "DV", "RUN_START", "RUN_END", "S", "H", "KV_H")
    }
    src = gluon._runtime.GluonASTSource(
        fn, sig, constexprs={(names.index(k),): v for k, v in constexprs.items()}, attrs=attrs
    )
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=fag._launch_options(variant))
    ptx = compiled.asm["ptx"]
    from triton.backends.nvidia.compiler import get_ptxas

    rep = _ptxas_report(get_ptxas(arch).path, ptx, arch)
    rep.update(_sass_local_memory(compiled.asm.get("cubin"), get_ptxas(arch).path))
    return {
        "variant": variant,
        "tile": {
            "BLOCK_M": BLOCK_M,
            "BLOCK_N": BLOCK_N,
            "HEAD_DIM": head_dim,
            "STAGES": stages,
            "GROUP": group,
            "HAS_DOC": has_doc,
        },
        "options": fag._launch_options(variant),
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
    from bench.kernel_resources import disassemble

    sass = disassemble(cubin, ptxas_path)
    if sass is None:
        return {}
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


# (variant, stages, head_dim, group, has_doc): both ring depths of both variants, then the library's ws build
# with grouped-query attention, head dim 64 and packed documents.
SCREEN_CONFIGS = [(v, st, HEAD_DIM, 1, False) for v in VARIANTS for st in (2, STAGES)] + [
    ("ws", STAGES, d, group, docs) for d in (128, 64) for group in (1, 4) for docs in (False, True)
]


def screen(out_path, configs=SCREEN_CONFIGS):
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
    for variant, stages, head_dim, group, has_doc in configs if _IMPORT_ERROR is None else ():
        try:
            row, _ = compile_offline(variant, stages, head_dim=head_dim, group=group, has_doc=has_doc)
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
    from bench.kernel_resources import compile_only_sm90

    with compile_only_sm90() as launched:
        bsz, seq, heads = 2, 512, 3
        q, k, v, o, do = (torch.randn(bsz, seq, heads, HEAD_DIM).bfloat16() for _ in range(5))
        lse, delta = torch.randn(bsz, heads, seq), torch.randn(bsz, heads, seq)
        for variant in VARIANTS:
            for stages in (2, STAGES):
                gluon_attention_backward(q, k, v, o, do, lse, 0.088, variant=variant, delta=delta, stages=stages)
                _, grid, kernel = launched[-1]
                shared, warps = kernel.metadata.shared, kernel.metadata.num_warps
                print(f"jit path {variant} stages={stages}: grid {grid}, shared {shared} B, {warps} warps", flush=True)


# --------------------------------------------------------------------------------------------------------------
# CPU emulation of the kernel's block loop in fp64 (the math only: same block order, masks, log2 lse, scaling)
# --------------------------------------------------------------------------------------------------------------
def emulate_backward(q, k, v, dout, lse2, delta, scale, bm=BLOCK_M, bn=BLOCK_N):
    """q, k, v, dout [b, s, h, d]; lse2 [b, h, s] in log2 units; returns dq, dk, dv as the kernel computes them."""
    bsz, seq, heads, _ = q.shape
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
