"""Index construction for GPT datasets and blends, vectorized numpy (no C++ build at start-up).

Megatron-LM builds the sample index and the blending index with a compiled ``helpers.cpp``
loop. Both have closed forms, so we compute them with ``cumsum`` / ``searchsorted`` /
``argsort``; ``bench/build_indices.py`` times a 1-billion-token dataset and
``tests/data`` checks the sample index against a port of Megatron's loop.

Vocabulary used below: a *document* is one sequence of the ``.bin``; the *doc index* lists
documents in epoch order (each epoch shuffled); sample ``i`` covers tokens
``[i * seq_length, (i + 1) * seq_length]`` (inclusive, ``seq_length + 1`` tokens) of the
concatenation of that order, so consecutive samples share one token (input/label shift).
"""

from __future__ import annotations

import numpy as np

from megatron.data.errors import DataError


def num_epochs_needed(tokens_per_epoch: int, seq_length: int, num_samples: int) -> int:
    """Smallest number of epochs whose tokens give ``num_samples`` samples of seq_length + 1."""
    if tokens_per_epoch <= seq_length:
        raise DataError(
            f"the dataset has {tokens_per_epoch} tokens, fewer than one sample of {seq_length + 1}; "
            "use more data or a shorter --seq-length"
        )
    # (epochs * T - 1) // seq_length >= num_samples
    return max(1, -(-(num_samples * seq_length + 1) // tokens_per_epoch))


def separate_last_epoch(tokens_per_epoch: int, seq_length: int, num_samples: int, num_epochs: int) -> bool:
    """Megatron's rule: shuffle the last epoch apart when less than 80% of it is used."""
    if num_epochs == 1:
        return False
    from_full = ((num_epochs - 1) * tokens_per_epoch - 1) // seq_length
    last = num_samples - from_full
    per_epoch = (tokens_per_epoch - 1) // seq_length
    return last < int(0.80 * per_epoch)


def build_doc_idx(
    documents: np.ndarray, num_epochs: int, rng: np.random.RandomState, separate_last: bool
) -> np.ndarray:
    """Documents repeated ``num_epochs`` times, shuffled (the last epoch alone when ``separate_last``)."""
    if not separate_last or num_epochs == 1:
        doc_idx = np.tile(np.asarray(documents, dtype=np.int32), num_epochs)
        rng.shuffle(doc_idx)
        return doc_idx
    first = build_doc_idx(documents, num_epochs - 1, rng, False)
    last = build_doc_idx(documents, 1, rng, False)
    return np.concatenate((first, last))


def build_sample_idx(sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int, num_samples: int) -> np.ndarray:
    """``[num_samples + 1, 2]`` array of (position in doc_idx, token offset) where each sample starts.

    Row ``i + 1`` is where sample ``i`` ends (its last token, inclusive), which is also where
    sample ``i + 1`` starts. Matches Megatron's ``build_sample_idx`` row for row.
    """
    doc_lengths = np.asarray(sizes)[doc_idx].astype(np.int64)
    cum = np.zeros(len(doc_lengths) + 1, dtype=np.int64)
    np.cumsum(doc_lengths, out=cum[1:])
    starts = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    if starts[-1] >= cum[-1]:
        raise DataError(f"doc index holds {cum[-1]} tokens, not enough for {num_samples} samples of {seq_length + 1}")
    # Last document whose first token is at or before the position (skips empty documents).
    doc = np.searchsorted(cum, starts, side="right") - 1
    offset = starts - cum[doc]
    idx_dtype = np.int32 if len(doc_idx) < 2**31 and doc_lengths.max(initial=0) < 2**31 else np.int64
    out = np.empty((num_samples + 1, 2), dtype=idx_dtype)
    out[:, 0] = doc
    out[:, 1] = offset
    out[0] = 0  # Megatron starts at (0, 0) even before a leading empty document
    return out


def build_shuffle_idx(num_samples: int, total_size: int, rng: np.random.RandomState) -> np.ndarray:
    """Permutation of the first ``num_samples`` samples, then of the rest (Megatron's layout)."""
    dtype = np.uint32 if total_size < np.iinfo(np.uint32).max - 1 else np.int64
    first = np.arange(num_samples, dtype=dtype)
    rng.shuffle(first)
    if num_samples == total_size:
        return first
    rest = np.arange(num_samples, total_size, dtype=dtype)
    rng.shuffle(rest)
    return np.concatenate((first, rest))


def build_blending_indices(weights, size: int) -> tuple:
    """Interleave datasets so that every prefix of the blend follows ``weights``.

    Dataset ``d``'s ``k``-th sample is due at time ``(k + 0.5) / w_d``; sorting all due times
    (ties to the lower dataset) gives an order in which, after ``n`` samples, dataset ``d``
    has supplied ``n * w_d`` samples within one. Returns (dataset_index, dataset_sample_index).
    """
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or w.sum() <= 0:
        raise DataError(f"blend weights {list(weights)} must be non-negative with a positive sum")
    w = w / w.sum()
    counts = [int(np.ceil(size * wd)) + 1 if wd > 0 else 0 for wd in w]
    due = np.concatenate([(np.arange(c) + 0.5) / wd for c, wd in zip(counts, w) if c])
    which = np.concatenate([np.full(c, d, dtype=np.int16) for d, c in enumerate(counts) if c])
    kth = np.concatenate([np.arange(c, dtype=np.int64) for c in counts if c])
    order = np.lexsort((which, due))[:size]
    return which[order].astype(np.int16), kth[order]
