"""megatron.kernels.flash_attention against an fp64 explicit-softmax reference: forward, dq, dk, dv.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), so shapes
are tiny but still cross block edges (interpreter blocks are 16) and end on odd lengths.
Legend: b batch, s seq, h query heads, g kv heads, d head dim.
"""

import math

import pytest
import torch

triton = pytest.importorskip("triton")

from megatron.kernels.interface import flash_attention, is_available  # noqa: E402 (after the Triton skip)

AVAILABLE, WHY = is_available()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=WHY)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference_attention(q_bshd, k_bsgd, v_bsgd, causal, scale, document_ids_bs=None, with_lse=False, window=None):
    """Explicit softmax in the inputs' dtype (call with fp64 tensors); with_lse: also the rows' logsumexp [b, h, q]
    of the masked scores (natural log); window W: query i sees key j only if i - j < W (with causal: the W keys
    ending at i)."""
    heads, kv_heads = q_bshd.shape[2], k_bsgd.shape[2]
    k_bshd = k_bsgd.repeat_interleave(heads // kv_heads, dim=2)
    v_bshd = v_bsgd.repeat_interleave(heads // kv_heads, dim=2)
    scores_bhqk = torch.einsum("bqhd,bkhd->bhqk", q_bshd, k_bshd) * scale
    seq = q_bshd.shape[1]
    keep_bqk = torch.ones(1, seq, seq, dtype=torch.bool, device=q_bshd.device)
    if causal:
        keep_bqk = keep_bqk & torch.ones(seq, seq, dtype=torch.bool, device=q_bshd.device).tril()
    if window is not None:
        pos = torch.arange(seq, device=q_bshd.device)
        keep_bqk = keep_bqk & (pos[:, None] - pos[None, :] < window)
    if document_ids_bs is not None:
        keep_bqk = keep_bqk & (document_ids_bs[:, :, None] == document_ids_bs[:, None, :])
    scores_bhqk = scores_bhqk.masked_fill(~keep_bqk[:, None], float("-inf"))
    probs_bhqk = torch.softmax(scores_bhqk, dim=-1)
    out_bqhd = torch.einsum("bhqk,bkhd->bqhd", probs_bhqk, v_bshd)
    return (out_bqhd, torch.logsumexp(scores_bhqk, dim=-1)) if with_lse else out_bqhd


def document_ids_of_lengths(lengths, bsz):
    """The same documents in every sample: ids 0, 1, ... in runs of the given lengths."""
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).expand(bsz, sum(lengths))


def random_document_ids(bsz, seq, gen):
    """Contiguous runs of increasing ids, as sequence packing produces."""
    ids = torch.zeros(bsz, seq, dtype=torch.long)
    for b in range(bsz):
        n_cuts = int(torch.randint(1, 4, (1,), generator=gen))
        cuts = torch.randint(1, seq, (n_cuts,), generator=gen)
        ids[b, cuts] = 1
        ids[b] = ids[b].cumsum(0) + 7 * b
    return ids


def rel_err(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check(
    bsz, seq, heads, kv_heads, head_dim, causal, dtype, use_docs, seed, tol, device=DEVICE, scale=None, window=None
):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(bsz, seq, heads, head_dim, generator=gen)
    k = torch.randn(bsz, seq, kv_heads, head_dim, generator=gen)
    v = torch.randn(bsz, seq, kv_heads, head_dim, generator=gen)
    dout = torch.randn(bsz, seq, heads, head_dim, generator=gen)
    if isinstance(use_docs, tuple):  # explicit document lengths, the same for every sample
        assert sum(use_docs) == seq
        docs = document_ids_of_lengths(use_docs, bsz)
    else:
        docs = random_document_ids(bsz, seq, gen) if use_docs else None
    scale_used = scale if scale is not None else 1.0 / math.sqrt(head_dim)

    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref = reference_attention(q64, k64, v64, causal, scale_used, docs, window=window)
    ref.backward(dout.double())

    qx, kx, vx = (t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v))
    out = flash_attention(
        qx,
        kx,
        vx,
        causal=causal,
        softmax_scale=scale,
        document_ids=None if docs is None else docs.to(device),
        window=window,
    )
    assert out.dtype == dtype and out.shape == q.shape
    out.backward(dout.to(device=device, dtype=dtype))
    for name, got, want in (
        ("out", out, ref),
        ("dq", qx.grad, q64.grad),
        ("dk", kx.grad, k64.grad),
        ("dv", vx.grad, v64.grad),
    ):
        got = got.detach().cpu()
        assert torch.isfinite(got).all(), f"{name} has non-finite values"
        err = rel_err(got, want.detach())
        assert err < tol, f"{name}: rel err {err:.2e} >= {tol}"


# (bsz, seq, heads, kv_heads, head_dim, causal, use_docs)
CASES = [
    (1, 16, 1, 1, 16, False, False),  # exactly one block
    (2, 37, 2, 2, 16, True, False),  # odd length, causal
    (1, 45, 4, 2, 32, False, False),  # odd length, GQA group 2, full
    (2, 33, 4, 1, 16, True, False),  # multi-query attention (group 4), causal
    (1, 50, 2, 1, 16, True, True),  # documents + causal + GQA
    (2, 41, 2, 2, 32, False, True),  # documents, not causal, odd length
    (1, 7, 2, 2, 16, True, False),  # shorter than one block
    # Documents longer than two blocks (16 on CPU): blocks wholly inside one document run unmasked,
    # those at its edges masked. Edges on and off block boundaries.
    (2, 80, 2, 1, 16, True, (37, 43)),
    (1, 96, 2, 2, 16, False, (32, 5, 59)),
    (1, 112, 4, 2, 32, True, (16, 48, 33, 15)),
]


@pytest.mark.parametrize("bsz,seq,heads,kv_heads,head_dim,causal,use_docs", CASES)
def test_matches_fp64_reference_fp32(bsz, seq, heads, kv_heads, head_dim, causal, use_docs):
    # fp32 on CPU (interpreter); on GPU fp32 dots run in tf32, hence the looser bound there.
    tol = 1e-4 if DEVICE == "cpu" else 5e-3
    check(bsz, seq, heads, kv_heads, head_dim, causal, torch.float32, use_docs, seed=seq * 31 + heads, tol=tol)


BF16_ON_CPU = pytest.mark.skipif(
    DEVICE == "cpu", reason="Triton's interpreter gets bf16 tl.dot wrong (seen with triton 3.9); GPU tests cover bf16"
)


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=BF16_ON_CPU)])
def test_half_precision_matches_reference(dtype):
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    check(1, 35, 4, 2, 32, True, dtype, True, seed=5, tol=tol)


