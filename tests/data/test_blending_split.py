"""--data-path weights, --split, --train/valid/test-data-path, through build_gpt_datasets."""

from __future__ import annotations

import numpy as np
import pytest

from megatron.config import DataConfig
from megatron.data import BlendedDataset, GPTDataset, build_gpt_datasets, parse_data_path, parse_split
from megatron.data.helpers import build_blending_indices


@pytest.mark.parametrize("weights", [[0.3, 0.7], [1, 1, 2], [0.05, 0.9, 0.05]])
def test_blending_index_follows_weights_at_every_prefix(weights):
    which, kth = build_blending_indices(weights, 20000)
    w = np.asarray(weights) / sum(weights)
    for n in (100, 1000, 20000):
        counts = np.bincount(which[:n], minlength=len(w))
        assert np.all(np.abs(counts - n * w) <= 1.0)
    for d in range(len(w)):  # each dataset's samples are taken in order 0, 1, 2, ...
        np.testing.assert_array_equal(kth[which == d], np.arange((which == d).sum()))


def test_blended_dataset_proportions_within_one_percent(tmp_path, write_dataset):
    write_dataset(str(tmp_path / "A"), [50] * 200, seed=1)
    write_dataset(str(tmp_path / "B"), [70] * 100, seed=2)
    cfg = DataConfig(
        data_path=["0.3", str(tmp_path / "A"), "0.7", str(tmp_path / "B")],
        split="100,0,0",
        data_cache_path=str(tmp_path / "cache"),
    )
    train, valid, test = build_gpt_datasets(cfg, 32, 7, (3000, 10, 10), is_builder_rank=True, barrier=lambda: None)
    assert isinstance(train, BlendedDataset) and valid is None and test is None and len(train) == 3000
    ids = np.array([train[i]["dataset_id"] for i in range(len(train))])
    assert abs((ids == 0).mean() - 0.3) < 0.01 and abs((ids == 1).mean() - 0.7) < 0.01
    assert all(train[i]["tokens"].shape == (33,) for i in range(0, 3000, 97))
    # samples tagged A really come from A's documents
    a_tokens = set(np.concatenate([train.datasets[0].indexed[i] for i in range(200)]).tolist())
    first_a = int(np.argmax(ids == 0))
    assert set(train[first_a]["tokens"].tolist()) <= a_tokens


def test_split_sizes_follow_megatron():
    assert parse_split("969,30,1", 1000) == [0, 969, 999, 1000]
    assert parse_split("8/1/1", 10) == [0, 8, 9, 10]
    assert parse_split("100", 7) == [0, 7, 7, 7]
    b = parse_split("969,30,1", 1234)
    assert b[-1] == 1234 and b[1] == round(0.969 * 1234)
    with pytest.raises(ValueError, match="--split"):
        parse_split("a,b", 10)


def test_split_datasets_use_disjoint_documents(tmp_path, write_dataset):
    write_dataset(str(tmp_path / "A"), [30] * 100)
    cfg = DataConfig(data_path=[str(tmp_path / "A")], split="80,10,10", data_cache_path=str(tmp_path / "c"))
    train, valid, test = build_gpt_datasets(cfg, 16, 1, (100, 10, 10), is_builder_rank=True, barrier=None)
    assert all(isinstance(d, GPTDataset) for d in (train, valid, test))
    docs = [set(np.asarray(d.doc_idx).tolist()) for d in (train, valid, test)]
    assert docs[0] == set(range(80)) and docs[1] == set(range(80, 90)) and docs[2] == set(range(90, 100))


def test_separate_train_valid_test_paths(tmp_path, write_dataset):
    for n in "ABC":
        write_dataset(str(tmp_path / n), [40] * 30)
    cfg = DataConfig(
        train_data_path=["1", str(tmp_path / "A"), "1", str(tmp_path / "B")],
        valid_data_path=[str(tmp_path / "C")],
        data_cache_path=str(tmp_path / "c"),
    )
    train, valid, test = build_gpt_datasets(cfg, 16, 1, (50, 5, 5), is_builder_rank=True, barrier=None)
    assert isinstance(train, BlendedDataset) and isinstance(valid, GPTDataset) and test is None


def test_data_path_parsing_errors():
    assert parse_data_path(["x"]) == ([1.0], ["x"])
    assert parse_data_path(["1", "a", "3", "b"]) == ([0.25, 0.75], ["a", "b"])
    with pytest.raises(ValueError, match="weight"):
        parse_data_path(["a", "b"])
    with pytest.raises(ValueError, match="pairs"):
        parse_data_path(["0.5", "a", "b"])
