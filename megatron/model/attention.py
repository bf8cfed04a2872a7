"""Attention: the backends (one call signature, chosen in one place) and ParallelAttention.

Shape legend: b batch, s local (per SP rank) sequence, S full sequence, h query heads,
g key/value heads, d head dim. A backend takes ``q_bShd, k_bSgd, v_bSgd`` (the whole sequence
for a subset of heads, as after the Ulysses all-to-all) and optional ``document_ids_bS``, and
is causal. ``build_backend`` checks what the machine can run once, at model build.

Per layer, a backend is built with (all optional, each layer builds its own):
  window         sliding window W: query i sees key j iff 0 <= i - j < W (the W keys ending at itself, as
                 transformers' ``q_idx - kv_idx < sliding_window``), intersected with causal and same-document;
                 None is full causal. Mistral, Qwen2 (use_sliding_window), Gemma-2/3.
  softmax_scale  the scale of q.k before the softmax; None is 1/sqrt(d). Gemma-2/3: query_pre_attn_scalar**-0.5
                 (--query-pre-attn-scalar).
  softcap        attention-logit soft-cap c: scores = c * tanh(scores / c) before masking and softmax (Gemma-2's
                 attn_logit_softcapping, --attention-softcap); classic only: the others refuse it, naming classic
                 (Config refuses the combination at start-up).
They live on the backend module, so the Ulysses exchanges, which pass their call arguments through, need
nothing to carry them.

Backends (``AttentionConfig.backend``):
  classic       explicit fp32 softmax(QK^T)V; the reference, always available; window, scale and soft-cap.
  sdpa          torch scaled_dot_product_attention (cuDNN, then flash, then the rest on CUDA); a window or
                documents are a dense boolean mask. Its log-sum-exp (attention-output checkpointing) comes from
                cuDNN's SDPA kernel on CUDA and the flash kernel on the CPU.
  flash         the flash_attn package when installed (else SDPA, said once); window as its window_size.
  flash_triton  our Triton/Gluon FlashAttention kernels (``megatron.kernels``); blocks outside the window or the
                document are skipped.

ParallelAttention is a plain module: QKV projection, RoPE, core attention, output projection.
Sequence parallelism wraps its ``core_attention`` in a Ulysses exchange from outside
(``megatron.parallelize.apply_ulysses``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from megatron.config import AttentionConfig, ModelConfig
from megatron.model.norms import make_head_norm
from megatron.model.rotary import RotaryEmbedding

_LOGGED = set()


def log_once(msg: str) -> None:
    if msg not in _LOGGED:
        _LOGGED.add(msg)
        rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        if rank0:
            print(f"> attention: {msg}", flush=True)


def _attention_mask(S: int, device, document_ids: torch.Tensor | None = None, window: int | None = None):
    """Boolean [1 or b, 1, S, S] mask, True where query i sees key j: causal, within the window (i - j < window)
    and within the same document."""
    keep = torch.ones(S, S, dtype=torch.bool, device=device).tril()
    if window is not None and window < S:
        keep = keep & ~torch.ones(S, S, dtype=torch.bool, device=device).tril(-window)  # drops i - j >= window
    keep = keep[None]
    if document_ids is not None:
        keep = keep & (document_ids[:, :, None] == document_ids[:, None, :])
    return keep[:, None]


def classic_attention(q, k, v, document_ids=None, dropout_p=0.0, training=False, *, window=None,
                      softmax_scale=None, softcap=None):  # fmt: skip
    """Reference attention with an explicit fp32 softmax (materializes [b, h, S, S]); window, softmax_scale and
    softcap as in the module docstring (the cap in fp32, before the mask)."""
    _b, S, h, d = q.shape
    rep = h // k.shape[2]
    k = k.repeat_interleave(rep, dim=2) if rep > 1 else k
    v = v.repeat_interleave(rep, dim=2) if rep > 1 else v
    acc = torch.promote_types(q.dtype, torch.float32)  # at least fp32 (fp64 stays fp64 for tests)
    scores = torch.einsum("bshd,bthd->bhst", q.to(acc), k.to(acc))
    scores = scores / math.sqrt(d) if softmax_scale is None else scores * softmax_scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    mask = _attention_mask(S, q.device, document_ids, window)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0 and training:
        probs = F.dropout(probs, p=dropout_p)
    return torch.einsum("bhst,bthd->bshd", probs.to(v.dtype), v)


def _classic_scores(q, k, window, softmax_scale, softcap, document_ids):
    """fp32 (or fp64) scores [b, h, S, S] of classic_attention, kv heads repeated; also the uncapped tanh for the
    soft-cap's derivative (None without one) and the mask."""
    _b, S, h, d = q.shape
    rep = h // k.shape[2]
    k = k.repeat_interleave(rep, dim=2) if rep > 1 else k
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = torch.einsum("bshd,bthd->bhst", q.to(acc), k.to(acc))
    scores = scores / math.sqrt(d) if softmax_scale is None else scores * softmax_scale
    tanh = None
    if softcap is not None:
        tanh = torch.tanh(scores / softcap)
        scores = softcap * tanh
    mask = _attention_mask(S, q.device, document_ids, window)
    return scores.masked_fill(~mask, float("-inf")), tanh, mask


