"""What ``--checkpoint-in-cpu`` costs: a stack of transformer layers trained with checkpointed inputs
kept on the GPU, offloaded with copies on the compute stream, and offloaded with side-stream copies
and backward prefetch (``OffloadTape``, the default).

    python bench/offload_copies.py --shape gpt-1.3b --tokens 32768,131072 --out benchmarks/results/<date>_max_seqlen_h200/offload_copies_gpt-1.3b_h200.json
    python bench/offload_copies.py --tiny --device cpu --out /tmp/o.json     # CPU smoke run (tested)

One process, one GPU, no sequence parallelism: ``--tokens`` is what one rank holds (e.g. 131072 is
a 262,144-token sequence at SP=2). Per variant and length: median ms of forward + backward over
``--iters`` steps after ``--warmup``, peak GPU memory, and the largest norm-relative difference of a
gradient from the GPU-checkpoint variant's; ``grad_rel_diff_gpu_checkpoint_repeat`` is that variant
against itself once more, the run-to-run noise of non-deterministic kernels (bf16 attention backward). ``copy_ms`` is
one layer input's device-to-host plus host-to-device copy on its own, timed on the compute stream.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from max_seqlen import SHAPES, shape_config  # bench/, this script's directory
from report import report_head, write_json
from torch.utils.checkpoint import checkpoint

from megatron.config import AttentionConfig
from megatron.model.gpt import TransformerLayer
from megatron.training import memory

VARIANTS = ("gpu_checkpoint", "offload_compute_stream", "offload_side_stream")


def step(layers, x, pos, variant: str):
    """Forward and backward of the stack; returns the gradients (input first)."""
    layers.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    tape = memory.OffloadTape(overlap=variant == "offload_side_stream")
    h = x
    for layer in layers:
        if variant == "gpu_checkpoint":
            h = checkpoint(layer, h, pos, None, use_reentrant=False)
        else:
            h = memory.offloaded_checkpoint(layer, h, pos, None, tape=tape)
    h.float().square().mean().backward()
    return [x.grad] + [p.grad for p in layers.parameters()]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_ms(x, iters: int) -> float:
    """One device-to-host plus host-to-device copy of ``x`` (pinned), median ms."""
    if x.device.type != "cuda":
        return 0.0
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t = time.perf_counter()
        host.copy_(x, non_blocking=True)
        x.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def measure(cfg, attention, layers_n: int, tokens: int, device, dtype, warmup: int, iters: int, log) -> dict:
    torch.manual_seed(0)
    layers = torch.nn.ModuleList(TransformerLayer(cfg, attention, device=device) for _ in range(layers_n)).to(device, dtype)
    x = torch.randn(1, tokens, cfg.hidden_size, device=device, dtype=dtype)
    pos = torch.arange(tokens, device=device).unsqueeze(0)
    out = {"tokens": tokens, "layer_input_gb": round(x.numel() * x.element_size() / 1e9, 4),
           "copy_ms": round(copy_ms(x.clone(), iters), 3), "variants": {}}  # fmt: skip
    ref = None
    for variant in VARIANTS + ("gpu_checkpoint",):  # the repeat measures the run-to-run gradient noise
        repeat = ref is not None and variant == "gpu_checkpoint"
        for _ in range(0 if repeat else warmup):
            step(layers, x, pos, variant)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(1 if repeat else iters):
            _sync(device)
            t = time.perf_counter()
            grads = step(layers, x, pos, variant)
            _sync(device)
            times.append((time.perf_counter() - t) * 1e3)
        grads = [g.float().cpu() for g in grads]  # kept off the GPU so the next variant's peak is its own
        if ref is None:
            ref = grads
        rel = max(((g - r).norm() / r.norm().clamp_min(1e-30)).item() for g, r in zip(grads, ref))
        del grads
        if repeat:
            out["grad_rel_diff_gpu_checkpoint_repeat"] = rel
            log(f"tokens {tokens:>7}  gpu_checkpoint again: grad rel {rel:.1e} (run-to-run noise)")
            continue
        row = {"ms": round(statistics.median(times), 3), "ms_all": [round(t, 3) for t in times],
               "grad_rel_diff_vs_gpu_checkpoint": rel}  # fmt: skip
        if device.type == "cuda":
            row["peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
        out["variants"][variant] = row
        log(f"tokens {tokens:>7}  {variant:<24} {row['ms']:9.2f} ms  peak {row.get('peak_gb', '-')} GB  grad rel {rel:.1e}")
    base = out["variants"]["offload_compute_stream"]["ms"]
    out["side_stream_speedup"] = round(base / out["variants"]["offload_side_stream"]["ms"], 4)
    out["side_stream_over_gpu_checkpoint"] = round(
        out["variants"]["offload_side_stream"]["ms"] / out["variants"]["gpu_checkpoint"]["ms"], 4
    )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=[s for s in SHAPES if s != "tiny"], default="gpt-1.3b")
    p.add_argument("--tiny", action="store_true", help="the tiny test shape (CPU smoke run)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tokens", default="32768,131072", help="comma-separated tokens per rank")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--attention-backend", default="sdpa")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device; pass --device cpu for a smoke run")
    shape = "tiny" if args.tiny else args.shape
    cfg = shape_config(shape)
    attention = AttentionConfig(backend=args.attention_backend)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def log(msg):
        print(msg, flush=True)

    report = {**report_head(__file__, argv, device), "shape": shape, "layers": args.layers, "dtype": str(dtype),
              "results": []}  # fmt: skip
    for tokens in [int(t) for t in args.tokens.split(",")]:
        report["results"].append(measure(cfg, attention, args.layers, tokens, device, dtype, args.warmup, args.iters, log))
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
