"""FlashAttention for `--use-flash-attn-triton`: the one entry point, which checks the inputs and chooses the kernels.

Legend: b batch, s sequence, h query heads, g kv heads, d head dim. Tensors are `bshd`.

    out_bshd = flash_attention(q_bshd, k_bsgd, v_bsgd, causal=True, document_ids=ids_bs)
    out_bshd = flash_attention(q_bshd, k_bsgd, v_bsgd, window=4096)  # sliding window (Mistral, Gemma)
    out_bshd = flash_attention(q_bshd, k_bsgd, v_bsgd, forward="triton", backward="split")  # Triton kernels only

Grouped-query attention: query head `h` reads kv head `h // (h_q // h_kv)`; K/V are never
repeated. `document_ids` marks packed sequences: a query sees only keys of its own
document. A document is a contiguous run of equal ids (what sequence packing produces).
`window` W (causal only) is sliding-window attention: query i sees key j iff 0 <= i - j < W (the W keys ending at
itself, transformers' `q_idx - kv_idx < sliding_window`), intersected with its document; None is full causal, and
so is a window of at least the sequence. The kernels skip key / query blocks outside the window: O(S * W) work.

Kernels: the Triton forward and split backward (attention_triton.py) run everywhere Triton does. On Hopper
with Triton 3.6, where they support the inputs (causal, bf16, with or without GQA and documents, sequence a
multiple of 128, no sliding window: gluon_sm90.unsupported_reason), the warp-specialized Gluon kernels take over: the fused
backward (attention_gluon_bwd_sm90.py) at head dim 64 and 128 (5 GEMM units per block pair instead of the
split kernels' 7), and the forward (attention_gluon_fwd_sm90.py) at head dim 128 (at 64 the Triton forward
measured faster). The call's `forward` ("auto", "triton", "gluon") and `backward` ("auto", "fused", "split")
arguments override that: "auto" is the rule above, "triton" / "split" force the Triton kernels, "gluon" / "fused"
require the Gluon ones and raise, saying why, where they cannot run. Both choices are made in the forward and
the backward's is kept with the autograd context, so a backward always runs what its forward chose. Which
kernels ran, and why, is printed once per distinct choice.
"""

import math

import torch

from megatron.kernels import attention_gluon_bwd_sm90 as gluon_bwd
from megatron.kernels import attention_gluon_fwd_sm90 as gluon_fwd
from megatron.kernels import attention_triton
from megatron.kernels.env import TRITON_IMPORT_ERROR, interpreting

# Compiled kernels of the latest launches: fwd, dkdv, dq (Triton), fwd_gluon, bwd_fused (Gluon).
LAST_COMPILED: dict = {}


def is_available() -> tuple[bool, str]:
    """(True, "") if the Triton kernels can run here, else (False, why not)."""
    if TRITON_IMPORT_ERROR is not None:
        return False, f"triton is not importable ({TRITON_IMPORT_ERROR}); pip install triton"
    if interpreting():
        return True, ""
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible (set TRITON_INTERPRET=1 to run the kernels slowly on CPU)"
    return True, ""


def document_runs(document_ids_bs: torch.Tensor):
    """Per token: segment index, and start / end (exclusive) of its run of equal ids: the kernels' document masks."""
    bsz, seq = document_ids_bs.shape
    ids = document_ids_bs
    pos = torch.arange(seq, device=ids.device).expand(bsz, seq)
    edge = ids[:, 1:] != ids[:, :-1]
    true_col = torch.ones(bsz, 1, dtype=torch.bool, device=ids.device)
    starts_here = torch.cat([true_col, edge], dim=1)
    ends_here = torch.cat([edge, true_col], dim=1)
    seg = torch.cumsum(starts_here.to(torch.int32), dim=1, dtype=torch.int32)
    run_start = torch.cummax(torch.where(starts_here, pos, 0), dim=1).values
    run_end = torch.where(ends_here, pos + 1, seq).flip(1).cummin(dim=1).values.flip(1)
    return seg.contiguous(), run_start.to(torch.int32).contiguous(), run_end.to(torch.int32).contiguous()


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


FORWARDS = ("auto", "triton", "gluon")  # auto: Gluon where it runs, else Triton; triton: forced; gluon: required
BACKWARDS = ("auto", "fused", "split")  # auto: fused where it runs, else split; fused: required; split: forced
_NOTED: set = set()


WINDOW_REASON = "sliding window (the Gluon kernels have none)"