def classic_attention_lse(q, k, v, document_ids=None, *, window=None, softmax_scale=None, softcap=None):
    """classic_attention without dropout, and its natural-log log-sum-exp [b, h, S] in fp32 (fp64 stays fp64)."""
    scores, _, _ = _classic_scores(q, k, window, softmax_scale, softcap, document_ids)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None])
    rep = q.shape[2] // v.shape[2]
    v_rep = v.repeat_interleave(rep, dim=2) if rep > 1 else v
    return torch.einsum("bhst,bthd->bshd", probs.to(v.dtype), v_rep), lse


def classic_attention_backward(q, k, v, out, lse, dout, document_ids=None, *, window=None, softmax_scale=None,
                               softcap=None):  # fmt: skip
    """dq, dk, dv of classic_attention_lse from its out and lse (the softmax rebuilt as exp(scores - lse), not
    renormalized): dS = P (dP - rowsum(dout * out)), through the soft-cap's tanh and the scale."""
    _b, S, h, d = q.shape
    g = k.shape[2]
    rep = h // g
    acc = torch.promote_types(q.dtype, torch.float32)
    scores, tanh, _ = _classic_scores(q, k, window, softmax_scale, softcap, document_ids)
    probs = torch.exp(scores - lse.to(acc)[..., None])  # masked scores are -inf: 0
    k_rep = (k.repeat_interleave(rep, dim=2) if rep > 1 else k).to(acc)
    v_rep = (v.repeat_interleave(rep, dim=2) if rep > 1 else v).to(acc)
    do = dout.to(acc)
    dv = torch.einsum("bhst,bshd->bthd", probs, do)
    dp = torch.einsum("bshd,bthd->bhst", do, v_rep)
    delta = (do * out.to(acc)).sum(-1).transpose(1, 2)  # [b, h, S]
    ds = probs * (dp - delta[..., None])
    if tanh is not None:
        ds = ds * (1 - tanh * tanh)
    ds = ds / math.sqrt(d) if softmax_scale is None else ds * softmax_scale
    dq = torch.einsum("bhst,bthd->bshd", ds, k_rep)
    dk = torch.einsum("bhst,bshd->bthd", ds, q.to(acc))
    if rep > 1:
        dk, dv = (t.unflatten(2, (g, rep)).sum(3) for t in (dk, dv))
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _sdpa_backends():
    from torch.nn.attention import SDPBackend

    return [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa_attention(q, k, v, document_ids=None, dropout_p=0.0, training=False, *, window=None, softmax_scale=None):
    """torch SDPA; on CUDA the cuDNN backend is preferred, then FlashAttention-2. Documents or a window shorter than
    the sequence are a dense boolean [b or 1, 1, S, S] mask (SDPA then runs a masked kernel)."""
    from torch.nn.attention import sdpa_kernel

    q_bhSd, k_bgSd, v_bgSd = (t.transpose(1, 2) for t in (q, k, v))
    S = q.shape[1]
    windowed = window is not None and window < S
    mask = _attention_mask(S, q.device, document_ids, window) if document_ids is not None or windowed else None
    with sdpa_kernel(_sdpa_backends(), set_priority=True):
        out = F.scaled_dot_product_attention(
            q_bhSd, k_bgSd, v_bgSd, attn_mask=mask, dropout_p=dropout_p if training else 0.0,
            is_causal=mask is None, scale=softmax_scale, enable_gqa=q.shape[2] != k.shape[2],
        )  # fmt: skip
    return out.transpose(1, 2)


def _sdpa_description(device: torch.device) -> str:
    if device.type != "cuda":
        return "torch SDPA (CPU kernels)"
    cudnn = hasattr(torch.backends.cuda, "cudnn_sdp_enabled") and torch.backends.cuda.cudnn_sdp_enabled()
    return "torch SDPA (priority cuDNN > flash > efficient > math" + ("" if cudnn else ", cuDNN SDP disabled") + ")"


def _softcap_refusal(softcap) -> str | None:
    if softcap is None:
        return None
    return (f"it has no attention-logit soft-cap (softcap={softcap}); --attention-backend classic runs it "
            "(--attention-softcap, Gemma-2's attn_logit_softcapping, needs its explicit fp32 softmax over "
            "[b, h, S, S] scores)")  # fmt: skip


class CoreAttention(nn.Module):
    """A backend: ``forward(q_bShd, k_bSgd, v_bSgd, document_ids_bS=None) -> out_bShd``, causal, with this
    layer's ``window``, ``softmax_scale`` and ``softcap`` (module docstring) fixed at construction.

    ``supports(device, dropout, window, softmax_scale, softcap)`` returns None when the backend runs there,
    else the reason; ``description`` says what runs (logged once).
    """

    name = ""

    def __init__(self, dropout: float = 0.0, device: torch.device | None = None, *, window: int | None = None,
                 softmax_scale: float | None = None, softcap: float | None = None):  # fmt: skip
        super().__init__()
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"attention window must be a positive number of tokens or None, got {window!r}")
        for what, x in (("softmax_scale", softmax_scale), ("softcap", softcap)):
            if x is not None and not x > 0:
                raise ValueError(f"attention {what} must be positive or None, got {x!r}")
        self.dropout = dropout
        self.window, self.softmax_scale, self.softcap = window, softmax_scale, softcap
        self.description = self.describe(device or torch.device("cpu")) + self._options()

    @classmethod
    def supports(cls, device: torch.device, dropout: float, window=None, softmax_scale=None, softcap=None):
        """None when this backend runs there with these options, else why not (one line)."""
        return _softcap_refusal(softcap)

    def describe(self, device: torch.device) -> str:
        return self.name

    # Attention-output checkpointing (megatron.parallelize, "attention_output"): the forward returning its
    # log-sum-exp, and the backward from (q, k, v, out, lse, dout), outside autograd. Backends without them
    # leave returns_lse False.
    returns_lse = False

    def forward_lse(self, q_bShd, k_bSgd, v_bSgd, document_ids_bS=None):
        """(out_bShd, lse) without autograd; lse in this backend's own layout and units."""
        raise NotImplementedError(f"the {self.name} attention backend returns no log-sum-exp")

    def backward_lse(self, q_bShd, k_bSgd, v_bSgd, out_bShd, lse, dout_bShd, document_ids_bS=None):
        """(dq, dk, dv) from forward_lse's out and lse and the output's gradient."""
        raise NotImplementedError(f"the {self.name} attention backend has no backward from its log-sum-exp")

    def _options(self) -> str:
        options = [f"{name} {x}" for name, x in (("sliding window", self.window), ("softmax scale", self.softmax_scale),
                                                 ("logit soft-cap", self.softcap)) if x is not None]  # fmt: skip
        return "; " + ", ".join(options) if options else ""


