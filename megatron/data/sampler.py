"""Which global sample indices each data-parallel rank reads, resumable at any sample.

Megatron's ``MegatronPretrainingSampler``: samples are consumed in order
``consumed_samples, consumed_samples + 1, ...``; each step of ``micro_batch_size x dp_size``
samples is cut into one micro batch per data-parallel rank. Restarting with the
``consumed_samples`` saved in a checkpoint continues at exactly the next sample. Ranks of one
sequence-parallel group share a data-parallel rank, so they read the same samples (and
each keeps its own slice of the sequence).
"""

from __future__ import annotations

from collections.abc import Iterator


def micro_batch_indices(start: int, micro: int, micro_batch_size: int, dp_rank: int, dp_size: int) -> list:
    """Global sample indices of ``dp_rank``'s micro batch number ``micro`` counted from sample
    ``start``: micro batch ``micro`` of all ranks together is samples
    ``start + micro * micro_batch_size * dp_size`` onwards, cut in rank order."""
    first = start + (micro * dp_size + dp_rank) * micro_batch_size
    return list(range(first, first + micro_batch_size))


class PretrainingSampler:
    def __init__(
        self,
        total_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        drop_last: bool = True,
    ):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"data-parallel rank {dp_rank} is outside [0, {dp_size})")
        if consumed_samples > total_samples:
            raise ValueError(f"consumed samples {consumed_samples} exceed the dataset's {total_samples}")
        self.total, self.consumed = total_samples, consumed_samples
        self.mbs, self.rank, self.size, self.drop_last = micro_batch_size, dp_rank, dp_size, drop_last

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[list]:
        full, rest = divmod(self.total - self.consumed, self.mbs * self.size)
        for micro in range(full):
            yield micro_batch_indices(self.consumed, micro, self.mbs, self.rank, self.size)
        if rest and not self.drop_last:  # the last, short micro batch: what is left of this rank's share
            yield [
                i for i in micro_batch_indices(self.consumed, full, self.mbs, self.rank, self.size) if i < self.total
            ]
