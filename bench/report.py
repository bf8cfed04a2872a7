"""The head every benchmark's JSON report starts with, and the one way reports are written.

    from report import report_head, write_json

    report = {**report_head(__file__, argv, device), "results": []}
    for case in cases:
        report["results"].append(measure(case))
        write_json(args.out, report)  # after every result: a run cut short keeps what finished

The head names what produced the numbers: ``command`` (the script, relative to the repository, and its
arguments), ``date_utc``, ``host``, ``devices`` (every visible GPU, or ``["cpu"]``), ``device`` (the one
the script measured, when it says), and ``versions`` (Python, torch, CUDA, cuDNN and the packages in
``PACKAGES``; ``None`` where one is not installed). ``python bench/report.py`` prints the head of this
environment.

By default a benchmark writes into ``results_dir(topic)``, ``benchmarks/results/<date>_<topic>_<gpu>/``: the
folder per measurement that ``bench/results.py`` builds docs/results.md from.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PACKAGES = ("triton", "deepspeed", "transformers", "numpy", "flash_attn")
"""Installed distributions whose version a report names (besides torch, CUDA and cuDNN)."""


def _package_version(name: str) -> str | None:
    """The installed distribution's version; else the importable module's ``__version__`` (e.g. Triton shipped
    as ``pytorch-triton``); else None."""
    for candidate in (name, name.replace("_", "-")):
        try:
            return importlib.metadata.version(candidate)
        except importlib.metadata.PackageNotFoundError:
            continue
    if importlib.util.find_spec(name) is None:
        return None
    return getattr(importlib.import_module(name), "__version__", None)


def versions(*extra: str) -> dict:
    """Python, torch, CUDA, cuDNN and every package of ``PACKAGES`` and ``extra`` (None: not installed).
    Reads package metadata, so nothing heavy (DeepSpeed, transformers) is imported."""
    import torch

    cuda = torch.cuda.is_available()
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None,
    }
    for name in (*PACKAGES, *extra):
        out[name] = _package_version(name)
    return out


def device_name(device) -> str:
    """A torch device as a report names it: the GPU's name, or its type ("cpu")."""
    import torch

    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def devices() -> list:
    """The names of the visible GPUs, or ["cpu"]."""
    import torch

    if not torch.cuda.is_available():
        return ["cpu"]
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def command(script: str, argv=None) -> list:
    """``script`` (a path; relative to the repository when inside it) followed by its arguments."""
    path = Path(script).resolve()
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(script)
    return [name, *(sys.argv[1:] if argv is None else argv)]


def report_head(script: str, argv=None, device=None, packages: tuple = ()) -> dict:
    """The fields a report starts with (see the module docstring). ``script``: the benchmark's ``__file__``;
    ``argv``: its arguments (default ``sys.argv[1:]``); ``device``: the torch device it measures, if one;
    ``packages``: distributions to name besides ``PACKAGES``."""
    head = {
        "command": command(script, argv),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "devices": devices(),
    }
    if device is not None:
        head["device"] = device_name(device)
    head["versions"] = versions(*packages)
    return head


def report_head_from_child(script: str, argv=None, packages: tuple = (), timeout: float = 300) -> dict:
    """``report_head`` with the devices and versions read by a child Python, so that this process never
    initializes CUDA (a driver that launches GPU jobs holds no GPU memory). Where the child fails, the head
    says why in ``probe_error`` and names no devices."""
    head = {
        "command": command(script, argv),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
    }
    try:
        out = subprocess.run([sys.executable, __file__, *packages], capture_output=True, text=True, timeout=timeout,
                             check=True).stdout  # fmt: skip
        child = json.loads(out.strip().splitlines()[-1])
        head.update(devices=child["devices"], versions=child["versions"])
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError, KeyError) as e:
        head.update(devices=None, versions={"python": platform.python_version()}, probe_error=str(e)[:300])
    return head


