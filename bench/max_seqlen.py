"""Longest sequence that trains (forward, backward, optimizer step) without running out of memory.

For a model shape, a GPU count and an ablation ladder of ALST memory features, each rung's
longest trainable sequence is found by doubling then bisecting the sequence length; every
attempt is a fresh ``torchrun`` of the real trainer (so an OOM leaves nothing behind) that
runs two steps and reports peak memory, its breakdown and the step time.

    python bench/max_seqlen.py --shape llama-8b --nproc 8            # GPUs; writes docs/benchmarks/
    python bench/max_seqlen.py --shape gpt-1.3b --nproc 8 --rungs baseline,+tiled_loss
    python bench/max_seqlen.py --tiny --nproc 2 --out /tmp/x.json    # CPU smoke run (tested)

Ladder (cumulative; activation checkpointing, ZeRO-3 and the expandable-segments allocator
throughout): baseline (DP only, untiled loss) -> +tiled_loss -> +ulysses (SP = nproc) ->
+tiled_mlp -> +offload (checkpointed activations, parameters and optimizer states on the CPU).

Breakdown (GPU, rank 0): ``model_states_gb`` = memory still allocated after the steps (parameter,
gradient and optimizer partitions), ``logits_gb`` = the analytic size of the logits buffers
(full fp32 logits and their gradient, or one tiled chunk), ``activations_gb`` = peak minus both.
On CPUs the peak is the process RSS and ``--cpu-budget-mb`` plays the part of GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
    m, p = cfg.model, cfg.parallel
    tokens = cfg.train.micro_batch_size * m.seq_length // p.sequence_parallel_size
    V = m.padded_vocab_size
    if p.use_tiled_logits_loss:
        from megatron.model.tiled import LOGITS_PER_CHUNK

        return min(tokens, p.tiled_logits_chunk_size or max(1, LOGITS_PER_CHUNK // V)) * V * 4 * 2
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
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        from megatron.training.trainer import Trainer

        cfg = parse_args(flags)
        ds = MockGPTDataset(cfg.model.seq_length, cfg.model.vocab_size, cfg.train.seed)
        trainer = Trainer(cfg, ds)
        records = trainer.train()
        cuda = trainer.device.type == "cuda"
        gb = 1e9
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / gb
            states = torch.cuda.memory_allocated() / gb
        else:
            peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0) / gb
            states = 16 * cfg.model.num_parameters() / trainer.world / gb  # fp32 param + grad + Adam m, v
        logits = _logits_bytes(cfg) / gb
        res = {
            "ok": True,
            "peak_gb": peak,
            "reserved_gb": torch.cuda.max_memory_reserved() / gb if cuda else None,
            "model_states_gb": states,
            "logits_gb": logits,
            "activations_gb": max(0.0, peak - states - logits),
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
    return 0


# ----------------------------------------------------------------------------- driver
def attempt(args, rung: str, seq: int, workdir: Path) -> dict:
    """One torchrun of the trainer at ``seq``; {'ok': bool, ...} from rank 0 (or the OOM)."""
    run_dir = workdir / f"{rung.strip('+')}_{seq}"
    run_dir.mkdir(parents=True, exist_ok=True)
    shape = SHAPES["tiny" if args.tiny else args.shape]
    flags = shape + rung_flags(rung, args.nproc) + [
        "--seq-length", str(seq), "--micro-batch-size", "1", "--train-iters", "2", "--log-interval", "1",
        "--mock-data", "--num-workers", "0", "--lr", "1e-5", "--eval-interval", "0",
    ] + ([] if args.tiny else ["--bf16", "--attention-backend", args.attention_backend]) + args.extra  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           str(Path(__file__).resolve()), "--worker", "--result-dir", str(run_dir), "--", *flags]  # fmt: skip
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1")  # keep the caller's path (carried wheels)
    if args.tiny:
        env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    try:
        proc = subprocess.run(
            cmd, check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.attempt_timeout
        )
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        rc, tail = -1, "timed out"
    results = [json.loads(p.read_text()) for p in sorted(run_dir.glob("rank*.json"))]
    res = next((r for r in results if not r["ok"]), None) or (results[0] if results else None)
    if res is None or (rc != 0 and res.get("ok")):
        oom = "out of memory" in tail.lower() or "OutOfMemoryError" in tail
        if not oom:
            raise RuntimeError(f"attempt {rung} seq {seq} failed (rc {rc}):\n{tail}")
        res = {"ok": False, "oom": True}
    if res["ok"] and args.cpu_budget_mb and res["peak_gb"] * 1e3 > args.cpu_budget_mb:
        res = {**res, "ok": False, "oom": True, "note": f"peak above --cpu-budget-mb {args.cpu_budget_mb}"}
    res.update(seq=seq, wall_s=round(time.time() - t0, 1))
    print(f"  {rung:>12} seq {seq:>8}: " + (f"ok, peak {res['peak_gb']:.2f} GB, step {res['step_time_s']:.2f} s"
          if res["ok"] else "OOM"), flush=True)  # fmt: skip
    return res


def search(try_seq, start: int, max_seq: int, granularity: int) -> tuple:
    """Largest multiple of ``granularity`` in [granularity, max_seq] for which ``try_seq`` succeeds.

    Doubles from ``start`` until a failure (or ``max_seq``), then bisects. Returns (best or 0, attempts).
    """
    attempts, good, bad = [], 0, None
    seq = start
    while True:
        res = try_seq(seq)
        attempts.append(res)
        if not res["ok"]:
            bad = seq
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
        lo, hi = (mid, hi) if res["ok"] else (lo, mid)
    return lo, attempts


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
    p.add_argument("--attempt-timeout", type=int, default=1800)
    p.add_argument("--out", help="JSON result (default docs/benchmarks/max_seqlen_<shape>_<nproc>gpu.json)")
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
    out = Path(args.out or ROOT / "docs" / "benchmarks" / f"max_seqlen_{shape}_{args.nproc}gpu.json")
    workdir = Path(tempfile.mkdtemp(prefix="max_seqlen_"))  # per-attempt rank results

    import deepspeed
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    report = {
        "shape": shape, "shape_flags": SHAPES[shape], "nproc": args.nproc, "device": device,
        "torch": torch.__version__, "deepspeed": deepspeed.__version__, "granularity": g, "rungs": [],
    }  # fmt: skip
    print(f"max sequence length: {shape} on {args.nproc} x {device}", flush=True)
    for rung in rungs:
        best, attempts = search(lambda s, r=rung: attempt(args, r, s, workdir), start, max_seq, g)
        at_best = next((a for a in attempts if a["ok"] and a["seq"] == best), None)
        report["rungs"].append(
            {
                "rung": rung,
                "flags": rung_flags(rung, args.nproc),
                "max_seq": best,
                "at_max": at_best,
                "attempts": attempts,
            }
        )
        print(
            f"{rung:>12}: max sequence {best}" + (f" (peak {at_best['peak_gb']:.2f} GB)" if at_best else ""), flush=True
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