class ClassicAttention(CoreAttention):
    name = "classic"

    @classmethod
    def supports(cls, device, dropout, window=None, softmax_scale=None, softcap=None):
        return None

    def describe(self, device):
        return "classic (explicit fp32 softmax)"

    returns_lse = True

    def _lse_options(self):
        return {"window": self.window, "softmax_scale": self.softmax_scale, "softcap": self.softcap}

    @torch.no_grad()
    def forward_lse(self, q_bShd, k_bSgd, v_bSgd, document_ids_bS=None):
        return classic_attention_lse(q_bShd, k_bSgd, v_bSgd, document_ids_bS, **self._lse_options())

    @torch.no_grad()
    def backward_lse(self, q_bShd, k_bSgd, v_bSgd, out_bShd, lse, dout_bShd, document_ids_bS=None):
        return classic_attention_backward(q_bShd, k_bSgd, v_bSgd, out_bShd, lse, dout_bShd, document_ids_bS,
                                          **self._lse_options())  # fmt: skip

    def forward(self, q_bShd, k_bSgd, v_bSgd, document_ids_bS=None):
        return classic_attention(
            q_bShd, k_bSgd, v_bSgd, document_ids_bS, self.dropout, self.training,
            window=self.window, softmax_scale=self.softmax_scale, softcap=self.softcap,
        )  # fmt: skip


