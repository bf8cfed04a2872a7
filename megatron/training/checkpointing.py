"""One save/load pair: model, optimizer and scheduler (through DeepSpeed), iteration, data
position and RNG. ``latest`` is written by rank 0 only after every rank finished writing,
atomically (temporary file + rename), so a run killed mid-save resumes from the previous
complete checkpoint.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist

from megatron.config import ConfigError

LATEST = "latest"


def _tag(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prune(save_dir: str, keep_last_n: int, keep: str) -> None:
    import shutil

    tags = sorted(d for d in os.listdir(save_dir) if d.startswith("iter_") and os.path.isdir(os.path.join(save_dir, d)))
    for old in tags[:-keep_last_n]:
        if old != keep:
            shutil.rmtree(os.path.join(save_dir, old), ignore_errors=True)


def save_checkpoint(engine, save_dir: str, iteration: int, client_state: dict, keep_last_n: int = 0) -> str:
    """Collective: every rank writes its shards, then rank 0 points ``latest`` at them and,
    with ``keep_last_n`` > 0, deletes older ``iter_*`` checkpoints beyond the newest N."""
    tag = _tag(iteration)
    rank = dist.get_rank()
    engine.save_checkpoint(save_dir, tag=tag, client_state=dict(client_state, iteration=iteration), save_latest=False)
    rng_path = os.path.join(save_dir, tag, f"rng_state_rank{rank:05d}.pt")
    torch.save(_rng_state(), rng_path + ".tmp")
    os.replace(rng_path + ".tmp", rng_path)
    if os.environ.get("MEGATRON_TEST_DIE_BEFORE_LATEST") == str(iteration) and rank == dist.get_world_size() - 1:
        os._exit(17)  # test hook: a rank dies after writing its shards, before `latest` moves
    dist.barrier()
    if rank == 0:
        _atomic_write_text(os.path.join(save_dir, LATEST), tag)
        if keep_last_n > 0:
            _prune(save_dir, keep_last_n, keep=tag)
    dist.barrier()
    return os.path.join(save_dir, tag)


def load_checkpoint(engine, load_dir: str):
    """Resume from ``load_dir/latest``. Returns the client state, or None if there is no checkpoint yet."""
    if not os.path.isdir(load_dir):
        raise ConfigError(f"--load {load_dir} does not exist; give an existing checkpoint directory or drop --load")
    latest = os.path.join(load_dir, LATEST)
    if not os.path.isfile(latest):
        if dist.get_rank() == 0:
            print(f"> no '{LATEST}' file in {load_dir}: starting from scratch", flush=True)
        return None
    tag = open(latest).read().strip()
    if not os.path.isdir(os.path.join(load_dir, tag)):
        raise ConfigError(f"{latest} points at {tag}, which is missing; restore it or point 'latest' at a saved tag")
    path, client_state = engine.load_checkpoint(load_dir, tag=tag)
    if path is None:
        raise ConfigError(f"DeepSpeed could not load {os.path.join(load_dir, tag)}; the checkpoint is incomplete")
    rng_path = os.path.join(load_dir, tag, f"rng_state_rank{dist.get_rank():05d}.pt")
    if os.path.isfile(rng_path):
        _set_rng_state(torch.load(rng_path, weights_only=False))
    if dist.get_rank() == 0:
        print(f"> resumed from {os.path.join(load_dir, tag)} at iteration {client_state['iteration']}", flush=True)
    return client_state
