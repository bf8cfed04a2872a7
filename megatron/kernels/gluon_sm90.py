"""What the two sm_90 Gluon attention kernels (attention_gluon_fwd_sm90, attention_gluon_bwd_sm90) share: the
inputs and the environment they run on, checked once, and the wgmma accumulator layout.

Both take the same inputs (causal, bf16, head dim 64 or 128, grouped-query attention or not, packed documents
or not, sequence a multiple of 128), on an sm_90 GPU with the Triton 3.6 Gluon API they are written against;
`unsupported_reason` says why not in one short phrase, which the dispatcher (interface.py) logs.
"""

import torch

from megatron.kernels.env import GLUON_IMPORT_ERROR, gl, gluon, triton

HEAD_DIMS = (64, 128)
SEQ_MULTIPLE = 128  # the backward's key block and the forward's query block
VERIFIED_TRITON = "3.6."  # the Gluon API these kernels are written against (and the private TMA reduce builder)


def unsupported_reason(q, k, causal: bool):
    """None when the Gluon kernels can run on these inputs, else why not (one short phrase)."""
    if not causal:
        return "not causal"
    if q.dtype != torch.bfloat16:
        return f"{q.dtype} (bf16 only)"
    if q.shape[-1] not in HEAD_DIMS:
        return f"head dim {q.shape[-1]} (not in {HEAD_DIMS})"
    if q.shape[1] % SEQ_MULTIPLE:
        return f"sequence {q.shape[1]} not a multiple of {SEQ_MULTIPLE}"
    return environment_reason(q.device)


def environment_reason(device):
    """None on an sm_90 GPU with the Triton these Gluon kernels were written for, else why not."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) != (9, 0):
        return "not an sm_90 GPU"
    if GLUON_IMPORT_ERROR is not None:
        return f"no Triton Gluon ({type(GLUON_IMPORT_ERROR).__name__})"
    if not triton.__version__.startswith(VERIFIED_TRITON):
        return f"Triton {triton.__version__} (written for {VERIFIED_TRITON}x)"
    return None


if GLUON_IMPORT_ERROR is None:

    @gluon.constexpr_function
    def mma_layout(warps, n):
        """wgmma accumulator layout over warps (e.g. [8, 1]: rows split 64 / 64 between two warpgroups), N = n."""
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=warps, instr_shape=[16, n, 16])