def test_random_shapes_match_reference():
    """Seeded random sweep: lengths 1..70, GQA groups 1..4, both masks, with and without documents."""
    gen = torch.Generator().manual_seed(1234)
    for trial in range(8):
        kv_heads = int(torch.randint(1, 3, (1,), generator=gen))
        heads = kv_heads * int(torch.randint(1, 5, (1,), generator=gen))
        seq = int(torch.randint(1, 71, (1,), generator=gen))
        head_dim = (16, 32)[trial % 2]
        causal = bool(trial % 3)
        use_docs = seq > 1 and trial % 2 == 1
        tol = 1e-4 if DEVICE == "cpu" else 5e-3
        check(1 + trial % 2, seq, heads, kv_heads, head_dim, causal, torch.float32, use_docs, seed=trial, tol=tol)


def test_strided_views_of_packed_qkv_match_reference():
    """q, k, v sliced out of one [b, s, h + 2g, d] projection output (seq stride != heads * d)."""
    gen = torch.Generator().manual_seed(7)
    bsz, seq, heads, kv_heads, head_dim = 2, 29, 4, 2, 16
    qkv = torch.randn(bsz, seq, heads + 2 * kv_heads, head_dim, generator=gen)
    dout = torch.randn(bsz, seq, heads, head_dim, generator=gen)
    qkv64 = qkv.double().requires_grad_()
    q64, k64, v64 = qkv64.split([heads, kv_heads, kv_heads], dim=2)
    reference_attention(q64, k64, v64, True, head_dim**-0.5).backward(dout.double())

    qkv_x = qkv.to(DEVICE).requires_grad_()
    q, k, v = qkv_x.split([heads, kv_heads, kv_heads], dim=2)
    assert not q.is_contiguous()
    flash_attention(q, k, v, causal=True).backward(dout.to(DEVICE))
    tol = 1e-4 if DEVICE == "cpu" else 5e-3
    assert rel_err(qkv_x.grad.cpu(), qkv64.grad) < tol


