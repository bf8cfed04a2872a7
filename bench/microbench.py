"""What the one-process microbenchmarks (``tiled_loss.py``, ``pointwise_fusion.py``) share: their device
flags, the check that a GPU is there and timed samples of a call (their report's head and writing: ``report.py``)."""

from __future__ import annotations

import argparse
import time

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
