"""``build_gpt_datasets``: train/valid/test datasets from a ``DataConfig``.

Two ways to name data, as in Megatron:

- ``--data-path [w1] A [w2 B ...] --split 969,30,1``: every prefix is split by documents in
  those proportions, and each split blends the prefixes with the weights.
- ``--train-data-path``, ``--valid-data-path``, ``--test-data-path``: each list (optionally
  weighted) is used whole for its split.

A single source is returned as a ``GPTDataset``; several as a ``BlendedDataset`` whose
members are sized exactly for the samples the blend draws from them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from megatron.data.blended_dataset import BlendedDataset, blending_index, default_cache_dir
from megatron.data.errors import DataError
from megatron.data.gpt_dataset import GPTDataset
from megatron.data.indexed_dataset import MMapIndexedDataset

SPLIT_NAMES = ("train", "valid", "test")


def parse_data_path(data_path: list) -> tuple:
    """``[prefix]`` or ``[w1, p1, w2, p2, ...]`` -> (normalized weights, prefixes)."""
    items = [str(x) for x in data_path]
    if len(items) == 1:
        return [1.0], items
    if len(items) % 2:
        raise DataError(
            f"--data-path {' '.join(items)} mixes weights and prefixes; give one prefix or weight/prefix pairs"
        )
    try:
        weights = [float(w) for w in items[0::2]]
    except ValueError:
        raise DataError(
            f"--data-path {' '.join(items)}: with several prefixes each needs a weight before it (0.3 A 0.7 B)"
        ) from None
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise DataError(f"--data-path weights {weights} must be non-negative with a positive sum")
    total = sum(weights)
    return [w / total for w in weights], items[1::2]


def parse_split(split: str, num_documents: int) -> list:
    """Megatron's ``--split``: '969,30,1' (or '969/30/1') -> 4 document boundaries."""
    try:
        parts = [float(s) for s in split.replace("/", ",").split(",") if s.strip()]
    except ValueError:
        raise DataError(f"--split {split!r} is not numbers; use e.g. 969,30,1") from None
    parts = (parts + [0.0, 0.0, 0.0])[:3]
    if any(p < 0 for p in parts) or sum(parts) <= 0:
        raise DataError(f"--split {split!r} needs non-negative proportions with a positive sum")
    fractions = [p / sum(parts) for p in parts]
    bounds = [0]
    for f in fractions:
        bounds.append(bounds[-1] + int(round(f * num_documents)))
    diff = bounds[-1] - num_documents
    return [bounds[0]] + [b - diff for b in bounds[1:]]


def _dataset(name, prefix, documents, n, seq_length, seed, cache_path, is_builder_rank, barrier):
    indexed = MMapIndexedDataset(prefix)
    cache_dir = cache_path or default_cache_dir(prefix)
    return GPTDataset(
        name, indexed, documents, n, seq_length, seed, cache_dir, is_builder_rank=is_builder_rank, barrier=barrier
    )


def _build_split(name, sources, weights, n, seq_length, seed, cache_path, is_builder_rank, barrier):
    """One split: ``sources`` is a list of (prefix, documents or None for all)."""
    sources = [(p, d) for (p, d), w in zip(sources, weights) if w > 0]
    weights = [w for w in weights if w > 0]
    resolved = []
    for prefix, docs in sources:
        if docs is None:
            docs = np.arange(len(MMapIndexedDataset(prefix).sizes))
        if len(docs) == 0:
            raise DataError(f"{name} split of {prefix} has no documents; change --split or the weights")
        resolved.append((prefix, docs))
    if len(resolved) == 1:
        prefix, docs = resolved[0]
        return _dataset(name, prefix, docs, n, seq_length, seed, cache_path, is_builder_rank, barrier)
    descr = [[os.path.abspath(p), int(d[0]), int(d[-1]) + 1, seq_length, seed] for p, d in resolved]
    cache_dir = cache_path or default_cache_dir(resolved[0][0])
    index = blending_index(name, descr, weights, n, cache_dir, is_builder_rank, barrier)
    counts = np.bincount(np.asarray(index[0]), minlength=len(resolved))
    members = [
        _dataset(f"{name}.{i}", p, d, max(1, int(c)), seq_length, seed, cache_path, is_builder_rank, barrier)
        for i, ((p, d), c) in enumerate(zip(resolved, counts))
    ]
    return BlendedDataset(name, members, weights, index)


def build_gpt_datasets(
    data_cfg,
    seq_length: int,
    seed: int,
    num_samples: tuple,
    *,
    is_builder_rank: bool = True,
    barrier: Callable[[], None] | None = None,
) -> tuple:
    """(train, valid, test): each None (no data or 0 samples requested) or indexable by global sample.

    ``num_samples`` is the number of samples each split must provide (train: global batch x
    iterations; valid/test: what evaluation reads). Datasets may be longer (whole epochs).
    """
    cache_path = data_cfg.data_cache_path
    out = [None, None, None]
    if data_cfg.train_data_path or data_cfg.valid_data_path or data_cfg.test_data_path:
        if data_cfg.data_path:
            raise DataError("give either --data-path (with --split) or --train/valid/test-data-path, not both")
        paths = (data_cfg.train_data_path, data_cfg.valid_data_path, data_cfg.test_data_path)
        for i, (name, path, n) in enumerate(zip(SPLIT_NAMES, paths, num_samples)):
            if path and n > 0:
                weights, prefixes = parse_data_path(path)
                sources = [(p, None) for p in prefixes]
                out[i] = _build_split(name, sources, weights, n, seq_length, seed, cache_path, is_builder_rank, barrier)
        return tuple(out)
    if not data_cfg.data_path:
        raise DataError("no data: give --data-path, --train-data-path, or --mock-data")
    weights, prefixes = parse_data_path(data_cfg.data_path)
    bounds = {p: parse_split(data_cfg.split, len(MMapIndexedDataset(p).sizes)) for p in prefixes}
    for i, (name, n) in enumerate(zip(SPLIT_NAMES, num_samples)):
        if n <= 0 or all(bounds[p][i + 1] == bounds[p][i] for p in prefixes):
            continue
        sources = [(p, np.arange(bounds[p][i], bounds[p][i + 1])) for p in prefixes]
        out[i] = _build_split(name, sources, weights, n, seq_length, seed, cache_path, is_builder_rank, barrier)
    return tuple(out)
