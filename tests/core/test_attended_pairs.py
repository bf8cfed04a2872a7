"""metrics.attended_pairs: the (query, key) pairs a sequence attends under a sliding window and packed documents,
against counting the attention mask's True entries."""

import pytest
import torch

from megatron.model.attention import _attention_mask
from megatron.training import metrics


def _mask_count(lengths, window):
    ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None]
    return int(_attention_mask(sum(lengths), "cpu", ids, window).sum())


@pytest.mark.parametrize("lengths", [(1,), (17,), (64,), (5, 11, 48), (1, 1, 30), (20, 20)])
@pytest.mark.parametrize("window", [None, 1, 4, 16, 17, 63, 64, 1000])
def test_pairs_equal_the_masks_true_entries(lengths, window):
    seq = sum(lengths)
    assert metrics.attended_pairs(seq, window, lengths) == _mask_count(lengths, window)
    if len(lengths) == 1:
        assert metrics.attended_pairs(seq, window) == _mask_count(lengths, window)


def test_closed_forms():
    assert metrics.attended_pairs(8) == 36  # causal: S (S + 1) / 2
    assert metrics.attended_pairs(8, window=3) == 1 + 2 + 6 * 3  # queries 0, 1 see 1, 2 keys; the rest 3
    assert metrics.attended_pairs(8, window=8) == metrics.attended_pairs(8, window=100) == 36
    assert metrics.attended_pairs(10, 4, (3, 7)) == 6 + (10 + 3 * 4)
    # Long sequences: a window W costs about S * W pairs, not S^2 / 2.
    assert metrics.attended_pairs(131072, 4096) == 4096 * 4097 // 2 + (131072 - 4096) * 4096


def test_batch_of_packed_sequences_sums_each_document():
    ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2], [0] * 8])
    for window in (None, 2, 5):
        want = metrics.attended_pairs(8, window, (3, 2, 3)) + metrics.attended_pairs(8, window)
        assert metrics.attended_pairs_of_documents(ids, window) == want
    # without a window, the causal pairs of each document: (L^2 + L) / 2, beside document_square_sum's L^2
    assert 2 * metrics.attended_pairs_of_documents(ids) == metrics.document_square_sum(ids) + ids.numel()


def test_bad_lengths_and_windows_are_refused():
    with pytest.raises(ValueError, match="do not sum to the sequence length 10"):
        metrics.attended_pairs(10, 4, (3, 6))
    with pytest.raises(ValueError, match="window must be >= 1"):
        metrics.attended_pairs(10, 0)
