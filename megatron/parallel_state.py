"""Process groups for Ulysses sequence parallelism (SP) and data parallelism (DP).

Worked example: 8 GPUs with ``sequence_parallel_size=4`` (so data-parallel size 2).

* Sequence-parallel groups are contiguous ranks, so the all-to-all stays inside a node:
  ``[0, 1, 2, 3]`` and ``[4, 5, 6, 7]``. The ranks of one group hold the same sample,
  each a contiguous quarter of its tokens; attention swaps sequence shards for head shards.
* Data-parallel groups take one rank from each SP group at the same SP position:
  ``[0, 4]``, ``[1, 5]``, ``[2, 6]``, ``[3, 7]``. Ranks of one DP group see different samples.
* The sequence-data-parallel group is all 8 ranks: every rank holds different tokens of
  the global batch, so gradients are reduced and ZeRO shards parameters over it.

With SP=1 the SP groups are singletons and the DP and sequence-data-parallel groups are the
whole world. This module is usable as DeepSpeed's ``mpu``: pass the module itself.
Call ``initialize_model_parallel`` once after ``torch.distributed`` is initialized; every
rank must call it (``new_group`` is collective).
"""

from __future__ import annotations

import torch.distributed as dist

_SEQUENCE_PARALLEL_GROUP = None
_SEQUENCE_PARALLEL_RANKS: list | None = None
_DATA_PARALLEL_GROUP = None
_DATA_PARALLEL_RANKS: list | None = None
_SEQUENCE_DATA_PARALLEL_GROUP = None
_SEQUENCE_DATA_PARALLEL_RANKS: list | None = None
_MODEL_PARALLEL_GROUP = None  # a singleton group: no tensor/pipeline parallelism here


def build_rank_layout(world_size: int, sequence_parallel_size: int) -> dict:
    """Pure function: the rank lists of every group, for printing and tests."""
    sp = sequence_parallel_size
    if world_size % sp:
        raise ValueError(f"world size {world_size} is not divisible by sequence parallel size {sp}")
    dp = world_size // sp
    return {
        "sequence_parallel": [list(range(i * sp, (i + 1) * sp)) for i in range(dp)],
        "data_parallel": [list(range(j, world_size, sp)) for j in range(sp)],
        "sequence_data_parallel": [list(range(world_size))],
        "model_parallel": [[r] for r in range(world_size)],
    }


def initialize_model_parallel(sequence_parallel_size: int = 1, verbose: bool = False) -> dict:
    """Create the SP, DP and SP x DP groups (see the module docstring). Returns the layout."""
    global _SEQUENCE_PARALLEL_GROUP, _SEQUENCE_PARALLEL_RANKS
    global _DATA_PARALLEL_GROUP, _DATA_PARALLEL_RANKS
    global _SEQUENCE_DATA_PARALLEL_GROUP, _SEQUENCE_DATA_PARALLEL_RANKS, _MODEL_PARALLEL_GROUP
    if _SEQUENCE_PARALLEL_GROUP is not None:
        raise RuntimeError("initialize_model_parallel was already called; call destroy_model_parallel first")
    world, rank = dist.get_world_size(), dist.get_rank()
    layout = build_rank_layout(world, sequence_parallel_size)
    for ranks in layout["sequence_parallel"]:
        group = dist.new_group(ranks)
        if rank in ranks:
            _SEQUENCE_PARALLEL_GROUP, _SEQUENCE_PARALLEL_RANKS = group, ranks
    for ranks in layout["data_parallel"]:
        group = dist.new_group(ranks)
        if rank in ranks:
            _DATA_PARALLEL_GROUP, _DATA_PARALLEL_RANKS = group, ranks
    for ranks in layout["sequence_data_parallel"]:
        group = dist.new_group(ranks)
        if rank in ranks:
            _SEQUENCE_DATA_PARALLEL_GROUP, _SEQUENCE_DATA_PARALLEL_RANKS = group, ranks
    for ranks in layout["model_parallel"]:
        group = dist.new_group(ranks)
        if rank in ranks:
            _MODEL_PARALLEL_GROUP = group
    if verbose and rank == 0:
        for name, groups in layout.items():
            print(f"> {name} groups: {groups}", flush=True)
    return layout


def model_parallel_is_initialized() -> bool:
    return _SEQUENCE_PARALLEL_GROUP is not None


def destroy_model_parallel() -> None:
    global _SEQUENCE_PARALLEL_GROUP, _SEQUENCE_PARALLEL_RANKS
    global _DATA_PARALLEL_GROUP, _DATA_PARALLEL_RANKS
    global _SEQUENCE_DATA_PARALLEL_GROUP, _SEQUENCE_DATA_PARALLEL_RANKS, _MODEL_PARALLEL_GROUP
    _MODEL_PARALLEL_GROUP = None
    _SEQUENCE_PARALLEL_GROUP = _SEQUENCE_PARALLEL_RANKS = None
    _DATA_PARALLEL_GROUP = _DATA_PARALLEL_RANKS = None
    _SEQUENCE_DATA_PARALLEL_GROUP = _SEQUENCE_DATA_PARALLEL_RANKS = None


def _check(group):
    if group is None:
        raise RuntimeError("parallel state is not initialized; call initialize_model_parallel first")
    return group


# --- sequence parallel -------------------------------------------------------------------
def get_sequence_parallel_group():
    return _check(_SEQUENCE_PARALLEL_GROUP)


def get_sequence_parallel_world_size() -> int:
    return len(_check(_SEQUENCE_PARALLEL_RANKS))


def get_sequence_parallel_rank() -> int:
    return _check(_SEQUENCE_PARALLEL_RANKS).index(dist.get_rank())


def get_sequence_parallel_src_rank() -> int:
    return _check(_SEQUENCE_PARALLEL_RANKS)[0]


# --- data parallel -----------------------------------------------------------------------
def get_data_parallel_group():
    return _check(_DATA_PARALLEL_GROUP)


def get_data_parallel_group_ranks() -> list:
    return list(_check(_DATA_PARALLEL_RANKS))


def get_data_parallel_world_size() -> int:
    return len(_check(_DATA_PARALLEL_RANKS))


def get_data_parallel_rank() -> int:
    return _check(_DATA_PARALLEL_RANKS).index(dist.get_rank())


# --- sequence x data parallel (ZeRO sharding and gradient reduction) ----------------------
def get_sequence_data_parallel_group():
    return _check(_SEQUENCE_DATA_PARALLEL_GROUP)


def get_sequence_data_parallel_world_size() -> int:
    return len(_check(_SEQUENCE_DATA_PARALLEL_RANKS))


def get_sequence_data_parallel_rank() -> int:
    return _check(_SEQUENCE_DATA_PARALLEL_RANKS).index(dist.get_rank())


# --- tensor/pipeline parallel: always 1 here (Ulysses does not combine with them) ---------
def get_model_parallel_group():
    return _check(_MODEL_PARALLEL_GROUP)


def get_tensor_model_parallel_group():
    return _check(_MODEL_PARALLEL_GROUP)


def get_model_parallel_world_size() -> int:
    return 1


def get_model_parallel_rank() -> int:
    return 0


def get_tensor_model_parallel_world_size() -> int:
    return 1


def get_tensor_model_parallel_rank() -> int:
    return 0


def get_pipeline_model_parallel_world_size() -> int:
    return 1


def get_pipeline_model_parallel_rank() -> int:
    return 0
