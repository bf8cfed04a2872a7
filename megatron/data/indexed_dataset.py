"""Megatron's memory-mapped token format: ``{prefix}.bin`` + ``{prefix}.idx``.

Byte-compatible in both directions with Megatron-LM (``megatron/core/datasets/indexed_dataset.py``)
and Megatron-DeepSpeed, so corpora preprocessed by either train here and ours train there.

``.bin`` holds the tokens of every sequence back to back in one dtype. ``.idx`` (little endian):

    b"MMIDIDX\\x00\\x00"  magic, 9 bytes
    <Q  version (1)
    <B  dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16)
    <Q  sequence count S
    <Q  document count D (= number of documents + 1)
    int32[S] sequence lengths in tokens
    int64[S] byte offset of each sequence in .bin
    int64[D] document index: sequence number where each document starts, then S

GPT data has one sequence per document. The reader maps both files (zero copy) and checks
at open that they agree, so a truncated or mismatched pair fails with one clear message
instead of yielding garbage tokens. The writer writes under temporary names and renames on
``finalize``, so an interrupted run never leaves a pair that looks whole.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

import numpy as np

from megatron.data.errors import DataError

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
_HEADER_BYTES = len(INDEX_HEADER) + 8 + 1 + 8 + 8  # magic, version, dtype, S, D

DTYPE_CODES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


class IndexedDatasetError(DataError):
    """A .bin/.idx pair that cannot be read or written; the message names the file and the fix."""


def data_file_path(prefix: str) -> str:
    return prefix + ".bin"


def index_file_path(prefix: str) -> str:
    return prefix + ".idx"


def best_fitting_dtype(vocab_size: int | None) -> type:
    """uint16 when every id fits (Megatron's rule: vocab < 65500), else int32."""
    if vocab_size is not None and vocab_size < 65500:
        return np.uint16
    return np.int32


def check_vocab_fits(vocab_size: int, dtype) -> None:
    """Raise if token ids up to ``vocab_size - 1`` cannot be stored in ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        raise IndexedDatasetError(f"token dtype {dtype} is not an integer type; use uint16 or int32")
    if vocab_size - 1 > np.iinfo(dtype).max:
        raise IndexedDatasetError(
            f"a vocabulary of {vocab_size} ids does not fit {dtype} (max id {np.iinfo(dtype).max}); "
            f"use --dtype int32 or a smaller vocabulary"
        )


def dataset_exists(prefix: str) -> bool:
    return os.path.exists(index_file_path(prefix)) and os.path.exists(data_file_path(prefix))


class IndexWriter:
    """Streams token sequences into ``{prefix}.bin`` and writes ``{prefix}.idx`` on ``finalize``.

    Files are written as ``{name}.tmp-{pid}`` and renamed only when both are complete;
    ``abort`` removes them. Use as a context manager to get abort-on-exception.
    """

    def __init__(self, prefix: str, dtype=np.int32, vocab_size: int | None = None):
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        if self.dtype not in _CODE_OF:
            raise IndexedDatasetError(f"dtype {self.dtype} has no Megatron dtype code")
        self._max_id = np.iinfo(self.dtype).max if self.dtype.kind in "iu" else None
        if vocab_size is not None:
            check_vocab_fits(vocab_size, self.dtype)
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        self._tmp_bin = f"{data_file_path(prefix)}.tmp-{os.getpid()}"
        self._tmp_idx = f"{index_file_path(prefix)}.tmp-{os.getpid()}"
        self._bin = open(self._tmp_bin, "wb")
        self._sizes: list = []
        self._doc_idx: list = [0]
        self._closed = False

    def add_document(self, tokens, sequence_lengths: Iterable[int] | None = None) -> None:
        """Append one document (one sequence unless ``sequence_lengths`` splits it)."""
        arr = np.asarray(tokens)
        if arr.size and self._max_id is not None and (arr.max() > self._max_id or arr.min() < 0):
            bad = int(arr.max()) if arr.max() > self._max_id else int(arr.min())
            raise IndexedDatasetError(
                f"token id {bad} does not fit {self.dtype} while writing {self.prefix}; "
                "use a wider dtype (int32) or check the tokenizer"
            )
        self._bin.write(arr.astype(self.dtype, copy=False).tobytes(order="C"))
        if sequence_lengths is None:
            self._sizes.append(arr.size)
        else:
            lens = list(sequence_lengths)
            if sum(lens) != arr.size:
                raise IndexedDatasetError(f"sequence lengths sum to {sum(lens)} but the document has {arr.size} tokens")
            self._sizes.extend(lens)
        self._doc_idx.append(len(self._sizes))

    def add_documents(self, flat_tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append many one-sequence documents at once: ``flat_tokens`` split by ``lengths``."""
        flat = np.asarray(flat_tokens)
        if flat.size and self._max_id is not None and (flat.max() > self._max_id or flat.min() < 0):
            bad = int(flat.max()) if flat.max() > self._max_id else int(flat.min())
            raise IndexedDatasetError(
                f"token id {bad} does not fit {self.dtype} while writing {self.prefix}; "
                "use a wider dtype (int32) or check the tokenizer"
            )
        self._bin.write(flat.astype(self.dtype, copy=False).tobytes(order="C"))
        base = len(self._sizes)
        self._sizes.extend(np.asarray(lengths).tolist())
        self._doc_idx.extend(range(base + 1, len(self._sizes) + 1))

    def add_index(self, other_prefix: str) -> None:
        """Append every document of another dataset (same dtype), copying its .bin bytes."""
        other = MMapIndexedDataset(other_prefix)
        if other.dtype != self.dtype:
            raise IndexedDatasetError(
                f"{other_prefix} stores {other.dtype} but the output stores {self.dtype}; merge datasets of one dtype"
            )
        base = len(self._sizes)
        self._sizes.extend(other.sizes.tolist())
        self._doc_idx.extend((other.doc_idx[1:] + base).tolist())
        with open(data_file_path(other_prefix), "rb") as f:
            while chunk := f.read(64 << 20):
                self._bin.write(chunk)
        other.close()

    def finalize(self) -> None:
        """Write the index and atomically publish both files."""
        self._bin.close()
        sizes = np.asarray(self._sizes, dtype=np.int32)
        pointers = np.zeros(len(sizes), dtype=np.int64)
        if len(sizes) > 1:
            np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_idx = np.asarray(self._doc_idx, dtype=np.int64)
        with open(self._tmp_idx, "wb") as f:
            f.write(INDEX_HEADER)
            f.write(struct.pack("<Q", INDEX_VERSION))
            f.write(struct.pack("<B", _CODE_OF[self.dtype]))
            f.write(struct.pack("<Q", len(sizes)))
            f.write(struct.pack("<Q", len(doc_idx)))
            f.write(sizes.tobytes(order="C"))
            f.write(pointers.tobytes(order="C"))
            f.write(doc_idx.tobytes(order="C"))
        # .bin first: a reader only opens a pair whose .idx exists.
        os.replace(self._tmp_bin, data_file_path(self.prefix))
        os.replace(self._tmp_idx, index_file_path(self.prefix))
        self._closed = True

    def abort(self) -> None:
        """Close and delete the temporary files; nothing is published."""
        if not self._bin.closed:
            self._bin.close()
        for p in (self._tmp_bin, self._tmp_idx):
            if os.path.exists(p):
                os.remove(p)
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and not self._closed:
            self.abort()
        return False


def _read_index(path: str):
    """Parse and validate an .idx file; returns (dtype, sizes, pointers, doc_idx, mmap)."""
    if not os.path.exists(path):
        raise IndexedDatasetError(f"{path} does not exist; check --data-path (give the prefix without .bin/.idx)")
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(_HEADER_BYTES)
    if len(head) < _HEADER_BYTES or head[: len(INDEX_HEADER)] != INDEX_HEADER:
        raise IndexedDatasetError(
            f"{path} is not a Megatron mmap index (bad magic or truncated header); re-run tools/preprocess_data.py"
        )
    off = len(INDEX_HEADER)
    (version,) = struct.unpack_from("<Q", head, off)
    (code,) = struct.unpack_from("<B", head, off + 8)
    (seq_count,) = struct.unpack_from("<Q", head, off + 9)
    (doc_count,) = struct.unpack_from("<Q", head, off + 17)
    if version != INDEX_VERSION:
        raise IndexedDatasetError(f"{path} has index version {version}; only version 1 is supported")
    if code not in DTYPE_CODES:
        raise IndexedDatasetError(f"{path} has unknown dtype code {code}")
    expected = _HEADER_BYTES + seq_count * (4 + 8) + doc_count * 8
    # Megatron-LM's multimodal indices append one int8 mode per sequence; the modes are ignored.
    if file_size != expected and file_size != expected + seq_count:
        raise IndexedDatasetError(
            f"{path} is {file_size} bytes but its header ({seq_count} sequences, {doc_count} document entries) "
            f"needs {expected}; the file is truncated or corrupt, re-run preprocessing"
        )
    mm = np.memmap(path, mode="r", dtype=np.uint8)
    sizes = np.frombuffer(mm, dtype=np.int32, count=seq_count, offset=_HEADER_BYTES)
    pointers = np.frombuffer(mm, dtype=np.int64, count=seq_count, offset=_HEADER_BYTES + sizes.nbytes)
    doc_idx = np.frombuffer(mm, dtype=np.int64, count=doc_count, offset=_HEADER_BYTES + sizes.nbytes + pointers.nbytes)
    if doc_count < 1 or doc_idx[0] != 0 or doc_idx[-1] != seq_count or np.any(np.diff(doc_idx) < 0):
        raise IndexedDatasetError(f"{path} has an inconsistent document index; re-run preprocessing")
    if seq_count and (sizes.min() < 0):
        raise IndexedDatasetError(f"{path} has negative sequence lengths; the file is corrupt")
    return np.dtype(DTYPE_CODES[code]), sizes, pointers, doc_idx, mm


class MMapIndexedDataset:
    """Zero-copy reader: ``ds[i]`` is a read-only numpy view of sequence ``i``.

    ``get(i, offset, length)`` reads part of a sequence; ``sizes`` and ``doc_idx`` are the
    index arrays (also views of the mapped .idx file).
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.dtype, self.sizes, self.pointers, self.doc_idx, self._idx_mm = _read_index(index_file_path(prefix))
        bin_path = data_file_path(prefix)
        if not os.path.exists(bin_path):
            raise IndexedDatasetError(f"{bin_path} does not exist next to its .idx; copy both files of the pair")
        need = int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize if len(self.sizes) else 0
        have = os.path.getsize(bin_path)
        if have != need:
            raise IndexedDatasetError(
                f"{bin_path} is {have} bytes but {index_file_path(prefix)} describes {need}; "
                "the pair is truncated or mismatched, re-run preprocessing"
            )
        if len(self.sizes):
            expect_ptr = np.zeros(len(self.sizes), dtype=np.int64)
            np.cumsum(self.sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=expect_ptr[1:])
            if not np.array_equal(expect_ptr, self.pointers):
                raise IndexedDatasetError(f"{index_file_path(prefix)} has pointers that do not match its sizes")
        self._bin_mm = np.memmap(bin_path, mode="r", dtype=np.uint8) if have else np.zeros(0, np.uint8)
        self.tokens = np.frombuffer(self._bin_mm, dtype=self.dtype) if have else np.zeros(0, self.dtype)

    def __getstate__(self):  # DataLoader workers (spawn) re-map the files instead of copying them
        return {"prefix": self.prefix}

    def __setstate__(self, state):
        self.__init__(state["prefix"])

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, idx: int) -> np.ndarray:
        start = int(self.pointers[idx]) // self.dtype.itemsize
        return self.tokens[start : start + int(self.sizes[idx])]

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of sequence ``idx`` (to its end when length is None)."""
        start = int(self.pointers[idx]) // self.dtype.itemsize + offset
        if length is None:
            length = int(self.sizes[idx]) - offset
        return self.tokens[start : start + length]

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)

    def close(self) -> None:
        self.tokens = None
        self._bin_mm = None
        self._idx_mm = None
