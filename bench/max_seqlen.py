"""Longest sequence that trains (forward, backward, optimizer step) without running out of memory.

For a model shape, a GPU count and an ablation ladder of ALST memory features, each rung's
longest trainable sequence is found by doubling then bisecting the sequence length; every
attempt is a fresh ``torchrun`` of the real trainer (so an OOM leaves nothing behind) that
runs ``--steps`` training steps (default 2) and reports peak memory, its breakdown and the step time.

    python bench/max_seqlen.py --shape llama-8b --nproc 8            # GPUs; writes benchmarks/results/<date>_max_seqlen_<gpu>/
    python bench/max_seqlen.py --shape gpt-1.3b --nproc 8 --rungs baseline,+tiled_loss
    python bench/max_seqlen.py --tiny --nproc 2 --out /tmp/x.json    # CPU smoke run (tested)

Ladder (cumulative; activation checkpointing, ZeRO-3 and the expandable-segments allocator
throughout): baseline (DP only, untiled loss) -> +tiled_loss -> +ulysses (SP = nproc) ->
+tiled_mlp -> +offload (checkpointed activations, parameters and optimizer states on the CPU).

Each attempt ends in one ``outcome``: ``ok``; ``oom`` (``"oom": "device"`` or ``"host"``: GPU memory,
or pinned host memory for offload); ``host_killed`` (the host killed the workers, e.g. its
out-of-memory killer: no Python error is left to read); ``timeout`` (``--attempt-timeout``, the
whole process group is killed); ``too_slow`` (not run: from the last successful attempt's step
time and the model's FLOPs per token, two steps would not finish within ``--attempt-timeout``);
``failed`` (anything else, with its last error line; the rung stops there). A rung reports the
longest length that trained and ``limited_by``, the outcome of the shortest failed length above
it: only ``oom`` makes that length a memory limit; ``timeout`` and ``too_slow`` mean it was not
reached within the time given. The JSON is rewritten after every attempt.

Breakdown (GPU, rank 0): ``model_states_gb`` = memory still allocated after the steps (parameter,
gradient and optimizer partitions), ``logits_gb`` = the analytic size of the logits buffers
(full fp32 logits and their gradient, or one tiled chunk), ``activations_gb`` = peak minus both.
With ``--steps 1`` part of the model states (e.g. ZeRO-3's fp32 gradient partitions) may only be
allocated by the step itself, after the peak: ``first_step_growth_gb`` is what the step left
allocated beyond the start, which a second step would start with, and ``activations_gb`` is then
the peak minus the start's allocation. A one-step attempt whose peak plus that growth exceeds the
GPU counts as ``oom`` (``"oom": "device, next step"``): it trained once, but a second step would not fit.
On CPUs the peak is the process RSS and ``--cpu-budget-mb`` plays the part of GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from procgroup import last_error_line, oom_in_log, run_logged  # bench/, this script's directory
from report import report_head, results_dir, write_json

ROOT = Path(__file__).resolve().parents[1]

SHAPES = {
    # GPT-3 1.3B (24 x 2048, 16 heads, GPT-2 vocabulary); RoPE so that no position table grows with the sequence
    "gpt-1.3b": ["--num-layers", "24", "--hidden-size", "2048", "--num-attention-heads", "16", "--vocab-size", "50257",
                 "--use-rotary-position-embeddings"],
    "llama-8b": ["--num-layers", "32", "--hidden-size", "4096", "--num-attention-heads", "32", "--num-key-value-heads",
                 "8", "--ffn-hidden-size", "14336", "--vocab-size", "128256", "--use-rotary-position-embeddings",
                 "--rotary-base", "500000", "--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear",
                 "--untie-embeddings-and-output-weights"],
    "tiny": ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "8", "--num-key-value-heads", "2",
             "--vocab-size", "512", "--use-rotary-position-embeddings", "--normalization", "RMSNorm", "--swiglu",
             "--disable-bias-linear", "--untie-embeddings-and-output-weights"],
}  # fmt: skip
RUNGS = ["baseline", "+tiled_loss", "+ulysses", "+tiled_mlp", "+offload"]
OOM_EXIT = 3


def rung_flags(rung: str, nproc: int) -> list:
    """Flags of a ladder rung: everything up to and including it."""
    upto = RUNGS[: RUNGS.index(rung) + 1]
    flags = ["--zero-stage", "3", "--checkpoint-activations"]
    flags += ["--tiled-logits-loss"] if "+tiled_loss" in upto else ["--no-tiled-logits-loss"]
    flags += ["--ds-sequence-parallel-size", str(nproc if "+ulysses" in upto else 1)]
    flags += ["--tiled-mlp-compute"] if "+tiled_mlp" in upto else []
    flags += ["--checkpoint-in-cpu", "--offload-param", "--offload-optimizer"] if "+offload" in upto else []
    return flags


# ----------------------------------------------------------------------------- one attempt (under torchrun)
def _logits_bytes(cfg) -> int:
    m, p, mem = cfg.model, cfg.parallel, cfg.memory
    tokens = cfg.train.micro_batch_size * m.seq_length // p.sequence_parallel_size
    V = m.padded_vocab_size
    if mem.use_tiled_logits_loss:
        import torch

        from megatron.model.tiled import chunk_bytes, default_chunk, fused_loss_available

        fused = torch.cuda.is_available() and fused_loss_available(torch.device("cuda"))
        return chunk_bytes(min(tokens, mem.tiled_logits_chunk_size or default_chunk(V, fused)), V, fused)
    return tokens * V * ((2 if cfg.train.bf16 else 4) + 4 + 4)  # logits, their fp32 copy, its gradient


def worker(result_dir: Path, flags: list) -> int:
    from megatron.training.memory import set_expandable_segments

    set_expandable_segments()
    import resource

    import torch

    from megatron.arguments import parse_args
    from megatron.config import ConfigError
    from megatron.data.mock import MockGPTDataset

    rank = int(os.environ.get("RANK", "0"))
    out = result_dir / f"rank{rank}.json"
    if os.environ.get("MAX_SEQLEN_TEST_SIGKILL"):  # tests: what the host's out-of-memory killer does
        os.kill(os.getpid(), signal.SIGKILL)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        from megatron.training.trainer import Trainer

        cfg = parse_args(flags)
        ds = MockGPTDataset(cfg.model.seq_length, cfg.model.vocab_size, cfg.train.seed)
        trainer = Trainer(cfg, ds)
        cuda = trainer.device.type == "cuda"
        at_start = torch.cuda.memory_allocated() / 1e9 if cuda else 0.0
        records = trainer.train()
        gb = 1e9
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / gb
            states = torch.cuda.memory_allocated() / gb
        else:
            peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0) / gb
            states = 16 * cfg.model.num_parameters() / trainer.world / gb  # fp32 param + grad + Adam m, v
        logits = _logits_bytes(cfg) / gb
        one_step = cuda and cfg.train.train_iters == 1
        res = {
            "ok": True,
            "peak_gb": peak,
            "reserved_gb": torch.cuda.max_memory_reserved() / gb if cuda else None,
            "model_states_gb": states,
            "logits_gb": logits,
            # a one-step attempt's peak comes before the step allocates what it keeps (below)
            "activations_gb": max(0.0, peak - (at_start if one_step else states) - logits),
            # what the first step left allocated (e.g. gradient partitions) that a second step
            # starts with: a one-step attempt's peak may miss it
            "first_step_growth_gb": max(0.0, states - at_start) if one_step else 0.0,
            "host_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / gb,
            "step_time_s": records[-1]["step_time_s"],
            "tokens_per_sec_per_gpu": records[-1]["tokens_per_sec_per_gpu"],
            "tflops": records[-1]["tflops"],
            "lm_loss": records[-1]["lm_loss"],
        }
    except (torch.OutOfMemoryError, ConfigError, RuntimeError) as e:
        host = "pinned host memory" in str(e) or "can't allocate memory" in str(e)  # offload's host side ran out
        if not (host or isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e)):
            raise
        out.write_text(json.dumps({"ok": False, "oom": "host" if host else "device", "error": str(e)[:500]}))
        return OOM_EXIT
    out.write_text(json.dumps(res))
    import torch.distributed as dist

    if dist.is_initialized():  # an orderly teardown, as the peer and pretrain_gpt.py do
        dist.barrier()
        dist.destroy_process_group()
    return 0


# ----------------------------------------------------------------------------- driver
def shape_config(shape: str):
    """The ModelConfig of a benchmark shape (for FLOPs per token)."""
    from megatron.arguments import parse_args

    return parse_args(SHAPES[shape] + ["--seq-length", "1024", "--mock-data"]).model


def predicted_attempt_s(reference: dict, seq: int, flops_per_token, steps: int = 2) -> float:
    """Wall time of an attempt at ``seq`` predicted from a successful one: the same start-up,
    ``steps`` steps whose time scales with tokens x FLOPs per token (quadratic in the sequence
    through attention)."""
    s0, step0 = reference["seq"], reference["step_time_s"]
    startup = max(0.0, reference["wall_s"] - steps * step0)
    step = step0 * (seq * flops_per_token(seq)) / (s0 * flops_per_token(s0))
    return startup + steps * step


def attempt_flags(args, rung: str, seq: int) -> list:
    """The trainer flags of one attempt: shape, rung, length, one micro batch of mock data."""
    shape = SHAPES["tiny" if args.tiny else args.shape]
    return shape + rung_flags(rung, args.nproc) + [
        "--seq-length", str(seq), "--micro-batch-size", "1", "--train-iters", str(args.steps), "--log-interval", "1",
        "--mock-data", "--num-workers", "0", "--lr", "1e-5", "--eval-interval", "0",
    ] + ([] if args.tiny else ["--bf16", "--attention-backend", args.attention_backend]) + args.extra  # fmt: skip


def checkpoint_bytes_per_token(cfg) -> float:
    """Device bytes per token of the sequence that the checkpointed layer inputs hold (none when
    they go to the host or nothing is checkpointed): a floor under any measured memory slope.
    With ``--checkpoint-keep-attention`` each layer also keeps the attention's q, k, v and output,
    and (under SP, after the exchange back) the output projection's input."""
    m, p, t, mem = cfg.model, cfg.parallel, cfg.train, cfg.memory
    if not mem.checkpoint_activations or mem.checkpoint_in_cpu:
        return 0.0
    per_layer = m.hidden_size
    if mem.checkpoint_keep_attention:
        sp = p.sequence_parallel_size
        kv_heads = max(m.num_key_value_heads, sp)  # replicated up to SP (ParallelAttention.kv_repeat)
        out_copies = 2 if sp > 1 else 1  # the attention's output, and under SP its exchanged-back copy
        per_layer += ((1 + out_copies) * m.num_attention_heads + 2 * kv_heads) * m.head_dim
    return m.num_layers * per_layer * (2 if (t.bf16 or t.fp16) else 4) * t.micro_batch_size / p.sequence_parallel_size


