"""Tools around the warp-specialized Gluon forward (`megatron/model/flash_attn_gluon_fwd.py`): an offline sm_90
screen of its variants, a compile-only pass through the launch path, a CPU fp64 replay of the block math, and
`gluon_attention_forward`, which `gpu_check.py` calls with a chosen variant. The kernels were written here as a
prototype (commit f324333, where the design notes are) and moved into the library; this file imports them.

    PYTHONPATH=/tmp/t36/site python docs/benchmarks/attention_gluon/fwd/flash_fwd_gluon.py --screen   # offline sm_90
    python docs/benchmarks/attention_gluon/fwd/flash_fwd_gluon.py --emulate   # CPU fp64 replay of the block math
    PYTHONPATH=/tmp/t36/site python docs/benchmarks/attention_gluon/fwd/flash_fwd_gluon.py --jit-path  # compile only
"""

import argparse
import json
import math
import os
import re
import sys

import torch

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
)
from megatron.model import flash_attn_gluon_fwd as gfwd  # the kernels: the library's, since they moved there
from megatron.model.flash_attn_gluon_fwd import (
    BLOCK_M,
    BLOCK_N,
    CONSUMER_REGS,
    DEFAULT_VARIANT,
    HEAD_DIM,
    LOG2E,
    STAGES,
    VARIANTS,
    WORKER_REGS,
    _attn_fwd_kernel,
    _descriptors,
    _launch_options,
)

LAST_COMPILED = gfwd.LAST_COMPILED
_IMPORT_ERROR = gfwd._IMPORT_ERROR
if _IMPORT_ERROR is None:
    import triton
    from triton.experimental import gluon


def gluon_attention_forward(q, k, v, softmax_scale, variant=DEFAULT_VARIANT, block_n=BLOCK_N, stages=STAGES):
    """The library forward with a chosen variant, key block and ring depth (out, lse as flash_attn_triton keeps)."""
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"Gluon unavailable: {_IMPORT_ERROR}")
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} not in {VARIANTS}")
    if block_n not in (64, 128):
        raise ValueError(f"block_n {block_n} not in (64, 128)")
    return gfwd.forward(q, k, v, softmax_scale, variant=variant, block_n=block_n, stages=stages)


def _repo_root():
    return os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    )


# --------------------------------------------------------------------------------------------------------------
# Offline screen (no GPU): compile for sm_90, report registers, spills, shared memory, wgmma, setmaxnreg
# --------------------------------------------------------------------------------------------------------------
SCREEN_CONFIGS = [  # (variant, block_n, stages); the first is the default
    ("split", 128, 3),
    ("split_pp", 128, 3),
    ("split_simple", 128, 3),
    ("split", 64, 4),
    ("overlap", 128, 3),
    ("simple", 128, 3),
    ("overlap", 64, 4),
    ("overlap", 64, 6),
    ("simple", 64, 4),
]


