"""Probe (not library code): does Triton's Gluon dialect warp-specialize on Hopper with register
reallocation? Compiles a two-partition kernel for sm_90 offline and looks for setmaxnreg.

    PYTHONPATH=<site-packages with triton 3.6.0> python docs/benchmarks/kernel_resources/gluon_ws_probe.py
"""

import re

import triton
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@gluon.jit
def _default(ptr, BLOCK: gl.constexpr):
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    offs = gl.arange(0, BLOCK, layout=layout)
    gl.store(ptr + offs, offs.to(gl.float32))


@gluon.jit
def _worker(ptr, BLOCK: gl.constexpr):
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
    offs = gl.arange(0, BLOCK, layout=layout)
    gl.store(ptr + BLOCK + offs, offs.to(gl.float32) * 2)


@gluon.jit
def ws_kernel(ptr, BLOCK: gl.constexpr):
    # Default partition: the kernel's 4 warps; one worker warp with 24 registers.
    gl.warp_specialize([(_default, (ptr, BLOCK)), (_worker, (ptr, BLOCK))], [1], [24])


if __name__ == "__main__":
    src = gluon._runtime.GluonASTSource(ws_kernel, {"ptr": "*fp32", "BLOCK": "constexpr"}, constexprs={(1,): 128})
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
    print(
        f"Triton {triton.__version__}, sm_90:",
        sorted(set(re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+\d+", ptx))),
    )