def next_step_oom(res: dict, capacity_gb: float | None) -> bool:
    """A one-step attempt whose peak plus what the step left allocated (``first_step_growth_gb``,
    e.g. Adam's moments, created by the first optimizer step) exceeds the device: the second step
    would start that much higher and run out of memory."""
    growth = res.get("first_step_growth_gb") or 0.0
    return bool(capacity_gb and growth and res["peak_gb"] + growth > capacity_gb)


def attempt(
    args, rung: str, seq: int, workdir: Path, reference: dict | None = None, flops_per_token=None,
    capacity_gb: float | None = None,
) -> dict:  # fmt: skip
    """One torchrun of the trainer at ``seq``; {'ok': bool, 'outcome': ..., ...} from rank 0."""
    if reference is not None and flops_per_token is not None:
        eta = predicted_attempt_s(reference, seq, flops_per_token, args.steps)
        if eta > args.attempt_timeout:
            print(f"  {rung:>12} seq {seq:>8}: too slow to try (about {eta:.0f} s > --attempt-timeout "
                  f"{args.attempt_timeout} s)", flush=True)  # fmt: skip
            return {"ok": False, "outcome": "too_slow", "predicted_s": round(eta), "seq": seq, "wall_s": 0.0}
    run_dir = workdir / f"{rung.strip('+')}_{seq}"
    run_dir.mkdir(parents=True, exist_ok=True)
    flags = attempt_flags(args, rung, seq)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           str(Path(__file__).resolve()), "--worker", "--result-dir", str(run_dir), "--", *flags]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # the workers import what this process imports (installed package)
    if args.tiny:
        env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    log_path = run_dir / "log.txt"
    rc, timed_out = run_logged(cmd, ROOT, env, log_path, args.attempt_timeout)
    log = log_path.read_text(errors="replace")
    results = [json.loads(p.read_text()) for p in sorted(run_dir.glob("rank*.json"))]
    res = next((r for r in results if not r["ok"]), None) or (results[0] if results else None)
    if res is not None and not res["ok"]:
        res["outcome"] = "oom"
    elif timed_out:
        res = {"ok": False, "outcome": "timeout"}
    elif res is None or rc != 0:
        if oom_in_log(log):
            res = {"ok": False, "outcome": "oom", "oom": "device"}
        elif "SIGKILL" in log or (rc is not None and rc < 0) or "exitcode  : -9" in log:
            res = {"ok": False, "outcome": "host_killed", "error": last_error_line(log)}
        else:
            res = {"ok": False, "outcome": "failed", "returncode": rc, "error": last_error_line(log)}
    else:
        res["outcome"] = "ok"
    if res["ok"] and next_step_oom(res, capacity_gb):
        grown = res["peak_gb"] + res["first_step_growth_gb"]
        res = {**res, "ok": False, "outcome": "oom", "oom": "device, next step",
               "note": f"peak + first-step growth {grown:.1f} GB > {capacity_gb:.1f} GB"}  # fmt: skip
    if res["ok"] and args.cpu_budget_mb and res["peak_gb"] * 1e3 > args.cpu_budget_mb:
        res = {**res, "ok": False, "outcome": "oom", "oom": "host", "note": f"peak above --cpu-budget-mb {args.cpu_budget_mb}"}
    res.update(seq=seq, wall_s=round(time.time() - t0, 1))
    if res["ok"]:
        text = f"ok, peak {res['peak_gb']:.2f} GB, step {res['step_time_s']:.2f} s"
    else:
        why = res.get("error") or res.get("note")
        text = res["outcome"] + (f" ({res['oom']})" if res.get("oom") else "") + (f": {why}" if why else "")
    print(f"  {rung:>12} seq {seq:>8}: {text}", flush=True)
    return res


