"""Host-side memory helpers for long sequences: allocator setting, activation offload, ZeRO-Offload.

* ``set_expandable_segments()``: PyTorch's expandable-segments allocator, which stops the
  fragmentation that otherwise makes long-sequence runs OOM with GBs "reserved but unallocated".
* ``offloaded_checkpoint(layer, x, ...)``: activation checkpointing whose kept layer input lives
  in pinned host memory (``--checkpoint-in-cpu``), plus the host-memory check it needs.
* ``build_optimizer(...)``: AdamW for the trainer, DeepSpeedCPUAdam when optimizer states are
  offloaded on GPUs.
"""

from __future__ import annotations

import os

import torch

from megatron.config import ConfigError

ALLOC_CONF = "expandable_segments:True"


# ----------------------------------------------------------------------------- allocator
def set_expandable_segments(environ=os.environ) -> bool:
    """Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True unless the user configured the allocator.

    Call before the first CUDA allocation (the setting is read once). Returns whether it was set.
    """
    if environ.get("PYTORCH_CUDA_ALLOC_CONF") or environ.get("PYTORCH_ALLOC_CONF"):
        return False
    environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOC_CONF
    return True


# ----------------------------------------------------------------------------- activation offload
def available_host_memory(meminfo: str = "/proc/meminfo") -> int:
    """MemAvailable in bytes (Linux); 0 when unknown."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def check_host_memory_for_checkpoint_offload(
    num_layers: int, micro_batch: int, local_seq: int, hidden: int, dtype_bytes: int, local_ranks: int,
    meminfo: str = "/proc/meminfo",
) -> int:  # fmt: skip
    """Raise ConfigError when the offloaded layer inputs of all ranks on this host exceed 90% of MemAvailable.

    Returns the estimated bytes. The estimate is layers x b x s x H x bytes per rank.
    """
    per_rank = num_layers * micro_batch * local_seq * hidden * dtype_bytes
    need = per_rank * local_ranks
    avail = available_host_memory(meminfo)
    if avail and need > 0.9 * avail:
        gib = 2**30
        raise ConfigError(
            f"--checkpoint-in-cpu needs about {need / gib:.1f} GiB of pinned host memory ({num_layers} layers x "
            f"{micro_batch} x {local_seq} tokens x {hidden} x {dtype_bytes} B x {local_ranks} ranks on this host) "
            f"but only {avail / gib:.1f} GiB is available; use a larger --ds-sequence-parallel-size, a shorter "
            "--seq-length, or drop --checkpoint-in-cpu"
        )
    return need


def _to_host(x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu":
        return x.detach()
    buf = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=True)
    buf.copy_(x.detach(), non_blocking=True)  # ordered before any later use on the same stream
    return buf


class OffloadedCheckpoint(torch.autograd.Function):
    """``run(x, *args)`` without stored activations; x kept on the host, brought back to recompute in backward."""

    @staticmethod
    def forward(ctx, run, x, *args):
        ctx.run, ctx.args, ctx.device = run, args, x.device
        ctx.x_host = _to_host(x)
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(x.device) if x.device.type == "cuda" else None
        with torch.no_grad():
            return run(x, *args)

    @staticmethod
    def backward(ctx, grad_out):
        x = ctx.x_host.to(ctx.device, non_blocking=True).detach().requires_grad_(ctx.needs_input_grad[1])
        ctx.x_host = None
        devices = [ctx.device] if ctx.cuda_rng is not None else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad():  # same dropout masks as forward
            torch.set_rng_state(ctx.cpu_rng)
            if ctx.cuda_rng is not None:
                torch.cuda.set_rng_state(ctx.cuda_rng, ctx.device)
            out = ctx.run(x, *ctx.args)
        torch.autograd.backward(out, grad_out)
        return (None, x.grad) + (None,) * len(ctx.args)


def offloaded_checkpoint(run, x: torch.Tensor, *args):
    """Activation checkpointing of ``run(x, *args)`` with ``x`` in (pinned) host memory until backward.

    Parameters get their gradients from an inner backward, which calls the modules again, so
    ZeRO-3's gather hooks fire as in torch's checkpoint.
    """
    return OffloadedCheckpoint.apply(run, x, *args)


# ----------------------------------------------------------------------------- optimizer
def build_optimizer(param_groups: list, lr: float, betas: tuple, eps: float, device: torch.device, offload: bool):
    """AdamW; with --offload-optimizer on GPUs DeepSpeedCPUAdam (AdamW mode), which DeepSpeed builds on first use.

    On CPU-only machines the offloaded states are stepped by torch's AdamW (the same math as
    without offload), and the DeepSpeed JSON allows it (zero_force_ds_cpu_optimizer false).
    """
    if offload and device.type == "cuda":
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(param_groups, lr=lr, betas=betas, eps=eps, adamw_mode=True)
        except Exception as e:  # the C++ extension could not be built or loaded
            raise RuntimeError(
                f"--offload-optimizer needs DeepSpeed's CPU Adam extension, which failed to build/load ({e}); "
                "install a C++ compiler and ninja, or reinstall DeepSpeed with DS_BUILD_CPU_ADAM=1 "
                "pip install deepspeed, or drop --offload-optimizer"
            ) from e
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, fused=device.type == "cuda" and not offload)
