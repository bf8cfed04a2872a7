"""Packed documents: loss mask, position ids and per-document boundaries of a batch.

A training sample packs several documents separated by the eod token. With
``--reset-position-ids`` positions restart after every eod; with ``--reset-attention-mask``
a token attends only to earlier tokens of its own document. Instead of Megatron's dense
``[b, 1, s, s]`` mask we return ``document_ids`` (0,0,0,1,1,2,...), from which each attention
backend builds what it needs: ``document_causal_mask`` (classic/SDPA) or ``cu_seqlens``
(variable-length flash kernels). The eod token belongs to the document it ends.

Shape legend: b = batch, s = sequence, t = total tokens (b * s).
"""

from __future__ import annotations

import torch


def get_ltor_masks_and_position_ids(
    tokens_bs: torch.Tensor,
    eod: int,
    reset_position_ids: bool,
    reset_attention_mask: bool,
    eod_mask_loss: bool,
) -> tuple:
    """(loss_mask float [b,s], position_ids long [b,s], document_ids long [b,s] or None)."""
    b, s = tokens_bs.shape
    device = tokens_bs.device
    loss_mask_bs = torch.ones((b, s), dtype=torch.float, device=device)
    is_eod_bs = tokens_bs == eod
    if eod_mask_loss:
        loss_mask_bs[is_eod_bs] = 0.0
    arange_s = torch.arange(s, dtype=torch.long, device=device)
    position_ids_bs = arange_s.unsqueeze(0).expand(b, s).clone()
    if reset_position_ids:
        # start of the document holding token i = 1 + index of the last eod before i (exclusive)
        after_eod_bs = torch.where(is_eod_bs, arange_s + 1, torch.zeros_like(arange_s))
        after_eod_bs = torch.nn.functional.pad(after_eod_bs[:, :-1], (1, 0))
        doc_start_bs = torch.cummax(after_eod_bs, dim=1).values
        position_ids_bs = position_ids_bs - doc_start_bs
    document_ids_bs = None
    if reset_attention_mask:
        eods_bs = is_eod_bs.long()
        document_ids_bs = torch.cumsum(eods_bs, dim=1) - eods_bs
    return loss_mask_bs, position_ids_bs, document_ids_bs


def document_causal_mask(document_ids_bs: torch.Tensor) -> torch.Tensor:
    """Boolean ``[b, 1, s, s]``, True where query q may attend key k (k <= q, same document)."""
    s = document_ids_bs.shape[1]
    causal_ss = torch.ones((s, s), dtype=torch.bool, device=document_ids_bs.device).tril()
    same_bss = document_ids_bs.unsqueeze(2) == document_ids_bs.unsqueeze(1)
    return (same_bss & causal_ss).unsqueeze(1)


def cu_seqlens(document_ids_bs: torch.Tensor) -> tuple:
    """Cumulative document lengths over the flattened batch (int32 ``[n_docs + 1]``) and the max length.

    The layout variable-length attention kernels take: document j is tokens
    ``cu[j]:cu[j+1]`` of ``tokens.view(-1)``; documents never span two samples.
    """
    b, s = document_ids_bs.shape
    # a new document starts at position 0 of every sample and wherever the id changes
    starts_bs = torch.ones_like(document_ids_bs, dtype=torch.bool)
    starts_bs[:, 1:] = document_ids_bs[:, 1:] != document_ids_bs[:, :-1]
    start_t = torch.nonzero(starts_bs.reshape(-1)).squeeze(1)
    cu = torch.cat([start_t, torch.tensor([b * s], device=start_t.device)]).to(torch.int32)
    max_len: int | None = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    return cu, max_len
