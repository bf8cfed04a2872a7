"""GPU check of the Gluon forward prototype (flash_fwd_gluon.py) on one Hopper GPU (H200 / H100, Triton 3.6).

    python3 docs/benchmarks/attention_gluon/fwd/gpu_check.py --out DIR        # from the repo root

Writes DIR/gluon_fwd_check.json (rewritten after every stage) and prints every result as it comes. Stages, each in
its own child process with a timeout (a Gluon kernel that deadlocks on an mbarrier cannot hang this script):
  correct:main    the first N_MAIN configs of CONFIGS (split, split_pp, overlap; BLOCK_N 128, 3 stages) at
                  (b, s, h) = (1,128,2), (2,256,4), (1,1024,3), (2,2048,2), (1,4096,2), (1,8192,1): out and lse
                  against an fp32 reference (explicit causal softmax) and against our Triton forward
                  (flash_attn_triton._fwd_kernel); then our fused backward (flash_attn_gluon.backward) on the Gluon
                  forward's out / lse, dq dk dv against the fp32 reference (autograd). Pass: out rel norm error
                  < 1e-2, lse max |diff| vs our forward < 1e-2, dq dk dv rel norm errors < 1e-2. Also the launched
                  kernel's n_regs, n_spills, shared memory.
  time:reference  our Triton forward and torch SDPA cuDNN forward at 4k (batch 4), 16k (1), 64k (1), 16 heads.
  time:gluon      every Gluon forward config of CONFIGS, same shapes.
  correct:alt     the other configs (out / lse only), shapes up to 4096.
Children write their JSON after every case / timing, so a stage killed by its timeout keeps what it measured
("partial": true).
Whole-script budget: --budget seconds (default 200); stages that would start after it are skipped.
FLOPs: causal forward = 4*b*h*s*s*d/2; times: triton.testing.do_bench medians (ms).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

CORRECT_SHAPES = [(1, 128, 2), (2, 256, 4), (1, 1024, 3), (2, 2048, 2), (1, 4096, 2), (1, 8192, 1)]  # (b, s, h)
TIMING_SHAPES = [(4, 4096, 16), (1, 16384, 16), (1, 65536, 16)]
# (variant, BLOCK_N, stages); see flash_fwd_gluon.VARIANTS. The first N_MAIN are checked in correct:main (with the
# fused backward), the rest in correct:alt; all are timed.
CONFIGS = [("split", 128, 3), ("split_pp", 128, 3), ("overlap", 128, 3),
           ("split", 64, 4), ("split_simple", 128, 3), ("simple", 128, 3)]  # fmt: skip
N_MAIN = 3
HEAD_DIM = 128
TOL = 1e-2
STAGE_TIMEOUT = {"correct:main": 80, "time:reference": 30, "time:gluon": 60, "correct:alt": 30}
STAGES_ORDER = ["correct:main", "time:reference", "time:gluon", "correct:alt"]


def log(*a):
    print(*a, flush=True)


def cfg_name(cfg):
    return f"{cfg[0]}_bn{cfg[1]}_st{cfg[2]}"


# --------------------------------------------------------------------------------------------------------------
# Helpers used inside the children
# --------------------------------------------------------------------------------------------------------------
def triton_forward(q, k, v, scale):
    """Our Triton forward (flash_attn_triton._fwd_kernel, as _FlashAttnTriton.forward launches it): out, lse."""
    import torch
    import triton

    from megatron.model import flash_attn_triton as fat

    bsz, seq, heads, dim = q.shape
    out = torch.empty_like(q)
    lse = torch.empty(bsz, heads, seq, dtype=torch.float32, device=q.device)
    dummy = torch.empty(1, dtype=torch.int32, device=q.device)
    bm, bn, warps, stages = fat._config("fwd", dim)
    fat._fwd_kernel[(triton.cdiv(seq, bm), bsz * heads)](
        q, k, v, out, lse, dummy, dummy, dummy,
        *fat._strides3(q), *fat._strides3(k), *fat._strides3(v), *fat._strides3(out),
        seq, heads, 1, scale * fat.LOG2E,
        BLOCK_M=bm, BLOCK_N=bn, HEAD_DIM=dim, CAUSAL=True, HAS_DOC=False, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out, lse


def reference(q, k, v, dout, scale, grads):
    """fp32 reference on the bf16 inputs upcast: out, lse (log2 units) and, if grads, dq dk dv (autograd)."""
    import torch

    qf, kf, vf = (t.detach().float().requires_grad_(grads) for t in (q, k, v))
    seq = q.shape[1]
    s = torch.einsum("bmhd,bnhd->bhmn", qf, kf) * scale
    mask = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    s = s.masked_fill(~mask, float("-inf"))
    lse = (torch.logsumexp(s, dim=-1) * 1.4426950408889634).detach()
    out = torch.einsum("bhmn,bnhd->bmhd", torch.softmax(s, dim=-1), vf)
    g = None
    if grads:
        out.backward(dout.float())
        g = (qf.grad, kf.grad, vf.grad)
    return out.detach(), lse, g


def rel_norm(got, ref):
    g, r = got.float(), ref.float()
    return ((g - r).norm() / r.norm()).item()


def max_abs(got, ref):
    return (got.float() - ref.float()).abs().max().item()


def compiled_info(kernel):
    if kernel is None:
        return None
    md = getattr(kernel, "metadata", None)
    info = {"n_regs": getattr(kernel, "n_regs", None), "n_spills": getattr(kernel, "n_spills", None),
            "shared": getattr(md, "shared", None), "num_warps": getattr(md, "num_warps", None)}  # fmt: skip
    try:
        import re

        ptx = kernel.asm["ptx"]
        info["wgmma_in_ptx"] = len(re.findall(r"wgmma\.mma_async", ptx))
        info["setmaxnreg"] = sorted(set(re.findall(r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+)", ptx)))
    except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
        info["ptx_error"] = repr(e)
    return info


def make_qkvdo(bsz, seq, heads, seed):
    import torch

    gen = torch.Generator(device="cuda").manual_seed(seed)
    shape = (bsz, seq, heads, HEAD_DIM)
    return [torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4)]


def flops_fwd(bsz, heads, seq):
    return 4 * bsz * heads * seq * seq * HEAD_DIM / 2


# --------------------------------------------------------------------------------------------------------------
# Child stages
# --------------------------------------------------------------------------------------------------------------
def child_correct(which, res):
    import flash_fwd_gluon as ffg
    import torch

    scale = 1.0 / math.sqrt(HEAD_DIM)
    configs = CONFIGS[:N_MAIN] if which == "main" else CONFIGS[N_MAIN:]
    shapes = CORRECT_SHAPES if which == "main" else [s for s in CORRECT_SHAPES if s[1] <= 4096]
    res["cases"] = []
    all_ok = True
    for i, (bsz, seq, heads) in enumerate(shapes):
        q, k, v, dout = make_qkvdo(bsz, seq, heads, seed=i)
        ref_out, ref_lse, ref_g = reference(q, k, v, dout, scale, grads=which == "main")
        t_out, t_lse = triton_forward(q, k, v, scale)
        for cfg in configs:
            case = {"config": cfg_name(cfg), "b": bsz, "s": seq, "h": heads}
            res["cases"].append(case)
            try:
                out, lse = ffg.gluon_attention_forward(q, k, v, scale, variant=cfg[0], block_n=cfg[1], stages=cfg[2])
                torch.cuda.synchronize()
                res.setdefault("compiled", {}).setdefault(cfg_name(cfg), compiled_info(ffg.LAST_COMPILED.get(cfg[0])))
                case["out_rel_vs_ref"] = rel_norm(out, ref_out)
                case["out_rel_vs_triton"] = rel_norm(out, t_out)
                case["triton_out_rel_vs_ref"] = rel_norm(t_out, ref_out)
                case["lse_maxabs_vs_triton"] = max_abs(lse, t_lse)
                case["lse_maxabs_vs_ref"] = max_abs(lse, ref_lse)
                case["triton_lse_maxabs_vs_ref"] = max_abs(t_lse, ref_lse)
                case["nan"] = bool(torch.isnan(out).any().item() or torch.isnan(lse).any().item())
                ok = case["out_rel_vs_ref"] < TOL and case["lse_maxabs_vs_triton"] < TOL and not case["nan"]
                msg = (f"[{cfg_name(cfg)}] b={bsz} s={seq} h={heads}: out rel {case['out_rel_vs_ref']:.2e} "
                       f"(triton {case['triton_out_rel_vs_ref']:.2e}, vs triton {case['out_rel_vs_triton']:.2e}), "
                       f"lse |d| vs triton {case['lse_maxabs_vs_triton']:.2e} vs ref {case['lse_maxabs_vs_ref']:.2e}")  # fmt: skip
                if which == "main":  # our fused backward on the Gluon forward's out / lse
                    from megatron.model import flash_attn_gluon as fag

                    delta = (out.float() * dout.float()).sum(-1).permute(0, 2, 1).contiguous()
                    dq, dk, dv = fag.backward(q, k, v, dout, lse, delta, scale)
                    torch.cuda.synchronize()
                    for name, g, r in zip(("dq", "dk", "dv"), (dq, dk, dv), ref_g):
                        case[f"{name}_rel_vs_ref"] = rel_norm(g, r)
                        ok &= case[f"{name}_rel_vs_ref"] < TOL
                    msg += ", bwd on gluon lse: " + ", ".join(
                        f"{n} {case[f'{n}_rel_vs_ref']:.2e}" for n in ("dq", "dk", "dv")
                    )
                case["pass"] = bool(ok)
                all_ok &= ok
                log(msg + (" PASS" if ok else " FAIL"))
                res["pass_so_far"] = bool(all_ok)
                SAVE()
            except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
                case["error"] = f"{type(e).__name__}: {e}"[-2000:]
                case["traceback"] = traceback.format_exc()[-4000:]
                all_ok = False
                log(f"[{cfg_name(cfg)}] b={bsz} s={seq} h={heads}: ERROR {case['error'][:600]}")
        del q, k, v, dout, ref_out, ref_lse, ref_g
        torch.cuda.empty_cache()
    res["pass"] = bool(all_ok)


def _time_shape(which, res, row, bsz, seq, heads, bench):
    """Timings of one shape (a function of its own so the benchmarked lambdas bind this shape's tensors)."""
    import torch

    scale = 1.0 / math.sqrt(HEAD_DIM)
    q, k, v, _ = make_qkvdo(bsz, seq, heads, seed=0)
    f = flops_fwd(bsz, heads, seq)

    def record(key, fn):
        try:
            row[f"{key}_ms"] = bench(fn)
            row[f"{key}_tflops"] = f / row[f"{key}_ms"] / 1e9
            SAVE()
            log(f"[{which}] b={bsz} s={seq} h={heads}: {key} {row[f'{key}_ms']:.3f} ms "
                f"{row[f'{key}_tflops']:.0f} TFLOP/s")  # fmt: skip
        except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
            row[f"{key}_error"] = f"{type(e).__name__}: {e}"[-2000:]
            log(f"[{which}] b={bsz} s={seq}: {key} ERROR {row[f'{key}_error'][:600]}")

    if which == "reference":
        record("triton_fwd", lambda: triton_forward(q, k, v, scale))
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            qc, kc, vc = (t.transpose(1, 2) for t in (q, k, v))

            def cudnn_fwd():
                with torch.no_grad(), sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    torch.nn.functional.scaled_dot_product_attention(qc, kc, vc, is_causal=True)

            record("cudnn_fwd", cudnn_fwd)
        except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
            row["cudnn_error"] = f"{type(e).__name__}: {e}"[-2000:]
    else:
        import flash_fwd_gluon as ffg

        for cfg in CONFIGS:
            record(f"gluon_{cfg_name(cfg)}",
                   lambda cfg=cfg: ffg.gluon_attention_forward(q, k, v, scale, variant=cfg[0], block_n=cfg[1],
                                                               stages=cfg[2]))  # fmt: skip
            res.setdefault("compiled", {}).setdefault(cfg_name(cfg), compiled_info(ffg.LAST_COMPILED.get(cfg[0])))


def child_time(which, res):
    import torch
    import triton
    from triton.testing import do_bench

    def bench(fn):
        return do_bench(fn, warmup=25, rep=150, return_mode="median")

    res["rows"] = []
    res["triton"] = triton.__version__
    for bsz, seq, heads in TIMING_SHAPES:
        row = {"b": bsz, "s": seq, "h": heads, "d": HEAD_DIM, "fwd_tflop": flops_fwd(bsz, heads, seq) / 1e12}
        res["rows"].append(row)
        _time_shape(which, res, row, bsz, seq, heads, bench)
        torch.cuda.empty_cache()


def SAVE():  # rebound in the child: writes its partial result, so a timeout keeps what was measured
    pass


def run_child(stage, json_path):
    global SAVE
    res = {"stage": stage, "t_start": time.time()}

    def _save():
        with open(json_path, "w") as f:
            json.dump({**res, "partial": True, "seconds": time.time() - res["t_start"]}, f, indent=1)

    SAVE = _save
    try:
        import torch

        res["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA GPU visible")
        kind, which = stage.split(":")
        if kind == "correct":
            child_correct(which, res)
        else:
            child_time(which, res)
    except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
        res["error"] = f"{type(e).__name__}: {e}"[-2000:]
        res["traceback"] = traceback.format_exc()[-4000:]
        log(f"[{stage}] ERROR {res['error'][:600]}")
    res["seconds"] = time.time() - res.pop("t_start")
    res["partial"] = False
    with open(json_path, "w") as f:
        json.dump(res, f, indent=1)


# --------------------------------------------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------------------------------------------
def env_info():
    info = {"command": " ".join(["python3", *sys.argv]), "cwd": os.getcwd()}
    code = (
        "import json, torch, triton; print(json.dumps({'torch': torch.__version__, 'triton': triton.__version__,"
        " 'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version(),"
        " 'device': torch.cuda.get_device_name() if torch.cuda.is_available() else None,"
        " 'capability': torch.cuda.get_device_capability() if torch.cuda.is_available() else None}))"
    )
    try:
        r = subprocess.run(check=False, args=[sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        info.update(json.loads(r.stdout.strip().splitlines()[-1]))
    except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
        info["env_error"] = repr(e)
    try:
        info["git_head"] = subprocess.run(
            check=False, args=["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
        info["git_error"] = repr(e)
    return info


def summarize(report):
    """One row per timing shape: ms and TFLOP/s of every implementation, and the best Gluon config."""
    ref_rows = report["stages"].get("time:reference", {}).get("result", {}).get("rows", [])
    gl_rows = report["stages"].get("time:gluon", {}).get("result", {}).get("rows", [])
    summary = []
    for ref in ref_rows:
        g = next((r for r in gl_rows if r["s"] == ref["s"] and r["b"] == ref["b"]), {})
        row = {"b": ref["b"], "s": ref["s"], "h": ref["h"]}
        for key in ("triton_fwd", "cudnn_fwd"):
            row[f"{key}_ms"] = ref.get(f"{key}_ms")
            row[f"{key}_tflops"] = ref.get(f"{key}_tflops")
        for cfg in CONFIGS:
            row[f"gluon_{cfg_name(cfg)}_ms"] = g.get(f"gluon_{cfg_name(cfg)}_ms")
        best = min(((v, k) for k, v in row.items() if k.startswith("gluon_") and v), default=None)
        if best:
            row["best_gluon"] = best[1][len("gluon_") : -len("_ms")]
            row["best_gluon_tflops"] = flops_fwd(ref["b"], ref["h"], ref["s"]) / best[0] / 1e9
            if row["triton_fwd_ms"]:
                row["best_gluon_speedup_vs_triton"] = row["triton_fwd_ms"] / best[0]
            if row["cudnn_fwd_ms"]:
                row["best_gluon_speedup_vs_cudnn"] = row["cudnn_fwd_ms"] / best[0]
        summary.append(row)
    return summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="output folder (gluon_fwd_check.json)")
    p.add_argument("--budget", type=float, default=200.0, help="seconds for the whole script")
    p.add_argument("--stages", default=",".join(STAGES_ORDER))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-json", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        run_child(a.child, a.child_json)
        return
    if not a.out:
        p.error("--out DIR is required")
    t0 = time.time()
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "gluon_fwd_check.json")
    report = {"env": env_info(), "budget_s": a.budget, "configs": [cfg_name(c) for c in CONFIGS],
              "stages": {}, "skipped": []}  # fmt: skip
    log(f"env: {report['env']}")

    def save():
        report["elapsed_s"] = time.time() - t0
        with open(path, "w") as f:
            json.dump(report, f, indent=1)

    save()
    for stage in [s for s in a.stages.split(",") if s]:
        left = a.budget - (time.time() - t0)
        timeout = min(STAGE_TIMEOUT[stage], left)
        if timeout < 15:
            report["skipped"].append({"stage": stage, "why": f"budget: {left:.0f} s left"})
            log(f"[{stage}] SKIPPED (budget, {left:.0f} s left)")
            save()
            continue
        log(f"[{stage}] start (timeout {timeout:.0f} s)")
        cj = os.path.join(a.out, f"stage_{stage.replace(':', '_')}.json")
        if os.path.exists(cj):
            os.remove(cj)
        entry = {}
        try:
            r = subprocess.run(
                check=False,
                args=[sys.executable, os.path.abspath(__file__), "--child", stage, "--child-json", cj],
                timeout=timeout, cwd=ROOT, stdout=None, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            entry["returncode"] = r.returncode
            if r.returncode != 0:
                entry["stderr_tail"] = r.stderr[-4000:]
                log(f"[{stage}] child exit {r.returncode}: {r.stderr[-1500:]}")
        except subprocess.TimeoutExpired as e:
            entry["error"] = f"timeout after {timeout:.0f} s (hang or too slow); child killed"
            err = e.stderr or ""
            entry["stderr_tail"] = (err.decode(errors="replace") if isinstance(err, bytes) else err)[-4000:]
            log(f"[{stage}] TIMEOUT after {timeout:.0f} s")
        except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
            entry["error"] = repr(e)
            log(f"[{stage}] ERROR {e!r}")
        try:
            with open(cj) as f:
                entry["result"] = json.load(f)
        except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
            entry.setdefault("error", f"no child result: {e!r}")
        report["stages"][stage] = entry
        if stage.startswith("correct"):
            log(f"[{stage}] pass: {entry.get('result', {}).get('pass')}")
        report["summary"] = summarize(report)
        save()
    for row in report.get("summary", []):
        log(json.dumps(row))
    log(f"wrote {path} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
