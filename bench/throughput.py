"""End-to-end training throughput of our trainer and of the trainers a user would pick instead (``--peers``).

Every case is a fresh ``torchrun`` of the real trainer (``pretrain_gpt.py``: ZeRO-3, micro batch 1,
activation checkpointing, tiled logits loss, mock data, one attention backend) or of a peer, at the same
length, GPU count, SP size and precision, model FLOPs within 1%, random init and synthetic tokens:

* ``hf_alst`` (``bench/peer_hf_alst.py``): ``transformers`` Llama with DeepSpeed's Ulysses attention, data-loader
  adapter and TiledFusedLogitsLoss, wired here;
* ``torchtitan`` (``bench/peer_torchtitan.py``): its Llama 3 with FSDP2 and ``torch.compile``, the fastest of its
  activation-checkpoint modes that fits (none, op, full);
* ``arctic`` (``bench/peer_arctic.py``): ArcticTraining's own trainer with its ALST recipe, the fastest of
  no checkpointing, full and CPU-offloaded checkpoints that fits; it runs in its own environment
  (``--arctic-pythonpath`` / ``--arctic-python``, transformers 4.x).

``--tiled-mlp`` switches the tiled MLP on for ours and the peers that have one. Every system writes one JSON
record per iteration; the first ``--warmup`` iterations are dropped and the median of the rest is reported.

    python bench/throughput.py --shape gpt-1.3b --seq-lens 8192,32768 --nproc 1 --sp 1 \\
        --backends sdpa,flash_triton --peer     # writes benchmarks/results/<date>_throughput_<gpu>/
    python bench/throughput.py --tiny --peer --out /tmp/throughput.json     # CPU smoke run (tested)

The output JSON holds the command line of every case, the devices, package versions, and per case:
tokens/s/GPU, TFLOPS/GPU (Megatron-DeepSpeed formula), model TFLOPS/GPU, MFU (model FLOPs against
the dense bf16 peak, 989 TFLOP/s on H100/H200), peak memory, the losses and an outcome (``ok``,
``oom``, ``timeout``, ``failed`` with the last error line, ``skipped`` after a smaller length ran
out of memory). ``comparisons`` gives ``ratio_tokens_per_sec`` = best backend of ours / each peer for each
(shape, seq_len, nproc, sp) where both ran, with the settings the peer ran at. ``bench/plot_throughput.py`` turns it into plots and a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from procgroup import last_error_line, oom_in_log, run_logged  # bench/, this script's directory
from report import report_head_from_child, results_dir, write_json

ROOT = Path(__file__).resolve().parents[1]
PEER_SCRIPT = Path(__file__).resolve().parent / "peer_hf_alst.py"
PEER_BACKEND = "hf-sdpa"  # the peer's attention: transformers' SDPA under DeepSpeed's Ulysses wrapper
# name -> (runner, backend label): the systems a user would pick instead of ours (--peers)
PEERS = {
    "hf_alst": (PEER_SCRIPT, PEER_BACKEND),
    "torchtitan": (Path(__file__).resolve().parent / "peer_torchtitan.py", "torchtitan-sdpa"),
    "arctic": (Path(__file__).resolve().parent / "peer_arctic.py", "arctic-sdpa"),
}
PEER_OF_BACKEND = {backend: name for name, (_, backend) in PEERS.items()}
# a peer's activation-checkpointing modes, fastest first: unless its extra flags name --ac-mode, the modes are
# tried in this order and the first that fits is recorded (the peer at its fastest setting)
PEER_AC_ORDER = {"torchtitan": ("none", "op", "full"), "arctic": ("none", "full", "offload")}
PEER_VERSION_KEY = {"torchtitan": "torchtitan", "arctic": "arctic_training"}  # else deepspeed (hf_alst)


@dataclass(frozen=True)
class Shape:
    """One model shape, described once for our trainer's flags and for the Hugging Face peer."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    llama: bool
    """RMSNorm, SwiGLU, no biases (Llama); otherwise LayerNorm, GELU, biases (GPT)."""
    peer_ffn: int
    """Intermediate size of the peer's SwiGLU MLP (for a GPT shape: the one with the same matmul FLOPs)."""
    rope_base: float = 10000.0
    tied: bool = True
    """Output layer shares the word embeddings."""

    def megatron_flags(self) -> list:
        flags = ["--num-layers", str(self.layers), "--hidden-size", str(self.hidden),
                 "--num-attention-heads", str(self.heads), "--num-key-value-heads", str(self.kv_heads),
                 "--ffn-hidden-size", str(self.ffn), "--vocab-size", str(self.vocab),
                 "--use-rotary-position-embeddings", "--rotary-base", f"{self.rope_base:g}"]  # fmt: skip
        if self.llama:
            flags += ["--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear"]
        if not self.tied:
            flags += ["--untie-embeddings-and-output-weights"]
        return flags

    def hf_llama_kwargs(self) -> dict:
        """``transformers.LlamaConfig`` keyword arguments of the peer (no sequence-dependent ones)."""
        return {
            "num_hidden_layers": self.layers, "hidden_size": self.hidden, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "intermediate_size": self.peer_ffn, "vocab_size": self.vocab,
            "rope_theta": self.rope_base, "tie_word_embeddings": self.tied, "rms_norm_eps": 1e-5,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
        }  # fmt: skip


