"""bench/attention.py's FLOP count and packed-document ids (CPU; the timings need a GPU)."""

import importlib.util

import torch

from megatron.model.attention import classic_attention
from tests.launch import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "bench/attention.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flops_count_only_each_documents_causal_half():
    bench = _bench()
    # b=2, h=3, s=10, d=8: the causal half of s*s, forward 2 GEMMs of 2 FLOPs per multiply-add.
    assert bench.causal_flops(2, 3, 10, 8, backward=False) == 4 * 2 * 3 * 10 * 10 * 8 / 2
    assert bench.causal_flops(2, 3, 10, 8, backward=True) == 3.5 * 4 * 2 * 3 * 10 * 10 * 8 / 2
    # Documents of 4 tokens in 10: 4 + 4 + 2 tokens, so 16 + 16 + 4 squared lengths instead of 100.
    assert bench.causal_flops(2, 3, 10, 8, backward=False, doc_len=4) == 4 * 2 * 3 * 36 * 8 / 2
    # A document as long as the sequence is the plain causal case.
    assert bench.causal_flops(1, 1, 10, 8, False, doc_len=10) == bench.causal_flops(1, 1, 10, 8, False)


def test_document_ids_are_the_masks_the_model_applies():
    bench = _bench()
    assert bench.document_ids_for(2, 10, 0, device="cpu") is None
    ids = bench.document_ids_for(2, 10, 4, device="cpu")
    assert ids.shape == (2, 10) and ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    # Attention with these ids equals attention run on each document alone.
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 10, 2, 8, dtype=torch.float64, generator=gen) for _ in range(3))
    packed = classic_attention(q, k, v, document_ids=ids)
    for lo, hi in ((0, 4), (4, 8), (8, 10)):
        alone = classic_attention(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi])
        torch.testing.assert_close(packed[:, lo:hi], alone)
