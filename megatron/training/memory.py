"""Host-side memory helpers for long sequences: allocator setting, activation offload, ZeRO-Offload.

* ``set_expandable_segments()``: PyTorch's expandable-segments allocator, which stops the
  fragmentation that otherwise makes long-sequence runs OOM with GBs "reserved but unallocated".
* ``offloaded_checkpoint(layer, x, ..., tape=)``: activation checkpointing whose kept layer input
  lives in pinned host memory (``--checkpoint-in-cpu``), copied on a side stream and prefetched
  one layer ahead in backward (``OffloadTape``), plus the host-memory check it needs.
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


def check_host_memory(
    *, checkpoint_bytes_per_rank: int = 0, num_params: int = 0, zero_shards: int = 1, offload_param: bool = False,
    offload_optimizer: bool = False, param_bytes: int = 2, local_ranks: int = 1, meminfo: str = "/proc/meminfo",
) -> int:  # fmt: skip
    """Raise ConfigError when what the ranks of this host keep in host memory exceeds 90% of MemAvailable.

    Counted per rank: the offloaded layer inputs (``--checkpoint-in-cpu``), this rank's ZeRO partition
    of the parameters (``--offload-param``: ``param_bytes`` each) and of the fp32 master weights,
    gradients and Adam moments (``--offload-optimizer``: 16 bytes each). Returns the bytes for the host.
    """
    items = []
    if checkpoint_bytes_per_rank:
        items.append(("--checkpoint-in-cpu", checkpoint_bytes_per_rank * local_ranks))
    if offload_param:
        items.append(("--offload-param", num_params * param_bytes * local_ranks // zero_shards))
    if offload_optimizer:
        items.append(("--offload-optimizer", num_params * 16 * local_ranks // zero_shards))
    need = sum(b for _, b in items)
    avail = available_host_memory(meminfo)
    if items and avail and need > 0.9 * avail:
        gib = 2**30
        parts = " + ".join(f"{what} {b / gib:.1f}" for what, b in items)
        raise ConfigError(
            f"host memory: the {local_ranks} rank(s) on this host need about {need / gib:.1f} GiB ({parts} GiB) but "
            f"only {avail / gib:.1f} GiB is available; spread the model over more GPUs or nodes (ZeRO shards, "
            "--ds-sequence-parallel-size), shorten --seq-length, or drop an offload flag"
        )
    return need


def checkpoint_offload_bytes(num_layers: int, micro_batch: int, local_seq: int, hidden: int, dtype_bytes: int) -> int:
    """Host bytes of one rank's offloaded layer inputs: layers x b x s x H x bytes."""
    return num_layers * micro_batch * local_seq * hidden * dtype_bytes