SHAPES = {
    # GPT-3 1.3B (24 x 2048, 16 heads, GPT-2 vocabulary, 4h GELU MLP), RoPE. The peer is a Llama of the same
    # width and depth whose SwiGLU (3 matrices) has the MLP's matmul FLOPs: 2 x 8192 / 3 = 5461 -> 5440 (x 64).
    "gpt-1.3b": Shape(layers=24, hidden=2048, heads=16, kv_heads=16, ffn=8192, vocab=50257, llama=False, peer_ffn=5440),
    # Llama-3.2-1B-like: GQA 32/8, SwiGLU 8192, 128K vocabulary, RoPE theta 5e5, tied embeddings (no rope scaling).
    "llama-1b": Shape(layers=16, hidden=2048, heads=32, kv_heads=8, ffn=8192, vocab=128256, llama=True, peer_ffn=8192,
                      rope_base=500000.0),
    # CPU smoke shape (fp32, gloo)
    "tiny": Shape(layers=2, hidden=64, heads=8, kv_heads=2, ffn=192, vocab=512, llama=True, peer_ffn=192),
}  # fmt: skip


# ----------------------------------------------------------------------------- one case
@dataclass
class Case:
    """One torchrun: ours with an attention backend, or the peer."""

    kind: str  # "ours" or "peer"
    backend: str
    shape: str
    seq_len: int
    nproc: int
    sp: int
    bf16: bool
    tiled_mlp: bool
    tiled_loss: bool
    checkpoint_activations: bool = True
    zero3_leaf_layers: bool = True
    exchange: str = "deepspeed"  # ours with SP > 1: --ulysses-exchange

    @property
    def name(self) -> str:
        name = f"{self.shape}_seq{self.seq_len}_np{self.nproc}_sp{self.sp}_{self.kind}_{self.backend}"
        name += f"_{self.exchange}" if self.kind == "ours" and self.exchange != "deepspeed" else ""
        name += "" if self.checkpoint_activations else "_norecompute"
        return name + ("" if self.zero3_leaf_layers else "_noleaf")

    def key(self) -> tuple:
        """What makes a case distinct (``--append`` replaces a case with the same key)."""
        return case_key(vars(self) | {"precision": "bf16" if self.bf16 else "fp32"})


