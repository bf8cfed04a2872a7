"""Helpers to run the real entry point under torchrun on CPU (gloo) and read its metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "pretrain_gpt.py"
FAULTY_PRETRAIN = ROOT / "tests" / "fault" / "faulty_pretrain.py"  # pretrain_gpt.py with --inject-* faults

TINY_GPT = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64",
    "--vocab-size", "128", "--make-vocab-size-divisible-by", "64",
]  # fmt: skip
TINY_LLAMA = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "8", "--num-key-value-heads", "2",
    "--seq-length", "64", "--vocab-size", "128", "--make-vocab-size-divisible-by", "64",
    "--use-rotary-position-embeddings", "--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear",
    "--untie-embeddings-and-output-weights",
]  # fmt: skip
TRAIN = [
    "--mock-data", "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "5", "--lr", "3e-3",
    "--lr-warmup-iters", "1", "--log-interval", "1", "--seed", "7", "--num-workers", "0",
]  # fmt: skip


def env() -> dict:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return e


def torchrun(
    nproc: int, args: list, metrics: Path | None = None, extra_env: dict | None = None, timeout=600, script=PRETRAIN
):
    """Run ``script`` (pretrain_gpt.py) on ``nproc`` CPU processes; returns the CompletedProcess."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += [str(script), *args]
    if metrics is not None:
        cmd += ["--metrics-file", str(metrics)]
    e = env()
    e.update(extra_env or {})
    return subprocess.run(cmd, env=e, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def launch(nproc: int, args: list, metrics: Path | None = None, extra_env: dict | None = None, timeout=600,
           script=PRETRAIN):  # fmt: skip
    """Run ``script`` on ``nproc`` CPU processes under ``python -m megatron.launch``."""
    cmd = [sys.executable, "-m", "megatron.launch", "--standalone", f"--nproc-per-node={nproc}", str(script), *args]
    if metrics is not None:
        cmd += ["--metrics-file", str(metrics)]
    e = env()
    e.update(extra_env or {})
    return subprocess.run(cmd, env=e, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def train_records(tmp: Path, name: str, nproc: int, args: list, extra_env: dict | None = None) -> list:
    metrics = tmp / f"{name}.jsonl"
    proc = torchrun(nproc, args, metrics, extra_env)
    if proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in metrics.read_text().splitlines() if "lm_loss" in line]


def assert_close_records(ref: list, got: list, rtol=1e-5, grad_rtol=1e-4, what=""):
    assert len(ref) == len(got) and len(ref) > 0, (what, len(ref), len(got))
    for r, g in zip(ref, got):
        assert r["iteration"] == g["iteration"]
        assert abs(r["lm_loss"] - g["lm_loss"]) <= rtol * abs(r["lm_loss"]), (what, r, g)
        assert abs(r["grad_norm"] - g["grad_norm"]) <= grad_rtol * abs(r["grad_norm"]), (what, r, g)
