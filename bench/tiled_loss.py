"""What the output layer + cross-entropy costs, forward + backward, per implementation:

* ``untiled``: ``F.linear`` to full logits, ``F.cross_entropy`` on their fp32 copy (``--no-tiled-logits-loss``);
* ``tiled_eager``: the tiled loss with each chunk's softmax and gradient as eager fp32 ops;
* ``tiled_fused``: the tiled loss with the Triton kernels of ``megatron/kernels/cross_entropy.py``
  (the default on GPUs);
* ``tiled_fused_add``: the same, with the fp32 weight gradient accumulated by a product and an add
  instead of one fp32-output GEMM;
* ``liger``: the tiled loss's backward through liger-kernel (``--use-liger-kernel``), where installed.

    python bench/tiled_loss.py --tokens 16384,65536 --out benchmarks/results/<date>_tiled_loss_h200/tiled_loss_h200.json
    TRITON_INTERPRET=1 python bench/tiled_loss.py --tiny --device cpu --out /tmp/l.json   # CPU smoke run (tested)

One process: ``--tokens`` are the rows one rank holds (16384 is a 32k sequence at SP=2); ``--vocab`` the
output weight's rows (default 50304, the trainer's padded GPT-2 vocabulary; an odd size such as 50257
misaligns every logits GEMM). Per variant
and length: median ms of forward + backward over ``--iters`` after ``--warmup``, peak GPU memory above
the inputs, and the norm-relative difference of loss, dh and dW from ``untiled``'s.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from microbench import add_common_args, device_of, sync, timed  # bench/, this script's directory
from report import report_head, write_json

from megatron.model import tiled

VARIANTS = ("untiled", "tiled_eager", "tiled_fused", "tiled_fused_add", "liger")


def step(h, w, y, variant: str, chunk_logits: int | None = None):
    """Mean loss over the rows, forward and backward; returns (loss, dh, dW)."""
    h.grad = w.grad = None
    if variant == "untiled":
        loss = F.cross_entropy(F.linear(h, w).float().flatten(0, 1), y.flatten(), reduction="none")
    else:
        fused = variant.startswith("tiled_fused")
        tiled._ADDMM_INTO_FP32.clear()
        if variant == "tiled_fused_add":
            tiled._ADDMM_INTO_FP32[h.device.type] = False
        chunk = None if chunk_logits is None else max(1, chunk_logits // w.shape[0])
        loss = tiled.tiled_cross_entropy(h, w, y, chunk, use_liger=variant == "liger", fused=fused)
    loss = loss.mean()
    loss.backward()
    return loss.detach(), h.grad, w.grad


def measure(
    tokens: int,
    hidden: int,
    vocab: int,
    device,
    dtype,
    warmup: int,
    iters: int,
    variants,
    log,
    chunk_logits: int | None = None,
) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(1, tokens, hidden, device=device, generator=gen).to(dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, device=device, generator=gen) * hidden**-0.5).to(dtype).requires_grad_()
    y = torch.randint(0, vocab, (1, tokens), device=device, generator=gen)
    out = {
        "tokens": tokens,
        "hidden": hidden,
        "vocab": vocab,
        "chunk_logits": chunk_logits or "library default (tiled.default_chunk)",
        "variants": {},
    }
    ref = None
    for variant in variants:
        for _ in range(warmup):
            step(h, w, y, variant, chunk_logits)
        sync(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times, res = timed(lambda v=variant: step(h, w, y, v, chunk_logits), device, iters)
        res = [r.float().cpu() for r in res]
        if ref is None:
            ref = res
        rel = [((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(res, ref)]  # loss, dh, dW
        row = {"ms": round(statistics.median(times), 3), "ms_all": [round(t, 3) for t in times],
               "rel_diff_vs_" + variants[0]: rel}  # fmt: skip
        if device.type == "cuda":
            row["peak_above_inputs_gb"] = round((torch.cuda.max_memory_allocated(device) - base) / 1e9, 3)
        out["variants"][variant] = row
        log(f"tokens {tokens:>7}  {variant:<16} {row['ms']:9.2f} ms  peak+ {row.get('peak_above_inputs_gb', '-')} GB")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="hidden 32, vocabulary 1000 (CPU smoke run)")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument(
        "--vocab",
        type=int,
        default=50304,
        help="rows of the output weight: GPT-2's 50257 padded to a multiple of 128, as the trainer pads it",
    )
    p.add_argument("--tokens", default="16384,65536", help="comma-separated rows per rank")
    p.add_argument("--chunk-logits", type=int, help="logits per tiled-loss chunk (default: the library's)")
    p.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)}")
    add_common_args(p, warmup=2, iters=5)
    args = p.parse_args(argv)
    device = device_of(p, args)
    hidden, vocab = (32, 1000) if args.tiny else (args.hidden, args.vocab)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    variants = [v for v in VARIANTS if v != "liger" or importlib.util.find_spec("liger_kernel") is not None]
    if args.variants:
        variants = [v for v in variants if v in args.variants.split(",")]
    if device.type != "cuda":  # the fp32-output GEMM and liger are CUDA-only; the kernels need the interpreter
        interpret = os.environ.get("TRITON_INTERPRET") == "1"
        variants = [v for v in variants if v not in ("tiled_fused_add", "liger") and (interpret or v != "tiled_fused")]

    def log(msg):
        print(msg, flush=True)

    report = {**report_head(__file__, argv, device, packages=("liger_kernel",)), "dtype": str(dtype), "results": []}
    for tokens in [int(t) for t in args.tokens.split(",")]:
        report["results"].append(
            measure(tokens, hidden, vocab, device, dtype, args.warmup, args.iters, variants, log, args.chunk_logits)
        )
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