def ours_flags(case: Case, iters: int, metrics_file: Path, extra: list) -> list:
    """pretrain_gpt.py flags of one case of ours."""
    flags = SHAPES[case.shape].megatron_flags() + [
        "--seq-length", str(case.seq_len), "--micro-batch-size", "1", "--global-batch-size", str(case.nproc // case.sp),
        "--train-iters", str(iters), "--lr", "1e-4", "--mock-data", "--num-workers", "0", "--eval-interval", "0",
        "--log-interval", "1", "--metrics-file", str(metrics_file), "--zero-stage", "3",
        "--ds-sequence-parallel-size", str(case.sp), "--attention-backend", case.backend,
        "--checkpoint-activations" if case.checkpoint_activations else "--no-checkpoint-activations",
        "--tiled-logits-loss" if case.tiled_loss else "--no-tiled-logits-loss",
    ]  # fmt: skip
    flags += ["--tiled-mlp-compute"] if case.tiled_mlp else []
    flags += ["--ulysses-exchange", case.exchange] if case.sp > 1 else []
    if _zero_stage(flags + extra) == 3:  # leaf layers are a ZeRO-3 setting (an extra --zero-stage may change it)
        flags += ["--zero3-leaf-layers" if case.zero3_leaf_layers else "--no-zero3-leaf-layers"]
    flags += ["--bf16"] if case.bf16 else []
    return flags + extra


def peer_flags(case: Case, iters: int, metrics_file: Path, extra: list) -> list:
    """bench/peer_hf_alst.py flags of the peer case."""
    flags = ["--shape", case.shape, "--seq-length", str(case.seq_len), "--sp", str(case.sp), "--iters", str(iters),
             "--metrics-file", str(metrics_file)]  # fmt: skip
    flags += ["--tiled-mlp"] if case.tiled_mlp else []
    flags += [] if case.tiled_loss else ["--no-tiled-loss"]
    flags += [] if case.checkpoint_activations else ["--no-checkpointing"]
    flags += ["--zero3-leaf-layers"] if case.zero3_leaf_layers else []
    flags += ["--bf16"] if case.bf16 else []
    return flags + extra


# CPU smoke run: force several shards so that the tiled code paths really tile
TINY_OURS_FLAGS = ["--tiled-mlp-shards", "2", "--tiled-logits-chunk-size", "32"]
TINY_PEER_FLAGS = ["--mlp-shards", "2", "--loss-shards", "2"]


def torchtitan_flags(case: Case, iters: int, metrics_file: Path, extra: list) -> list:
    """bench/peer_torchtitan.py flags (one GPU per data-parallel rank: torchtitan's FSDP2, no Ulysses)."""
    flags = ["--shape", case.shape, "--seq-length", str(case.seq_len), "--iters", str(iters),
             "--metrics-file", str(metrics_file)]  # fmt: skip
    flags += ["--bf16"] if case.bf16 else ["--no-compile"]  # CPU smoke runs: eager
    return flags + extra


def arctic_flags(case: Case, iters: int, metrics_file: Path, extra: list) -> list:
    """bench/peer_arctic.py flags (Ulysses SP = the GPU count; the tiled MLP as in ours)."""
    flags = ["--shape", case.shape, "--seq-length", str(case.seq_len), "--iters", str(iters),
             "--metrics-file", str(metrics_file), "--work-dir", str(metrics_file.parent / "arctic")]  # fmt: skip
    flags += ["--bf16"] if case.bf16 else []
    flags += [] if case.tiled_mlp else ["--no-tiled-mlp"]
    return flags + extra


def peer_name(case) -> str | None:
    """The peer a case (or case record) runs, None for ours."""
    kind = case["kind"] if isinstance(case, dict) else case.kind
    backend = case["backend"] if isinstance(case, dict) else case.backend
    return None if kind == "ours" else PEER_OF_BACKEND.get(backend, "hf_alst")


def case_command(case: Case, iters: int, metrics_file: Path, extra: list, python: str = sys.executable) -> list:
    name = peer_name(case)
    if case.shape == "tiny" and name in (None, "hf_alst"):
        extra = (TINY_OURS_FLAGS if case.kind == "ours" else TINY_PEER_FLAGS) + extra
    if name is None:
        script, flags = ROOT / "pretrain_gpt.py", ours_flags(case, iters, metrics_file, extra)
    elif name == "torchtitan":
        script, flags = PEERS[name][0], torchtitan_flags(case, iters, metrics_file, extra)
    elif name == "arctic":
        script, flags = PEERS[name][0], arctic_flags(case, iters, metrics_file, extra)
    else:
        script, flags = PEER_SCRIPT, peer_flags(case, iters, metrics_file, extra)
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={case.nproc}",
            str(script), *flags]  # fmt: skip


def classify(returncode: int | None, log: str, n_records: int, timed_out: bool) -> tuple:
    """(outcome, error line or None) of a finished case."""
    if timed_out:
        return "timeout", None
    if returncode == 0 and n_records > 0:
        return "ok", None
    if oom_in_log(log):
        return "oom", last_error_line(log)
    if returncode == 0:
        return "failed", "the run exited cleanly but wrote no metrics"
    return "failed", last_error_line(log)


