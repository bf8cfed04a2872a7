"""This rank's micro batches: Megatron's sample order, the packed-document masks, and the
sequence-parallel slice.

Every rank of a data-parallel group reads the same samples (``megatron.data.sampler``); each SP
rank then keeps its contiguous slice ``[sp_rank * S/SP, (sp_rank + 1) * S/SP)`` of every
sequence. Shapes: b micro batch, S full sequence, s = S / SP this rank's slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from megatron.config import Config, ModelConfig
from megatron.data.sampler import micro_batch_indices
from megatron.training import metrics


@dataclass
class Batch:
    """This rank's slice of one micro batch. ``document_ids`` covers the full sequence;
    ``square_sum`` is its documents' squared lengths summed (b x S² without documents) and
    ``window_pairs`` {window: pairs attended} for the model's sliding windows with packed documents
    (empty without documents), for the model FLOPs (``metrics.model_flops``)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    document_ids: torch.Tensor | None
    square_sum: int
    window_pairs: dict = field(default_factory=dict)


def check_token_ids(tokens: torch.Tensor, indices: list, model: ModelConfig) -> None:
    """Stop on a token id the embedding and the loss have no row for (data tokenized with a larger
    vocabulary). Checked on the host, before the copy to the GPU: no synchronization, and no
    device-side assert or silently masked label later."""
    rows = model.padded_vocab_size
    top = int(tokens.max()) if tokens.numel() else 0
    if top >= rows:
        from megatron.data.errors import DataError

        sample = indices[int((tokens >= rows).any(dim=1).nonzero()[0])]
        raise DataError(
            f"token id {top} in sample {sample} of the data is outside the model's vocabulary ({rows} rows: "
            f"vocabulary {model.vocab_size} padded to a multiple of "
            f"{model.make_vocab_size_divisible_by}); the data was tokenized with a larger vocabulary: "
            "train with that tokenizer (or its --vocab-size), or preprocess the data again with this one"
        )


class BatchBuilder:
    """Builds this rank's micro batches of a step from a dataset of ``{"tokens": [S + 1]}`` samples."""

    def __init__(
        self, cfg: Config, eod_token: int | None, device: torch.device, sp_rank: int, dp_rank: int, dp_size: int
    ):
        self.cfg, self.eod, self.device = cfg, eod_token, device
        self.sp, self.sp_rank = cfg.parallel.sequence_parallel_size, sp_rank
        self.dp_rank, self.dp = dp_rank, dp_size

    def of_step(self, dataset, step: int, num_micro: int) -> list:
        """The ``num_micro`` micro batches of step ``step`` of ``dataset`` (from its first sample)."""
        t = self.cfg.train
        start = step * t.global_batch_size
        return [
            self.make(dataset, micro_batch_indices(start, m, t.micro_batch_size, self.dp_rank, self.dp))
            for m in range(num_micro)
        ]

    def make(self, dataset, indices: list) -> Batch:
        """This rank's SP slice of the samples ``indices``, on the device."""
        tokens = torch.from_numpy(np.stack([dataset[i]["tokens"] for i in indices])).long()
        check_token_ids(tokens, indices, self.cfg.model)
        input_ids, labels = tokens[:, :-1], tokens[:, 1:]
        d = self.cfg.data
        if self.eod is not None and (d.reset_position_ids or d.reset_attention_mask or d.eod_mask_loss):
            from megatron.data.packing import get_ltor_masks_and_position_ids

            loss_mask, position_ids, document_ids = get_ltor_masks_and_position_ids(
                input_ids, self.eod, d.reset_position_ids, d.reset_attention_mask, d.eod_mask_loss
            )
        else:
            loss_mask = torch.ones_like(input_ids, dtype=torch.float32)
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
            document_ids = None
        S = input_ids.shape[1]
        s = S // self.sp
        sl = slice(self.sp_rank * s, (self.sp_rank + 1) * s)
        # pinned: the copy is queued behind the device's work instead of waiting for it (a batch is prepared
        # while the previous step still runs)
        if self.device.type == "cuda":
            to = lambda x: x.pin_memory().to(self.device, non_blocking=True)  # noqa: E731
        else:
            to = lambda x: x.to(self.device)  # noqa: E731
        return Batch(
            to(input_ids[:, sl].contiguous()),
            to(labels[:, sl].contiguous()),
            to(loss_mask[:, sl].contiguous()),
            to(position_ids[:, sl].contiguous()),
            None if document_ids is None else to(document_ids),
            metrics.document_square_sum(document_ids) if document_ids is not None else input_ids.numel() * S,
            metrics.window_pairs_of_documents(self.cfg.model, document_ids) if document_ids is not None else {},
        )
