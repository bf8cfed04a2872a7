"""Where a training step's time goes: torch.profiler over steady-state steps of the real trainer.

Takes the same flags as ``pretrain_gpt.py`` (launch it the same way, with torchrun) plus:

    --profile-warmup N   steps run before profiling (default 3: allocator, autotuning, ZeRO warm-up)
    --profile-steps N    steps profiled (default 2)
    --profile-out FILE   JSON summary (rank 0): time per kernel category and the top kernels
    --profile-trace FILE optional Chrome trace of rank 0 (large)

The trainer's phases (data, forward, backward, DeepSpeed's step and its parts, logging) run inside
``record_function("phase: ...")`` scopes during the profile, so the summary can say what the host was
doing while the GPU had nothing to run: ``idle_by_phase_ms_per_step`` (innermost phase) and
``idle_by_host_op_ms_per_step`` (innermost host op) split each gap between GPU kernels.

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


# the trainer's phases, wrapped from outside for the profile: (path from the trainer, methods)
PHASE = "phase: "  # the record_function names of the wrapped phases start with it
PHASES = (
    ("batches", ("of_step",)),
    ("step", ("count_tokens",)),
    ("log", ("end_window",)),
    ("exit_policy", ("reason",)),
    ("engine", ("forward", "backward", "step")),
    ("engine.optimizer", ("step", "has_overflow", "check_overflow", "scaled_global_norm", "_get_norm_groups",
                          "independent_gradient_partition_epilogue", "_optimizer_step", "unscale_and_clip_grads",
                          "reduce_ipg_grads", "_post_step", "_pre_step", "_prepare_fp32_grad_for_sub_group",
                          "_reassign_or_swap_out_partitioned_parameters", "_overflow_check_and_loss_scale_update")),
)


def annotate_phases(trainer) -> list:
    """Wrap the trainer's phases (``PHASES``) in ``record_function("phase: <path>.<method>")``, per instance;
    returns the names wrapped."""
    import functools

    import torch

    wrapped = []
    for path, methods in PHASES:
        obj = trainer
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is None:
            continue
        for name in methods:
            fn = getattr(obj, name, None)
            if not callable(fn):
                continue
            label = f"{PHASE}{path}.{name}"

            def run(*args, __fn=fn, __label=label, **kwargs):
                with torch.profiler.record_function(__label):
                    return __fn(*args, **kwargs)

            setattr(obj, name, functools.wraps(fn)(run))
            wrapped.append(label[len(PHASE) :])
    return wrapped


def _gaps(spans: list) -> list:
    """The gaps between the union of ``spans`` ((start, end) pairs)."""
    merged = _merged(spans)
    return [(merged[i][1], merged[i + 1][0]) for i in range(len(merged) - 1)]


def _innermost_during(gaps: list, scopes: list) -> dict:
    """Split ``gaps`` ((start, end), sorted, disjoint) by the innermost of ``scopes`` ((start, end, name), nested as
    one thread's are) active meanwhile; ``(none)`` where none is. One sweep: {name: total length}."""
    scopes = sorted(scopes, key=lambda s: (s[0], -s[1]))
    points = sorted({p for g in gaps for p in g} | {p for s in scopes for p in s[:2] if gaps[0][0] <= p <= gaps[-1][1]})
    out, stack, nxt, gi = {}, [], 0, 0
    for lo, hi in zip(points, points[1:]):
        while nxt < len(scopes) and scopes[nxt][0] <= lo:
            stack.append(scopes[nxt])
            nxt += 1
        while stack and stack[-1][1] <= lo:
            stack.pop()
        while gi < len(gaps) and gaps[gi][1] <= lo:
            gi += 1
        if gi == len(gaps):
            break
        if gaps[gi][0] <= lo and hi <= gaps[gi][1]:
            # a scope below the top that ended already (not nested) is skipped
            name = next((s[2] for s in reversed(stack) if s[1] >= hi), "(none)")
            out[name] = out.get(name, 0.0) + hi - lo
    return out


def idle_by_host(prof, steps: int) -> tuple:
    """Split each gap between GPU kernels (all streams) by what the main host thread was inside during it:
    the innermost ``phase: `` scope, and the innermost host op (``(none)``: Python outside any op). Returns two
    ``{name: ms per step}`` dicts, largest first."""
    host = [e for e in prof.events() if e.device_type.name != "CUDA" and e.time_range.end > e.time_range.start]
    gaps = _gaps(_kernel_spans(prof))
    if not gaps or not host:
        return {}, {}
    count = {}
    for e in host:
        count[e.thread] = count.get(e.thread, 0) + e.name.startswith(PHASE)
    main = max(count, key=count.get)  # the thread the trainer's phases ran on
    host = [e for e in host if e.thread == main]
    phases = [(e.time_range.start, e.time_range.end, e.name[len(PHASE) :]) for e in host if e.name.startswith(PHASE)]
    ops = [(e.time_range.start, e.time_range.end, e.name) for e in host if not e.name.startswith(PHASE)]

    def order(d):
        return dict(sorted(((k, round(v / 1e3 / steps, 3)) for k, v in d.items()), key=lambda kv: -kv[1]))

    return order(_innermost_during(gaps, phases)), order(_innermost_during(gaps, ops))


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
    idle_phase, idle_op = idle_by_host(prof, steps)
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
        # gaps between GPU kernels, by what the host's main thread was inside meanwhile
        "idle_by_phase_ms_per_step": idle_phase,
        "idle_by_host_op_ms_per_step": dict(list(idle_op.items())[:30]),
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


def _kernel_spans(prof, with_communication: bool = True) -> list:
    """(start, end) of every GPU kernel (us), user annotations left out, NCCL kernels included or not."""
    spans = []
    for evt in prof.events():
        if evt.device_type.name != "CUDA" or evt.time_range.end <= evt.time_range.start:
            continue
        if getattr(evt, "is_user_annotation", False):
            continue
        if not with_communication and category(evt.name) == "communication":
            continue
        spans.append((evt.time_range.start, evt.time_range.end))
    return spans


def _merged(spans: list) -> list:
    """The union of ``spans`` ((start, end) pairs) as sorted, disjoint intervals."""
    out = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _union_ms(prof, with_communication: bool) -> float:
    """Length of the union of GPU kernel intervals (ms), NCCL kernels included or not."""
    return sum(b - a for a, b in _merged(_kernel_spans(prof, with_communication))) / 1e3


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
    phases = annotate_phases(trainer)
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
        summary = {**head, "argv": argv, "warmup": warmup, "steps": steps, "phases": phases, **summarize(prof, steps, wall)}
        print(json.dumps(summary, indent=1))
        if out:
            write_json(out, summary)
        if trace:
            prof.export_chrome_trace(trace)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    sys.exit(main())