def test_document_is_a_contiguous_run_of_ids():
    """An id that comes back after another document starts a new document (packing never does this)."""
    gen = torch.Generator().manual_seed(8)
    seq = 24
    ids = torch.tensor([[0] * 8 + [1] * 8 + [0] * 8])
    runs = torch.tensor([[0] * 8 + [1] * 8 + [2] * 8])
    q, k, v = (torch.randn(1, seq, 2, 16, generator=gen) for _ in range(3))
    out = flash_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), causal=False, document_ids=ids.to(DEVICE))
    ref = reference_attention(q.double(), k.double(), v.double(), False, 0.25, runs)
    assert rel_err(out.cpu(), ref) < (1e-4 if DEVICE == "cpu" else 5e-3)


def test_custom_softmax_scale():
    check(1, 20, 2, 1, 16, True, torch.float32, False, seed=11, tol=1e-4 if DEVICE == "cpu" else 5e-3, scale=0.3)


# Sliding windows (causal): query i sees key j iff 0 <= i - j < W. Interpreter blocks are 16.
# (bsz, seq, heads, kv_heads, head_dim, window, use_docs)
WINDOW_CASES = [
    (1, 33, 2, 2, 16, 2, False),  # itself and the key before
    (2, 70, 4, 2, 16, 5, False),  # smaller than a block, GQA
    (1, 64, 2, 2, 16, 16, False),  # exactly one block
    (1, 80, 4, 1, 32, 23, False),  # not a multiple of the block, multi-query attention
    (2, 96, 4, 2, 16, 32, False),  # two blocks
    (1, 40, 2, 1, 16, 39, False),  # one short of the sequence: every causal key but the first for the last query
    (1, 40, 2, 1, 16, 100, False),  # longer than the sequence: full causal
    (2, 80, 2, 1, 16, 20, (37, 43)),  # document edge off a block
    (1, 96, 4, 2, 16, 24, (32, 16, 48)),  # document edges on blocks
    (1, 64, 2, 2, 16, 40, (5, 11, 48)),  # window longer than the first documents, shorter than the last
    (2, 50, 2, 1, 16, 9, True),  # random documents
]


@pytest.mark.parametrize("bsz,seq,heads,kv_heads,head_dim,window,use_docs", WINDOW_CASES)
def test_window_matches_fp64_reference(bsz, seq, heads, kv_heads, head_dim, window, use_docs):
    tol = 1e-4 if DEVICE == "cpu" else 5e-3
    check(bsz, seq, heads, kv_heads, head_dim, True, torch.float32, use_docs, seed=seq + window, tol=tol, window=window)


def test_window_with_custom_softmax_scale():
    check(1, 48, 2, 1, 16, True, torch.float32, (20, 28), seed=12, tol=1e-4 if DEVICE == "cpu" else 5e-3, scale=0.7,
          window=11)  # fmt: skip


