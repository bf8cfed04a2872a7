"""GPT sample indices: Megatron's loop reproduced, every token used once per epoch, caching, resume."""

from __future__ import annotations

import os

import numpy as np
import pytest

from megatron.data.gpt_dataset import GPTDataset
from megatron.data.helpers import build_doc_idx, build_sample_idx, num_epochs_needed
from megatron.data.indexed_dataset import MMapIndexedDataset
from megatron.data.sampler import PretrainingSampler


def megatron_build_sample_idx(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch):
    """Port of Megatron's helpers.cpp build_sample_idx (the reference)."""
    num_samples = (num_epochs * tokens_per_epoch - 1) // seq_length
    out = np.zeros((num_samples + 1, 2), dtype=np.int64)
    sample_index, doc_idx_index, doc_offset = 1, 0, 0
    while sample_index <= num_samples:
        remaining = seq_length + 1
        while remaining != 0:
            doc_length = sizes[doc_idx[doc_idx_index]] - doc_offset
            remaining -= doc_length
            if remaining <= 0:
                doc_offset += remaining + doc_length - 1
                remaining = 0
            else:
                doc_idx_index += 1
                doc_offset = 0
        out[sample_index] = (doc_idx_index, doc_offset)
        sample_index += 1
    return out


@pytest.mark.parametrize("seq_length,epochs,seed", [(7, 1, 0), (16, 3, 1), (1, 1, 2), (50, 2, 3)])
def test_vectorized_sample_idx_equals_megatron_loop(seq_length, epochs, seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 40, 60).astype(np.int32)  # includes empty documents
    sizes[0] = 0
    doc_idx = build_doc_idx(np.arange(60), epochs, np.random.RandomState(seed), False)
    tpe = int(sizes.sum())
    ref = megatron_build_sample_idx(sizes, doc_idx, seq_length, epochs, tpe)
    ours = build_sample_idx(sizes, doc_idx, seq_length, (epochs * tpe - 1) // seq_length)
    np.testing.assert_array_equal(ours, ref)


def make_ds(tmp_path, write_dataset, lengths, num_samples, seq_length=16, seed=1234, docs_range=None, **kw):
    prefix = str(tmp_path / "d")
    if not os.path.exists(prefix + ".idx"):
        write_dataset(prefix, lengths)
    indexed = MMapIndexedDataset(prefix)
    documents = np.arange(len(lengths)) if docs_range is None else np.arange(*docs_range)
    return GPTDataset("train", indexed, documents, num_samples, seq_length, seed, str(tmp_path / "cache"), **kw)


def test_every_token_of_an_epoch_used_exactly_once(tmp_path, write_dataset):
    lengths = list(np.random.default_rng(0).integers(1, 50, 200))
    ds = make_ds(tmp_path, write_dataset, lengths, num_samples=10)
    seq = ds.seq_length
    epoch_stream = np.concatenate([ds.indexed[int(d)] for d in ds.doc_idx]).astype(np.int64)
    assert sorted(ds.doc_idx.tolist()) == list(range(200))  # one epoch, each document once
    n = len(ds)
    assert n == (sum(lengths) - 1) // seq
    # shuffled samples, re-ordered by their unshuffled position, tile the epoch (sharing one token)
    by_position = {int(ds.shuffle_idx[i]): ds[i]["tokens"] for i in range(n)}
    assert sorted(by_position) == list(range(n))
    tiled = np.concatenate([by_position[s][:-1] for s in range(n)] + [by_position[n - 1][-1:]])
    np.testing.assert_array_equal(tiled, epoch_stream[: n * seq + 1])
    for s in range(n):
        assert by_position[s].shape == (seq + 1,) and by_position[s].dtype == np.int64


def test_sample_boundaries_cross_documents(tmp_path, write_dataset):
    ds = make_ds(tmp_path, write_dataset, [5, 3, 30, 2], num_samples=2, seq_length=8)
    stream = np.concatenate([ds.indexed[int(d)] for d in ds.doc_idx])
    for s in range(len(ds)):
        np.testing.assert_array_equal(ds.sample_tokens(s), stream[s * 8 : s * 8 + 9])


def test_multiple_epochs_and_determinism(tmp_path, write_dataset):
    lengths = [10] * 20  # 200 tokens per epoch
    ds = make_ds(tmp_path, write_dataset, lengths, num_samples=50, seq_length=10)
    assert num_epochs_needed(200, 10, 50) == 3 and len(ds.doc_idx) == 60 and len(ds) >= 50
    again = make_ds(tmp_path, write_dataset, lengths, num_samples=50, seq_length=10)
    other = make_ds(tmp_path, write_dataset, lengths, num_samples=50, seq_length=10, seed=99)
    assert all(np.array_equal(ds[i]["tokens"], again[i]["tokens"]) for i in range(50))
    assert not all(np.array_equal(ds[i]["tokens"], other[i]["tokens"]) for i in range(50))


def test_cache_is_reused_and_builder_rank_builds_first(tmp_path, write_dataset):
    calls = []
    ds = make_ds(tmp_path, write_dataset, [20] * 10, 5, is_builder_rank=True, barrier=lambda: calls.append("b"))
    files = sorted(os.listdir(tmp_path / "cache"))
    assert calls == ["b"] and len(files) == 4 and not any(".tmp" in f for f in files)
    mtimes = [os.path.getmtime(tmp_path / "cache" / f) for f in files]
    # a non-builder rank finds the cache after the barrier and maps it read-only
    ds2 = make_ds(tmp_path, write_dataset, [20] * 10, 5, is_builder_rank=False, barrier=lambda: None)
    assert [os.path.getmtime(tmp_path / "cache" / f) for f in files] == mtimes
    assert isinstance(ds2.sample_idx, np.memmap)
    np.testing.assert_array_equal(ds[3]["tokens"], ds2[3]["tokens"])


def test_pickled_dataset_is_small_and_equal(tmp_path, write_dataset):
    import pickle

    ds = make_ds(tmp_path, write_dataset, [50] * 400, 1000, seq_length=8)
    blob = pickle.dumps(ds)
    assert len(blob) < 5000
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again[17]["tokens"], ds[17]["tokens"])


