"""The .bin/.idx format: exact Megatron bytes, zero-copy reads, and clear errors on bad pairs."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from megatron.data.indexed_dataset import IndexedDatasetError, IndexWriter, MMapIndexedDataset, check_vocab_fits

DOCS = [[5, 6, 7], [1], [300, 2, 9, 4]]


def megatron_index_bytes(sizes, dtype_code, itemsize, doc_idx) -> bytes:
    """The .idx bytes written by hand from Megatron-LM's format spec."""
    out = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", dtype_code)
    out += struct.pack("<Q", len(sizes)) + struct.pack("<Q", len(doc_idx))
    out += b"".join(struct.pack("<i", s) for s in sizes)
    pointers, p = [], 0
    for s in sizes:
        pointers.append(p)
        p += s * itemsize
    out += b"".join(struct.pack("<q", x) for x in pointers)
    out += b"".join(struct.pack("<q", d) for d in doc_idx)
    return out


def test_reader_reads_hand_written_megatron_bytes(tmp_path):
    prefix = str(tmp_path / "m")
    with open(prefix + ".idx", "wb") as f:
        f.write(megatron_index_bytes([3, 1, 4], 8, 2, [0, 1, 2, 3]))
    with open(prefix + ".bin", "wb") as f:
        f.write(b"".join(struct.pack("<H", t) for d in DOCS for t in d))
    ds = MMapIndexedDataset(prefix)
    assert ds.dtype == np.uint16 and len(ds) == 3
    assert [ds[i].tolist() for i in range(3)] == DOCS
    assert ds.get(2, 1, 2).tolist() == [2, 9]
    assert ds.doc_idx.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("dtype,code", [(np.uint16, 8), (np.int32, 4), (np.int64, 5), (np.uint8, 1)])
def test_writer_bytes_equal_megatron_layout(tmp_path, dtype, code):
    prefix = str(tmp_path / "w")
    docs = DOCS if dtype != np.uint8 else [[5, 6, 7], [1], [200, 2, 9, 4]]
    with IndexWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(d)
        w.finalize()
    itemsize = np.dtype(dtype).itemsize
    assert open(prefix + ".idx", "rb").read() == megatron_index_bytes([3, 1, 4], code, itemsize, [0, 1, 2, 3])
    assert open(prefix + ".bin", "rb").read() == np.concatenate([np.array(d, dtype) for d in docs]).tobytes()


def test_multi_sequence_documents_and_zero_copy(tmp_path):
    prefix = str(tmp_path / "s")
    with IndexWriter(prefix, np.int32) as w:
        w.add_document([1, 2, 3, 4, 5], sequence_lengths=[2, 3])
        w.add_documents(np.array([7, 8, 9]), np.array([1, 2]))
        w.finalize()
    ds = MMapIndexedDataset(prefix)
    assert ds.sizes.tolist() == [2, 3, 1, 2] and ds.doc_idx.tolist() == [0, 2, 3, 4]
    view = ds[1]
    assert view.tolist() == [3, 4, 5] and not view.flags.writeable and not view.flags.owndata


def test_pickle_reopens_instead_of_copying(tmp_path):
    import pickle

    prefix = str(tmp_path / "p")
    with IndexWriter(prefix, np.uint16) as w:
        w.add_document(list(range(5000)))
        w.finalize()
    ds = MMapIndexedDataset(prefix)
    blob = pickle.dumps(ds)
    assert len(blob) < 500 and pickle.loads(blob)[0].tolist() == list(range(5000))


def test_truncated_bin_is_detected_at_open(tmp_path):
    prefix = str(tmp_path / "t")
    with IndexWriter(prefix, np.uint16) as w:
        w.add_document(list(range(100)))
        w.finalize()
    with open(prefix + ".bin", "r+b") as f:
        f.truncate(150)
    with pytest.raises(IndexedDatasetError, match="truncated or mismatched"):
        MMapIndexedDataset(prefix)


def test_truncated_idx_and_bad_magic_are_detected(tmp_path):
    prefix = str(tmp_path / "t")
    with IndexWriter(prefix, np.uint16) as w:
        w.add_document([1, 2, 3])
        w.finalize()
    data = open(prefix + ".idx", "rb").read()
    open(prefix + ".idx", "wb").write(data[:-4])
    with pytest.raises(IndexedDatasetError, match="truncated or corrupt"):
        MMapIndexedDataset(prefix)
    open(prefix + ".idx", "wb").write(b"NOTMEGA" + data[7:])
    with pytest.raises(IndexedDatasetError, match="bad magic"):
        MMapIndexedDataset(prefix)


def test_mismatched_pair_is_detected(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for p, docs in ((a, [[1, 2, 3], [4]]), (b, [[1, 2, 3, 4, 5]])):
        with IndexWriter(p, np.uint16) as w:
            for d in docs:
                w.add_document(d)
            w.finalize()
    os.replace(b + ".idx", a + ".idx")  # an .idx from another run next to this .bin
    with pytest.raises(IndexedDatasetError, match="mismatched"):
        MMapIndexedDataset(a)


def test_missing_files_name_the_fix(tmp_path):
    with pytest.raises(IndexedDatasetError, match="does not exist"):
        MMapIndexedDataset(str(tmp_path / "nothing"))


def test_vocab_that_does_not_fit_dtype(tmp_path):
    with pytest.raises(IndexedDatasetError, match="does not fit uint16"):
        check_vocab_fits(70000, np.uint16)
    prefix = str(tmp_path / "v")
    with pytest.raises(IndexedDatasetError, match="does not fit uint8"):
        with IndexWriter(prefix, np.uint8) as w:
            w.add_document([1, 300])
    assert os.listdir(tmp_path) == []


def test_abort_leaves_nothing(tmp_path):
    prefix = str(tmp_path / "x")
    with pytest.raises(RuntimeError):
        with IndexWriter(prefix, np.uint16) as w:
            w.add_document([1, 2])
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def test_data_errors_are_config_errors():
    """Entry points print ConfigError as one line with a non-zero exit; data errors get the same treatment."""
    from megatron.config import ConfigError
    from megatron.data.errors import DataError
    from megatron.data.preprocess import PreprocessError
    from megatron.tokenizer import TokenizerError

    for cls in (DataError, IndexedDatasetError, PreprocessError, TokenizerError):
        assert issubclass(cls, ConfigError)
