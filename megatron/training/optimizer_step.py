"""The ZeRO optimizer step without three extra passes over the gradients.

DeepSpeed's ZeRO optimizers (stages 1-3) end each step with work that reads every gradient beyond
what AdamW itself reads:

* the gradient norm (for clipping) first converts each gradient partition to fp64 (``.to``: a
  full copy, 2 + 8 bytes per parameter from bf16), then reduces it;
* unscaling and clipping multiply every fp32 gradient in place by ``1 / (loss scale x clip)``
  before AdamW reads them, even when that factor is 1 (bf16 with a norm under ``--clip-grad``:
  the factor is a device tensor, so its value is unknown without a host sync).

ZeRO-1/2 in bf16 and fp16 also scan every gradient for NaN/inf (``amax`` and ``amin`` of each, then a host
sync and an all-reduce) before the norm, although the step checks the norm for the same thing right after:
a non-finite gradient makes the norm non-finite on every rank, and the step is skipped.

On one H200 these were 5.4 + 2.9 ms and 4.3 ms of a Llama-1B step at 8k (ZeRO-3). ``streamline``
hands DeepSpeed's norm the norm of the per-tensor norms instead of the gradients (``torch._foreach_norm``,
accumulated in fp32 straight from the gradients' dtype, as torch's ``clip_grad_norm_`` does; DeepSpeed then
combines it over its groups and ranks in its own dtype: one tensor, not a few kernel launches per
gradient), and hands the combined factor to torch's fused AdamW as its ``grad_scale`` (the tensor ``torch.amp.GradScaler`` uses): the kernel
divides each gradient as it reads it. Same update up to rounding. Under ZeRO-1/2 it leaves the skip of
non-finite steps to the norm check (where DeepSpeed computes the norm; the scan stays where it does not).
One difference: bf16 gradients so large (beyond about 1e19) that their squares overflow fp32 give an
infinite norm, and that step is skipped where DeepSpeed's fp64 norm would have clipped it.

Applied from outside to the optimizer ``deepspeed.initialize`` returned; anything it does not
recognise (ZeRO-0, CPU-offloaded or non-fused optimizers, Muon, DeepSpeed's torch-autocast grad
scaler) keeps DeepSpeed's own step. ``--no-lean-optimizer-step`` turns it off.
"""

from __future__ import annotations

import types

import torch


def tensor_norms(gradients: list, norm_type: float) -> list:
    """Each gradient's ``norm_type``-norm as a 0-d fp32 tensor (fp32 accumulation, no copy of the gradient);
    DeepSpeed's padding partitions (``_zero_padding``) are left out, as DeepSpeed's own norm leaves them out."""
    kept = [g for g in gradients if not getattr(g, "_zero_padding", False)]
    if not kept:
        return []
    try:
        return list(torch._foreach_norm(kept, norm_type, dtype=torch.float32))
    except (RuntimeError, TypeError):  # a dtype or device the foreach kernel lacks
        return [torch.linalg.vector_norm(g, norm_type, dtype=torch.float32) for g in kept]


def combined_scale(loss_scale, clip_grad: float, total_norm):
    """What DeepSpeed divides the gradients by: the loss scale, times ``norm / clip`` when the norm
    (of the scaled gradients) exceeds ``clip_grad``; None when that is 1 without clipping."""
    if clip_grad <= 0:
        return None if loss_scale == 1 else loss_scale
    clip = torch.clamp((total_norm / loss_scale + 1e-6) / clip_grad, min=1.0)
    return clip * loss_scale


def every_gradient_counts(zero_optimizer, params) -> bool:
    """Whether DeepSpeed's norm counts the gradient of each of ``params`` on this rank: no tensor-parallel rank
    other than the first (which leaves out the replicated parameters) and no pipeline-replicated parameter."""
    return getattr(zero_optimizer, "model_parallel_rank", 0) == 0 and not any(
        getattr(p, "ds_pipe_replicated", False) for p in params
    )


def _fused_adamw(opt) -> bool:
    return isinstance(opt, torch.optim.AdamW) and bool(opt.defaults.get("fused"))


def can_streamline(zero_optimizer) -> bool:
    """A DeepSpeed ZeRO-1/2/3 optimizer stepping torch's fused AdamW on the GPU, without offload,
    Muon or DeepSpeed's autocast grad scaler."""
    return (
        hasattr(zero_optimizer, "unscale_and_clip_grads")
        and hasattr(zero_optimizer, "get_grad_norm_direct")
        and _fused_adamw(getattr(zero_optimizer, "optimizer", None))
        and not getattr(zero_optimizer, "cpu_offload", False)
        and not getattr(zero_optimizer, "offload_optimizer", False)
        and not getattr(zero_optimizer, "use_muon", False)
        and getattr(zero_optimizer, "torch_autocast_gradscaler", None) is None
    )


def streamline(zero_optimizer) -> bool:
    """Per-tensor fp32 norms and unscale/clip inside the fused AdamW for ``zero_optimizer``; returns whether
    it applied (see ``can_streamline``; otherwise DeepSpeed's step is left as it is)."""
    if not can_streamline(zero_optimizer):
        return False
    adamw = zero_optimizer.optimizer
    deepspeed_norm = zero_optimizer.get_grad_norm_direct

    def get_grad_norm_direct(self, gradients, params, norm_type=2):
        # DeepSpeed's norm of the per-tensor norms is the norm of the gradients (for any p, and for inf)
        norms = tensor_norms(gradients, float(norm_type))
        if norms and every_gradient_counts(self, params):
            # one tensor, their norm: DeepSpeed's loop over the gradients launches a few kernels per tensor
            norms = [torch.linalg.vector_norm(torch.stack(norms), float(norm_type))]
        return deepspeed_norm(norms or gradients, params, norm_type)

    def unscale_and_clip_grads(self, _group, total_norm):  # stage 3: sub-group id; stages 1-2: flat gradients
        scale = combined_scale(self.loss_scale, self.clip_grad, total_norm)
        if scale is not None and not torch.is_tensor(scale):
            scale = torch.tensor(float(scale), device=self.device)
        adamw.grad_scale = None if scale is None else scale.to(torch.float32).reshape(())

    zero_optimizer.get_grad_norm_direct = types.MethodType(get_grad_norm_direct, zero_optimizer)
    zero_optimizer.unscale_and_clip_grads = types.MethodType(unscale_and_clip_grads, zero_optimizer)
    if norm_checks_overflow(zero_optimizer):

        def has_overflow(self, partition_gradients=True):
            return False  # the norm check that follows skips the step instead

        zero_optimizer.has_overflow = types.MethodType(has_overflow, zero_optimizer)
    return True


def norm_checks_overflow(zero_optimizer) -> bool:
    """A ZeRO-1/2 optimizer whose step marks a non-finite gradient norm as an overflow (it computes the norm,
    and checks it: fp16, or bf16 with ``check_grad_overflow``), so its separate scan of the gradients is
    redundant."""
    return (
        hasattr(zero_optimizer, "has_overflow_partitioned_grads_serial")
        and bool(getattr(zero_optimizer, "compute_grad_norm", False))
        and bool(getattr(zero_optimizer, "check_grad_overflow", False))
        and getattr(zero_optimizer, "dtype", None) in (torch.bfloat16, torch.float16)
    )
