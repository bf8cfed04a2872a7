"""GPU check of the v2 Gluon forward prototype (flash_fwd_gluon_v2.py: GQA, head dim 64/128, packed documents) on one
Hopper GPU (H200 / H100) with Triton 3.6.

    python3 docs/benchmarks/attention_gluon/fwd/v2/gpu_check_v2.py --out DIR        # from the repo root

Writes DIR/gluon_fwd_v2_check.json (rewritten after every stage) and prints every result as it comes. Stages, each in
its own child process with a timeout (a kernel that deadlocks on an mbarrier cannot hang this script):
  correct          v2 at CORRECT_CASES (MHA / GQA 4, head dim 64 / 128, no documents, documents with edges on and
                   off multiples of 128 and 1-token documents, random document lengths, one BLOCK_N 64 case): out and
                   lse against an fp32 reference (K / V repeated for GQA, causal & same-document mask); our Triton
                   forward (attention_triton._fwd_kernel, same GQA / documents) against the same reference, for
                   scale. Pass: out rel norm err < 1e-2, lse max |diff| (log2 units) < 1e-2, no NaN.
  time:reference   our Triton forward and cuDNN (SDPA; enable_gqa, else K / V repeated) at TIMING_SHAPES (16k).
  time:gluon       v2 and the library forward (megatron.kernels.attention_gluon_fwd_sm90.forward, where it supports the
                   shape: hd 128 MHA only) at TIMING_SHAPES.
  time:docs        v2 vs our Triton forward with packed documents (random lengths up to 4k) at TIMING_SHAPES.
  correct:bwd      (last, what budget is left) the correct cases again, then our fused backward
                   (attention_gluon_bwd_sm90.backward, GQA / documents) on v2's out / lse: dq dk dv against fp32 autograd
                   (< 1e-2).
Children write their JSON after every case, so a stage killed by its timeout keeps what it measured.
Whole-script budget: --budget seconds (default 150); a stage that would start with < 15 s left is skipped.
FLOPs: causal forward 4*b*h*s*s*d/2 (documents: the same nominal count, so TFLOP/s there are "effective");
times: triton.testing.do_bench medians (ms).
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
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE)))))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

# (b, s, h, g, d, documents, block_n): documents None, "random" (seeded), or a list of lengths per batch row
CORRECT_CASES = [  # kv-head ratios 1 and 4 only: fewer specializations of the fused backward (GROUP constexpr)
    (1, 128, 2, 2, 128, None, 128),
    (2, 256, 8, 2, 128, None, 128),  # GQA 4
    (1, 1024, 8, 2, 128, None, 128),
    (2, 1024, 8, 2, 64, None, 128),  # hd 64, GQA 4
    (1, 2048, 4, 4, 64, None, 128),
    (1, 1024, 4, 4, 128, [[256, 384, 384]], 128),  # edges on multiples of 128
    (2, 1024, 8, 2, 64, [[100, 1, 27, 500, 396], [640, 1, 383]], 128),  # edges off 128, 1-token documents
    (2, 1024, 8, 2, 128, "random", 128),
    (1, 2048, 8, 2, 64, "random", 128),
    (1, 4096, 4, 4, 128, "random", 128),
    (1, 8192, 8, 2, 64, "random", 128),
    (1, 1024, 8, 2, 128, "random", 64),  # BLOCK_N 64: two diagonal blocks, the running-max guard
]
TIMING_SHAPES = [(1, 16384, 16, 16, 128), (1, 16384, 32, 4, 64)]  # (b, s, h, g, d)
TOL = 1e-2
STAGE_TIMEOUT = {"correct": 55, "time:reference": 20, "time:gluon": 20, "time:docs": 20, "correct:bwd": 40}
STAGES_ORDER = ["correct", "time:reference", "time:gluon", "time:docs", "correct:bwd"]


def log(*a):
    print(*a, flush=True)


def case_name(c):
    b, s, h, g, d, docs, bn = c
    dname = "nodoc" if docs is None else ("rand" if docs == "random" else "docs")
    return f"b{b}_s{s}_h{h}_g{g}_d{d}_{dname}_bn{bn}"


# --------------------------------------------------------------------------------------------------------------
# Helpers used inside the children
# --------------------------------------------------------------------------------------------------------------
def random_lengths(seq, gen, max_len=None):
    import torch

    lengths, left = [], seq
    max_len = max_len or seq // 2
    while left > 0:
        n = int(torch.randint(1, min(left, max_len) + 1, (1,), generator=gen))
        lengths.append(n)
        left -= n
    return lengths


def make_ids(bsz, seq, docs, seed):
    """Document ids [b, s] on the GPU (None without documents) and the lengths used."""
    import flash_fwd_gluon_v2 as v2
    import torch

    if docs is None:
        return None, None
    gen = torch.Generator().manual_seed(1000 + seed)
    lengths = [random_lengths(seq, gen) for _ in range(bsz)] if docs == "random" else docs
    return v2.ids_from_lengths(lengths, seq).cuda(), lengths


def triton_forward(q, k, v, scale, ids=None):
    """Our Triton forward (attention_triton.forward, the `_fwd_kernel` launch the interface makes): out, lse."""
    from megatron.kernels import attention_triton
    from megatron.kernels.interface import document_runs

    return attention_triton.forward(q, k, v, True, scale, document_runs(ids) if ids is not None else None)


def reference(q, k, v, dout, scale, ids, grads):
    """fp32 reference on the bf16 inputs upcast (K / V repeated per group; causal & same-document mask): out, lse
    (log2 units), dq dk dv (autograd; dk dv summed over the group by the repeat's backward)."""
    import torch

    qf, kf, vf = (t.detach().float().requires_grad_(grads) for t in (q, k, v))
    seq, group = q.shape[1], q.shape[2] // k.shape[2]
    kr, vr = (t.repeat_interleave(group, dim=2) for t in (kf, vf))
    s = torch.einsum("bmhd,bnhd->bhmn", qf, kr) * scale
    keep = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()[None]
    if ids is not None:
        keep = keep & (ids[:, :, None] == ids[:, None, :])
    s = s.masked_fill(~keep[:, None], float("-inf"))
    lse = (torch.logsumexp(s, dim=-1) * 1.4426950408889634).detach()
    out = torch.einsum("bhmn,bnhd->bmhd", torch.softmax(s, dim=-1), vr)
    if not grads:
        return out.detach(), lse, None
    out.backward(dout.float())
    return out.detach(), lse, (qf.grad, kf.grad, vf.grad)


def rel_norm(got, ref):
    g, r = got.float(), ref.float()
    return ((g - r).norm() / r.norm()).item()


def max_abs(got, ref):
    return (got.float() - ref.float()).abs().max().item()


def compiled_info(kernel):
    if kernel is None:
        return None
    md = getattr(kernel, "metadata", None)
    return {"n_regs": getattr(kernel, "n_regs", None), "n_spills": getattr(kernel, "n_spills", None),
            "shared": getattr(md, "shared", None), "num_warps": getattr(md, "num_warps", None)}  # fmt: skip


def make_qkv(bsz, seq, heads, kv_heads, dim, seed):
    import torch

    gen = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda hh: torch.randn((bsz, seq, hh, dim), device="cuda", dtype=torch.bfloat16, generator=gen)
    return mk(heads), mk(kv_heads), mk(kv_heads), mk(heads)  # q, k, v, dout


def flops_fwd(bsz, heads, seq, dim):
    return 4 * bsz * heads * seq * seq * dim / 2


# --------------------------------------------------------------------------------------------------------------
# Child stages
# --------------------------------------------------------------------------------------------------------------
def child_correct(res, with_bwd):
    import flash_fwd_gluon_v2 as v2
    import torch

    from megatron.kernels import attention_gluon_bwd_sm90 as fag

    res["cases"] = []
    all_ok = True
    for i, c in enumerate(CORRECT_CASES):
        bsz, seq, heads, kv_heads, dim, docs, bn = c
        case = {"case": case_name(c)}
        res["cases"].append(case)
        try:
            scale = 1.0 / math.sqrt(dim)
            q, k, v, dout = make_qkv(bsz, seq, heads, kv_heads, dim, seed=i)
            ids, lengths = make_ids(bsz, seq, docs, seed=i)
            if lengths is not None:
                case["doc_lengths"] = lengths
            rs = re_ = None
            if ids is not None:
                rs, re_ = v2.document_runs(ids)
            ref_out, ref_lse, ref_g = reference(q, k, v, dout, scale, ids, with_bwd)
            out, lse = v2.gluon_attention_forward_v2(q, k, v, scale, rs, re_, block_n=bn)
            torch.cuda.synchronize()
            res.setdefault("compiled", {})[case_name(c)] = compiled_info(v2.LAST_COMPILED.get("fwd"))
            case["out_rel_vs_ref"] = rel_norm(out, ref_out)
            case["lse_maxabs_vs_ref"] = max_abs(lse, ref_lse)
            case["nan"] = bool(torch.isnan(out).any().item() or torch.isnan(lse).any().item())
            ok = case["out_rel_vs_ref"] < TOL and case["lse_maxabs_vs_ref"] < TOL and not case["nan"]
            msg = (f"[{case_name(c)}] out rel {case['out_rel_vs_ref']:.2e}, lse |d| {case['lse_maxabs_vs_ref']:.2e}, "
                   f"nan {case['nan']}")  # fmt: skip
            if not with_bwd:  # our Triton forward on the same inputs, for scale
                t_out, t_lse = triton_forward(q, k, v, scale, ids)
                case["triton_out_rel_vs_ref"] = rel_norm(t_out, ref_out)
                case["out_rel_vs_triton"] = rel_norm(out, t_out)
                case["triton_lse_maxabs_vs_ref"] = max_abs(t_lse, ref_lse)
                case["lse_maxabs_vs_triton"] = max_abs(lse, t_lse)
                msg += (f" (triton: out rel {case['triton_out_rel_vs_ref']:.2e}, lse |d| "
                        f"{case['triton_lse_maxabs_vs_ref']:.2e})")  # fmt: skip
                case["pass"] = bool(ok)
                all_ok &= ok
                log(msg + (" PASS" if ok else " FAIL"))
                res["pass_so_far"] = bool(all_ok)
                SAVE()
                torch.cuda.empty_cache()
                continue
            # our fused backward on v2's out / lse (it supports GQA, hd 64 / 128 and documents)
            delta = (out.float() * dout.float()).sum(-1).permute(0, 2, 1).contiguous()
            dq, dk, dv = fag.backward(q, k, v, dout, lse, delta, scale,
                                      documents=(rs, re_) if ids is not None else None)  # fmt: skip
            torch.cuda.synchronize()
            for name, g, r in zip(("dq", "dk", "dv"), (dq, dk, dv), ref_g):
                case[f"{name}_rel_vs_ref"] = rel_norm(g, r)
                ok &= case[f"{name}_rel_vs_ref"] < TOL
            msg += ", bwd on v2 lse: " + ", ".join(f"{n} {case[f'{n}_rel_vs_ref']:.2e}" for n in ("dq", "dk", "dv"))
            case["pass"] = bool(ok)
            all_ok &= ok
            log(msg + (" PASS" if ok else " FAIL"))
        except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
            case["error"] = f"{type(e).__name__}: {e}"[-2000:]
            case["traceback"] = traceback.format_exc()[-4000:]
            all_ok = False
            log(f"[{case_name(c)}] ERROR {case['error'][:600]}")
        res["pass_so_far"] = bool(all_ok)
        SAVE()
        torch.cuda.empty_cache()
    res["pass"] = bool(all_ok)


def _record(res, row, key, fn, bench, flops):
    try:
        row[f"{key}_ms"] = bench(fn)
        row[f"{key}_tflops"] = flops / row[f"{key}_ms"] / 1e9
        log(f"[{row['shape']}] {key} {row[f'{key}_ms']:.3f} ms {row[f'{key}_tflops']:.0f} TFLOP/s")
    except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
        row[f"{key}_error"] = f"{type(e).__name__}: {e}"[-1500:]
        log(f"[{row['shape']}] {key} ERROR {row[f'{key}_error'][:400]}")
    SAVE()


def _time_shape(which, res, bsz, seq, heads, kv_heads, dim, bench):
    """Timings of one shape (a function of its own so the benchmarked lambdas bind this shape's tensors)."""
    import flash_fwd_gluon_v2 as v2
    import torch

    q, k, v, _ = make_qkv(bsz, seq, heads, kv_heads, dim, seed=0)
    scale = 1.0 / math.sqrt(dim)
    f = flops_fwd(bsz, heads, seq, dim)
    row = {"shape": f"b{bsz}_s{seq}_h{heads}_g{kv_heads}_d{dim}", "b": bsz, "s": seq, "h": heads, "g": kv_heads,
           "d": dim, "fwd_tflop": f / 1e12}  # fmt: skip
    res["rows"].append(row)
    if which == "reference":
        _record(res, row, "triton_fwd", lambda: triton_forward(q, k, v, scale), bench, f)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        qc, kc, vc = (t.transpose(1, 2) for t in (q, k, v))

        def cudnn_gqa():
            with torch.no_grad(), sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                torch.nn.functional.scaled_dot_product_attention(qc, kc, vc, is_causal=True,
                                                                 enable_gqa=kv_heads != heads)  # fmt: skip

        _record(res, row, "cudnn_fwd", cudnn_gqa, bench, f)
        if "cudnn_fwd_error" in row and kv_heads != heads:  # no GQA in this cuDNN path: K / V repeated first
            kr, vr = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (kc, vc))

            def cudnn_rep():
                with torch.no_grad(), sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    torch.nn.functional.scaled_dot_product_attention(qc, kr, vr, is_causal=True)

            _record(res, row, "cudnn_fwd_kv_repeated", cudnn_rep, bench, f)
    elif which == "gluon":
        _record(res, row, "v2", lambda: v2.gluon_attention_forward_v2(q, k, v, scale), bench, f)
        res.setdefault("compiled", {})[row["shape"]] = compiled_info(v2.LAST_COMPILED.get("fwd"))
        from megatron.kernels import attention_gluon_fwd_sm90 as gfwd

        reason = gfwd.unsupported_reason(q, k, True)
        if reason is None:
            _record(res, row, "library_fwd", lambda: gfwd.forward(q, k, v, scale), bench, f)
        else:
            row["library_fwd_unsupported"] = reason
            SAVE()
    else:  # documents: random lengths up to 4k (mean ~2k)
        gen = torch.Generator().manual_seed(7)
        lengths = [random_lengths(seq, gen, max_len=4096) for _ in range(bsz)]
        ids = v2.ids_from_lengths(lengths, seq).cuda()
        rs, re_ = v2.document_runs(ids)
        row["n_documents"] = [len(x) for x in lengths]
        _record(res, row, "v2_docs", lambda: v2.gluon_attention_forward_v2(q, k, v, scale, rs, re_), bench, f)
        _record(res, row, "triton_fwd_docs", lambda: triton_forward(q, k, v, scale, ids), bench, f)


