"""Head dim 64: the Gluon forward (megatron/kernels/attention_gluon_fwd_sm90.forward) at each (BLOCK_N, stages) it
compiles for, against our Triton forward (flash_attention with forward="triton"), causal, bf16, 32 heads (MHA) and 32 / 8
(GQA 4). Forward only; triton.testing.do_bench medians. One H200.

    python3 benchmarks/results/2026-11-30_attention_backends_h200/hd64_fwd_sweep.py --out FILE.json
"""

import argparse
import json
import os
import sys

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
from megatron.kernels import attention_gluon_fwd_sm90 as gfwd
from megatron.kernels import interface as fat

SHAPES = [(4, 4096, 32, 32), (1, 16384, 32, 32), (1, 16384, 32, 8), (1, 65536, 32, 32)]  # (b, s, h, g)
CONFIGS = [(128, 3), (128, 4), (64, 3), (64, 4)]  # (BLOCK_N, stages)


def _ms(fn, *args, **kwargs):
    return do_bench(lambda: fn(*args, **kwargs))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    rows = []
    for bsz, seq, heads, kv_heads in SHAPES:
        q = torch.randn(bsz, seq, heads, 64, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(bsz, seq, kv_heads, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        flops = 4 * bsz * heads * seq * seq * 64 / 2
        row = {
            "b": bsz,
            "s": seq,
            "h": heads,
            "g": kv_heads,
            "triton_ms": _ms(fat.flash_attention, q, k, v, causal=True, forward="triton"),
        }
        for block_n, stages in CONFIGS:
            try:
                row[f"gluon_bn{block_n}_st{stages}_ms"] = _ms(gfwd.forward, q, k, v, 0.125, None, block_n, stages)
            except Exception as e:  # noqa: BLE001 (recorded: a config that does not compile or fit)
                row[f"gluon_bn{block_n}_st{stages}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        row["tflops"] = {key[:-3]: flops / ms / 1e9 for key, ms in row.items() if key.endswith("_ms")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    env = {"torch": torch.__version__, "triton": triton.__version__, "device": torch.cuda.get_device_name()}
    with open(a.out, "w") as f:
        json.dump({"command": " ".join(["python3", *sys.argv]), "env": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
