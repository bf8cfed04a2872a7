"""Diagnosis (GPU): where the Gluon backward's gradients go wrong. For each shape, the relative error of
dq, dk, dv per (batch, head, 128-row block) against the fp32 reference, for each variant and ring depth.

    python3 docs/benchmarks/attention_gluon/diag.py
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
import flash_bwd_gluon as fbg
from gpu_check import make_qkvdo, reference_grads, triton_forward


def blocks(got, ref):
    """'b,h: e0 e1 ..' relative error per 128-row block, for each batch and head."""
    out = []
    for b in range(got.shape[0]):
        for h in range(got.shape[2]):
            errs = []
            for r0 in range(0, got.shape[1], 128):
                g, w = got[b, r0 : r0 + 128, h].float(), ref[b, r0 : r0 + 128, h].float()
                errs.append(f"{((g - w).norm() / w.norm()).item():.0e}")
            out.append(f"{b},{h}: {' '.join(errs)}")
    return " | ".join(out)


for bsz, heads, seq in [(1, 1, 256), (2, 1, 128), (1, 3, 128), (1, 1, 384), (1, 1, 512)]:
    q, k, v, do = make_qkvdo(bsz, heads, seq, seed=seq + heads)
    scale = 1 / 128**0.5
    out, lse = triton_forward(q, k, v, scale)
    ref = reference_grads(q, k, v, do, scale)
    for variant in ("ws", "plain"):
        for stages in (2, 3):
            got = fbg.gluon_attention_backward(q, k, v, out, do, lse, scale, variant=variant, stages=stages)
            torch.cuda.synchronize()
            for name, g, r in zip(("dq", "dk", "dv"), got, ref):
                print(f"b{bsz} h{heads} s{seq} {variant} st{stages} {name}: {blocks(g, r)}", flush=True)