def _gluon_unsupported(module, direction: str, choice: str, fallback: str, q, k, causal: bool, window=None):
    """None when ``module``'s Gluon kernel runs for these inputs and the ``direction`` argument's ``choice``, else
    why the ``fallback`` kernels run. ``choice`` naming the Gluon kernel where it cannot run raises, saying why."""
    forced = {"forward": "gluon", "backward": "fused"}[direction]
    if choice == fallback:
        return f"{direction}='{fallback}'"
    reason = WINDOW_REASON if window is not None else module.unsupported_reason(q, k, causal)
    if reason is not None and choice == forced:
        raise ValueError(f"{direction}='{forced}' cannot run here: {reason}; use {direction}='auto' or '{fallback}'")
    return reason


def _gluon_forward_unsupported(q, k, causal: bool, forward: str = "auto", window=None):
    """None when the Gluon forward runs (forward "auto" / "gluon"), else why the Triton forward runs."""
    return _gluon_unsupported(gluon_fwd, "forward", forward, "triton", q, k, causal, window)


def _fused_backward_unsupported(q, k, causal: bool, backward: str = "auto", window=None):
    """None when the fused Gluon backward runs (backward "auto" / "fused"), else why the split kernels run."""
    return _gluon_unsupported(gluon_bwd, "backward", backward, "split", q, k, causal, window)


def _note(direction: str, msg: str) -> None:
    """One line per distinct choice, on rank 0: which forward / backward kernel ran, and why."""
    line = f"> attention: FlashAttention-Triton {direction}: {msg}"
    if line in _NOTED:
        return
    _NOTED.add(line)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(line, flush=True)


def _forward(q, k, v, causal, softmax_scale, runs, window, forward):
    """out, lse (fp32 [b, h, s], log2 units) by the kernels `forward` chooses."""
    reason = _gluon_forward_unsupported(q, k, causal, forward, window)
    _note("forward", "Gluon kernel (warp-specialized)" if reason is None else f"Triton kernel ({reason})")
    if reason is None:
        out, lse = gluon_fwd.forward(q, k, v, softmax_scale, runs[1] if runs is not None else None)
        LAST_COMPILED["fwd_gluon"] = gluon_fwd.LAST_COMPILED["fwd"]
    else:
        out, lse = attention_triton.forward(q, k, v, causal, softmax_scale, runs, window)
        LAST_COMPILED["fwd"] = attention_triton.LAST_COMPILED["fwd"]
    return out, lse


def _backward(q, k, v, out, lse, dout, causal, softmax_scale, runs, window, split_reason):
    """dq, dk, dv from the forward's out and lse; split_reason None runs the fused Gluon kernel."""
    dout = _last_dim_contiguous(dout)
    delta = attention_triton.row_delta(out, dout)
    _note("backward", "fused Gluon kernel (5 GEMM units)" if split_reason is None else f"split kernels ({split_reason})")
    if split_reason is None:
        documents = runs[1:] if runs is not None else None
        dq, dk, dv = gluon_bwd.backward(q, k, v, dout, lse, delta, softmax_scale, documents=documents)
        LAST_COMPILED["bwd_fused"] = gluon_bwd.LAST_COMPILED["ws"]
    else:
        dq, dk, dv = attention_triton.backward(q, k, v, dout, lse, delta, causal, softmax_scale, runs, window)
        LAST_COMPILED["dkdv"] = attention_triton.LAST_COMPILED["dkdv"]
        LAST_COMPILED["dq"] = attention_triton.LAST_COMPILED["dq"]
    return dq, dk, dv


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, softmax_scale, document_ids, window, forward, backward):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        runs = document_runs(document_ids) if document_ids is not None else None
        ctx.split_reason = _fused_backward_unsupported(q, k, causal, backward, window)  # why not fused; None: fused
        out, lse = _forward(q, k, v, causal, softmax_scale, runs, window, forward)
        ctx.save_for_backward(q, k, v, out, lse, *(runs or ()))
        ctx.causal, ctx.softmax_scale, ctx.has_doc, ctx.window = causal, softmax_scale, runs is not None, window
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, *runs = ctx.saved_tensors
        runs = tuple(runs) if ctx.has_doc else None
        dq, dk, dv = _backward(q, k, v, out, lse, dout, ctx.causal, ctx.softmax_scale, runs, ctx.window,
                               ctx.split_reason)  # fmt: skip
        return dq, dk, dv, None, None, None, None, None, None


