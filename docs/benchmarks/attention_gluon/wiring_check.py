"""Offline check (no GPU) of how flash_attn_triton dispatches to the Gluon kernels: with a stub driver for an
sm_90 target every launch compiles and does not run, so a forward+backward through flash_attn_triton shows which
kernels it launches, with which arguments, and that each compiles. The capability / device checks are stubbed to
the decision they make on an H200 (the inputs decide, as in flash_attn_gluon_fwd / flash_attn_gluon). Values are
not computed; numerics are the GPU tests' job (tests/attention/test_flash_attn_triton.py -m gpu).

    PYTHONPATH=<site-packages with triton 3.6> python docs/benchmarks/attention_gluon/wiring_check.py
"""

import os
import sys
from types import SimpleNamespace

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
from megatron.model import flash_attn_gluon as fag
from megatron.model import flash_attn_gluon_fwd as gfwd
from megatron.model import flash_attn_triton as fat


class _StubDriver:
    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


def main():
    driver.set_active(_StubDriver())
    run = JITFunction.run
    launched = []

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        launched.append(self.fn.__name__)
        return kernel

    JITFunction.run = compile_only
    fat.is_available = lambda: (True, "")
    fat._interpreting = lambda: False
    on_gpu = lambda t: SimpleNamespace(shape=t.shape, dtype=t.dtype, device=SimpleNamespace(type="cuda"))
    fwd_reason, bwd_reason = gfwd.unsupported_reason, fag.unsupported_reason
    torch.cuda.get_device_capability = lambda device=None: (9, 0)
    gfwd.unsupported_reason = lambda q, k, causal, has_doc: fwd_reason(on_gpu(q), on_gpu(k), causal, has_doc)
    fag.unsupported_reason = lambda q, k, causal: bwd_reason(on_gpu(q), on_gpu(k), causal)
    fat.FORWARD = "auto"
    expected = {
        "causal, 4 heads of 128": (["_attn_fwd_kernel", "_bwd_delta_kernel", "_attn_bwd_kernel"], None, 4),
        "causal, documents": (["_fwd_kernel", "_bwd_delta_kernel", "_attn_bwd_kernel"], "docs", 4),
        "causal, GQA 4/2, head dim 64": (["_fwd_kernel", "_bwd_delta_kernel", "_attn_bwd_kernel"], None, 2),
    }
    ok = True
    for name, (kernels, docs, kv_heads) in expected.items():
        dim = 64 if "64" in name else 128
        q = torch.randn(2, 512, 4, dim).bfloat16().requires_grad_()
        k, v = (torch.randn(2, 512, kv_heads, dim).bfloat16().requires_grad_() for _ in range(2))
        ids = torch.tensor([[0] * 200 + [1] * 312] * 2) if docs else None
        launched.clear()
        fat.flash_attn_triton(q, k, v, causal=True, document_ids=ids).backward(torch.randn(2, 512, 4, dim).bfloat16())
        ok &= launched == kernels
        print(f"{name}: launched {launched} ({'as expected' if launched == kernels else f'expected {kernels}'})")
    JITFunction.run = run
    print("wiring check", "PASSED" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
