"""Offline check (no GPU) of how megatron.kernels.interface dispatches to the Gluon kernels: with a stub driver for
an sm_90 target every launch compiles and does not run, so a forward+backward through the interface shows which
kernels it launches by default (forward and backward "auto"), with which arguments, and that each compiles. The
capability / device checks are stubbed to the decision they make on an H200 (the inputs decide, as in
gluon_sm90.unsupported_reason). Values are not computed; numerics are the GPU tests' job
(tests/attention/test_flash_attn_triton.py -m gpu).

    PYTHONPATH=<site-packages with triton 3.6> python docs/benchmarks/attention_gluon/wiring_check.py
"""

import os
import sys
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
from bench.kernel_resources import compile_only_sm90
from megatron.kernels import gluon_sm90, interface


def main():
    interface.is_available = lambda: (True, "")
    on_gpu = lambda t: SimpleNamespace(shape=t.shape, dtype=t.dtype, device=SimpleNamespace(type="cuda"))
    shared_reason = gluon_sm90.unsupported_reason  # the check both Gluon kernels make first
    torch.cuda.get_device_capability = lambda device=None: (9, 0)
    gluon_sm90.unsupported_reason = lambda q, k, causal: shared_reason(on_gpu(q), on_gpu(k), causal)
    gluon = ["_attn_fwd_kernel", "_bwd_delta_kernel", "_attn_bwd_kernel"]
    hd64 = ["_fwd_kernel", "_bwd_delta_kernel", "_attn_bwd_kernel"]  # the Triton forward is faster at head dim 64
    expected = {  # name -> (kernels, documents, kv heads, causal)
        "causal, 4 heads of 128": (gluon, None, 4, True),
        "causal, documents": (gluon, "docs", 4, True),
        "causal, GQA 4/2, head dim 128": (gluon, None, 2, True),
        "causal, GQA 4/2, head dim 64": (hd64, None, 2, True),
        "causal, GQA 4/2, head dim 64, documents": (hd64, "docs", 2, True),
        "not causal": (["_fwd_kernel", "_bwd_delta_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"], None, 4, False),
    }
    ok = True
    with compile_only_sm90() as launched:
        for name, (kernels, docs, kv_heads, causal) in expected.items():
            dim = 64 if "64" in name else 128
            q = torch.randn(2, 512, 4, dim).bfloat16().requires_grad_()
            k, v = (torch.randn(2, 512, kv_heads, dim).bfloat16().requires_grad_() for _ in range(2))
            ids = torch.tensor([[0] * 200 + [1] * 312] * 2) if docs else None
            launched.clear()
            out = interface.flash_attention(q, k, v, causal=causal, document_ids=ids)
            out.backward(torch.randn(2, 512, 4, dim).bfloat16())
            names = [kernel_name for kernel_name, _, _ in launched]
            ok &= names == kernels
            print(f"{name}: launched {names} ({'as expected' if names == kernels else f'expected {kernels}'})")
    print("wiring check", "PASSED" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
