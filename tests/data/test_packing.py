"""Packed documents: position ids restart and attention stays inside documents."""

from __future__ import annotations

import torch

from megatron.data.packing import cu_seqlens, document_causal_mask, get_ltor_masks_and_position_ids

EOD = 0


def megatron_reference(tokens, reset_position_ids, reset_attention_mask, eod_mask_loss):
    """Megatron-LM's loop version (dense mask, True = may attend)."""
    b, s = tokens.shape
    mask = torch.tril(torch.ones((b, s, s))).bool()
    loss_mask = torch.ones((b, s))
    if eod_mask_loss:
        loss_mask[tokens == EOD] = 0.0
    pos = torch.arange(s).unsqueeze(0).repeat(b, 1)
    for i in range(b):
        eods = (tokens[i] == EOD).nonzero().flatten().tolist()
        prev = 0
        for j in eods:
            if reset_attention_mask:
                mask[i, j + 1 :, : j + 1] = False
            if reset_position_ids:
                pos[i, j + 1 :] -= j + 1 - prev
                prev = j + 1
    return loss_mask, pos, mask


def test_matches_megatron_reference_on_random_batches():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        tokens = torch.randint(0, 4, (3, 17), generator=g)
        for flags in [(True, True, True), (False, False, False), (True, False, True), (False, True, False)]:
            loss, pos, doc = get_ltor_masks_and_position_ids(tokens, EOD, *flags)
            ref_loss, ref_pos, ref_mask = megatron_reference(tokens, *flags)
            torch.testing.assert_close(loss, ref_loss)
            assert torch.equal(pos, ref_pos) and pos.dtype == torch.long
            if flags[1]:
                assert torch.equal(document_causal_mask(doc)[:, 0], ref_mask)
            else:
                assert doc is None


def test_documents_position_ids_and_boundaries():
    tokens = torch.tensor([[5, 6, EOD, 7, 8, 9, EOD, 3], [EOD, 1, 2, 3, 4, 5, 6, 7]])
    loss, pos, doc = get_ltor_masks_and_position_ids(tokens, EOD, True, True, True)
    assert pos.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 0, 1, 2, 3, 4, 5, 6]]
    assert doc.tolist() == [[0, 0, 0, 1, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1, 1, 1]]
    assert loss.tolist()[0] == [1, 1, 0, 1, 1, 1, 0, 1]
    cu, max_len = cu_seqlens(doc)
    assert cu.tolist() == [0, 3, 7, 8, 9, 16] and cu.dtype == torch.int32 and max_len == 7
    mask = document_causal_mask(doc)
    assert mask.shape == (2, 1, 8, 8) and not mask[0, 0, 3, 2] and mask[0, 0, 5, 3] and not mask[0, 0, 3, 4]