def _sdpa_lse_inputs(q_bShd, k_bSgd, v_bSgd, document_ids_bS, window):
    """q, k, v as [b, h, S, d] views (K and V repeated to the query heads) and the additive mask (0 / -inf, q's
    dtype, [b or 1, 1, S, S]) of documents or a window shorter than the sequence, else None (plain causal)."""
    S, rep = q_bShd.shape[1], q_bShd.shape[2] // k_bSgd.shape[2]
    if rep > 1:
        k_bSgd, v_bSgd = (t.repeat_interleave(rep, dim=2) for t in (k_bSgd, v_bSgd))
    bias = None
    if document_ids_bS is not None or (window is not None and window < S):
        keep = _attention_mask(S, q_bShd.device, document_ids_bS, window)
        bias = torch.zeros(keep.shape, dtype=q_bShd.dtype, device=q_bShd.device).masked_fill_(~keep, float("-inf"))
    q, k, v = (t.transpose(1, 2) for t in (q_bShd, k_bSgd, v_bSgd))
    if bias is not None and q.device.type == "cuda":  # cuDNN takes a bias with [b, h, S, d]-contiguous inputs only
        q, k, v = (t.contiguous() for t in (q, k, v))
    return q, k, v, bias, rep


def sdpa_attention_lse(q, k, v, document_ids=None, *, window=None, softmax_scale=None):
    """sdpa_attention without dropout, through the SDPA kernel that returns its log-sum-exp: cuDNN on CUDA, the
    flash kernel on the CPU. Returns (out_bShd, lse): lse fp32 [b, h, S] (the kernel's own layout, natural log)."""
    q, k, v, bias, _ = _sdpa_lse_inputs(q, k, v, document_ids, window)
    if q.device.type == "cuda":
        out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
            q, k, v, bias, True, 0.0, bias is None, False, scale=softmax_scale)[:2]  # fmt: skip
    else:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, bias is None, attn_mask=bias, scale=softmax_scale)  # fmt: skip
    return out.transpose(1, 2), lse


def sdpa_attention_backward(q, k, v, out, lse, dout, document_ids=None, *, window=None, softmax_scale=None):
    """dq, dk, dv of sdpa_attention_lse from its out and lse (the same kernel family's backward, no forward)."""
    g = k.shape[2]
    q, k, v, bias, rep = _sdpa_lse_inputs(q, k, v, document_ids, window)
    out, dout = (t.transpose(1, 2) for t in (out, dout))
    layout = torch.contiguous_format if q.is_contiguous() else None  # out and dout in q's layout, as the kernels want
    out, dout = (t.contiguous() if layout else t.transpose(1, 2).contiguous().transpose(1, 2) for t in (out, dout))
    if q.device.type == "cuda":  # None: an undefined tensor (no bias; no dropout seeds; not nested)
        S = q.shape[2]
        dq, dk, dv = torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
            dout, q, k, v, out, lse, None, None, bias, None, None, S, S, 0.0, bias is None, scale=softmax_scale)  # fmt: skip
    else:
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse, 0.0, bias is None, attn_mask=bias, scale=softmax_scale)  # fmt: skip
    dq, dk, dv = (t.transpose(1, 2) for t in (dq, dk, dv))
    if rep > 1:  # the repeated heads' gradients summed over each group
        dk, dv = (t.unflatten(2, (g, rep)).sum(3) for t in (dk, dv))
    return dq, dk, dv