def read_metrics(path: Path) -> tuple:
    """(per-iteration records, peer metadata or None) from a metrics JSONL."""
    records, meta = [], None
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if "lm_loss" in rec and "step_time_s" in rec:
                records.append(rec)
            elif "peer" in rec:
                meta = rec["peer"]
    return records, meta


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(records: list, warmup: int) -> dict:
    """Median throughput of the iterations after ``warmup``, peak memory and all losses."""
    measured = [r for r in records if r["iteration"] > warmup]
    out = {
        "iterations": len(records),
        "measured_iterations": len(measured),
        "losses": [r["lm_loss"] for r in records],
        "grad_norms": [r.get("grad_norm") for r in records],
        "final_loss": records[-1]["lm_loss"] if records else None,
        "peak_mem_gb": max((r["mem_gb"] for r in records if r.get("mem_gb") is not None), default=None),
    }
    for key, name in (("step_time_s", "step_time_s"), ("tokens_per_sec", "tokens_per_sec"),
                      ("tokens_per_sec_per_gpu", "tokens_per_sec_per_gpu"), ("tflops", "tflops_per_gpu"),
                      ("model_tflops", "model_tflops_per_gpu"), ("mfu", "mfu")):  # fmt: skip
        out[name] = _median([r.get(key) for r in measured])
    return out