def compile_offline(variant, block_n=BLOCK_N, stages=STAGES, arch=90):
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas

    sys.path.insert(0, _repo_root())
    from bench.kernel_resources import _ptxas_report, mma_counts

    bsz, seq, heads = 1, 1024, 2
    q = torch.empty(bsz, seq, heads, HEAD_DIM, dtype=torch.bfloat16)
    descs = _descriptors(q, q, q, block_n, VARIANTS[variant][1])
    from triton.runtime.jit import mangle_type

    fn = _attn_fwd_kernel
    names = fn.arg_names
    sig = {n: mangle_type(descs[i]) for i, n in enumerate(names[:3])}
    sig.update({"O": "*bf16", "LSE": "*fp32", "S": "i32", "H": "i32", "qk_scale": "fp32"})
    constexprs = {"BM": BLOCK_M, "BN": block_n, "D": HEAD_DIM, "STAGES": stages, "OVERLAP": VARIANTS[variant][0],
                  "SPLIT": VARIANTS[variant][1], "PINGPONG": VARIANTS[variant][2], "WORKER_REGS": WORKER_REGS, "CONSUMER_REGS": CONSUMER_REGS}  # fmt: skip
    for n in constexprs:
        sig[n] = "constexpr"
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ("O", "LSE", "S", "H")}
    src = gluon._runtime.GluonASTSource(
        fn, sig, constexprs={(names.index(k),): v for k, v in constexprs.items()}, attrs=attrs
    )
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=_launch_options(variant))
    ptx = compiled.asm["ptx"]
    rep = _ptxas_report(get_ptxas(arch).path, ptx, arch)
    rep.update(_sass_report(compiled.asm.get("cubin"), get_ptxas(arch).path))
    return {
        "variant": variant,
        "tile": {"BLOCK_M": BLOCK_M, "BLOCK_N": block_n, "HEAD_DIM": HEAD_DIM, "STAGES": stages},
        "options": _launch_options(variant),
        **rep,
        "shared_bytes": compiled.metadata.shared,
        "shared_limit_bytes": 232448,
        **mma_counts(ptx),
        "setmaxnreg": sorted(set(re.findall(r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+)", ptx))),
        "tma_load_in_ptx": len(re.findall(r"cp\.async\.bulk\.tensor", ptx)),
        "bar_sync_in_ptx": len(re.findall(r"\bbar\.sync|barrier\.sync", ptx)),
        "mbarrier_arrive_in_ptx": len(re.findall(r"mbarrier\.arrive", ptx)),
        "ex2_in_ptx": len(re.findall(r"ex2\.approx", ptx)),
        "num_warps_total": compiled.metadata.num_warps,
    }, compiled


def _sass_report(cubin, ptxas_path):
    """Local-memory (spill) instructions and wgmma/barrier counts in the SASS (nvdisasm next to Triton's ptxas)."""
    import subprocess
    import tempfile

    nvdisasm = os.path.join(os.path.dirname(ptxas_path), "nvdisasm")
    if not cubin or not os.path.exists(nvdisasm):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([nvdisasm, "-c", f.name], check=True, capture_output=True, text=True).stdout
    return {
        "sass_local_memory_instructions": len(re.findall(r"\b(?:LDL|STL)\b", sass)),
        "sass_hgmma": len(re.findall(r"\bHGMMA\b", sass)),
        "sass_warpgroup_wait": len(re.findall(r"\bWARPGROUP\.DEPBAR", sass)),
        "sass_bar_sync": len(re.findall(r"\bBAR\.SYNC", sass)),
        "sass_mufu_ex2": len(re.findall(r"MUFU\.EX2", sass)),
        # highest general register named anywhere: what the busiest partition needs (+1), under its setmaxnreg
        "sass_max_register_index": max((int(r) for r in re.findall(r"\bR(\d+)\b", sass)), default=None),
    }


def screen(out_path, configs=SCREEN_CONFIGS):
    report = {
        "triton": triton.__version__ if _IMPORT_ERROR is None else None,
        "arch": 90,
        "command": " ".join(["python", *sys.argv]),
        "note": "registers: ptxas -v of the whole kernel (launch-level = maxnreg under warp specialization; the "
        "default partition raises itself to setmaxnreg.inc's value). sass_local_memory_instructions: LDL/STL.",
        "configs": [],
    }
    if _IMPORT_ERROR is not None:
        report["error"] = repr(_IMPORT_ERROR)
    for i, (variant, block_n, stages) in enumerate(configs if _IMPORT_ERROR is None else ()):
        try:
            row, _ = compile_offline(variant, block_n, stages)
        except Exception as e:  # noqa: BLE001 (reported, the screen goes on)
            row = {"variant": variant, "tile": {"BLOCK_N": block_n, "STAGES": stages},
                   "error": f"{type(e).__name__}: {str(e)[-3000:]}"}  # fmt: skip
        row["default"] = i == 0
        report["configs"].append(row)
        print(json.dumps(row), flush=True)
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {out_path}")
    return report


def jit_path_check():
    """Compile (not run) through the real call path, gluon_attention_forward -> JIT launch, with a stub driver for
    an sm_90 target: catches argument, specialization and option mistakes without a GPU."""
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

    previous = driver._active
    driver.set_active(_StubDriver())
    run = JITFunction.run
    seen = []

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        seen.append((grid, kernel.metadata.shared, kernel.metadata.num_warps))
        return kernel

    JITFunction.run = compile_only
    try:
        q, k, v = (torch.randn(2, 512, 3, HEAD_DIM).bfloat16() for _ in range(3))
        for variant, block_n, stages in SCREEN_CONFIGS[:4]:
            gluon_attention_forward(q, k, v, 0.088, variant=variant, block_n=block_n, stages=stages)
            grid, shared, warps = seen[-1]
            print(f"jit path {variant} BN={block_n} stages={stages}: grid {grid}, shared {shared} B, {warps} warps")
    finally:
        JITFunction.run = run
        driver._active = previous


# --------------------------------------------------------------------------------------------------------------
# CPU emulation in fp64 of the kernel's block loop (same block order, masks, exp2 online softmax, log2 lse)
# --------------------------------------------------------------------------------------------------------------
def emulate_forward(q, k, v, scale, bm=BLOCK_M, bn=BLOCK_N, overlap=True):
    bsz, seq, heads, dim = q.shape
    qk_scale = scale * LOG2E
    out = torch.zeros_like(q)
    lse = torch.zeros(bsz, heads, seq, dtype=q.dtype)
    nd = bm // bn
    for b in range(bsz):
        for h in range(heads):
            for m0 in range(0, seq, bm):  # one program
                qb = q[b, m0 : m0 + bm, h]
                m_i = torch.full((bm,), float("-inf"), dtype=q.dtype)
                l_i = torch.zeros(bm, dtype=q.dtype)
                acc = torch.zeros(bm, dim, dtype=q.dtype)
                n_blocks = (m0 + bm) // bn
                p_prev = v_prev = None
                for j in range(n_blocks):
                    kb = m0 // bn + j if j < nd else m0 // bn + nd - 1 - j
                    kk, vv = k[b, kb * bn : kb * bn + bn, h], v[b, kb * bn : kb * bn + bn, h]
                    s = qb @ kk.T
                    if j < nd:
                        keep = torch.arange(m0, m0 + bm)[:, None] >= torch.arange(kb * bn, kb * bn + bn)[None, :]
                        s = torch.where(keep, s, torch.full_like(s, float("-inf")))
                    m_new = torch.maximum(m_i, s.max(1).values * qk_scale)
                    p = torch.exp2(s * qk_scale - m_new[:, None])
                    alpha = torch.exp2(m_i - m_new)
                    l_i = l_i * alpha + p.sum(1)
                    if overlap:  # acc += P_{j-1} V_{j-1} first, then the rescale by alpha_j
                        if p_prev is not None:
                            acc = acc + p_prev @ v_prev
                        acc = acc * alpha[:, None]
                        p_prev, v_prev = p, vv
                    else:
                        acc = acc * alpha[:, None] + p @ vv
                    m_i = m_new
                if overlap:
                    acc = acc + p_prev @ v_prev
                out[b, m0 : m0 + bm, h] = acc / l_i[:, None]
                lse[b, h, m0 : m0 + bm] = m_i + torch.log2(l_i)
    return out, lse


def emulate_check():
    torch.manual_seed(0)
    ok = True
    for bsz, seq, heads, dim, bm, bn in [(1, 128, 2, 16, 32, 32), (2, 256, 2, 16, 64, 32), (1, 384, 1, 8, 128, 128),
                                         (1, 512, 2, 8, 128, 64)]:  # fmt: skip
        q, k, v = (torch.randn(bsz, seq, heads, dim, dtype=torch.float64) for _ in range(3))
        scale = 1.0 / math.sqrt(dim)
        s = torch.einsum("bmhd,bnhd->bhmn", q, k) * scale
        mask = torch.ones(seq, seq, dtype=torch.bool).tril()
        s = s.masked_fill(~mask, float("-inf"))
        ref = torch.einsum("bhmn,bnhd->bmhd", torch.softmax(s, dim=-1), v)
        ref_lse = torch.logsumexp(s, dim=-1) * LOG2E  # log2 units
        for overlap in (True, False):
            out, lse = emulate_forward(q, k, v, scale, bm, bn, overlap)
            e_out = ((out - ref).norm() / ref.norm()).item()
            e_lse = (lse - ref_lse).abs().max().item()
            ok &= e_out < 1e-10 and e_lse < 1e-10
            print(f"emulate b={bsz} s={seq} h={heads} d={dim} bm={bm} bn={bn} overlap={overlap}: out rel err "
                  f"{e_out:.2e}, lse max abs err {e_lse:.2e}", flush=True)  # fmt: skip
    print("emulation", "PASSED" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--screen", action="store_true", help="compile each config offline for sm_90")
    p.add_argument("--emulate", action="store_true", help="CPU fp64 replay of the block loop math")
    p.add_argument("--jit-path", action="store_true", help="compile through the real launch path (stub driver)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "sm90_screen.json"))
    a = p.parse_args()
    if a.emulate:
        emulate_check()
    if a.screen:
        screen(a.out)
    if a.jit_path:
        jit_path_check()
