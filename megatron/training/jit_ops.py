"""DeepSpeed ops compiled on first use: the CPU one training never needs, and the ones it does.

DeepSpeed JIT-compiles some C++ ops the first time they are used, under
``~/.cache/torch_extensions`` (or ``$TORCH_EXTENSIONS_DIR``), holding a ``lock`` file in the
op's build directory meanwhile; a process killed during the build leaves the lock behind, and
every later process that wants the op waits on it forever, printing nothing. So: on CPUs the
shared-memory all-reduce (``deepspeed_shm_comm``, which only DeepSpeed's inference all-reduce
uses) is not built at all; an op that is built (``cpu_adam`` for ``--offload-optimizer`` on GPUs)
is announced before the wait, and a lock older than any build is named as the problem.
DeepSpeed's builder reads ``TORCH_CUDA_ARCH_LIST`` as plain numbers, so an arch-specific entry
(``9.0a``) is given to it as ``9.0`` (``numeric_arch_list``).
"""

from __future__ import annotations

import importlib
import os
import time

from megatron.config import ConfigError

STALE_LOCK_MINUTES = 10.0  # a build takes 1-3 minutes; a lock this old belongs to no live build


def skip_cpu_comm_build() -> None:
    """Keep DeepSpeed from compiling ``deepspeed_shm_comm`` when its CPU backend starts (30-60 s,
    silently, with a lock a killed run leaves behind). Training reduces through torch.distributed
    (gloo), so nothing is lost. Call before ``deepspeed.init_distributed``/``deepspeed.initialize``."""
    from deepspeed.accelerator import get_accelerator

    ds_comm = importlib.import_module("deepspeed.comm.torch")  # `import deepspeed.comm.torch as` gives torch
    if get_accelerator().device_name() == "cpu" and hasattr(ds_comm, "build_shm_op"):
        ds_comm.build_shm_op = lambda: None


def build_directory(name: str) -> str:
    """Where torch builds (and locks) the JIT extension ``name``."""
    from torch.utils.cpp_extension import _get_build_directory

    return _get_build_directory(name, verbose=False)


def before_jit_build(name: str, say=print) -> None:
    """Before DeepSpeed loads op ``name``: nothing if it is prebuilt or already built; else say that
    it builds now (or waits for another process's build); raise ConfigError naming a stale lock."""
    from deepspeed.git_version_info import installed_ops

    if installed_ops.get(name, False):
        return
    folder = build_directory(name)
    lock = os.path.join(folder, "lock")
    if os.path.exists(lock):
        minutes = (time.time() - os.path.getmtime(lock)) / 60
        if minutes > STALE_LOCK_MINUTES:
            raise ConfigError(
                f"{lock} is left from an interrupted build of DeepSpeed's {name} op ({minutes:.0f} minutes old) "
                "and would make this run wait forever; delete it (no build is running) and start again"
            )
        say(f"> waiting for another process to finish building DeepSpeed's {name} op ({lock}; if none is, delete it)")
    elif not any(f.endswith(".so") for f in os.listdir(folder)):
        say(f"> building DeepSpeed's {name} op on first use (about a minute) in {folder}")


def numeric_arch_list(environ=os.environ, say=print) -> str | None:
    """Make ``TORCH_CUDA_ARCH_LIST`` readable by DeepSpeed's op builder, which parses each entry as numbers and stops
    every JIT build (DeepCompile's ops, cpu_adam) on an arch-specific target such as Hopper's ``9.0a``: drop the
    ``a``/``f`` suffixes (sm_90 code runs on the same GPUs). Returns the new value, or None when nothing changed."""
    value = environ.get("TORCH_CUDA_ARCH_LIST")
    if not value:
        return None
    entries = value.replace(";", " ").split()
    numeric = []
    for e in entries:  # "9.0a" -> "9.0", "9.0a+PTX" -> "9.0+PTX"
        base, plus, tail = e.partition("+")
        numeric.append((base.rstrip("af") if base[:1].isdigit() else base) + plus + tail)
    if numeric == entries:
        return None
    new = " ".join(dict.fromkeys(numeric))
    environ["TORCH_CUDA_ARCH_LIST"] = new
    say(f"> TORCH_CUDA_ARCH_LIST {value!r} -> {new!r} for DeepSpeed's op builds (it reads plain compute capabilities)")
    return new
