"""--mock-document-length: the synthetic stream with packed documents, and the checks around it."""

import pytest

from megatron.arguments import parse_args
from megatron.config import ConfigError
from megatron.data.mock import MockGPTDataset
from tests.launch import TINY_LLAMA, TRAIN, assert_close_records, train_records


def test_documents_end_every_n_tokens_with_an_id_used_nowhere_else():
    d = MockGPTDataset(63, 128, seed=7, document_length=10)
    assert d.eod == 127
    for i in range(50):
        tokens = d[i]["tokens"]
        assert len(tokens) == 64
        eod_at = [j for j, t in enumerate(tokens) if t == d.eod]
        assert eod_at == [9, 19, 29, 39, 49, 59], (i, eod_at)
        assert tokens.min() >= 0 and tokens.max() <= d.eod
    assert (d[3]["tokens"] == MockGPTDataset(63, 128, seed=7, document_length=10)[3]["tokens"]).all()


def test_without_documents_the_stream_is_unchanged():
    d = MockGPTDataset(16, 128, 7)
    assert d.eod is None
    # Pinned from the stream every earlier figure and test used (sample 5 starts with id 127).
    assert d[0]["tokens"].tolist() == [41, 102, 14, 6, 23, 27, 30, 11, 64, 114, 92, 88, 47, 62, 92, 108, 8]
    assert d[5]["tokens"][:8].tolist() == [127, 105, 37, 98, 99, 38, 47, 88]


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--mock-data", "--reset-attention-mask"], "--reset-attention-mask would do nothing"),
        (["--mock-data", "--eod-mask-loss", "--reset-position-ids"], "--reset-position-ids --eod-mask-loss would"),
        (["--mock-document-length", "8", "--data-path", "x"], "add --mock-data or drop it"),
        (["--mock-data", "--mock-document-length", "-1"], "must be >= 0"),
    ],
)
def test_inconsistent_document_flags_are_refused(flags, needle):
    with pytest.raises(ConfigError, match=needle.replace("-", r"\-")):
        parse_args([*TINY_LLAMA, *flags])


def test_documents_change_training_and_sp2_matches_sp1(tmp_path):
    """The masks are applied (the losses move) and Ulysses SP=2 gives the SP=1 losses with documents."""
    base = TINY_LLAMA + TRAIN + ["--train-iters", "3", "--zero-stage", "1", "--mock-document-length", "12"]
    docs = ["--reset-attention-mask", "--reset-position-ids", "--eod-mask-loss"]
    plain = train_records(tmp_path, "plain", 1, base + ["--attention-backend", "classic"])
    sp1 = train_records(tmp_path, "docs_sp1", 1, base + docs + ["--attention-backend", "classic"])
    sp2 = train_records(
        tmp_path, "docs_sp2", 2, base + docs + ["--attention-backend", "sdpa", "--ds-sequence-parallel-size", "2"]
    )
    assert_close_records(sp1, sp2, rtol=2e-5, grad_rtol=2e-4, what="documents SP=2 against SP=1")
    assert abs(plain[0]["lm_loss"] - sp1[0]["lm_loss"]) > 1e-3, (plain[0], sp1[0])