_copy_streams: dict = {}


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per GPU for the offload copies, so they run on the copy engines beside compute."""
    if device not in _copy_streams:
        _copy_streams[device] = torch.cuda.Stream(device)
    return _copy_streams[device]


class OffloadTape:
    """One forward pass's offloaded layer inputs, in layer order, for ``--checkpoint-in-cpu``.

    Forward: ``push(x)`` copies a layer input to pinned host memory on a side stream, so the
    device-to-host copy overlaps the layer's own forward. Backward visits the layers in reverse;
    ``take(slot)`` returns that layer's input on the GPU and starts bringing back the one below
    it (``slot - 1``) on the side stream, so that copy overlaps this layer's recompute and
    backward. At most two layer inputs are on the GPU at once. On CPU the "host copy" is the
    tensor itself and nothing is copied. ``overlap=False`` (for ``bench/offload_copies.py``)
    copies on the compute stream when each copy is needed, without prefetch.
    """

    def __init__(self, overlap: bool = True):
        self.overlap = overlap
        self._host: list = []  # slot -> pinned host tensor until brought back, then None
        self._fetched: dict = {}  # slot -> (device tensor, event that marks its copy done, or None)
        self.prefetched = 0  # inputs that were already on their way when backward asked for them

    def _stream(self, device: torch.device) -> torch.cuda.Stream:
        return _copy_stream(device) if self.overlap else torch.cuda.current_stream(device)

    def push(self, x: torch.Tensor) -> int:
        x = x.detach()
        if x.device.type != "cuda":
            self._host.append(x)
            return len(self._host) - 1
        stream = self._stream(x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))  # x is written by the compute stream
        buf = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=True)
        with torch.cuda.stream(stream):
            buf.copy_(x, non_blocking=True)
        x.record_stream(stream)  # the allocator keeps x's memory until the copy has read it
        self._host.append(buf)
        return len(self._host) - 1

    def _fetch(self, slot: int, device: torch.device) -> None:
        host, self._host[slot] = self._host[slot], None
        if device.type != "cuda":
            self._fetched[slot] = (host, None)
            return
        stream = self._stream(device)
        with torch.cuda.stream(stream):  # ordered after this slot's device-to-host copy
            dev = host.to(device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        self._fetched[slot] = (dev, done)

    def take(self, slot: int, device: torch.device) -> torch.Tensor:
        """Layer ``slot``'s input on ``device`` (ready for the current stream); prefetches ``slot - 1``."""
        if slot in self._fetched:
            self.prefetched += 1
        else:
            self._fetch(slot, device)
        if self.overlap and slot > 0 and self._host[slot - 1] is not None:
            self._fetch(slot - 1, device)
        x, done = self._fetched.pop(slot)
        if done is not None:
            compute = torch.cuda.current_stream(device)
            compute.wait_event(done)
            x.record_stream(compute)  # allocated on the side stream, used and freed on this one
        return x


class OffloadedCheckpoint(torch.autograd.Function):
    """``run(x, *args)`` without stored activations; x kept on the host (``tape``), brought back to recompute."""

    @staticmethod
    def forward(ctx, run, tape, x, *args):
        ctx.run, ctx.tape, ctx.args, ctx.device = run, tape, args, x.device
        ctx.slot = tape.push(x)
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(x.device) if x.device.type == "cuda" else None
        with torch.no_grad():
            return run(x, *args)

    @staticmethod
    def backward(ctx, grad_out):
        x = ctx.tape.take(ctx.slot, ctx.device).detach().requires_grad_(ctx.needs_input_grad[2])
        ctx.tape = None
        devices = [ctx.device] if ctx.cuda_rng is not None else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad():  # same dropout masks as forward
            torch.set_rng_state(ctx.cpu_rng)
            if ctx.cuda_rng is not None:
                torch.cuda.set_rng_state(ctx.cuda_rng, ctx.device)
            out = ctx.run(x, *ctx.args)
        torch.autograd.backward(out, grad_out)
        return (None, None, x.grad) + (None,) * len(ctx.args)


def offloaded_checkpoint(run, x: torch.Tensor, *args, tape: OffloadTape | None = None):
    """Activation checkpointing of ``run(x, *args)`` with ``x`` in (pinned) host memory until backward.

    Pass one ``OffloadTape`` to every layer of a forward pass so that backward prefetches each
    layer's input while the layer above runs (without one, each input comes back unprefetched).
    Parameters get their gradients from an inner backward, which calls the modules again, so
    ZeRO-3's gather hooks fire as in torch's checkpoint.
    """
    return OffloadedCheckpoint.apply(run, tape or OffloadTape(), x, *args)


# ----------------------------------------------------------------------------- optimizer
def build_optimizer(param_groups: list, lr: float, betas: tuple, eps: float, device: torch.device, offload: bool):
    """AdamW; with --offload-optimizer on GPUs DeepSpeedCPUAdam (AdamW mode), which DeepSpeed builds on first use.

    On CPU-only machines the offloaded states are stepped by torch's AdamW (the same math as
    without offload), and the DeepSpeed JSON allows it (zero_force_ds_cpu_optimizer false).
    """
    if offload and device.type == "cuda":
        from megatron.training.jit_ops import before_jit_build, numeric_arch_list

        local0 = int(os.environ.get("LOCAL_RANK", "0")) == 0
        numeric_arch_list(say=print if local0 else lambda _: None)
        before_jit_build("cpu_adam", say=print if local0 else lambda _: None)  # a stale lock: an error, not a hang
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
