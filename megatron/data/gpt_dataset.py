"""GPT dataset: fixed-length samples of ``seq_length + 1`` tokens over shuffled documents.

Samples cross document boundaries (documents are packed back to back, as in Megatron), and
as many epochs are used as the requested number of samples needs. Three indices make a
sample addressable in O(1): the doc index (documents in epoch order), the sample index
(where each sample starts) and the shuffle index (sample order). They are cached on disk
under a hash of the dataset's description; one rank builds them while the others wait at
``barrier``, then every rank maps them read-only. ``ds[i]`` depends only on ``i``, the data,
``seq_length`` and ``seed``, so resuming at consumed sample ``i`` continues exactly, and
every rank of a sequence-parallel group reads the same sample.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from megatron.data.errors import DataError
from megatron.data.helpers import (
    build_doc_idx,
    build_sample_idx,
    build_shuffle_idx,
    num_epochs_needed,
    separate_last_epoch,
)
from megatron.data.indexed_dataset import MMapIndexedDataset

INDEX_FORMAT_VERSION = 1  # bump when the index layout or algorithm changes


def _log(msg: str) -> None:
    print(f"[data] {msg}", file=sys.stderr, flush=True)


def description_hash(description: dict) -> str:
    return hashlib.md5(json.dumps(description, sort_keys=True).encode()).hexdigest()


def _atomic_save(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp-{os.getpid()}.npy"
    np.save(tmp, array, allow_pickle=False)
    os.replace(tmp, path)


def cached_arrays(
    cache_dir: str,
    description: dict,
    names: tuple,
    build: Callable[[], tuple],
    is_builder_rank: bool = True,
    barrier: Callable[[], None] | None = None,
) -> tuple:
    """Load arrays ``names`` cached under ``hash(description)``, building them once if absent.

    The builder rank writes each file atomically (temp name, then rename); every rank waits
    at ``barrier``. A rank that still finds no cache afterwards (a cache directory that is not
    shared between nodes) builds its own copy: the build is deterministic, so copies agree.
    """
    key = description_hash(description)
    paths = [os.path.join(cache_dir, f"{key}-{n}.npy") for n in names]

    def build_and_save():
        try:
            os.makedirs(cache_dir, exist_ok=True)
        except OSError as e:
            raise DataError(
                f"cannot create the index cache {cache_dir} ({e}); pass a writable --data-cache-path"
            ) from None
        t0 = time.time()
        arrays = build()
        for p, a in zip(paths, arrays):
            _atomic_save(p, a)
        desc_path = os.path.join(cache_dir, f"{key}-description.json")
        with open(desc_path + f".tmp-{os.getpid()}", "w") as f:
            json.dump(description, f, indent=2, sort_keys=True)
        os.replace(desc_path + f".tmp-{os.getpid()}", desc_path)
        _log(f"built {description.get('name', 'indices')} in {time.time() - t0:.2f}s -> {cache_dir}/{key}-*")

    if is_builder_rank and not all(os.path.exists(p) for p in paths):
        build_and_save()
    if barrier is not None:
        barrier()
    if not all(os.path.exists(p) for p in paths):
        build_and_save()
    return tuple(np.load(p, mmap_mode="r", allow_pickle=False) for p in paths)


class GPTDataset:
    """Samples of ``seq_length + 1`` tokens drawn from ``documents`` of an mmap dataset.

    ``len(ds)`` covers whole epochs (at least ``num_samples``); ``ds[i]`` returns
    ``{"tokens": int64 [seq_length + 1]}``.
    """

    def __init__(
        self,
        name: str,
        indexed: MMapIndexedDataset,
        documents: np.ndarray,
        num_samples: int,
        seq_length: int,
        seed: int,
        cache_dir: str,
        *,
        is_builder_rank: bool = True,
        barrier: Callable[[], None] | None = None,
    ):
        self.name, self.indexed, self.seq_length = name, indexed, seq_length
        documents = np.asarray(documents, dtype=np.int64)
        if num_samples < 1:
            raise DataError(f"{name}: asked for {num_samples} samples; ask for at least one")
        if len(documents) == 0:
            raise DataError(f"{name}: the split has no documents; change --split or add data")
        description = {
            "class": "GPTDataset",
            "format": INDEX_FORMAT_VERSION,
            "name": name,
            "path_prefix": os.path.abspath(indexed.prefix),
            # the indices depend on the document sizes alone: a re-preprocessed file invalidates them
            "sizes_md5": hashlib.md5(np.ascontiguousarray(indexed.sizes).tobytes()).hexdigest(),
            "documents": [int(documents[0]), int(documents[-1]) + 1, len(documents)],
            "num_samples": int(num_samples),
            "seq_length": int(seq_length),
            "seed": int(seed),
        }
        contiguous = documents[-1] - documents[0] + 1 == len(documents)
        if not contiguous:  # arbitrary document subsets: hash them into the description
            description["documents_md5"] = hashlib.md5(documents.tobytes()).hexdigest()

        def build():
            sizes = indexed.sizes
            tokens_per_epoch = int(sizes[documents].sum(dtype=np.int64))
            epochs = num_epochs_needed(tokens_per_epoch, seq_length, num_samples)
            separate = separate_last_epoch(tokens_per_epoch, seq_length, num_samples, epochs)
            rng = np.random.RandomState(seed)
            doc_idx = build_doc_idx(documents, epochs, rng, separate)
            total = (epochs * tokens_per_epoch - 1) // seq_length
            sample_idx = build_sample_idx(sizes, doc_idx, seq_length, total)
            first = ((epochs - 1) * tokens_per_epoch - 1) // seq_length if separate else total
            shuffle_idx = build_shuffle_idx(first, total, rng)
            return doc_idx, sample_idx, shuffle_idx

        self.doc_idx, self.sample_idx, self.shuffle_idx = cached_arrays(
            cache_dir, description, ("doc_idx", "sample_idx", "shuffle_idx"), build, is_builder_rank, barrier
        )
        self.num_samples = num_samples
        self.description = description

    _INDEX_NAMES = ("doc_idx", "sample_idx", "shuffle_idx")

    def __getstate__(self):  # pickle the cache paths, not the arrays (DataLoader workers under spawn)
        state = dict(self.__dict__)
        for n in self._INDEX_NAMES:
            filename = getattr(state[n], "filename", None)
            if filename:
                state[n] = ("__npy__", filename)
        return state

    def __setstate__(self, state):
        for n in self._INDEX_NAMES:
            if isinstance(state[n], tuple) and state[n][0] == "__npy__":
                state[n] = np.load(state[n][1], mmap_mode="r", allow_pickle=False)
        self.__dict__.update(state)

    def __len__(self) -> int:
        return self.shuffle_idx.shape[0]

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < len(self):
            raise IndexError(f"{self.name}: sample {idx} out of range [0, {len(self)})")
        return {"tokens": self.sample_tokens(int(self.shuffle_idx[idx]))}

    def sample_tokens(self, s: int) -> np.ndarray:
        """Tokens of sample ``s`` in unshuffled order (``seq_length + 1`` of them)."""
        d_first, o_first = (int(x) for x in self.sample_idx[s])
        d_last, o_last = (int(x) for x in self.sample_idx[s + 1])
        get = self.indexed.get
        if d_first == d_last:
            tokens = get(int(self.doc_idx[d_first]), o_first, o_last - o_first + 1)
        else:
            parts = [get(int(self.doc_idx[d_first]), o_first)]
            parts += [get(int(self.doc_idx[d])) for d in range(d_first + 1, d_last)]
            parts.append(get(int(self.doc_idx[d_last]), 0, o_last + 1))
            tokens = np.concatenate(parts)
        return tokens.astype(np.int64)
