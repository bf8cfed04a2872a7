"""bench/attention.py's FLOP count, packed-document ids and sliding-window arguments (CPU; the timings need a GPU)."""

import importlib.util

import pytest
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


def test_window_flops_count_the_attended_pairs():
    bench = _bench()
    from megatron.training.metrics import attended_pairs

    # b=2, h=3, s=10, d=8, window 4: queries 0..3 see 1..4 keys, the other 6 see 4 each.
    assert bench.causal_flops(2, 3, 10, 8, False, window=4) == 4 * 2 * 3 * (10 + 6 * 4) * 8
    assert bench.causal_flops(2, 3, 10, 8, True, window=4) == 3.5 * 4 * 2 * 3 * (10 + 6 * 4) * 8
    # With documents of 4 tokens (4 + 4 + 2) and window 3: 6 + 3 pairs, twice, and 3.
    assert bench.causal_flops(1, 1, 10, 8, False, doc_len=4, window=3) == 4 * (9 + 9 + 3) * 8
    assert bench.causal_flops(1, 1, 131072, 128, False, window=4096) == 4 * attended_pairs(131072, 4096) * 128


def test_window_arguments_and_plan(capsys):
    bench = _bench()
    bench.main(["--window", "4096", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["seq 32768", "seq 65536", "seq 131072"]  # 32k-128k by default
    assert all(", window 4096, " in line and "impls ['triton', 'sdpa', 'triton_full']" in line for line in lines)
    bench.main(["--window", "512", "--seqs", "4096", "--impls", "triton,flash_attn", "--dry-run"])
    assert "seq 4096: batch 4, heads 16, window 512" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--window must be >= 0"):
        bench.main(["--window", "-1", "--dry-run"])
    assert bench.impl_window("triton", 4096) == 4096 and bench.impl_window("triton_full", 4096) is None
    assert bench.impl_window("sdpa", 0) is None


def test_window_impls_are_the_masks_the_model_applies():
    """sdpa with --window is the model's SDPA path with the window (classic's result); SDPA's own kernels cannot
    take it and say so."""
    bench = _bench()
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 24, 2, 8, dtype=torch.float64, generator=gen) for _ in range(3))
    torch.testing.assert_close(bench.make_attention("sdpa", window=5)(q, k, v), classic_attention(q, k, v, window=5))
    with pytest.raises(ValueError, match="sdpa_flash takes no window mask"):
        bench.make_attention("sdpa_flash", window=5)


def test_sdpa_lse_impl_equals_sdpa_with_grouped_query_attention():
    """The sdpa_lse impl (the sdpa backend's log-sum-exp forward and backward under autograd) gives SDPA's output
    and gradients, here on the CPU's flash kernel with 4 query heads per K/V head."""
    bench = _bench()
    torch.manual_seed(0)
    q = torch.randn(1, 32, 8, 16, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, 32, 2, 16, dtype=torch.float64, requires_grad=True) for _ in range(2))
    dout = torch.randn(1, 32, 8, 16, dtype=torch.float64)
    got = bench.make_attention("sdpa_lse")(q, k, v)
    got_grads = torch.autograd.grad(got, (q, k, v), dout)
    want = bench.make_attention("sdpa")(q, k, v)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, torch.autograd.grad(want, (q, k, v), dout)):
        torch.testing.assert_close(a, b)


def test_kv_heads_must_divide_heads():
    with pytest.raises(SystemExit, match="--kv-heads must divide --heads"):
        _bench().main(["--heads", "32", "--kv-heads", "5", "--dry-run"])
