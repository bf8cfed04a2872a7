"""``--mock-data``: a deterministic synthetic token stream for tests and benchmarks.

Sample ``i`` depends only on ``(seed, i)``, never on the SP/DP layout, so runs with different
parallel layouts see identical data. The stream is learnable (a sparse random Markov chain:
each token has ``branching`` likely successors), so the loss visibly drops from ln(V)
towards ln(branching).

``document_length`` N > 0 (``--mock-document-length``) packs documents: every N-th token of a
sample (positions N-1, 2N-1, ...) is the end-of-document id ``vocab_size - 1``, which appears
nowhere else, so ``--reset-position-ids``, ``--reset-attention-mask`` and ``--eod-mask-loss`` have
documents to act on. With N = 0 the stream is the one it always was.
"""

from __future__ import annotations

import numpy as np


class MockGPTDataset:
    def __init__(
        self,
        seq_length: int,
        vocab_size: int,
        seed: int,
        num_samples: int = 2**62,
        branching: int = 4,
        document_length: int = 0,
    ):
        if document_length < 0:
            raise ValueError(f"document_length must be >= 0, got {document_length}")
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.seed = seed
        self.num_samples = num_samples
        self.document_length = document_length
        self.eod = vocab_size - 1 if document_length else None
        table_rng = np.random.default_rng([seed, 0x5EED])
        self._token_high = vocab_size - 1 if document_length else vocab_size  # the chain never emits the EOD id
        self.successors = table_rng.integers(0, self._token_high, size=(vocab_size, branching), dtype=np.int64)
        self.branching = branching

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < self.num_samples:
            raise IndexError(idx)
        rng = np.random.default_rng([self.seed, 1, int(idx)])
        n = self.seq_length + 1
        choice = rng.integers(0, self.branching, size=n)
        tokens = np.empty(n, dtype=np.int64)
        tokens[0] = rng.integers(0, self._token_high)
        succ = self.successors
        for j in range(1, n):
            tokens[j] = succ[tokens[j - 1], choice[j]]
        if self.document_length:
            tokens[self.document_length - 1 :: self.document_length] = self.eod
        return {"tokens": tokens}
