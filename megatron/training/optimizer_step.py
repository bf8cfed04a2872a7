"""The ZeRO optimizer step without two extra passes over the fp32 gradients.

DeepSpeed's ZeRO optimizers (stages 1-3) end each step with work that reads all fp32 gradients
beyond what AdamW itself reads:

* the gradient norm (for clipping) converts every fp32 gradient partition to fp64 first: a copy
  of 12 bytes per parameter, then an fp64 reduction;
* unscaling and clipping multiply every fp32 gradient in place by ``1 / (loss scale x clip)``
  before AdamW reads them, even when that factor is 1 (bf16 with a norm under ``--clip-grad``:
  the factor is a device tensor, so its value is unknown without a host sync).

On one H200 these were 3.8 + 2.9 ms and 4.4 ms of a Llama-1B step at 8k. ``streamline`` takes the
norm in fp32 (torch's own ``clip_grad_norm_`` accumulates in fp32; the squares of bf16-range
gradients are far from fp32's range) and hands the combined factor to torch's fused AdamW as its
``grad_scale`` (the tensor ``torch.amp.GradScaler`` uses): the kernel divides each gradient as it
reads it. Same update up to rounding (a division instead of a multiplication by the reciprocal).

Applied from outside to the optimizer ``deepspeed.initialize`` returned; anything it does not
recognise (ZeRO-0, CPU-offloaded or non-fused optimizers, DeepSpeed's torch-autocast grad scaler)
keeps DeepSpeed's own step. ``--no-lean-optimizer-step`` turns it off.
"""

from __future__ import annotations

import types

import torch

_NORM_MODULES = ("deepspeed.runtime.zero.stage3", "deepspeed.runtime.zero.stage_1_and_2")
_ORIGINAL_NORM_DTYPE: dict = {}  # module name -> DeepSpeed's get_norm_dtype


def _fp32_norm_dtype() -> torch.dtype:
    return torch.float32


def set_fp32_grad_norm(on: bool) -> None:
    """Make DeepSpeed's ZeRO modules take gradient norms in fp32 (``on``) or in their own dtype
    (fp64 where the device has it). Process-wide: both ZeRO modules look the dtype up at each step."""
    import importlib

    for name in _NORM_MODULES:
        mod = importlib.import_module(name)
        original = _ORIGINAL_NORM_DTYPE.setdefault(name, mod.get_norm_dtype)
        mod.get_norm_dtype = _fp32_norm_dtype if on else original


def combined_scale(loss_scale, clip_grad: float, total_norm):
    """What DeepSpeed divides the gradients by: the loss scale, times ``norm / clip`` when the norm
    (of the scaled gradients) exceeds ``clip_grad``; None when that is 1 without clipping."""
    if clip_grad <= 0:
        return None if loss_scale == 1 else loss_scale
    clip = torch.clamp((total_norm / loss_scale + 1e-6) / clip_grad, min=1.0)
    return clip * loss_scale


def _fused_adamw(opt) -> bool:
    return isinstance(opt, torch.optim.AdamW) and bool(opt.defaults.get("fused"))


def can_streamline(zero_optimizer) -> bool:
    """A DeepSpeed ZeRO-1/2/3 optimizer stepping torch's fused AdamW on the GPU, without offload,
    Muon or DeepSpeed's autocast grad scaler."""
    return (
        hasattr(zero_optimizer, "unscale_and_clip_grads")
        and _fused_adamw(getattr(zero_optimizer, "optimizer", None))
        and not getattr(zero_optimizer, "cpu_offload", False)
        and not getattr(zero_optimizer, "offload_optimizer", False)
        and not getattr(zero_optimizer, "use_muon", False)
        and getattr(zero_optimizer, "torch_autocast_gradscaler", None) is None
    )


def streamline(zero_optimizer) -> bool:
    """Norm in fp32 and unscale/clip inside the fused AdamW for ``zero_optimizer``; returns whether
    it applied (see ``can_streamline``; otherwise DeepSpeed's step is left as it is)."""
    if not can_streamline(zero_optimizer):
        return False
    set_fp32_grad_norm(True)
    adamw = zero_optimizer.optimizer

    def unscale_and_clip_grads(self, _group, total_norm):  # stage 3: sub-group id; stages 1-2: flat gradients
        scale = combined_scale(self.loss_scale, self.clip_grad, total_norm)
        if scale is not None and not torch.is_tensor(scale):
            scale = torch.tensor(float(scale), device=self.device)
        adamw.grad_scale = None if scale is None else scale.to(torch.float32).reshape(())

    zero_optimizer.unscale_and_clip_grads = types.MethodType(unscale_and_clip_grads, zero_optimizer)
    return True