def search(try_seq, start: int, max_seq: int, granularity: int) -> tuple:
    """Largest multiple of ``granularity`` in [granularity, max_seq] for which ``try_seq`` succeeds.

    Doubles from ``start`` until a failure (or ``max_seq``), then bisects. Any unsuccessful
    outcome bounds the search from above; ``failed`` (neither memory nor time) ends it.
    Returns (best or 0, attempts).
    """
    attempts, good, bad = [], 0, None
    seq = start
    while True:
        res = try_seq(seq)
        attempts.append(res)
        if not res["ok"]:
            bad = seq
            if res.get("outcome") == "failed":
                return good, attempts
            break
        good = seq
        if seq >= max_seq:
            return good, attempts
        seq = min(seq * 2, max_seq)
    lo, hi = good, bad  # lo trains (or 0), hi does not
    while hi - lo > granularity:
        mid = (lo + hi) // 2 // granularity * granularity
        if mid <= lo:
            break
        res = try_seq(mid)
        attempts.append(res)
        if res.get("outcome") == "failed":
            break
        lo, hi = (mid, hi) if res["ok"] else (lo, mid)
    return lo, attempts


def limited_by(best: int, attempts: list) -> str | None:
    """The outcome of the shortest unsuccessful length above ``best`` (None: the cap was reached)."""
    above = sorted((a for a in attempts if not a["ok"] and a["seq"] > best), key=lambda a: a["seq"])
    if not above:
        return None
    a = above[0]
    return f"oom ({a['oom']})" if a["outcome"] == "oom" and a.get("oom") else a["outcome"]