class SDPAAttention(CoreAttention):
    name = "sdpa"

    def describe(self, device):
        return _sdpa_description(device)

    returns_lse = True  # through cuDNN's SDPA kernel on CUDA and the flash kernel on the CPU (sdpa_attention_lse)

    @torch.no_grad()
    def forward_lse(self, q_bShd, k_bSgd, v_bSgd, document_ids_bS=None):
        return sdpa_attention_lse(q_bShd, k_bSgd, v_bSgd, document_ids_bS, window=self.window,
                                  softmax_scale=self.softmax_scale)  # fmt: skip

    @torch.no_grad()
    def backward_lse(self, q_bShd, k_bSgd, v_bSgd, out_bShd, lse, dout_bShd, document_ids_bS=None):
        return sdpa_attention_backward(q_bShd, k_bSgd, v_bSgd, out_bShd, lse, dout_bShd, document_ids_bS,
                                       window=self.window, softmax_scale=self.softmax_scale)  # fmt: skip

    def forward(self, q_bShd, k_bSgd, v_bSgd, document_ids_bS=None):
        return sdpa_attention(
            q_bShd, k_bSgd, v_bSgd, document_ids_bS, self.dropout, self.training,
            window=self.window, softmax_scale=self.softmax_scale,
        )  # fmt: skip


def _flash_attn_package():
    try:
        from flash_attn import flash_attn_func  # v2 interface

        return flash_attn_func, "flash_attn (v2)"
    except ImportError:
        pass
    try:
        from flash_attn_interface import flash_attn_func  # v3 (Hopper) interface

        return flash_attn_func, "flash_attn_interface (v3)"
    except ImportError:
        return None, None


class FlashAttnPackage(CoreAttention):
    """The flash_attn package; packed documents (which need its varlen API) go to SDPA's mask."""

    name = "flash"

    @classmethod
    def supports(cls, device, dropout, window=None, softmax_scale=None, softcap=None):
        if softcap is not None:
            return _softcap_refusal(softcap)
        if _flash_attn_package()[0] is None:
            return "the flash_attn package is not installed (pip install flash-attn)"
        if device.type != "cuda":
            return "flash_attn needs a CUDA GPU"
        return None

    def __init__(self, dropout=0.0, device=None, **options):
        super().__init__(dropout, device, **options)
        self.fn = _flash_attn_package()[0]

    def describe(self, device):
        return _flash_attn_package()[1]

    def forward(self, q_bShd, k_bSgd, v_bSgd, document_ids_bS=None):
        if document_ids_bS is not None:
            return sdpa_attention(
                q_bShd, k_bSgd, v_bSgd, document_ids_bS, self.dropout, self.training,
                window=self.window, softmax_scale=self.softmax_scale,
            )  # fmt: skip
        options = {}
        if self.softmax_scale is not None:
            options["softmax_scale"] = self.softmax_scale
        if self.window is not None:
            options["window_size"] = (self.window - 1, 0)  # keys [i - (W - 1), i]
        return self.fn(q_bShd, k_bSgd, v_bSgd, dropout_p=self.dropout if self.training else 0.0, causal=True, **options)