def _checked(q, k, v, causal, softmax_scale, document_ids, window, forward, backward):
    """The checked call: (scale, window) with the window dropped where it covers the sequence; raises on bad input."""
    ok, why = is_available()
    if not ok:
        raise RuntimeError(f"flash_attention unavailable: {why}")
    if forward not in FORWARDS:
        raise ValueError(f"forward={forward!r}; choose one of {FORWARDS}")
    if backward not in BACKWARDS:
        raise ValueError(f"backward={backward!r}; choose one of {BACKWARDS}")
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(
            f"expected q [b,s,h,d], k/v [b,s,g,d]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    bsz, seq, heads, head_dim = q.shape
    if k.shape[0] != bsz or k.shape[1] != seq or k.shape[3] != head_dim:
        raise ValueError(f"k/v shape {tuple(k.shape)} does not match q {tuple(q.shape)} (self-attention only)")
    if heads % k.shape[2] != 0:
        raise ValueError(f"query heads ({heads}) must be a multiple of kv heads ({k.shape[2]})")
    supported = attention_triton.SUPPORTED_HEAD_DIMS
    if head_dim not in supported:
        raise ValueError(f"head_dim {head_dim} not supported; use one of {supported}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if document_ids is not None and tuple(document_ids.shape) != (bsz, seq):
        raise ValueError(f"document_ids must be [b, s] = {(bsz, seq)}, got {tuple(document_ids.shape)}")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    if not scale > 0:
        raise ValueError(f"softmax_scale must be positive, got {scale}")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int or None, got {window!r}")
        if not causal:
            raise ValueError("a sliding window needs causal=True")
        if window >= seq:
            window = None  # every causal key is within the window: the full causal kernels
    return float(scale), window


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    document_ids: torch.Tensor | None = None,
    window: int | None = None,
    forward: str = "auto",
    backward: str = "auto",
) -> torch.Tensor:
    """Exact attention, softmax(q k^T * scale [masked]) v, without materializing scores.

    q_bshd [b, s, h, d]; k_bsgd, v_bsgd [b, s, g, d] with h % g == 0; document_ids_bs
    [b, s] int (contiguous runs = documents) or None. Returns [b, s, h, d] in q's dtype.
    softmax_scale: None is 1/sqrt(d). window: None (full causal) or W >= 1 with causal: query i sees key j iff
    0 <= i - j < W. forward in FORWARDS, backward in BACKWARDS: which kernels run (module docstring).
    """
    scale, window = _checked(q, k, v, causal, softmax_scale, document_ids, window, forward, backward)
    return _FlashAttention.apply(q, k, v, bool(causal), scale, document_ids, window, forward, backward)


@torch.no_grad()
def flash_attention_forward(q, k, v, *, causal=True, softmax_scale=None, document_ids=None, window=None,
                            forward="auto") -> tuple:  # fmt: skip
    """The forward alone, outside autograd: ``(out_bshd, lse_bhs)``, lse fp32 [b, h, s] in log2 units (the
    kernels' convention: log2 of the row's sum of exp2(scale * log2(e) * q.k)); what ``flash_attention_backward``
    takes back. Arguments as ``flash_attention``'s."""
    scale, window = _checked(q, k, v, causal, softmax_scale, document_ids, window, forward, "auto")
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    runs = document_runs(document_ids) if document_ids is not None else None
    return _forward(q, k, v, bool(causal), scale, runs, window, forward)


@torch.no_grad()
def flash_attention_backward(q, k, v, out, lse, dout, *, causal=True, softmax_scale=None, document_ids=None,
                             window=None, backward="auto") -> tuple:  # fmt: skip
    """``(dq, dk, dv)`` of attention from a forward's ``out`` and ``lse`` (``flash_attention_forward``) and the
    output's gradient ``dout``, without running the forward again; equal to the autograd backward of
    ``flash_attention`` with the same arguments. dk, dv have k's kv heads (GQA sums over each group)."""
    scale, window = _checked(q, k, v, causal, softmax_scale, document_ids, window, "auto", backward)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    if tuple(out.shape) != tuple(q.shape) or tuple(dout.shape) != tuple(q.shape):
        raise ValueError(f"out and dout must be q's shape {tuple(q.shape)}, got {tuple(out.shape)}, {tuple(dout.shape)}")
    b, s, h, _ = q.shape
    if tuple(lse.shape) != (b, h, s) or lse.dtype != torch.float32:
        raise ValueError(f"lse must be fp32 [b, h, s] = {(b, h, s)}, got {lse.dtype} {tuple(lse.shape)}")
    runs = document_runs(document_ids) if document_ids is not None else None
    split_reason = _fused_backward_unsupported(q, k, bool(causal), backward, window)
    return _backward(q, k, v, _last_dim_contiguous(out), lse.contiguous(), dout, bool(causal), scale, runs, window,
                     split_reason)  # fmt: skip
