"""SwiGLU's gate, eager against the fused kernels (megatron.kernels.swiglu): forward + backward time, the memory
kept for the backward, and the difference of output and gradient from the fp64 value.

    python bench/swiglu.py --out /tmp/swiglu.json              # Llama-1B's width (8,192), 8k and 32k rows

Per case: triton.testing.do_bench medians (ms) of forward alone and forward + backward of y [rows, 2F] bf16 ->
silu(gate) * up, the bytes autograd keeps between them (saved-tensor hooks), and the norm-relative error of the
output and dy against fp64.
"""

from __future__ import annotations

import argparse
import sys

import torch
from report import report_head, write_json  # bench/, this script's directory

from megatron.kernels import swiglu as sk

IMPLS = {"eager": sk.swiglu_reference, "fused": sk.swiglu}


def saved_bytes(fn, y) -> int:
    """Bytes of the tensors autograd keeps for the backward (storage counted once)."""
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(y)
    return total


def measure(rows: int, F: int) -> list:
    from triton.testing import do_bench

    g = torch.Generator(device="cuda").manual_seed(rows)
    y = torch.randn(rows, 2 * F, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    dout = torch.randn(rows, F, device="cuda", dtype=torch.bfloat16, generator=g)
    y64 = y.detach().double().requires_grad_()
    want = sk.swiglu_reference(y64)
    (dy64,) = torch.autograd.grad(want, y64, dout.double())
    out = []
    for name, fn in IMPLS.items():
        got = fn(y)
        (dy,) = torch.autograd.grad(got, y, dout)
        row = {
            "impl": name, "rows": rows, "ffn": F,
            "fwd_ms": do_bench(lambda fn=fn: fn(y.detach()), return_mode="median"),
            "fwd_bwd_ms": do_bench(lambda fn=fn: fn(y).backward(dout), grad_to_none=[y], return_mode="median"),
            "saved_bytes": saved_bytes(fn, y),
            "out_rel_err": ((got.double() - want).norm() / want.norm()).item(),
            "dy_rel_err": ((dy.double() - dy64).norm() / dy64.norm()).item(),
        }  # fmt: skip
        print({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ffn", type=int, default=8192, help="F: the width of gate and of up (Llama-3.2-1B: 8192)")
    p.add_argument("--rows", default="8192,32768", help="comma-separated tokens per call")
    p.add_argument("--out", required=True, help="JSON path")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench/swiglu.py needs a CUDA GPU (the fused kernels are compared with eager there)")
    record = {**report_head(__file__, device="cuda"), "dtype": "bfloat16", "timer": "triton.testing.do_bench median"}
    record["results"] = [r for rows in args.rows.split(",") for r in measure(int(rows), args.ffn)]
    write_json(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
