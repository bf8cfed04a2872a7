"""GPU check of the Gluon backward prototype (flash_bwd_gluon.py) on one Hopper GPU (H200 / H100, Triton 3.6).

    python3 docs/benchmarks/attention_gluon/gpu_check.py --out DIR        # from the repo root

Writes DIR/gluon_check.json (rewritten after every stage) and prints every result as it comes. Stages, each in
its own child process with a timeout (a Gluon kernel that deadlocks on an mbarrier cannot hang this script):
  correct:<variant>  dq, dk, dv against an fp32 PyTorch reference (explicit causal softmax, autograd) at
                     b = 1..2, h = 2..4, s = 128, 256, 1024, 2048, with out and lse from our Triton forward;
                     pass: |g - ref| / |ref| < 1e-2 (norms), as for our Triton kernels. Our split backward's
                     errors on the same inputs are recorded beside. Also the launched kernel's n_regs,
                     n_spills and shared memory.
  time:reference     our forward, our split backward alone (delta + dkdv + dq kernels), our forward+backward
                     (autograd) and torch SDPA with the cuDNN backend, at seq 4096 (batch 4) and 16384 (batch 1),
                     16 heads, head dim 128, causal, bf16.
  time:<variant>     the Gluon backward alone (delta + zeroed fp32 dq buffer + kernel + cast), same shapes.
Both Gluon stages also run the kernel with a 3-deep Q / dO ring (stages=3) besides the default 2.
Whole-script budget: --budget seconds (default 240); stages that would start after it are skipped.
FLOPs: fwd = 4*b*h*s*s*d/2, fwd+bwd = 3.5*fwd; times: triton.testing.do_bench medians (ms).
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
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

VARIANTS = ("ws", "plain")
CORRECT_SHAPES = [(1, 2, 128), (2, 4, 256), (1, 3, 1024), (2, 2, 2048)]  # (b, h, s)
TIMING_SHAPES = [(4, 16, 4096), (1, 16, 16384)]
HEAD_DIM = 128
TOL = 1e-2
EXTRA_STAGES = 3  # the Q / dO ring depth also checked and timed besides the default (flash_bwd_gluon.STAGES = 2)
STAGE_TIMEOUT = {"correct": 110, "time": 75}


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------------------------------------------
# Helpers used inside the children
# --------------------------------------------------------------------------------------------------------------
def triton_forward(q, k, v, scale):
    """Our Triton forward (megatron.kernels.attention_triton.forward, the `_fwd_kernel` launch the interface
    makes): returns out [b, s, h, d] and lse [b, h, s] fp32 in log2 units."""
    from megatron.kernels import attention_triton

    return attention_triton.forward(q, k, v, True, scale)


def split_backward_fn(q, k, v, out, dout, lse, scale):
    """A callable running our split backward alone (delta + dkdv + dq kernels) on saved forward results."""
    from megatron.kernels import attention_triton

    def split_backward():
        delta = attention_triton.row_delta(out, dout)
        return attention_triton.backward(q, k, v, dout, lse, delta, True, scale)

    return split_backward


def reference_grads(q, k, v, dout, scale):
    """fp32 reference: explicit causal softmax attention on the bf16 inputs upcast, autograd."""
    import torch

    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    seq = q.shape[1]
    s = torch.einsum("bmhd,bnhd->bhmn", qf, kf) * scale
    mask = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
    out = torch.einsum("bhmn,bnhd->bmhd", p, vf)
    out.backward(dout.float())
    return qf.grad, kf.grad, vf.grad


def rel_errors(got, ref):
    g, r = got.float(), ref.float()
    return {
        "rel_norm": ((g - r).norm() / r.norm()).item(),
        "max_abs_over_max_ref": ((g - r).abs().max() / r.abs().max()).item(),
    }


def compiled_info(kernel):
    if kernel is None:
        return None
    md = getattr(kernel, "metadata", None)
    info = {"n_regs": getattr(kernel, "n_regs", None), "n_spills": getattr(kernel, "n_spills", None),
            "shared": getattr(md, "shared", None), "num_warps": getattr(md, "num_warps", None)}  # fmt: skip
    try:
        ptx = kernel.asm["ptx"]
        import re

        info["wgmma_in_ptx"] = len(re.findall(r"wgmma\.mma_async", ptx))
        info["setmaxnreg"] = sorted(set(re.findall(r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+)", ptx)))
    except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
        info["ptx_error"] = repr(e)
    return info


def make_qkvdo(bsz, heads, seq, seed):
    import torch

    gen = torch.Generator(device="cuda").manual_seed(seed)
    shape = (bsz, seq, heads, HEAD_DIM)
    return [torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4)]


def flops_fwd(bsz, heads, seq):
    return 4 * bsz * heads * seq * seq * HEAD_DIM / 2


# --------------------------------------------------------------------------------------------------------------
# Child stages
# --------------------------------------------------------------------------------------------------------------
def child_correct(variant, res):
    import flash_bwd_gluon as fbg
    import torch

    scale = 1.0 / math.sqrt(HEAD_DIM)
    res["cases"] = []
    all_ok = True
    for i, (bsz, heads, seq) in enumerate(CORRECT_SHAPES):
        case = {"b": bsz, "h": heads, "s": seq}
        res["cases"].append(case)
        try:
            q, k, v, dout = make_qkvdo(bsz, heads, seq, seed=i)
            out, lse = triton_forward(q, k, v, scale)
            dq, dk, dv = fbg.gluon_attention_backward(q, k, v, out, dout, lse, scale, variant=variant)
            torch.cuda.synchronize()
            if "compiled" not in res:
                res["compiled"] = compiled_info(fbg.LAST_COMPILED.get(variant))
                log(f"[{variant}] compiled: {res['compiled']}")
            ref = reference_grads(q, k, v, dout, scale)
            split = split_backward_fn(q, k, v, out, dout, lse, scale)()
            ok = True
            for name, g, r, sp in zip(("dq", "dk", "dv"), (dq, dk, dv), ref, split):
                e = rel_errors(g, r)
                e["split_rel_norm"] = rel_errors(sp, r)["rel_norm"]
                e["nan"] = bool(torch.isnan(g).any().item())
                case[name] = e
                ok &= e["rel_norm"] < TOL
            case["pass"] = bool(ok)
            all_ok &= ok
            try:  # the deeper ring (a different phase pattern of the same mbarrier protocol)
                g3 = fbg.gluon_attention_backward(q, k, v, out, dout, lse, scale, variant=variant, stages=EXTRA_STAGES)
                case[f"stages{EXTRA_STAGES}"] = {
                    n: rel_errors(g, r)["rel_norm"] for n, g, r in zip(("dq", "dk", "dv"), g3, ref)
                }
                case[f"stages{EXTRA_STAGES}"]["pass"] = all(
                    case[f"stages{EXTRA_STAGES}"][n] < TOL for n in ("dq", "dk", "dv")
                )
                res.setdefault(f"compiled_stages{EXTRA_STAGES}", compiled_info(fbg.LAST_COMPILED.get(variant)))
                all3 = res.get(f"pass_stages{EXTRA_STAGES}", True)
                res[f"pass_stages{EXTRA_STAGES}"] = bool(all3 and case[f"stages{EXTRA_STAGES}"]["pass"])
            except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
                case[f"stages{EXTRA_STAGES}"] = {"error": f"{type(e).__name__}: {e}"[-2000:]}
                res[f"pass_stages{EXTRA_STAGES}"] = False
            log(
                f"[{variant}] b={bsz} h={heads} s={seq}: "
                + ", ".join(
                    f"{n} rel {case[n]['rel_norm']:.2e} (max {case[n]['max_abs_over_max_ref']:.2e}, split "
                    f"{case[n]['split_rel_norm']:.2e})"
                    for n in ("dq", "dk", "dv")
                )
                + (" PASS" if ok else " FAIL")
            )
        except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
            case["error"] = f"{type(e).__name__}: {e}"[-2000:]
            case["traceback"] = traceback.format_exc()[-4000:]
            all_ok = False
            log(f"[{variant}] b={bsz} h={heads} s={seq}: ERROR {case['error'][:600]}")
    res["pass"] = bool(all_ok)


def _time_one(which, res, row, bsz, heads, seq, bench):
    """Timings of one shape (a function of its own so the benchmarked lambdas bind this shape's tensors)."""
    import torch

    scale = 1.0 / math.sqrt(HEAD_DIM)
    q, k, v, dout = make_qkvdo(bsz, heads, seq, seed=0)
    f_fwd = flops_fwd(bsz, heads, seq)
    try:
        if which == "reference":
            from megatron.kernels import interface as fat

            out, lse = triton_forward(q, k, v, scale)
            row["triton_fwd_ms"] = bench(lambda: triton_forward(q, k, v, scale))
            row["split_bwd_ms"] = bench(split_backward_fn(q, k, v, out, dout, lse, scale))
            row["split_fwd_plus_bwd_tflops"] = 3.5 * f_fwd / (row["triton_fwd_ms"] + row["split_bwd_ms"]) / 1e9
            qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
            row["split_autograd_fwd_bwd_ms"] = bench(
                lambda: fat.flash_attention(qg, kg, vg, causal=True).backward(dout), grad_to_none=[qg, kg, vg]
            )
            row["split_autograd_tflops"] = 3.5 * f_fwd / row["split_autograd_fwd_bwd_ms"] / 1e9
            row["compiled_split"] = {n: compiled_info(fat.LAST_COMPILED.get(n)) for n in ("dkdv", "dq")}
            log(
                f"[reference] s={seq}: fwd {row['triton_fwd_ms']:.3f} ms, split bwd {row['split_bwd_ms']:.3f} ms,"
                f" fwd+bwd {row['split_fwd_plus_bwd_tflops']:.0f} TFLOP/s (autograd "
                f"{row['split_autograd_tflops']:.0f})"
            )
            try:
                from torch.nn.attention import SDPBackend, sdpa_kernel

                qc, kc, vc = (t.transpose(1, 2).detach().clone().requires_grad_() for t in (q, k, v))
                doc = dout.transpose(1, 2)

                def cudnn_fwd():
                    with torch.no_grad(), sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                        torch.nn.functional.scaled_dot_product_attention(qc, kc, vc, is_causal=True)

                def cudnn_fwd_bwd():
                    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                        torch.nn.functional.scaled_dot_product_attention(qc, kc, vc, is_causal=True).backward(doc)

                row["cudnn_fwd_ms"] = bench(cudnn_fwd)
                row["cudnn_fwd_bwd_ms"] = bench(cudnn_fwd_bwd, grad_to_none=[qc, kc, vc])
                row["cudnn_bwd_ms_by_difference"] = row["cudnn_fwd_bwd_ms"] - row["cudnn_fwd_ms"]
                row["cudnn_tflops"] = 3.5 * f_fwd / row["cudnn_fwd_bwd_ms"] / 1e9
                log(
                    f"[reference] s={seq}: cuDNN fwd {row['cudnn_fwd_ms']:.3f} ms, fwd+bwd "
                    f"{row['cudnn_fwd_bwd_ms']:.3f} ms = {row['cudnn_tflops']:.0f} TFLOP/s"
                )
            except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
                row["cudnn_error"] = f"{type(e).__name__}: {e}"[-2000:]
                log(f"[reference] s={seq}: cuDNN ERROR {row['cudnn_error']}")
        else:
            import flash_bwd_gluon as fbg

            out, lse = triton_forward(q, k, v, scale)
            row["triton_fwd_ms"] = bench(lambda: triton_forward(q, k, v, scale))

            def fn():
                return fbg.gluon_attention_backward(q, k, v, out, dout, lse, scale, variant=which)

            fn()
            torch.cuda.synchronize()
            res.setdefault("compiled", compiled_info(fbg.LAST_COMPILED.get(which)))
            row["gluon_bwd_ms"] = bench(fn)
            delta = fbg.compute_delta(out, dout)
            row["gluon_bwd_given_delta_ms"] = bench(
                lambda: fbg.gluon_attention_backward(q, k, v, out, dout, lse, scale, variant=which, delta=delta)
            )
            try:
                row[f"gluon_bwd_ms_stages{EXTRA_STAGES}"] = bench(
                    lambda: fbg.gluon_attention_backward(
                        q, k, v, out, dout, lse, scale, variant=which, stages=EXTRA_STAGES
                    )
                )
            except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
                row[f"stages{EXTRA_STAGES}_error"] = f"{type(e).__name__}: {e}"[-2000:]
            row["gluon_fwd_plus_bwd_tflops"] = 3.5 * f_fwd / (row["triton_fwd_ms"] + row["gluon_bwd_ms"]) / 1e9
            row["gluon_bwd_gemm_tflops_5_units"] = 2.5 * f_fwd / row["gluon_bwd_ms"] / 1e9
            log(
                f"[{which}] s={seq}: gluon bwd {row['gluon_bwd_ms']:.3f} ms (given delta "
                f"{row['gluon_bwd_given_delta_ms']:.3f}, {EXTRA_STAGES} stages "
                f"{row.get(f'gluon_bwd_ms_stages{EXTRA_STAGES}', float('nan')):.3f}), fwd {row['triton_fwd_ms']:.3f} ms, fwd+bwd "
                f"{row['gluon_fwd_plus_bwd_tflops']:.0f} TFLOP/s"
            )
    except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
        row["error"] = f"{type(e).__name__}: {e}"[-2000:]
        row["traceback"] = traceback.format_exc()[-4000:]
        log(f"[{which}] s={seq}: ERROR {row['error'][:600]}")


def child_time(which, res):
    import torch
    import triton
    from triton.testing import do_bench

    def bench(fn, **kw):
        return do_bench(fn, warmup=50, rep=200, return_mode="median", **kw)

    res["rows"] = []
    for bsz, heads, seq in TIMING_SHAPES:
        row = {"b": bsz, "h": heads, "s": seq, "d": HEAD_DIM, "fwd_tflop": flops_fwd(bsz, heads, seq) / 1e12}
        res["rows"].append(row)
        _time_one(which, res, row, bsz, heads, seq, bench)
        torch.cuda.empty_cache()
    res["triton"] = triton.__version__


def run_child(stage, json_path):
    res = {"stage": stage, "t_start": time.time()}
    try:
        import torch

        res["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA GPU visible")
        kind, which = stage.split(":")
        if kind == "correct":
            child_correct(which, res)
        elif kind == "time":
            child_time(which, res)
        else:
            raise ValueError(stage)
    except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
        res["error"] = f"{type(e).__name__}: {e}"[-2000:]
        res["traceback"] = traceback.format_exc()[-4000:]
        log(f"[{stage}] ERROR {res['error'][:600]}")
    res["seconds"] = time.time() - res.pop("t_start")
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=False, default=None, help="output folder (gluon_check.json)")
    p.add_argument("--budget", type=float, default=240.0, help="seconds for the whole script")
    p.add_argument("--variants", default=",".join(VARIANTS))
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
    path = os.path.join(a.out, "gluon_check.json")
    report = {"env": env_info(), "budget_s": a.budget, "stages": {}, "skipped": []}
    log(f"env: {report['env']}")
    variants = [v for v in a.variants.split(",") if v]
    stages = [f"correct:{v}" for v in variants] + ["time:reference"] + [f"time:{v}" for v in variants]

    def save():
        report["elapsed_s"] = time.time() - t0
        with open(path, "w") as f:
            json.dump(report, f, indent=1)

    save()
    for stage in stages:
        left = a.budget - (time.time() - t0)
        timeout = min(STAGE_TIMEOUT[stage.split(":")[0]], left)
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
                timeout=timeout,
                cwd=ROOT,
                stdout=None,
                stderr=subprocess.PIPE,
                text=True,
            )
            entry["returncode"] = r.returncode
            if r.returncode != 0:
                entry["stderr_tail"] = r.stderr[-4000:]
                log(f"[{stage}] child exit {r.returncode}: {r.stderr[-1500:]}")
        except subprocess.TimeoutExpired as e:
            entry["error"] = f"timeout after {timeout:.0f} s (hang or too slow); child killed"
            entry["stderr_tail"] = (
                (e.stderr or b"")[-4000:].decode() if isinstance(e.stderr, bytes) else (e.stderr or "")[-4000:]
            )
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
        save()
    # Summary table
    summary = []
    ref_rows = report["stages"].get("time:reference", {}).get("result", {}).get("rows", [])
    for v in variants:
        c = report["stages"].get(f"correct:{v}", {}).get("result", {})
        rows = report["stages"].get(f"time:{v}", {}).get("result", {}).get("rows", [])
        for row in rows:
            ref = next((r for r in ref_rows if r["s"] == row["s"]), {})
            summary.append(
                {
                    "variant": v,
                    "s": row["s"],
                    "b": row["b"],
                    "correct": c.get("pass"),
                    "gluon_bwd_ms": row.get("gluon_bwd_ms"),
                    "split_bwd_ms": ref.get("split_bwd_ms"),
                    "gluon_fwd_bwd_tflops": row.get("gluon_fwd_plus_bwd_tflops"),
                    "split_fwd_bwd_tflops": ref.get("split_fwd_plus_bwd_tflops"),
                    "cudnn_fwd_bwd_tflops": ref.get("cudnn_tflops"),
                }
            )
    report["summary"] = summary
    save()
    for srow in summary:
        log(json.dumps(srow))
    log(f"wrote {path} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
