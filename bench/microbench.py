"""What the one-process microbenchmarks (``tiled_loss.py``, ``pointwise_fusion.py``) share: their device
flags, the check that a GPU is there, timed samples of a call, and their JSON report's head and writing."""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import torch


def add_common_args(p: argparse.ArgumentParser, warmup: int, iters: int) -> None:
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--iters", type=int, default=iters, help="timed samples")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)


def device_of(p: argparse.ArgumentParser, args) -> torch.device:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device; pass --device cpu for a smoke run")
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, iters: int, reps: int = 1):
    """``iters`` samples of ``reps`` calls of ``fn``: (ms per call of each sample, the last call's result)."""
    times, res = [], None
    for _ in range(iters):
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            res = fn()
        sync(device)
        times.append((time.perf_counter() - t) * 1e3 / reps)
    return times, res


def report_head(script: str, device: torch.device, dtype: torch.dtype, argv=None) -> dict:
    """The fields a report starts with: dtype, device, package versions and the command."""
    triton = importlib.util.find_spec("triton") is not None
    return {
        "dtype": str(dtype),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "triton": __import__("triton").__version__ if triton else None},
        "command": [script, *(argv if argv is not None else sys.argv[1:])],
    }  # fmt: skip


def write_report(path: str, report: dict) -> None:
    """Rewritten after every result, so a run cut short keeps what finished."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1) + "\n")