class FlashTritonAttention(CoreAttention):
    """Our kernels (``megatron.kernels``): packed documents and the window skip masked blocks; no dropout."""

    name = "flash_triton"

    @classmethod
    def supports(cls, device, dropout, window=None, softmax_scale=None, softcap=None):
        from megatron import kernels

        if softcap is not None:
            return _softcap_refusal(softcap)
        ok, reason = kernels.is_available()
        if not ok:
            return reason
        if dropout > 0:
            return "it has no attention dropout; set --attention-dropout 0"
        return None

    def describe(self, device):
        return "FlashAttention-Triton (ours)"

    returns_lse = True

    def forward_lse(self, q_bShd, k_bSgd, v_bSgd, document_ids_bS=None):
        from megatron import kernels

        return kernels.flash_attention_forward(q_bShd, k_bSgd, v_bSgd, causal=True, softmax_scale=self.softmax_scale,
                                               document_ids=document_ids_bS, window=self.window)  # fmt: skip

    def backward_lse(self, q_bShd, k_bSgd, v_bSgd, out_bShd, lse, dout_bShd, document_ids_bS=None):
        from megatron import kernels

        return kernels.flash_attention_backward(
            q_bShd, k_bSgd, v_bSgd, out_bShd, lse, dout_bShd, causal=True, softmax_scale=self.softmax_scale,
            document_ids=document_ids_bS, window=self.window,
        )  # fmt: skip

    def forward(self, q_bShd, k_bSgd, v_bSgd, document_ids_bS=None):
        from megatron import kernels

        return kernels.flash_attention(
            q_bShd, k_bSgd, v_bSgd, causal=True, softmax_scale=self.softmax_scale, document_ids=document_ids_bS,
            window=self.window,
        )  # fmt: skip


BACKENDS = {cls.name: cls for cls in (ClassicAttention, SDPAAttention, FlashAttnPackage, FlashTritonAttention)}


def build_backend(
    cfg: AttentionConfig, device: torch.device | None = None, window: int | None = None,
    softmax_scale: float | None = None, softcap: float | None = None,
) -> CoreAttention:  # fmt: skip
    """The configured backend for one layer (window, softmax_scale, softcap: module docstring), checked once
    against the machine; what runs is logged once.

    ``flash`` where it cannot run falls back to SDPA (the same result) and says so; ``flash_triton``
    where it cannot run, or any backend asked for an option it lacks (the soft-cap: classic only), is an error
    naming the reason.
    """
    device = device or torch.device("cpu")
    cls = BACKENDS[cfg.backend]
    options = {"window": window, "softmax_scale": softmax_scale, "softcap": softcap}
    reason = cls.supports(device, cfg.dropout, **options)
    if reason and cls is FlashAttnPackage and SDPAAttention.supports(device, cfg.dropout, **options) is None:
        backend = SDPAAttention(cfg.dropout, device, **options)
        log_once(f"--attention-backend flash cannot run ({reason}): {backend.description} runs instead")
        return backend
    if reason:
        raise RuntimeError(f"--attention-backend {cfg.backend} cannot run: {reason}")
    backend = cls(cfg.dropout, device, **options)
    log_once(backend.description)
    return backend


def document_mask_note(backend: str, seq_length: int, micro_batch_size: int, window: int | None = None) -> str | None:
    """The one line to print when packed documents (--reset-attention-mask) meet a backend that
    builds dense masks, else None. Only the Triton kernel takes document ids (and a sliding window,
    which then joins the dense mask) and skips masked blocks."""
    if backend == "flash_triton":
        return None
    windowed = window is not None and window < seq_length
    gb = (4 if windowed else 3) * micro_batch_size * seq_length**2 / 1e9  # the mask and its boolean factors
    what = "document and sliding-window" if windowed else "dense"
    takes = "document ids and the window" if windowed else "document ids"
    return (
        f"--reset-attention-mask with the {backend} backend builds {what} [b, 1, S, S] masks (about {gb:.1f} GB "
        f"at S={seq_length}, micro batch {micro_batch_size}) and computes every masked score; "
        f"--use-flash-attn-triton takes {takes} and skips masked blocks instead "
        "(22-68x faster at 64K on an H200: docs/results.md#packed-documents)"
    )


