"""Faults injected into a run on purpose, to test how it survives them.

One object carries them all and is passed in (``Trainer(..., faults=...)``,
``save_checkpoint(..., faults=...)``); the default, ``NO_FAULTS``, injects none. Iterations count
from 1, as the log does; ranks are global ranks. The fault tests build one from their own
command line (``tests/fault/faulty_pretrain.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DIE_EXIT_CODE = 17


@dataclass(frozen=True)
class FaultInjector:
    nonfinite_loss: frozenset = frozenset()
    """(iteration, rank) pairs: that rank's loss of that iteration is made NaN."""
    die_before_latest: tuple | None = None
    """(iteration, rank): that rank exits (code 17) right after writing its part of that
    iteration's checkpoint, before ``latest`` moves (a node lost mid-save)."""
    truncate_on_save: tuple | None = None
    """(iteration, rank): that rank's RNG shard of that iteration's checkpoint is cut to 16
    bytes after it is written (a full disk, a lost write)."""

    def poison_loss(self, iteration: int, rank: int) -> bool:
        """Whether ``rank``'s loss of ``iteration`` is to be made NaN."""
        return (iteration, rank) in self.nonfinite_loss

    def after_shards_written(self, iteration: int, rank: int, rng_path: str) -> None:
        """Called on every rank once it has written its part of the checkpoint of ``iteration``
        (``rng_path`` its RNG shard), before the ranks meet to verify it and move ``latest``."""
        if (iteration, rank) == self.die_before_latest:
            os._exit(DIE_EXIT_CODE)
        if (iteration, rank) == self.truncate_on_save:
            with open(rng_path, "r+b") as f:
                f.truncate(16)


NO_FAULTS = FaultInjector()