def test_blocks_outside_the_window_are_never_read():
    """NaN in key / value block 0 reaches no query whose window starts past it (a masked but visited block would
    give 0 * NaN = NaN in P V and in dQ), and NaN in the last query block reaches no key whose window ends before
    it (the dK/dV kernel): the kernels skip the blocks outside every window of a block, not only mask them."""
    seq, heads, kv_heads, head_dim, window, block = 96, 2, 1, 16, 20, 16
    if DEVICE != "cpu":
        pytest.skip("interpreter block sizes (16) are what the ranges below assume")
    gen = torch.Generator().manual_seed(3)
    q, dout = (torch.randn(1, seq, heads, head_dim, generator=gen) for _ in range(2))
    k, v = (torch.randn(1, seq, kv_heads, head_dim, generator=gen) for _ in range(2))

    def run(q, k, v, dout):
        q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
        out = flash_attention(q, k, v, window=window)
        out.backward(dout)
        return out.detach(), q.grad, k.grad, v.grad

    clean = run(q, k, v, dout)
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[:, :block] = v_bad[:, :block] = float("nan")
    out, dq, _, _ = run(q, k_bad, v_bad, dout)
    first = 3 * block  # query blocks from 48 on: windows start at 48 - 19 = 29 or later, past key block 0
    assert torch.isnan(out[:, block : block + 1]).all()  # queries that see the poisoned keys do get NaN
    for name, got, want in (("out", out, clean[0]), ("dq", dq, clean[1])):
        assert torch.isfinite(got[:, first:]).all(), f"{name}: a query block read key block 0"
        torch.testing.assert_close(got[:, first:], want[:, first:], rtol=1e-5, atol=1e-6)

    q_bad, dout_bad = q.clone(), dout.clone()
    q_bad[:, seq - block :] = dout_bad[:, seq - block :] = float("nan")
    _, _, dk, dv = run(q_bad, k, v, dout_bad)
    last = 3 * block  # key blocks before 48: the last key 47 is seen up to query 66, before query block 80
    for name, got, want in (("dk", dk, clean[2]), ("dv", dv, clean[3])):
        assert torch.isfinite(got[:, :last]).all(), f"{name}: a key block read the last query block"
        torch.testing.assert_close(got[:, :last], want[:, :last], rtol=1e-5, atol=1e-6)