def child_time(which, res):
    import torch
    import triton
    from triton.testing import do_bench

    def bench(fn):
        return do_bench(fn, warmup=25, rep=100, return_mode="median")

    res["rows"] = []
    res["triton"] = triton.__version__
    for bsz, seq, heads, kv_heads, dim in TIMING_SHAPES:
        _time_shape(which, res, bsz, seq, heads, kv_heads, dim, bench)
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
        if stage.startswith("correct"):
            child_correct(res, stage == "correct:bwd")
        else:
            child_time(stage.split(":")[1], res)
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
        " 'device': torch.cuda.get_device_name() if torch.cuda.is_available() else None}))"
    )
    try:
        r = subprocess.run(check=False, args=[sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        info.update(json.loads(r.stdout.strip().splitlines()[-1]))
    except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
        info["env_error"] = repr(e)
    try:
        info["git_head"] = subprocess.run(check=False, args=["git", "-C", ROOT, "rev-parse", "HEAD"],
                                          capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except Exception as e:  # noqa: BLE001 (recorded, the check goes on)
        info["git_error"] = repr(e)
    return info


def summarize(report):
    """Per timing shape: each implementation's ms / TFLOP/s, and v2's speed-up over the others."""
    rows = {}
    for stage in ("time:reference", "time:gluon", "time:docs"):
        for r in report["stages"].get(stage, {}).get("result", {}).get("rows", []):
            dst = rows.setdefault(r["shape"], {"shape": r["shape"]})
            dst.update({k: v for k, v in r.items() if k.endswith(("_ms", "_tflops", "_unsupported", "_error"))})
    out = []
    for row in rows.values():
        for base, other in (("v2", "triton_fwd"), ("v2", "library_fwd"), ("v2", "cudnn_fwd"),
                            ("v2", "cudnn_fwd_kv_repeated"), ("v2_docs", "triton_fwd_docs")):  # fmt: skip
            if row.get(f"{base}_ms") and row.get(f"{other}_ms"):
                row[f"{base}_speedup_vs_{other}"] = row[f"{other}_ms"] / row[f"{base}_ms"]
        out.append(row)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="output folder (gluon_fwd_v2_check.json)")
    p.add_argument("--budget", type=float, default=150.0, help="seconds for the whole script")
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
    path = os.path.join(a.out, "gluon_fwd_v2_check.json")
    report = {"env": env_info(), "budget_s": a.budget, "cases": [case_name(c) for c in CORRECT_CASES],
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
            r = subprocess.run(check=False, args=[sys.executable, os.path.abspath(__file__), "--child", stage,
                                                  "--child-json", cj],
                               timeout=timeout, cwd=ROOT, stdout=None, stderr=subprocess.PIPE, text=True)  # fmt: skip
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