def test_resume_continues_at_the_exact_next_sample(tmp_path, write_dataset):
    ds = make_ds(tmp_path, write_dataset, [13] * 40, 40, seq_length=8)
    mbs, dp = 2, 2
    full = [[list(b) for b in PretrainingSampler(len(ds), 0, mbs, r, dp)] for r in range(dp)]
    consumed = 3 * mbs * dp  # a checkpoint after 3 steps
    resumed = [[list(b) for b in PretrainingSampler(len(ds), consumed, mbs, r, dp)] for r in range(dp)]
    for r in range(dp):
        assert resumed[r] == full[r][3:]
    assert resumed[0][0] == [consumed, consumed + 1] and resumed[1][0] == [consumed + 2, consumed + 3]
    # the dataset is a pure function of the global index: rebuilt after a restart it agrees
    again = make_ds(tmp_path, write_dataset, [13] * 40, 40, seq_length=8)
    np.testing.assert_array_equal(ds[consumed]["tokens"], again[consumed]["tokens"])


def test_too_little_data_is_a_clear_error(tmp_path, write_dataset):
    with pytest.raises(ValueError, match="fewer than one sample"):
        make_ds(tmp_path, write_dataset, [3, 4], 1, seq_length=16)


def test_rewritten_data_does_not_reuse_a_stale_cache(tmp_path, write_dataset):
    prefix = str(tmp_path / "d")
    write_dataset(prefix, [20] * 10)
    first = make_ds(tmp_path, write_dataset, [20] * 10, 5)
    write_dataset(prefix, [10] * 20, seed=5)  # same path, same token count, other documents
    second = make_ds(tmp_path, write_dataset, [10] * 20, 5)
    assert len(second.doc_idx) == 20 and len(first.doc_idx) == 10
    stream = np.concatenate([second.indexed[int(d)] for d in second.doc_idx])
    np.testing.assert_array_equal(second.sample_tokens(0), stream[:17])
