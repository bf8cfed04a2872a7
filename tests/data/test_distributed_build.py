"""Two gloo processes: rank 0 builds the cached indices while rank 1 waits at the barrier."""

from __future__ import annotations

import os

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron.config import DataConfig


def _worker(rank: int, world: int, port: int, prefix: str, cache: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from megatron.data import build_gpt_datasets

        if rank == 1:  # the waiting rank must never build: make building fail loudly there
            import megatron.data.gpt_dataset as gd

            def refuse(*args, **kwargs):
                raise AssertionError("rank 1 built indices instead of waiting for rank 0")

            gd.build_sample_idx = refuse
        cfg = DataConfig(data_path=[prefix], split="90,10,0", data_cache_path=cache)
        train, valid, _ = build_gpt_datasets(cfg, 16, 3, (64, 8, 0), is_builder_rank=rank == 0, barrier=dist.barrier)
        np.save(f"{out}/rank{rank}.npy", np.stack([train[i]["tokens"] for i in range(len(train))]))
    finally:
        dist.destroy_process_group()


def test_rank0_builds_others_wait_and_agree(tmp_path, write_dataset):
    import socket

    prefix = str(tmp_path / "d")
    write_dataset(prefix, list(np.random.default_rng(0).integers(5, 60, 120)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, prefix, str(tmp_path / "cache"), str(tmp_path)), nprocs=2, join=True)
    a, b = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    np.testing.assert_array_equal(a, b)
    assert a.shape[1] == 17 and len(a) >= 64
    # one build: each index file exists once, no temporary leftovers
    files = os.listdir(tmp_path / "cache")
    assert not [f for f in files if ".tmp" in f] and len([f for f in files if f.endswith("shuffle_idx.npy")]) == 2
