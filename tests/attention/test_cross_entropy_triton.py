"""The tiled loss's Triton cross-entropy kernels against an fp64 reference: per-row loss and
log-sum-exp, the in-place logits gradient, and the whole tiled loss (loss, dh, dW) with ignored
tokens and per-token weights. On CPU they run in Triton's interpreter (conftest sets
TRITON_INTERPRET=1)."""

import pytest
import torch
import torch.nn.functional as F

from megatron.kernels import cross_entropy as ce
from megatron.model.tiled import IGNORE_INDEX, tiled_cross_entropy

pytestmark = pytest.mark.skipif(not ce.HAVE_TRITON, reason="triton is not installed")


def _rows(c, v, seed=0, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(c, v, generator=gen, dtype=torch.float64) * 4 + offset
    y = torch.randint(0, v, (c,), generator=gen)
    y[1] = IGNORE_INDEX
    g = torch.rand(c, generator=gen, dtype=torch.float64)
    return x, y, g


def _reference(x, y, g):
    """fp64 loss, log-sum-exp and d(sum g * loss)/dx of rows x."""
    x = x.double().requires_grad_(True)
    loss = F.cross_entropy(x, y, reduction="none", ignore_index=IGNORE_INDEX)
    (loss * g).sum().backward()
    return loss.detach(), torch.logsumexp(x.detach(), -1), x.grad


# offset 100: exp of the raw logits overflows fp32, so only a max-shifted sum gets it right
@pytest.mark.parametrize(
    "c,v,block,offset", [(5, 50, 16, 0.0), (4, 50, 4096, 100.0), (3, 9000, 4096, 0.0), (6, 33, 8, -50.0)]
)
def test_row_kernels_match_fp64(monkeypatch, c, v, block, offset):
    monkeypatch.setattr(ce, "BLOCK_V", block)  # small blocks: several online-max steps and a partial last block
    x, y, g = _rows(c, v, offset=offset)
    ref_loss, ref_lse, ref_dx = _reference(x, y, g)
    loss, lse = ce.row_loss(x.float(), y, IGNORE_INDEX)
    assert loss.dtype == lse.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    assert loss[1] == 0  # ignored row
    valid = y != IGNORE_INDEX
    torch.testing.assert_close(lse.double()[valid], ref_lse[valid], rtol=1e-6, atol=1e-5)
    dx = ce.row_grad_(x.float(), y, lse, g.float(), IGNORE_INDEX)
    torch.testing.assert_close(dx.double(), ref_dx, rtol=1e-5, atol=1e-6)
    assert dx[1].abs().max() == 0


def test_logits_with_strided_rows_are_refused():
    x, y, _ = _rows(3, 40)
    with pytest.raises(ValueError, match="contiguous rows"):
        ce.row_loss(x.float().t(), y, IGNORE_INDEX)


def test_grad_is_written_in_place():
    x, y, g = _rows(3, 40, seed=1)
    xf = x.float()
    _, lse = ce.row_loss(xf, y, IGNORE_INDEX)
    assert ce.row_grad_(xf, y, lse, g.float(), IGNORE_INDEX).data_ptr() == xf.data_ptr()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_fused_tiled_loss_matches_fp64(dtype, tol):
    gen = torch.Generator().manual_seed(2)
    h64 = torch.randn(2, 13, 16, generator=gen, dtype=torch.float64)
    w64 = torch.randn(70, 16, generator=gen, dtype=torch.float64) / 4
    y = torch.randint(0, 70, (2, 13), generator=gen)
    y[0, 3] = IGNORE_INDEX
    g = torch.rand(2, 13, generator=gen, dtype=torch.float64)
    h, w = h64.clone().requires_grad_(True), w64.clone().requires_grad_(True)
    ref = F.cross_entropy(F.linear(h, w).flatten(0, 1), y.flatten(), reduction="none").view(2, 13)
    (ref * g).sum().backward()
    hl, wl = h64.to(dtype).requires_grad_(True), w64.to(dtype).requires_grad_(True)
    got = tiled_cross_entropy(hl, wl, y, chunk=5, fused=True)  # 26 rows in chunks of 5: a partial last chunk
    (got * g.float()).sum().backward()
    assert got.dtype == torch.float32 and got.shape == (2, 13) and got[0, 3] == 0
    torch.testing.assert_close(got.double(), ref.detach(), rtol=tol, atol=tol)
    for name, a, b in (("dh", hl.grad, h.grad), ("dw", wl.grad, w.grad)):
        err = (a.double() - b).norm() / b.norm()
        assert err < tol, f"{name}: norm-relative error {err:.2e}"


@pytest.mark.parametrize("softcap", [None, 2.0], ids=["plain", "softcap"])
def test_fused_and_eager_tiled_loss_agree(softcap):
    """Same chunking, kernels against the eager fp32 ops (the path CPU training takes); also with Gemma-2's
    final-logit soft-cap (the kernels see the capped logits, the cap's derivative is applied around them)."""
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(1, 24, 32, generator=gen, requires_grad=True)
    w = torch.randn(300, 32, generator=gen, requires_grad=True)
    y = torch.randint(0, 300, (1, 24), generator=gen)
    out = {}
    for fused in (True, False):
        h.grad = w.grad = None
        loss = tiled_cross_entropy(h, w, y, chunk=7, fused=fused, softcap=softcap)
        loss.mean().backward()
        out[fused] = (loss.detach(), h.grad.clone(), w.grad.clone())
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_tiled_loss_bf16_on_gpu_matches_eager():
    """bf16 on a GPU at a real vocabulary: kernels and the fp32-accumulating weight-gradient GEMM
    against the eager chunk path; both against fp64."""
    gen = torch.Generator(device="cuda").manual_seed(4)
    h64 = torch.randn(1, 3000, 512, device="cuda", dtype=torch.float64, generator=gen)
    w64 = torch.randn(50257, 512, device="cuda", dtype=torch.float64, generator=gen) / 16
    y = torch.randint(0, 50257, (1, 3000), device="cuda", generator=gen)
    y[0, :7] = IGNORE_INDEX
    h, w = h64.clone().requires_grad_(True), w64.clone().requires_grad_(True)
    F.cross_entropy(F.linear(h, w).flatten(0, 1), y.flatten(), reduction="none").mean().backward()
    got = {}
    for fused in (True, False):
        hl, wl = h64.bfloat16().requires_grad_(True), w64.bfloat16().requires_grad_(True)
        loss = tiled_cross_entropy(hl, wl, y, chunk=1000, fused=fused)
        loss.mean().backward()
        got[fused] = (loss, hl.grad, wl.grad)
    for i, ref in enumerate((None, h.grad, w.grad)):
        a, b = got[True][i].double(), got[False][i].double()
        assert (a - b).norm() / b.norm() < 1e-2
        if ref is not None:
            assert (a - ref).norm() / ref.norm() < 1e-2