def gpu_slug(name: str | None = None) -> str:
    """The short GPU name a results folder ends with: "h200" for "NVIDIA H200", "cpu" without a GPU. ``name``: a
    device name; by default the first GPU's, from ``nvidia-smi`` (so that CUDA is not initialized here)."""
    if name is None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30, check=True).stdout  # fmt: skip
            name = out.splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "cpu"
    m = re.search(r"(H100|H200|A100|B200|GB200|L40S?|RTX\s*\d+)", name)
    return (m.group(1) if m else name.split()[-1]).lower().replace(" ", "")


def results_dir(topic: str, gpu: str | None = None) -> Path:
    """``benchmarks/results/<today, UTC>_<topic>_<gpu>/``, where a benchmark writes by default (``gpu``: see
    ``gpu_slug``)."""
    return ROOT / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d', time.gmtime())}_{topic}_{gpu or gpu_slug()}"


def write_json(path, report: dict) -> None:
    """Write ``report`` to ``path`` whole or not at all (a temporary file in the same directory, then renamed):
    a reader, or a run killed while writing, never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


if __name__ == "__main__":  # the devices and versions of this environment (report_head_from_child reads them)
    print(json.dumps({"devices": devices(), "versions": versions(*sys.argv[1:])}))


def iteration_record(it: int, loss: float, dt: float, tokens: int, world: int, flops_md: float, flops_model: float,
                     peak: float | None, mem_gb: float | None, grad_norm) -> dict:
    """One iteration of a peer's metrics file, in the fields of ours: ``tokens`` trained by all ranks in ``dt``
    seconds, ``flops_md`` / ``flops_model`` the iteration's hardware / model FLOPs over all ranks."""
    return {
        "iteration": it, "lm_loss": loss, "step_time_s": dt, "tokens_per_sec": tokens / dt,
        "tokens_per_sec_per_gpu": tokens / dt / world, "tflops": flops_md / dt / world / 1e12,
        "model_tflops": flops_model / dt / world / 1e12, "mfu": flops_model / dt / world / peak if peak else None,
        "mem_gb": mem_gb, "grad_norm": None if grad_norm is None else float(grad_norm),
    }  # fmt: skip


def write_iteration(out, rec: dict, label: str, iters: int) -> None:
    """Append ``rec`` to an open metrics JSONL (None: not rank 0, nothing written) and print its summary line."""
    if out is None:
        return
    out.write(json.dumps(rec) + "\n")
    out.flush()
    mem = "n/a" if rec["mem_gb"] is None else f"{rec['mem_gb']:.2f}"
    print(f" {label} iteration {rec['iteration']}/{iters} | loss {rec['lm_loss']:.4f} | "
          f"step {1000 * rec['step_time_s']:.1f} ms | tokens/s/GPU {rec['tokens_per_sec_per_gpu']:.0f} | "
          f"mem {mem} GB", flush=True)  # fmt: skip


def peer_arg_parser(description: str):
    """The flags every peer runner of ``bench/throughput.py`` shares: the bench shape and length, iterations,
    precision, the vocabulary padding of ours, learning rate, seed and the metrics file."""
    import argparse

    from throughput import SHAPES

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--shape", choices=list(SHAPES), required=True)
    p.add_argument("--seq-length", type=int, required=True)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (else fp32, e.g. on CPU)")
    p.add_argument("--pad-vocab", type=int, default=128, help="vocabulary rounded up to a multiple of this (ours: 128)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--metrics-file", help="JSONL written by rank 0")
    return p


@contextlib.contextmanager
def peer_metrics(path: str | None, rank: int, meta: dict):
    """The metrics JSONL of a peer run, opened on rank 0 (None elsewhere) with its ``{"peer": meta}`` line first."""
    if rank != 0 or not path:
        yield None
        return
    with open(path, "w") as out:
        out.write(json.dumps({"peer": meta}) + "\n")
        out.flush()
        yield out
