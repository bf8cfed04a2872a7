"""GPT-2 byte-level BPE in pure Python, from ``vocab.json`` + ``merges.txt``.

The same algorithm as OpenAI's ``encoder.py`` (and Megatron's ``gpt2_tokenization.py``):
text is split by the GPT-2 pre-tokenization regex, each piece's UTF-8 bytes are mapped to
printable unicode characters, and merges are applied by rank. No network, no Rust.
Words are cached, which makes natural text fast enough for multiprocess preprocessing.

The GPT-2 regex uses ``\\p{L}``/``\\p{N}``; with the ``regex`` package installed we use it
verbatim, otherwise Python's ``re`` with ``[^\\W\\d_]`` (letters) and ``\\d`` (decimal digits),
which agrees everywhere except rare numeric symbols such as superscripts.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

try:  # pragma: no cover - depends on the environment
    import regex as _re

    _PAT = _re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
except ImportError:  # pragma: no cover
    import re as _re

    _PAT = _re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


@lru_cache
def bytes_to_unicode() -> dict:
    """Map each byte to a printable unicode character (GPT-2's reversible byte alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_NO_MERGE = float("inf")


class GPT2BPE:
    """Encoder/decoder for one vocabulary; ``encode(text) -> list[int]``, ``decode(ids) -> str``."""

    def __init__(self, vocab_file: str, merge_file: str, errors: str = "replace"):
        for p, flag in ((vocab_file, "--vocab-file"), (merge_file, "--merge-file")):
            if not p or not os.path.exists(p):
                raise FileNotFoundError(f"{flag} {p!r} does not exist; give the GPT-2 vocab.json and merges.txt")
        with open(vocab_file, encoding="utf-8") as f:
            self.encoder: dict = json.load(f)
        self.decoder = {v: k for k, v in self.encoder.items()}
        with open(merge_file, encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        self.bpe_ranks = {m: i for i, m in enumerate(merges) if len(m) == 2}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.errors = errors
        self._ids_cache: dict = {}  # raw pre-token -> ids (the hot path)
        # latin-1 decoding turns each byte into the char of the same code point; translate maps it.
        self._byte_table = {b: self.byte_encoder[b] for b in range(256)}

    def bpe(self, token: str) -> tuple:
        """Apply merges to one pre-token (already in the byte alphabet); returns its pieces.

        Each round merges every occurrence, left to right, of the adjacent pair with the lowest
        merge rank (OpenAI's algorithm); ``encode`` caches the result per pre-token.
        """
        word = list(token)
        ranks = self.bpe_ranks
        while len(word) > 1:
            best, best_rank = -1, _NO_MERGE
            for i in range(len(word) - 1):
                r = ranks.get((word[i], word[i + 1]), _NO_MERGE)
                if r < best_rank:
                    best, best_rank = i, r
            if best < 0:
                break
            first, second = word[best], word[best + 1]
            merged, i, n = [], 0, len(word)
            while i < n:
                if i < n - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return tuple(word)

    def _encode_piece(self, piece: str) -> list:
        """Ids of one pre-token (cache miss path)."""
        mapped = piece.encode("utf-8").decode("latin-1").translate(self._byte_table)
        ids: list = []
        for sub in self.bpe(mapped):
            tid = self.encoder.get(sub)
            if tid is None:  # vocabulary without this merge result: fall back to bytes
                ids.extend(self.encoder[c] for c in sub)
            else:
                ids.append(tid)
        return ids

    def encode(self, text: str) -> list:
        ids: list = []
        cache = self._ids_cache
        for piece in _PAT.findall(text):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                piece_ids = self._encode_piece(piece)
                if len(cache) < 1_000_000:
                    cache[piece] = piece_ids
            ids += piece_ids
        return ids

    def decode(self, ids) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors=self.errors)
