"""Weighted blend of datasets (``--data-path 0.3 A 0.7 B``), deterministic and cached.

Sample ``i`` of the blend is sample ``dataset_sample_index[i]`` of dataset
``dataset_index[i]``; the indices come from ``helpers.build_blending_indices`` so every prefix
of the blend follows the weights (within one sample per dataset), and are cached like the
GPT indices. Each returned dict also carries ``dataset_id``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from megatron.data.errors import DataError
from megatron.data.gpt_dataset import INDEX_FORMAT_VERSION, cached_arrays
from megatron.data.helpers import build_blending_indices


def blending_index(
    name: str,
    sources: list,
    weights: list,
    size: int,
    cache_dir: str,
    is_builder_rank: bool = True,
    barrier: Callable[[], None] | None = None,
) -> tuple:
    """Cached (dataset_index, dataset_sample_index) for a blend of ``sources`` (descriptions)."""
    description = {
        "class": "BlendedDataset",
        "format": INDEX_FORMAT_VERSION,
        "name": name,
        "sources": sources,
        "weights": [float(w) for w in weights],
        "size": int(size),
    }
    return cached_arrays(
        cache_dir,
        description,
        ("dataset_index", "dataset_sample_index"),
        lambda: build_blending_indices(weights, size),
        is_builder_rank,
        barrier,
    )


class BlendedDataset:
    def __init__(self, name: str, datasets: list, weights: list, index: tuple):
        """``index`` is (dataset_index, dataset_sample_index), see ``blending_index``."""
        self.name, self.datasets, self.weights = name, datasets, list(weights)
        self.dataset_index, self.dataset_sample_index = index
        self.size = len(self.dataset_index)
        for d, n in zip(datasets, _counts(self.dataset_index, len(datasets))):
            if n > len(d):
                raise DataError(f"{name}: blend needs {n} samples from a dataset of {len(d)}")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < self.size:
            raise IndexError(f"{self.name}: sample {idx} out of range [0, {self.size})")
        d = int(self.dataset_index[idx])
        out = dict(self.datasets[d][int(self.dataset_sample_index[idx])])
        out["dataset_id"] = d
        return out


def _counts(dataset_index, n: int) -> list:
    import numpy as np

    return np.bincount(np.asarray(dataset_index), minlength=n).tolist()


def default_cache_dir(prefix: str) -> str:
    """Megatron-LM's default: a ``cache`` folder next to the data."""
    return os.path.join(os.path.dirname(os.path.abspath(prefix)), "cache", "GPTDataset_indices")