def cpu_extensions_dir() -> Path:
    """A JIT-extension cache private to this Python environment.

    On CPUs DeepSpeed JIT-compiles its shared-memory comm op at every ``init_distributed``; in the
    shared default cache, environments with other compiler command lines rebuild it back and forth
    (tens of seconds per launch). Keyed by the interpreter prefix and torch version, it builds once.
    """
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "none"
    key = hashlib.sha1(f"{sys.prefix}|{torch_version}".encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "torch_extensions_by_env" / key


def _last_value(cmd: list, flag: str) -> str | None:
    """The value of ``flag`` in a command (the last one wins, as in argparse), or None."""
    values = [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == flag]
    return values[-1] if values else None


def _exchange(cmd: list, kind: str, sp: int) -> str | None:
    """Our Ulysses exchange in a command; None for the peer or SP=1."""
    return None if kind != "ours" or sp == 1 else _last_value(cmd, "--ulysses-exchange") or "deepspeed"


def _switch(cmd: list, flag: str) -> bool:
    """Whether ``--flag`` is on in a command (the last of ``--flag`` / ``--no-flag`` wins)."""
    last = [a for a in cmd if a in (flag, "--no-" + flag[2:])]
    return bool(last) and last[-1] == flag


def _zero_stage(cmd: list) -> int:
    """The ZeRO stage a command runs (the peer's is 3)."""
    return int(_last_value(cmd, "--zero-stage") or 3)


def run_case(case: Case, args, log_dir: Path) -> dict:
    """Launch one case, wait at most ``--case-timeout`` seconds, and summarize it."""
    metrics_file = log_dir / f"{case.name}.jsonl"
    log_file = log_dir / f"{case.name}.log"
    metrics_file.unlink(missing_ok=True)
    name = peer_name(case)
    extra = case_extra(case, args)
    if name in PEER_AC_ORDER and not any(a.startswith("--ac-mode") for a in extra):
        attempts = []  # its best setting that fits: try the modes fastest first
        for mode in PEER_AC_ORDER[name]:
            res = _run_once(case, args, log_dir, metrics_file, log_file, extra + ["--ac-mode", mode])
            attempts.append({"ac_mode": mode, "outcome": res["outcome"], "error": res["error"]})
            if res["outcome"] != "oom":
                break
        res["peer_attempts"] = attempts
        return res
    return _run_once(case, args, log_dir, metrics_file, log_file, extra)


def case_env(case: Case, args) -> dict:
    """The environment of a case's processes."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # the workers import what this process imports (installed package)
    if peer_name(case) == "arctic":  # its own environment (transformers 4.x) first, then this repository (megatron.*)
        paths = [args.arctic_pythonpath, str(ROOT), env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if not case.bf16:  # CPU smoke runs: one thread per process on small machines, and DeepSpeed's
        env.setdefault("OMP_NUM_THREADS", "1")  # CPU comm op built once per Python environment, not per launch
        env.setdefault("TORCH_EXTENSIONS_DIR", str(cpu_extensions_dir()))
    return env


def _run_once(case: Case, args, log_dir: Path, metrics_file: Path, log_file: Path, extra: list) -> dict:
    metrics_file.unlink(missing_ok=True)
    python = args.arctic_python if peer_name(case) == "arctic" else sys.executable
    cmd = case_command(case, args.iters, metrics_file, extra, python)
    env = case_env(case, args)
    t0 = time.time()
    returncode, timed_out = run_logged(cmd, ROOT, env, log_file, args.case_timeout)
    log = log_file.read_text(errors="replace")
    records, meta = read_metrics(metrics_file)
    outcome, error = classify(returncode, log, len(records), timed_out)
    zero_stage = _zero_stage(cmd)
    res = {
        "name": case.name, "kind": case.kind, "backend": case.backend, "shape": case.shape, "seq_len": case.seq_len,
        "nproc": case.nproc, "sp": case.sp, "dp": case.nproc // case.sp, "precision": "bf16" if case.bf16 else "fp32",
        "zero_stage": zero_stage, "micro_batch_size": 1, "checkpoint_activations": case.checkpoint_activations,
        "tiled_mlp": case.tiled_mlp, "zero3_leaf_layers": case.zero3_leaf_layers and zero_stage == 3,
        "tiled_loss": case.tiled_loss, "ulysses_exchange": _exchange(cmd, case.kind, case.sp),
        "checkpoint_keep_attention": case.checkpoint_activations and _switch(cmd, "--checkpoint-keep-attention"),
        "warmup": args.warmup, "command": cmd, "log": str(log_file),
        "metrics_file": str(metrics_file), "returncode": returncode, "wall_s": round(time.time() - t0, 1),
        "outcome": outcome, "error": error, "peer_name": peer_name(case),
    }  # fmt: skip
    res.update(summarize(records, args.warmup))
    if meta is not None:
        res["peer"] = meta
    if outcome == "ok" and res["measured_iterations"] == 0:
        res.update(outcome="failed", error=f"only {len(records)} iterations logged, none after --warmup {args.warmup}")
    return res


# ----------------------------------------------------------------------------- report
def case_key(c: dict) -> tuple:
    """System (kind, backend, exchange) and setting of a case record."""
    return (c["kind"], c["backend"], c.get("ulysses_exchange"), *_setting(c))


def _setting(c: dict) -> tuple:
    """What two systems must share to be compared: shape, length, GPUs, SP, precision, ZeRO stage, recomputation (and
    whether it keeps the attention) and the ALST switches."""
    return (c["shape"], c["seq_len"], c["nproc"], c["sp"], c.get("precision"), c.get("tiled_mlp"), c.get("tiled_loss"),
            c.get("checkpoint_activations", True), c.get("zero3_leaf_layers", False), c.get("zero_stage", 3),
            c.get("checkpoint_keep_attention", False))  # fmt: skip


def comparisons(cases: list) -> list:
    """Ours (best backend) against the peer for each (shape, seq_len, nproc, sp) setting where both succeeded."""
    out = []
    for setting in sorted({_setting(c) for c in cases}, key=lambda t: [(x is None, 0 if x is None else x) for x in t]):
        shape, seq, nproc, sp, precision, tiled_mlp, tiled_loss, recompute, leaf, zero_stage, _keep_attention = setting
        same = [c for c in cases if _setting(c) == setting]
        ok = [c for c in same if c["outcome"] == "ok" and c.get("tokens_per_sec_per_gpu")]
        ours = [c for c in ok if c["kind"] == "ours"]
        peers = [c for c in ok if c["kind"] == "peer"]
        if not peers or not ours:
            continue
        best = max(ours, key=lambda c: c["tokens_per_sec_per_gpu"])
        out += [_comparison(setting, best, peer) for peer in peers]
    return out


def _comparison(setting: tuple, best: dict, peer: dict) -> dict:
    """Ours' best case against one peer's case of the same setting."""
    shape, seq, nproc, sp, precision, tiled_mlp, tiled_loss, recompute, leaf, zero_stage, _keep_attention = setting
    return {
            "peer": peer_name(peer), "peer_settings": _peer_settings(peer),
            "shape": shape, "seq_len": seq, "nproc": nproc, "sp": sp, "precision": precision, "tiled_mlp": tiled_mlp,
            "tiled_loss": tiled_loss, "checkpoint_activations": recompute, "zero3_leaf_layers": leaf,
            "zero_stage": zero_stage, "best_backend": best["backend"], "best_exchange": best.get("ulysses_exchange"),
            "ours_tokens_per_sec_per_gpu": best["tokens_per_sec_per_gpu"],
            "peer_tokens_per_sec_per_gpu": peer["tokens_per_sec_per_gpu"],
            "ratio_tokens_per_sec": best["tokens_per_sec_per_gpu"] / peer["tokens_per_sec_per_gpu"],
            "ours_mfu": best.get("mfu"), "peer_mfu": peer.get("mfu"),
            "ours_peak_mem_gb": best.get("peak_mem_gb"), "peer_peak_mem_gb": peer.get("peak_mem_gb"),
        }  # fmt: skip


def _peer_settings(peer: dict) -> dict:
    """What a peer case ran with (its version, and for torchtitan the activation-checkpoint mode and compile)."""
    meta = peer.get("peer") or {}
    name = peer_name(peer)
    out = {"version": (meta.get("versions") or {}).get(PEER_VERSION_KEY.get(name, "deepspeed"))}
    for key in ("ac_mode", "compile", "fsdp", "mixed_precision"):
        if key in meta:
            out[key] = meta[key]
    settings = meta.get("settings") or {}  # arctic: its configuration
    for key in ("ac_mode", "tiled_mlp_compute", "tiled_loss", "sequence_parallel_size"):
        if key in settings:
            out[key] = settings[key]
    return out


def case_extra(case: Case, args) -> list:
    """The extra flags of a case's runner: after ``--`` for ours, ``--<peer>-arg`` for a peer."""
    name = peer_name(case)
    if name is None:
        return list(args.extra)
    return list({"torchtitan": args.torchtitan_extra, "arctic": args.arctic_extra}.get(name, args.peer_extra))


def write_report(path: Path, report: dict) -> None:
    report["comparisons"] = comparisons(report["cases"])
    write_json(path, report)


# ----------------------------------------------------------------------------- driver
def plan(args) -> list:
    """Every case to run, in order: for each length, ours per backend, then the peer."""
    cases = []
    for seq in args.seq_lens:
        tiled_mlp = args.tiled_mlp == "on" or (args.tiled_mlp == "auto" and seq // args.sp >= args.tiled_mlp_from)
        common = {"shape": args.shape, "seq_len": seq, "nproc": args.nproc, "sp": args.sp, "bf16": not args.tiny,
                  "tiled_mlp": tiled_mlp, "tiled_loss": not args.no_tiled_loss,
                  "checkpoint_activations": not args.no_recompute, "zero3_leaf_layers": args.zero3_leaf_layers}  # fmt: skip
        if not args.peer_only:
            cases += [Case(kind="ours", backend=b, exchange=x, **common) for b in args.backends for x in args.exchanges]
        cases += [Case(kind="peer", backend=PEERS[name][1], **common) for name in args.peers]
    return cases


def _csv_ints(text: str) -> list:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=[s for s in SHAPES if s != "tiny"], default="gpt-1.3b")
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny shape, fp32, gloo, 2 processes, SP 2")
    p.add_argument("--seq-lens", type=_csv_ints, help="comma-separated (default 8192,32768,65536,131072; tiny 128)")
    p.add_argument("--nproc", type=int, help="GPUs (processes) per case (default 1; tiny 2)")
    p.add_argument("--sp", type=int, help="Ulysses sequence-parallel size (default --nproc)")
    p.add_argument("--backends", default=None, help="our attention backends (default sdpa,flash_triton; tiny sdpa)")
    p.add_argument("--peer", action="store_true", help="also run the HF + DeepSpeed-ALST peer for each length")
    p.add_argument("--peers", default=None,
                   help=f"comma-separated peers to run for each length ({', '.join(PEERS)}; --peer means hf_alst)")
    p.add_argument("--peer-only", action="store_true", help="run only the peer(s) (default peer: hf_alst)")
    p.add_argument("--torchtitan-arg", action="append", default=[], dest="torchtitan_extra",
                   help="extra flag for bench/peer_torchtitan.py (e.g. --ac-mode=op; default: the fastest mode that "
                        "fits, trying none, op, full)")
    p.add_argument("--arctic-arg", action="append", default=[], dest="arctic_extra",
                   help="extra flag for bench/peer_arctic.py (e.g. --ac-mode=full; default: the fastest mode that "
                        "fits, trying none, full, offload)")
    p.add_argument("--arctic-python", default=os.environ.get("ARCTIC_PYTHON", sys.executable),
                   help="the interpreter of ArcticTraining's cases (default $ARCTIC_PYTHON, else this one)")
    p.add_argument("--arctic-pythonpath", default=os.environ.get("ARCTIC_PYTHONPATH"),
                   help="put first on PYTHONPATH of ArcticTraining's cases: its environment, transformers 4.x "
                        "(default $ARCTIC_PYTHONPATH; bench/peer_wheels.sh builds it)")
    p.add_argument("--iters", type=int, help="training iterations per case (default 8; tiny 4)")
    p.add_argument("--warmup", type=int, help="iterations left out of the medians (default 3; tiny 2)")
    p.add_argument(
        "--tiled-mlp",
        choices=["off", "on", "auto"],
        default=None,
        help="TiledMLP in ours and the peer (default off; tiny on); auto: on when seq_len / SP >= --tiled-mlp-from",
    )
    p.add_argument("--tiled-mlp-from", type=int, default=131072, help="local tokens from which auto tiles the MLP")
    p.add_argument("--no-tiled-loss", action="store_true", help="untiled output layer + loss (both systems)")
    p.add_argument(
        "--no-recompute",
        action="store_true",
        help="no activation checkpointing (both systems; default: full-layer recomputation in both)",
    )
    p.add_argument(
        "--zero3-leaf-layers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="both systems: ZeRO-3 gathers each decoder layer at once (default; --no-zero3-leaf-layers: per linear)",
    )
    p.add_argument("--exchanges", default="deepspeed",
                   help="ours with SP > 1: comma-separated --ulysses-exchange values, one case each (default deepspeed)")
    p.add_argument("--case-timeout", type=int, default=600, help="seconds per case before it is killed (timeout)")
    p.add_argument(
        "--keep-going-after-oom",
        action="store_true",
        help="also try longer sequences of a system that already ran out of memory (default: skip them)",
    )
    p.add_argument("--out", help="JSON (default benchmarks/results/<date>_throughput_<gpu>/throughput_<shape>_<nproc>gpu_sp<sp>.json)")
    p.add_argument("--append", action="store_true", help="merge into an existing --out (same case: replaced)")
    p.add_argument("--log-dir", help="per-case logs and metrics (default runs/throughput/<out name>; tiny: a temp dir)")
    p.add_argument("--peer-arg", action="append", default=[], dest="peer_extra", help="extra flag for the peer")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args, rest = p.parse_known_args(argv)
    args.extra = rest[1:] if rest[:1] == ["--"] else rest  # after --: extra flags for pretrain_gpt.py
    unknown = [a for a in args.extra if a.startswith("-") and rest[:1] != ["--"]]
    if unknown:
        p.error(f"unrecognized arguments {unknown} (pass flags for pretrain_gpt.py after --)")
    if args.tiny:
        args.shape = "tiny"
    t = args.tiny
    args.seq_lens = args.seq_lens or ([128] if t else [8192, 32768, 65536, 131072])
    args.nproc = args.nproc or (2 if t else 1)
    args.sp = args.sp or args.nproc
    args.backends = [
        b.strip() for b in (args.backends or ("sdpa" if t else "sdpa,flash_triton")).split(",") if b.strip()
    ]
    args.iters = args.iters or (4 if t else 8)
    args.peers = [x.strip() for x in (args.peers or "").split(",") if x.strip()]
    if (args.peer or args.peer_only) and not args.peers:
        args.peers = ["hf_alst"]
    bad = [x for x in args.peers if x not in PEERS]
    if bad:
        p.error(f"unknown peer(s) {bad}; choose from {', '.join(PEERS)}")
    if "arctic" in args.peers and args.sp != args.nproc:
        p.error(f"the arctic peer runs Ulysses SP = the GPU count; pass --sp {args.nproc} or leave arctic out")
    args.tiled_mlp = args.tiled_mlp or ("on" if t else "off")
    args.warmup = args.warmup if args.warmup is not None else (2 if t else 3)
    from megatron.config import ATTENTION_BACKENDS, ULYSSES_EXCHANGES

    bad = [b for b in args.backends if b not in ATTENTION_BACKENDS]
    if bad:
        p.error(f"unknown backend(s) {bad}; choose from {', '.join(ATTENTION_BACKENDS)}")
    args.exchanges = [x.strip() for x in args.exchanges.split(",") if x.strip()]
    bad = [x for x in args.exchanges if x not in ULYSSES_EXCHANGES]
    if bad:
        p.error(f"unknown exchange(s) {bad}; choose from {', '.join(ULYSSES_EXCHANGES)}")
    if args.sp == 1 and args.exchanges != ["deepspeed"]:
        p.error("--exchanges compares Ulysses exchanges, which only run with --sp > 1")
    if args.nproc % args.sp:
        p.error(f"--nproc {args.nproc} must be a multiple of --sp {args.sp}")
    if any(s % args.sp for s in args.seq_lens):
        p.error(f"every sequence length must be divisible by --sp {args.sp}")
    if args.iters <= args.warmup:
        p.error(f"--iters {args.iters} must exceed --warmup {args.warmup} (nothing left to measure)")
    shape = SHAPES[args.shape]
    if shape.heads % args.sp or (shape.kv_heads % args.sp and args.sp % shape.kv_heads):
        p.error(f"{args.shape}: {shape.heads} heads / {shape.kv_heads} kv heads do not split over SP {args.sp}")
    default_name = f"throughput_{args.shape}_{args.nproc}gpu_sp{args.sp}.json"
    args.out = Path(args.out or results_dir("throughput") / default_name)
    if args.log_dir:
        args.log_dir = Path(args.log_dir)
    elif t:
        args.log_dir = Path(tempfile.mkdtemp(prefix="throughput_"))
    else:
        args.log_dir = ROOT / "runs" / "throughput" / args.out.stem
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cases = plan(args)
    if args.dry_run:
        for case in cases:
            python = args.arctic_python if peer_name(case) == "arctic" else sys.executable
            print(" ".join(case_command(case, args.iters, args.log_dir / f"{case.name}.jsonl", case_extra(case, args),
                                        python)))  # fmt: skip
        return 0
    args.log_dir.mkdir(parents=True, exist_ok=True)
    report = None
    if args.append and args.out.exists():
        report = json.loads(args.out.read_text())
    if report is None:
        report = {"benchmark": "throughput", "cases": []}
    report.update(report_head_from_child(__file__, argv))  # this process never initializes CUDA (date_utc: this run)
    report["settings"] = {
        "iters": args.iters, "warmup": args.warmup, "statistic": "median over the iterations after warmup",
        "case_timeout_s": args.case_timeout, "tiled_mlp": args.tiled_mlp, "tiled_mlp_from": args.tiled_mlp_from,
        "tiled_loss": not args.no_tiled_loss, "mfu_peak": "dense bf16 datasheet peak (989 TFLOP/s for H100/H200)",
        "log_dir": str(args.log_dir),
    }  # fmt: skip
    shape = SHAPES[args.shape]
    report.setdefault("shapes", {})[args.shape] = {**shape.__dict__, "megatron_flags": shape.megatron_flags()}
    print(f"throughput: {args.shape} on {args.nproc} x {(report.get('devices') or ['?'])[0]}, SP {args.sp}, "
          f"{len(cases)} cases, logs in {args.log_dir}", flush=True)  # fmt: skip
    oom_at: dict = {}  # (kind, backend) -> shortest length that ran out of memory
    for case in cases:
        sys_key = (case.kind, case.backend)  # each peer has its own backend label
        if not args.keep_going_after_oom and sys_key in oom_at and case.seq_len > oom_at[sys_key]:
            res = {"name": case.name, "kind": case.kind, "backend": case.backend, "shape": case.shape,
                   "seq_len": case.seq_len, "nproc": case.nproc, "sp": case.sp, "dp": case.nproc // case.sp,
                   "precision": "bf16" if case.bf16 else "fp32", "tiled_mlp": case.tiled_mlp,
                   "tiled_loss": case.tiled_loss, "outcome": "skipped",
                   "error": f"ran out of memory at seq_len {oom_at[sys_key]}"}  # fmt: skip
        else:
            res = run_case(case, args, args.log_dir)
            if res["outcome"] == "oom":
                oom_at[sys_key] = min(case.seq_len, oom_at.get(sys_key, math.inf))
        report["cases"] = [c for c in report["cases"] if case_key(c) != case.key()] + [res]
        write_report(args.out, report)
        print(_line(res), flush=True)
    for comp in report["comparisons"]:
        print(f"  {comp['shape']} seq {comp['seq_len']} np {comp['nproc']} sp {comp['sp']}: ours "
              f"({comp['best_backend']}) / {comp['peer']} = {comp['ratio_tokens_per_sec']:.2f}x tokens/s", flush=True)  # fmt: skip
    print(f"wrote {args.out}")
    return 0


def _line(res: dict) -> str:
    head = f"  {res['kind']:>4} {res['backend']:>12} seq {res['seq_len']:>7}: {res['outcome']}"
    if res["outcome"] != "ok":
        return head + (f" ({res['error']})" if res.get("error") else "")

    def fmt(key: str, spec: str, scale: float = 1.0) -> str:
        return "n/a" if res.get(key) is None else format(res[key] * scale, spec)

    return (head + f", {fmt('tokens_per_sec_per_gpu', '.0f')} tokens/s/GPU, {fmt('tflops_per_gpu', '.1f')} TFLOPS/GPU"
            f" (MD), MFU {fmt('mfu', '.1f', 100)}{'%' if res.get('mfu') is not None else ''}, peak {fmt('peak_mem_gb', '.2f')} GB, loss {fmt('final_loss', '.3f')}, "
            f"{res['wall_s']:.0f} s")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