def window_mask_note(backend: str, seq_length: int, window: int | None) -> str | None:
    """The one line to print when a sliding window (without packed documents: document_mask_note covers those)
    meets a backend that builds a dense mask for it and computes every score, else None."""
    if window is None or window >= seq_length or backend not in ("classic", "sdpa"):
        return None
    gb = 3 * seq_length**2 / 1e9  # the [1, 1, S, S] mask and its two boolean factors
    return (
        f"a sliding window of {window} with the {backend} backend builds a dense [1, 1, S, S] mask (about "
        f"{gb:.1f} GB at S={seq_length}) and computes every masked score; --use-flash-attn-triton skips the "
        "blocks outside the window (O(S x window) work)"
    )


class ParallelAttention(nn.Module):
    """Self-attention with fused QKV, GQA and RoPE.

    Inputs are this rank's contiguous slice of the sequence, ``x_bsH`` with global
    ``position_ids_bs``; ``document_ids_bS`` (optional) covers the whole sequence.
    ``core_attention`` is the backend, or (under SP) a Ulysses exchange around it;
    ``kv_repeat`` replicates key/value heads when there are fewer than SP ranks.
    ``window``, ``softmax_scale`` and ``softcap`` are this layer's (module docstring), given to its backend;
    ``local_rope``: this layer rotates with the local RoPE (``--rotary-base-local``, Gemma-3's sliding layers).
    """

    def __init__(self, cfg: ModelConfig, attention: AttentionConfig | None = None, device=None, *,
                 window: int | None = None, softmax_scale: float | None = None,
                 softcap: float | None = None, local_rope: bool = False):  # fmt: skip
        super().__init__()
        self.cfg = cfg
        self.h, self.g, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        qkv_bias = cfg.add_bias_linear or cfg.add_qkv_bias
        self.qkv = nn.Linear(cfg.hidden_size, (self.h + 2 * self.g) * self.d, bias=qkv_bias)
        self.dense = nn.Linear(self.h * self.d, cfg.hidden_size, bias=cfg.add_bias_linear)
        self.dense.is_output_projection = True
        if cfg.qk_layernorm:  # per-head RMSNorm of q and k before RoPE (Qwen3; Gemma-3's (1 + w) form)
            self.q_norm, self.k_norm = make_head_norm(cfg), make_head_norm(cfg)
        self.rotary = RotaryEmbedding(cfg, local=local_rope) if cfg.use_rotary_position_embeddings else None
        self.core_attention = build_backend(attention or AttentionConfig(), device, window, softmax_scale, softcap)
        self.kv_repeat = 1

    def project(self, x_bsH, position_ids_bs):
        """Fused QKV projection, q/k norms, RoPE and kv-head replication: this rank's q [b, s, h, d], k and v
        [b, s, g', d]."""
        b, s, _ = x_bsH.shape
        q, k, v = self.qkv(x_bsH).split([self.h * self.d, self.g * self.d, self.g * self.d], dim=-1)
        q_bshd, k_bsgd, v_bsgd = q.view(b, s, self.h, self.d), k.view(b, s, self.g, self.d), v.view(b, s, self.g, self.d)
        if self.cfg.qk_layernorm:
            q_bshd, k_bsgd = self.q_norm(q_bshd), self.k_norm(k_bsgd)
        if self.rotary is not None:
            q_bshd, k_bsgd = self.rotary(q_bshd, k_bsgd, position_ids_bs)
        if self.kv_repeat > 1:
            k_bsgd = k_bsgd.repeat_interleave(self.kv_repeat, dim=2)
            v_bsgd = v_bsgd.repeat_interleave(self.kv_repeat, dim=2)
        return q_bshd, k_bsgd, v_bsgd

    def attend(self, q_bshd, k_bsgd, v_bsgd, document_ids_bS=None):
        """The core attention (under SP: [b, s, h, d] -> [b, S, h/sp, d] -> attention -> back to [b, s, h, d])."""
        return self.core_attention(q_bshd, k_bsgd, v_bsgd, document_ids_bS)

    def output(self, out_bshd):
        """The output projection of the attention heads: [b, s, h, d] -> [b, s, H]."""
        return self.dense(out_bshd.flatten(2))

    def forward(self, x_bsH, position_ids_bs, document_ids_bS=None):
        return self.output(self.attend(*self.project(x_bsH, position_ids_bs), document_ids_bS))