def test_window_of_one_is_each_querys_own_value():
    """W = 1: every query sees its own key only, so the output is its value (the gradients' reference is ~0, which
    the relative checks above cannot compare)."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 37, 2, 16, generator=gen).to(DEVICE) for _ in range(3))
    tol = 1e-5 if DEVICE == "cpu" else 5e-3  # fp32 dots run in tf32 on GPUs
    torch.testing.assert_close(flash_attention(q, k, v, window=1), v, rtol=tol, atol=tol)


def test_window_argument_is_checked():
    q = torch.randn(1, 8, 2, 16, device=DEVICE)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="window must be a positive int or None"):
            flash_attention(q, q, q, window=bad)
    with pytest.raises(ValueError, match="a sliding window needs causal=True"):
        flash_attention(q, q, q, causal=False, window=4)


def test_rejects_bad_shapes():
    q = torch.randn(1, 8, 3, 16, device=DEVICE)
    k = torch.randn(1, 8, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        flash_attention(q, k, k, causal=True)
    with pytest.raises(ValueError, match="head_dim"):
        flash_attention(
            torch.randn(1, 8, 2, 24, device=DEVICE),
            torch.randn(1, 8, 2, 24, device=DEVICE),
            torch.randn(1, 8, 2, 24, device=DEVICE),
            causal=True,
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "seq,heads,kv_heads,head_dim,causal",
    [
        (4096, 16, 16, 128, True),
        (2047, 16, 4, 128, True),
        (3000, 8, 8, 64, False),
        (1024, 32, 8, 64, True),
    ],
)
def test_gpu_bf16_matches_sdpa(seq, heads, kv_heads, head_dim, causal):
    torch.manual_seed(seq)
    bsz = 2
    q = torch.randn(bsz, seq, heads, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(bsz, seq, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(bsz, seq, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dout = torch.randn(bsz, seq, heads, head_dim, device="cuda", dtype=torch.bfloat16)

    out = flash_attention(q, k, v, causal=causal)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)

    # Reference: SDPA in fp32 on upcast inputs (math/efficient backend), GQA via repeat.
    group = heads // kv_heads
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q32.transpose(1, 2),
        k32.repeat_interleave(group, 2).transpose(1, 2),
        v32.repeat_interleave(group, 2).transpose(1, 2),
        is_causal=causal,
    ).transpose(1, 2)
    rdq, rdk, rdv = torch.autograd.grad(ref, (q32, k32, v32), dout.float())
    for name, got, want in (("out", out, ref), ("dq", dq, rdq), ("dk", dk, rdk), ("dv", dv, rdv)):
        err = ((got.float() - want).norm() / want.norm()).item()
        assert err < 1e-2, f"{name}: rel err {err:.2e}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("docs", [True, (1000, 2048, 1048), (640, 3456)])  # random; long, off and on 128-edges
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("head_dim", [128, 64])
def test_gpu_bf16_documents_match_reference(docs, causal, head_dim):
    seq = 1500 if docs is True else sum(docs)
    check(2, seq, 8, 2, head_dim, causal, torch.bfloat16, docs, seed=3, tol=1e-2, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "bsz,seq,heads,kv_heads,head_dim",
    [
        (2, 256, 4, 4, 128),
        (1, 384, 3, 3, 128),
        (2, 1024, 2, 2, 128),
        (1, 4096, 2, 2, 128),
        (1, 8192, 1, 1, 128),
        (2, 1024, 8, 2, 128),  # grouped-query attention
        (1, 2048, 4, 4, 64),
        (2, 1280, 8, 2, 64),
    ],
)
def test_gpu_fused_backward_matches_reference(bsz, seq, heads, kv_heads, head_dim):
    """The fused Gluon backward (where it applies: sm_90, Triton 3.6), against fp32 SDPA and against the split
    backward, on shapes where its Q/dO ring wraps (more than 3 query blocks per key block)."""
    from megatron.kernels import attention_gluon_bwd_sm90 as fag
    from megatron.kernels import interface as fat

    torch.manual_seed(seq + heads)
    q, dout = (torch.randn(bsz, seq, heads, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    k, v = (torch.randn(bsz, seq, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    reason = fag.unsupported_reason(q, k, True)
    if reason:
        pytest.skip(f"fused backward not available: {reason}")
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    fat.LAST_COMPILED.pop("bwd_fused", None)
    fused = torch.autograd.grad(flash_attention(q, k, v, causal=True), (q, k, v), dout)
    assert "bwd_fused" in fat.LAST_COMPILED
    split = torch.autograd.grad(flash_attention(q, k, v, causal=True, backward="split"), (q, k, v), dout)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    group = heads // kv_heads
    ref_out = torch.nn.functional.scaled_dot_product_attention(
        q32.transpose(1, 2),
        k32.repeat_interleave(group, 2).transpose(1, 2),
        v32.repeat_interleave(group, 2).transpose(1, 2),
        is_causal=True,
    ).transpose(1, 2)
    ref = torch.autograd.grad(ref_out, (q32, k32, v32), dout.float())
    for name, got, want, other in zip(("dq", "dk", "dv"), fused, ref, split):
        err = ((got.float() - want).norm() / want.norm()).item()
        err_split = ((other.float() - want).norm() / want.norm()).item()
        assert err < 1e-2, f"{name}: fused rel err {err:.2e} (split {err_split:.2e})"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("block_m", [64, 128])
@pytest.mark.parametrize(
    "bsz,seq,heads,kv_heads,head_dim,docs",
    [
        (2, 1280, 8, 2, 64, None),  # grouped-query attention, batch 2, the ring wraps
        (1, 2048, 4, 4, 64, None),
        (2, 1024, 8, 2, 64, (100, 1, 27, 500, 396)),  # document edges off blocks, a 1-token document
        (1, 1024, 4, 1, 64, (256, 384, 384)),  # edges on blocks, multi-query
        (2, 1024, 8, 2, 128, None),
    ],
)
def test_gpu_fused_backward_tiles_and_order(interleaved, block_m, bsz, seq, heads, kv_heads, head_dim, docs):
    """Either query-block size of the fused Gluon backward (64, or 128 where the head dim leaves the registers for
    it) and either launch order (each program finds its key block and head from the grid) against the fp32
    reference: dq, dk, dv from the forward's out and lse."""
    from megatron.kernels import attention_gluon_bwd_sm90 as fag
    from megatron.kernels import attention_triton
    from megatron.kernels import interface as fat

    if block_m == 128 and head_dim == 128:
        pytest.skip("block_m 128 is for head dim 64")
    q, k, v, dout = _gpu_inputs(bsz, seq, heads, kv_heads, head_dim, seed=seq + block_m)
    if reason := fag.unsupported_reason(q, k, True):
        pytest.skip(f"fused backward not available: {reason}")
    ids = document_ids_of_lengths(docs, bsz).cuda() if docs else None
    runs = fat.document_runs(ids) if ids is not None else None
    scale = 1 / head_dim**0.5
    out, lse = attention_triton.forward(q, k, v, True, scale, runs)
    delta = attention_triton.row_delta(out, dout)
    got = fag.backward(q, k, v, dout, lse, delta, scale, documents=runs[1:] if runs else None, block_m=block_m,
                       interleaved=interleaved)
    q32, k32, v32 = (t.float().requires_grad_() for t in (q, k, v))
    ref_out = reference_attention(q32, k32, v32, True, scale, ids)
    want = torch.autograd.grad(ref_out, (q32, k32, v32), dout.float())
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        err = ((g.float() - w).norm() / w.norm()).item()
        assert err < 1e-2, f"{name}: block_m {block_m}, interleaved {interleaved}: rel err {err:.2e}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("docs", [True, (1000, 2048, 1048), (128, 640, 3328), (4096,)])
