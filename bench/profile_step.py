"""Where a training step's time goes: torch.profiler over steady-state steps of the real trainer.

Takes the same flags as ``pretrain_gpt.py`` (launch it the same way, with torchrun) plus:

    --profile-warmup N   steps run before profiling (default 3: allocator, autotuning, ZeRO warm-up)
    --profile-steps N    steps profiled (default 2)
    --profile-out FILE   JSON summary (rank 0): time per kernel category and the top kernels
    --profile-trace FILE optional Chrome trace of rank 0 (large)

    torchrun --nproc_per_node 1 bench/profile_step.py --num-layers 24 --hidden-size 2048 \\
        --num-attention-heads 16 --seq-length 32768 --mock-data --bf16 --zero-stage 3 \\
        --checkpoint-activations --micro-batch-size 1 --global-batch-size 1 --profile-out prof.json

Categories (by kernel name): attention (flash/cuDNN/Triton attention kernels), matmul (GEMMs),
communication (NCCL), copies (memcpy/memset, layout changes), elementwise/norm (the rest).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from pathlib import Path

from report import report_head, write_json  # bench/, this script's directory

ROOT = Path(__file__).resolve().parents[1]

# our Triton attention kernels by exact name (_swiglu_fwd_kernel and _rope_* are not attention)
OUR_ATTENTION_KERNELS = ("_fwd_kernel", "_bwd_delta_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel")
CATEGORIES = [
    ("attention", ("flash", "fmha", "attn", "attention", "cudnn_generated", "sdpa")),
    ("matmul", ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "matmul", "wgmma")),
    ("communication", ("nccl",)),
    ("copies", ("memcpy", "memset", "copy", "transpose", "cat", "contiguous")),
]


def category(name: str) -> str:
    if name in OUR_ATTENTION_KERNELS:
        return "attention"
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "elementwise/norm/other"


def _pop(argv: list, flag: str, default, typ=str):
    if flag in argv:
        i = argv.index(flag)
        value = typ(argv[i + 1])
        del argv[i : i + 2]
        return value
    return default


def summarize(prof, steps: int, wall_s: float) -> dict:
    """Per-category and top-kernel device time (ms per step) from a finished profiler."""
    kernels = {}
    for evt in prof.key_averages():
        dev_us = getattr(evt, "self_device_time_total", None)
        if dev_us is None:
            dev_us = getattr(evt, "self_cuda_time_total", 0)
        # GPU-side user annotations (``Optimizer.step#AdamW.step``) span kernels counted on their own
        if dev_us and evt.device_type.name == "CUDA" and not getattr(evt, "is_user_annotation", False):
            kernels[evt.key] = kernels.get(evt.key, 0.0) + dev_us / 1e3 / steps
    total = sum(kernels.values())
    cpu = {}
    for evt in prof.key_averages():
        if evt.device_type.name == "CPU" and evt.self_cpu_time_total:
            cpu[evt.key] = (cpu.get(evt.key, (0.0, 0))[0] + evt.self_cpu_time_total / 1e3 / steps, evt.count // steps)
    top_cpu = sorted(cpu.items(), key=lambda kv: -kv[1][0])[:30]
    cats = {}
    for name, ms in kernels.items():
        cats[category(name)] = cats.get(category(name), 0.0) + ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:25]
    compute_ms, any_ms = (_union_ms(prof, comm) / steps for comm in (False, True))
    sources = launched_by(prof, {k for k, _ in top}, steps)
    return {
        "step_wall_ms": 1e3 * wall_s / steps,
        "kernel_ms_per_step": total,
        "gpu_busy_fraction": total / (1e3 * wall_s / steps) if wall_s else None,
        # kernels on all streams overlap: the union of their intervals is what the GPU was doing
        "compute_busy_ms_per_step": compute_ms,
        "exposed_communication_ms_per_step": any_ms - compute_ms,
        "idle_ms_per_step": 1e3 * wall_s / steps - any_ms,
        "categories_ms_per_step": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
        "top_kernels_ms_per_step": [
            {"kernel": k[:160], "ms": v, "category": category(k), "launched_by": sources.get(k, [])} for k, v in top
        ],
        # host side: where the Python/C++ time of a step goes (self time, calls per step)
        "top_cpu_ops_ms_per_step": [{"op": k[:160], "ms": v, "calls": n} for k, (v, n) in top_cpu],
    }


def launched_by(prof, kernels: set, steps: int, depth: int = 3, top: int = 3) -> dict:
    """For each of ``kernels``: the CPU ops that launched it, with their callers (``op < parent < ...``,
    autograd's ``evaluate_function: XBackward0`` names the backward of X), by device ms per step.
    One pass over the profiler's events."""
    paths = {k: {} for k in kernels}
    for evt in prof.events():
        for kern in getattr(evt, "kernels", None) or []:
            if kern.name not in paths:
                continue
            names, parent = [evt.name], evt.cpu_parent
            while parent is not None and len(names) < depth:
                names.append(parent.name)
                parent = parent.cpu_parent
            key = " < ".join(n[:80] for n in names)
            paths[kern.name][key] = paths[kern.name].get(key, 0.0) + kern.duration / 1e3 / steps
    return {k: [{"path": p, "ms": round(v, 3)} for p, v in sorted(ps.items(), key=lambda kv: -kv[1])[:top]]
            for k, ps in paths.items()}  # fmt: skip


def _union_ms(prof, with_communication: bool) -> float:
    """Length of the union of GPU kernel intervals (ms), NCCL kernels included or not."""
    spans = []
    for evt in prof.events():
        if evt.device_type.name != "CUDA" or evt.time_range.end <= evt.time_range.start:
            continue
        if getattr(evt, "is_user_annotation", False):
            continue
        if not with_communication and category(evt.name) == "communication":
            continue
        spans.append((evt.time_range.start, evt.time_range.end))
    spans.sort()
    total, end = 0.0, float("-inf")
    for a, b in spans:
        if b > end:
            total += b - max(a, end)
            end = b
    return total / 1e3


def main() -> int:
    argv = sys.argv[1:]
    warmup = _pop(argv, "--profile-warmup", 3, int)
    steps = _pop(argv, "--profile-steps", 2, int)
    out = _pop(argv, "--profile-out", None)
    trace = _pop(argv, "--profile-trace", None)
    import torch
    import torch.distributed as dist

    from megatron.arguments import parse_args
    from megatron.training.trainer import Trainer, initialize_distributed

    entry = runpy.run_path(str(ROOT / "pretrain_gpt.py"))  # the entry point's tokenizer and data setup
    build_tokenizer, build_datasets = entry["build_tokenizer"], entry["build_datasets"]

    cfg = parse_args(argv + ["--train-iters", str(warmup + steps)])
    tokenizer = build_tokenizer(cfg)
    cfg = cfg.resolve(int(os.environ.get("WORLD_SIZE", "1")), None if tokenizer is None else tokenizer.vocab_size)
    device = initialize_distributed(cfg)
    train_ds, valid_ds, eod = build_datasets(cfg, tokenizer)
    trainer = Trainer(cfg, train_ds, valid_ds, eod_token=eod, device=device)
    trainer.train(until=warmup)  # warm-up steps
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=acts) as prof:
        trainer.train()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    if dist.get_rank() == 0:
        head = report_head(__file__, device="cuda" if torch.cuda.is_available() else "cpu")
        summary = {**head, "argv": argv, "warmup": warmup, "steps": steps, **summarize(prof, steps, wall)}
        print(json.dumps(summary, indent=1))
        if out:
            write_json(out, summary)
        if trace:
            prof.export_chrome_trace(trace)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    sys.exit(main())
