"""What ``torch.compile`` could save on a layer's pointwise work: residual add + norm, eager against compiled.

In a decoder layer the only chain of pointwise ops that a compiler could fuse without splitting a GEMM is
the residual add after the attention's output projection followed by the post-attention norm
(``TransformerLayer._after_attention``: ``h = x + out; n = norm(h)``). GELU is one kernel each way already,
and the biases are inside the GEMMs (``memory_efficient_linear: false``). This measures that chain, forward
+ backward, for each norm our shapes use:

* ``eager``: the two ops as the model runs them (``x + y``, then ``nn.LayerNorm`` / ``nn.RMSNorm``);
* ``compiled``: the same function through ``torch.compile`` (Inductor fuses the add into the norm's
  kernels, forward and backward).

    python bench/pointwise_fusion.py --out benchmarks/results/<date>_pointwise_fusion_h200/h200.json
    python bench/pointwise_fusion.py --tiny --device cpu --backend aot_eager --out /tmp/p.json   # CPU smoke run (tested)

Per norm: median wall ms of forward + backward of one call (over ``--iters`` samples of ``--reps`` calls each,
after ``--warmup``), on GPUs also the kernels' time per call (``torch.profiler``, without the host's
per-call work), the saving per call, and the norm-relative difference of both outputs and all
gradients from eager. A layer has one such chain, so a training step saves about ``layers`` x the
saving per call (forward once; with full recomputation the forward runs twice).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time

import torch
from microbench import add_common_args, device_of, sync, timed  # bench/, this script's directory
from report import report_head, write_json
from torch import nn


def add_norm(x, y, norm: nn.Module):
    h = x + y
    return h, norm(h)


def make_norm(kind: str, hidden: int, device, dtype) -> nn.Module:
    norm = nn.LayerNorm(hidden) if kind == "layernorm" else nn.RMSNorm(hidden)
    with torch.no_grad():  # not the identity init, so that the weight's gradient is not trivially equal
        norm.weight.normal_(1.0, 0.1)
        if getattr(norm, "bias", None) is not None:
            norm.bias.normal_(0.0, 0.1)
    return norm.to(device=device, dtype=dtype)


def fwd_bwd(fn, x, y, norm, gh, gn):
    """One forward + backward; returns the outputs and the gradients of x, y and the norm's parameters."""
    for t in (x, y, *norm.parameters()):
        t.grad = None
    h, n = fn(x, y, norm)
    torch.autograd.backward([h, n], [gh, gn])
    return [h.detach(), n.detach(), x.grad, y.grad, *(p.grad for p in norm.parameters())]


def measure(kind: str, tokens: int, hidden: int, device, dtype, backend: str, warmup: int, iters: int, reps: int,
            log) -> dict:  # fmt: skip
    gen = torch.Generator(device=device).manual_seed(0)
    x, y, gh, gn = (torch.randn(tokens, hidden, device=device, generator=gen).to(dtype) for _ in range(4))
    x.requires_grad_()
    y.requires_grad_()
    norm = make_norm(kind, hidden, device, dtype)
    compiled = torch.compile(add_norm, backend=backend, dynamic=False)
    out = {"norm": kind, "tokens": tokens, "hidden": hidden, "variants": {}}
    ref = None
    for name, fn in (("eager", add_norm), ("compiled", compiled)):
        call = functools.partial(fwd_bwd, fn, x, y, norm, gh, gn)
        t0 = time.perf_counter()
        for _ in range(warmup):
            call()
        sync(device)
        warm_s = time.perf_counter() - t0
        times, res = timed(call, device, iters, reps)
        row = {}
        if device.type == "cuda":  # kernel time alone, apart from the host's per-call work
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(reps):
                    call()
                sync(device)
            row["device_ms"] = round(sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / reps, 4)
        res = [r.float().cpu() for r in res]
        ref = ref or res
        rel = [((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(res, ref)]
        out["variants"][name] = {"ms": round(statistics.median(times), 4), "ms_all": [round(t, 4) for t in times],
                                 **row, "warmup_s": round(warm_s, 2), "rel_diff_vs_eager": rel}  # fmt: skip
        log(
            f"{kind:<9} tokens {tokens:>7}  {name:<8} {out['variants'][name]['ms']:8.3f} ms wall, "
            f"{row.get('device_ms', '-')} ms kernels (warm-up {warm_s:.1f} s)"
        )
    v = out["variants"]
    out["saving_ms_per_call"] = round(v["eager"]["ms"] - v["compiled"]["ms"], 4)
    if "device_ms" in v["eager"]:
        out["kernel_saving_ms_per_call"] = round(v["eager"]["device_ms"] - v["compiled"]["device_ms"], 4)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="hidden 64, 96 tokens (CPU smoke run)")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--tokens", default="16384,32768", help="comma-separated rows per rank (16384: 32k at SP=2)")
    p.add_argument("--norms", default="layernorm,rmsnorm")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: no code generation)")
    p.add_argument("--reps", type=int, default=20, help="calls per timed sample")
    add_common_args(p, warmup=3, iters=7)
    args = p.parse_args(argv)
    device = device_of(p, args)
    norms = args.norms.split(",")
    if unknown := set(norms) - {"layernorm", "rmsnorm"}:
        p.error(f"--norms {','.join(sorted(unknown))} unknown; use layernorm and/or rmsnorm")
    hidden, tokens = (64, [96]) if args.tiny else (args.hidden, [int(t) for t in args.tokens.split(",")])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report = {**report_head(__file__, argv, device), "dtype": str(dtype), "backend": args.backend, "results": []}
    for kind in norms:
        for n in tokens:
            report["results"].append(
                measure(kind, n, hidden, device, dtype, args.backend, args.warmup, args.iters, args.reps, print)
            )
            write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