@pytest.mark.parametrize("head_dim", [128, 64])
def test_gpu_fused_backward_with_documents(docs, head_dim):
    """Packed documents through the fused backward (random ones; edges off and on 128-token blocks; one
    document), against the fp64 reference, and the fused kernel is the one that ran."""
    from megatron.kernels import attention_gluon_bwd_sm90 as fag
    from megatron.kernels import interface as fat

    probe = torch.empty(1, 4096, 8, head_dim, device="cuda", dtype=torch.bfloat16)
    if reason := fag.unsupported_reason(probe, probe[:, :, :2], True):
        pytest.skip(f"fused backward not available: {reason}")
    fat.LAST_COMPILED.pop("bwd_fused", None)
    fat.LAST_COMPILED.pop("fwd_gluon", None)
    check(2, 4096, 8, 2, head_dim, True, torch.bfloat16, docs, seed=5, tol=1e-2, device="cuda")
    assert "bwd_fused" in fat.LAST_COMPILED
    assert ("fwd_gluon" in fat.LAST_COMPILED) == (head_dim == 128)  # the Gluon forward at head dim 128


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "bsz,seq,heads,kv_heads,head_dim,docs",
    [
        (1, 128, 2, 2, 128, None),
        (2, 256, 4, 4, 128, None),
        (1, 1152, 3, 3, 128, None),
        (1, 8192, 1, 1, 128, None),
        (2, 1024, 8, 2, 128, None),  # grouped-query attention
        (2, 2048, 4, 1, 64, None),  # head dim 64, multi-query
        (1, 1024, 4, 4, 128, (256, 384, 384)),  # document edges on 128-token blocks
        (2, 1024, 8, 2, 64, (100, 1, 27, 500, 396)),  # edges off blocks, a 1-token document
        (1, 4096, 8, 2, 128, "random"),
        (2, 2048, 4, 4, 64, "random"),
    ],
)
def test_gpu_gluon_forward_matches_reference(bsz, seq, heads, kv_heads, head_dim, docs):
    """The Gluon forward kernel (where it runs: sm_90, Triton 3.6) against an fp32 reference with K / V repeated and
    the causal and document masks: out, and its log2-unit lse (what the backward reads). flash_attention chooses
    it at head dim 128, and the Triton forward at head dim 64 (faster there)."""
    from megatron.kernels import attention_gluon_bwd_sm90 as fag
    from megatron.kernels import attention_gluon_fwd_sm90 as gfwd
    from megatron.kernels import interface as fat

    torch.manual_seed(seq + heads)
    q = torch.randn(bsz, seq, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(bsz, seq, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    if reason := fag.unsupported_reason(q, k, True):
        pytest.skip(f"Gluon kernels not available: {reason}")
    ids = None
    if docs == "random":
        ids = random_document_ids(bsz, seq, torch.Generator().manual_seed(seq)).cuda()
    elif docs is not None:
        ids = document_ids_of_lengths(docs, bsz).cuda()
    fat.LAST_COMPILED.pop("fwd_gluon", None)
    flash_attention(q, k, v, causal=True, document_ids=ids)
    assert ("fwd_gluon" in fat.LAST_COMPILED) == (head_dim == 128)
    run_start = fat.document_runs(ids)[1] if ids is not None else None
    out, lse = gfwd.forward(q, k, v, 1 / head_dim**0.5, run_start)
    qf, kf, vf = (t.float() for t in (q, k, v))
    ref, lse_ref = reference_attention(qf, kf, vf, True, 1 / head_dim**0.5, ids, with_lse=True)
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2
    lse_ref = lse_ref * gfwd.LOG2E  # [b, h, s], log2 units
    assert (lse - lse_ref).abs().max().item() < 1e-2


def _gpu_inputs(bsz, seq, heads, kv_heads, head_dim, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, dout = (torch.randn(bsz, seq, heads, head_dim, device="cuda", generator=gen) for _ in range(2))
    k, v = (torch.randn(bsz, seq, kv_heads, head_dim, device="cuda", generator=gen) for _ in range(2))
    return [t.bfloat16() for t in (q, k, v, dout)]


def _check_gpu_bf16(q, k, v, dout, scale, ids=None, window=None, tol=1e-2, **kernels):
    """bf16 kernels against the fp32 reference on the same (bf16-rounded) inputs: out, dq, dk, dv."""
    qx, kx, vx = (t.clone().requires_grad_() for t in (q, k, v))
    out = flash_attention(qx, kx, vx, softmax_scale=scale, document_ids=ids, window=window, **kernels)
    out.backward(dout)
    q32, k32, v32 = (t.float().requires_grad_() for t in (q, k, v))
    ref = reference_attention(q32, k32, v32, True, scale if scale else q.shape[-1] ** -0.5, ids, window=window)
    ref.backward(dout.float())
    for name, got, want in (("out", out, ref), ("dq", qx.grad, q32.grad), ("dk", kx.grad, k32.grad),
                            ("dv", vx.grad, v32.grad)):  # fmt: skip
        assert torch.isfinite(got).all(), f"{name} has non-finite values"
        err = ((got.float() - want).norm() / want.norm()).item()
        assert err < tol, f"{name}: rel err {err:.2e} >= {tol}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("docs", [None, (3000, 1000, 4192), "random"])  # document edges off 128-token blocks
@pytest.mark.parametrize("head_dim", [128, 64])
@pytest.mark.parametrize("window", [1024, 4096, 1000])  # 1000: not a multiple of any block
def test_gpu_bf16_window_matches_reference(window, head_dim, docs):
    """Sliding windows at a realistic length (S = 8192, 8 query heads on 2 kv heads), bf16, through the Triton
    kernels (the dispatcher's choice for a window), against the fp32 reference."""
    from megatron.kernels import interface as fat

    seq = 8192
    q, k, v, dout = _gpu_inputs(1, seq, 8, 2, head_dim, seed=window + head_dim)
    ids = None
    if docs == "random":
        ids = random_document_ids(1, seq, torch.Generator().manual_seed(window)).cuda()
    elif docs is not None:
        ids = document_ids_of_lengths(docs, 1).cuda()
    for name in ("fwd", "dkdv", "dq", "fwd_gluon", "bwd_fused"):
        fat.LAST_COMPILED.pop(name, None)
    _check_gpu_bf16(q, k, v, dout, None, ids, window)
    assert {"fwd", "dkdv", "dq"} <= set(fat.LAST_COMPILED) and "fwd_gluon" not in fat.LAST_COMPILED


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kernels", [{}, {"forward": "triton", "backward": "split"}])
@pytest.mark.parametrize("head_dim", [128, 64])
def test_gpu_bf16_softmax_scale_in_every_kernel(kernels, head_dim):
    """A softmax scale other than 1/sqrt(d) (Gemma's query_pre_attn_scalar) in the kernels the dispatcher chooses
    (on sm_90 with Triton 3.6: the Gluon forward at head dim 128 and the fused backward) and in the Triton ones."""
    q, k, v, dout = _gpu_inputs(2, 2048, 8, 2, head_dim, seed=head_dim)
    _check_gpu_bf16(q, k, v, dout, 1 / 16, **kernels)
    ids = document_ids_of_lengths((1000, 1048), 2).cuda()
    _check_gpu_bf16(q, k, v, dout, 1 / 16, ids, **kernels)
