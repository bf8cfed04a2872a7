"""Whether Triton and its Gluon dialect import here, and whether Triton runs in its CPU interpreter.

The one place that imports them: every kernel module takes `triton`, `tl` and the Gluon names from here,
and they are None where the import failed (CPU-only installs without Triton, or a Triton without the Gluon
API the sm_90 kernels use), so the kernel modules still import and their callers can say why not.
Triton decides when a kernel is defined (`@triton.jit`) whether it runs in the interpreter (TRITON_INTERPRET=1), so
callers import the kernel modules on first use, after the environment is set, not at start-up.
"""

import os

try:
    import triton
    import triton.language as tl

    TRITON_IMPORT_ERROR = None
except ImportError as e:
    triton = None
    tl = None
    TRITON_IMPORT_ERROR = e
HAVE_TRITON = TRITON_IMPORT_ERROR is None

try:  # the Gluon API of the sm_90 attention kernels (written against Triton 3.6), with its private TMA reduce builder
    from triton._C.libtriton import ir as gluon_ir
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language._core import builtin as gluon_builtin
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    GLUON_IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001 (no Triton, or one without this Gluon API: the Triton kernels are used)
    gluon_ir = gluon = gl = gluon_builtin = None
    fence_async_shared = mbarrier = tma = warpgroup_mma = warpgroup_mma_wait = TensorDescriptor = None
    GLUON_IMPORT_ERROR = e
HAVE_GLUON = GLUON_IMPORT_ERROR is None


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