def memory_projection(attempts: list, capacity_gb: float | None, floor_gb_per_token: float = 0.0) -> dict | None:
    """The length at which device memory would run out, extrapolated linearly from the two longest
    successful attempts (with flash attention, tiled MLP and tiled loss every activation grows
    linearly with the sequence). A projection, not a trained run: it says how far memory alone
    would go where time (``timeout``/``too_slow``) or the cap ended the search.

    Each point is max(peak allocated + first-step growth, peak reserved): a one-step attempt's
    peak misses what the step leaves allocated for the next one. The slope is at least
    ``floor_gb_per_token`` (the checkpointed layer inputs, ``checkpoint_bytes_per_token``): a
    shorter point whose peak came from a phase that does not grow with the sequence (e.g. the
    optimizer step) flattens the line below what the activations must cost."""
    oks = sorted((a for a in attempts if a["ok"]), key=lambda a: a["seq"])[-2:]
    if capacity_gb is None or len(oks) < 2:
        return None
    (s1, a1), (s2, a2) = ((a["seq"], a) for a in oks)
    p1, p2 = (max(a["peak_gb"] + (a.get("first_step_growth_gb") or 0.0), a.get("reserved_gb") or 0.0) for a in (a1, a2))
    line = (p2 - p1) / (s2 - s1)
    slope = max(line, floor_gb_per_token)
    if slope <= 0:
        return None
    return {"seq": int(s2 + (capacity_gb - p2) / slope), "from_seqs": [s1, s2], "gb_per_1k_tokens": round(slope * 1024, 4),
            "line_gb_per_1k_tokens": round(line * 1024, 4), "floor_gb_per_1k_tokens": round(floor_gb_per_token * 1024, 4),
            "capacity_gb": round(capacity_gb, 2),
            "basis": "max(peak allocated + first-step growth, peak reserved), linear in the sequence"
                     + (", slope raised to the checkpointed inputs' floor" if floor_gb_per_token > line else "")}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=[s for s in SHAPES if s != "tiny"], default="llama-8b")
    p.add_argument("--tiny", action="store_true", help="tiny shape on the CPU (fp32, gloo), for tests")
    p.add_argument("--nproc", type=int, default=1, help="GPUs (processes) per attempt")
    p.add_argument("--rungs", default=",".join(RUNGS), help="comma-separated subset of " + ",".join(RUNGS))
    p.add_argument("--start-seq", type=int, help="first length tried (default 8192, tiny 64)")
    p.add_argument("--max-seq", type=int, help="stop doubling here (default 4M, tiny 256)")
    p.add_argument("--granularity", type=int, help="answer resolution (default 1024 x nproc, tiny 32)")
    p.add_argument("--attention-backend", default="flash")
    p.add_argument("--cpu-budget-mb", type=float, help="CPU: treat a peak RSS above this as out of memory")
    p.add_argument(
        "--steps",
        type=int,
        default=2,
        help="training steps per attempt (1 halves the time; what the first step leaves allocated for a second "
        "is then reported as first_step_growth_gb and added to the peak in the memory projection)",
    )
    p.add_argument(
        "--attempt-timeout", type=int, default=1800, help="seconds per attempt (also skips attempts predicted to exceed it)"
    )
    p.add_argument("--out", help="JSON result (default benchmarks/results/<date>_max_seqlen_<gpu>/max_seqlen_<shape>_<nproc>gpu.json)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result-dir", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    args.extra = rest[1:] if rest[:1] == ["--"] else rest
    if args.worker:
        return worker(Path(args.result_dir), args.extra)
    rungs = [r.strip() for r in args.rungs.split(",") if r.strip()]
    unknown = [r for r in rungs if r not in RUNGS]
    if unknown:
        p.error(f"unknown rung(s) {unknown}; choose from {RUNGS}")
    g = args.granularity or (32 if args.tiny else 1024 * args.nproc)
    start = args.start_seq or (64 if args.tiny else 8192)
    max_seq = args.max_seq or (256 if args.tiny else 4 * 2**20)
    if g % args.nproc or start % g or max_seq % g:
        p.error(
            f"--granularity {g} must be a multiple of --nproc and divide --start-seq {start} and --max-seq {max_seq}"
        )
    shape = "tiny" if args.tiny else args.shape
    out = Path(args.out or results_dir("max_seqlen") / f"max_seqlen_{shape}_{args.nproc}gpu.json")
    workdir = Path(tempfile.mkdtemp(prefix="max_seqlen_"))  # per-attempt rank results

    import torch

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    capacity = torch.cuda.get_device_properties(0).total_memory / 1e9 if cuda else None
    report = {
        **report_head(__file__, argv, "cuda:0" if cuda else "cpu"),
        "shape": shape, "shape_flags": SHAPES[shape], "nproc": args.nproc, "granularity": g,
        "attempt_timeout_s": args.attempt_timeout, "steps_per_attempt": args.steps,
        "host_memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1), "rungs": [],
    }  # fmt: skip
    print(f"max sequence length: {shape} on {args.nproc} x {device}", flush=True)
    if not args.tiny:
        from megatron.training.metrics import model_flops_per_token

        model_cfg = shape_config(shape)
        flops_per_token = lambda seq: model_flops_per_token(model_cfg, seq)
    else:
        flops_per_token = None  # CPU smoke runs: nothing to predict
    from megatron.arguments import parse_args

    for rung in rungs:
        floor = checkpoint_bytes_per_token(parse_args(attempt_flags(args, rung, start))) / 1e9
        entry = {"rung": rung, "flags": rung_flags(rung, args.nproc), "max_seq": 0, "limited_by": None,
                 "at_max": None, "attempts": []}  # fmt: skip
        report["rungs"].append(entry)

        def try_seq(seq, rung=rung, entry=entry):
            oks = [a for a in entry["attempts"] if a["ok"] and a["seq"] < seq]
            reference = max(oks, key=lambda a: a["seq"]) if oks else None
            res = attempt(args, rung, seq, workdir, reference, flops_per_token, capacity)
            entry["attempts"].append(res)
            write_json(out, report)  # what finished survives a killed run
            return res

        best, attempts = search(try_seq, start, max_seq, g)
        entry.update(
            max_seq=best,
            limited_by=limited_by(best, attempts),
            at_max=next((a for a in attempts if a["ok"] and a["seq"] == best), None),
            memory_projection=memory_projection(attempts, capacity, floor),
        )
        write_json(out, report)
        at_best = entry["at_max"]
        print(
            f"{rung:>12}: max sequence {best}"
            + (f" (peak {at_best['peak_gb']:.2f} GB)" if at_best else "")
            + (f", limited by {entry['limited_by']}" if entry["limited_by"] else ", the cap --max-seq")
            + (f"; device memory projected to last to ~{entry['memory_projection']['seq']}"
               if entry["memory_projection"] and not (entry["limited_by"] or "").startswith("oom (device") else ""),
            flush=True,
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
