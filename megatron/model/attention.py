"""Attention: the one place that chooses the attention backend, and ParallelAttention.

Shape legend: b batch, s local (per SP rank) sequence, S full sequence, h query heads,
g key/value heads, d head dim. Core attention takes ``q_bShd, k_bSgd, v_bSgd`` (the whole
sequence for a subset of heads, as after DeepSpeed-Ulysses' all-to-all) and is causal.

Backends (``ModelConfig.attention_backend``):
  classic       explicit fp32 softmax(QK^T)V; the reference, always available.
  sdpa          torch scaled_dot_product_attention (cuDNN, then flash, then the rest on CUDA).
  flash         the flash_attn package when installed, else SDPA as above (--use-flash-attn).
  flash_triton  our Triton FlashAttention kernels (--use-flash-attn-triton).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from megatron.config import ModelConfig
from megatron.model.rotary import apply_rotary
from megatron.model.ulysses import FusedUlyssesAttention, OverlappedUlyssesAttention

_LOGGED = set()


def _log_once(msg: str) -> None:
    if msg not in _LOGGED:
        _LOGGED.add(msg)
        rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        if rank0:
            print(f"> attention: {msg}", flush=True)


def _document_mask(document_ids: torch.Tensor, S: int, device) -> torch.Tensor:
    """Boolean [b, 1, S, S] mask: causal and within the same document."""
    causal = torch.ones(S, S, dtype=torch.bool, device=device).tril()
    same_doc = document_ids[:, :, None] == document_ids[:, None, :]
    return (causal[None] & same_doc)[:, None]


def classic_attention(q, k, v, document_ids=None, dropout_p=0.0, training=False):
    """Reference attention with an explicit fp32 softmax (materializes [b, h, S, S])."""
    b, S, h, d = q.shape
    rep = h // k.shape[2]
    k = k.repeat_interleave(rep, dim=2) if rep > 1 else k
    v = v.repeat_interleave(rep, dim=2) if rep > 1 else v
    acc = torch.promote_types(q.dtype, torch.float32)  # at least fp32 (fp64 stays fp64 for tests)
    scores = torch.einsum("bshd,bthd->bhst", q.to(acc), k.to(acc)) / math.sqrt(d)
    if document_ids is None:
        mask = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()[None, None]
    else:
        mask = _document_mask(document_ids, S, q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0 and training:
        probs = F.dropout(probs, p=dropout_p)
    out = torch.einsum("bhst,bthd->bshd", probs.to(v.dtype), v)
    return out


def _sdpa_backends():
    from torch.nn.attention import SDPBackend

    return [
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ]


def sdpa_attention(q, k, v, document_ids=None, dropout_p=0.0, training=False):
    """torch SDPA; on CUDA the cuDNN backend is preferred, then FlashAttention-2."""
    from torch.nn.attention import sdpa_kernel

    q_bhSd, k_bgSd, v_bgSd = (t.transpose(1, 2) for t in (q, k, v))
    gqa = q.shape[2] != k.shape[2]
    mask = None if document_ids is None else _document_mask(document_ids, q.shape[1], q.device)
    with sdpa_kernel(_sdpa_backends(), set_priority=True):
        out = F.scaled_dot_product_attention(
            q_bhSd,
            k_bgSd,
            v_bgSd,
            attn_mask=mask,
            dropout_p=dropout_p if training else 0.0,
            is_causal=mask is None,
            enable_gqa=gqa,
        )
    return out.transpose(1, 2)


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


def select_core_attention(cfg: ModelConfig, device: torch.device) -> tuple[Callable, str]:
    """Return (core_attention_fn, description) for the configured backend; checks run once here."""
    name = cfg.attention_backend
    dropout = cfg.attention_dropout
    if name == "classic":
        return _bind(classic_attention, dropout), "classic (explicit fp32 softmax)"
    if name == "sdpa":
        return _bind(sdpa_attention, dropout), f"torch SDPA ({_sdpa_description(device)})"
    if name == "flash":
        fn, desc = _flash_attn_package()
        if fn is not None and device.type == "cuda":

            def flash(q, k, v, document_ids=None, training=False):
                if document_ids is not None:  # packed documents need the varlen API; SDPA handles masks
                    return sdpa_attention(q, k, v, document_ids, dropout, training)
                return fn(q, k, v, dropout_p=dropout if training else 0.0, causal=True)

            return flash, desc
        return _bind(sdpa_attention, dropout), (
            f"flash_attn not installed or no GPU: torch SDPA ({_sdpa_description(device)})"
        )
    if name == "flash_triton":
        from megatron.model import flash_attn_triton as fat

        ok, reason = fat.is_available()
        if not ok:
            raise RuntimeError(f"--use-flash-attn-triton cannot run: {reason}")
        if dropout > 0:
            raise RuntimeError("--use-flash-attn-triton has no attention dropout; set --attention-dropout 0")

        def triton_attn(q, k, v, document_ids=None, training=False):
            return fat.flash_attn_triton(q, k, v, causal=True, document_ids=document_ids)

        return triton_attn, "FlashAttention-Triton (ours)"
    raise ValueError(f"unknown attention backend {name}")


def document_mask_note(backend: str, seq_length: int, micro_batch_size: int) -> Optional[str]:
    """The one line to print when packed documents (--reset-attention-mask) meet a backend that
    builds dense masks, else None. Only the Triton kernel takes document ids and skips masked blocks."""
    if backend == "flash_triton":
        return None
    gb = 3 * micro_batch_size * seq_length**2 / 1e9  # the mask and its two boolean factors
    return (
        f"--reset-attention-mask with the {backend} backend builds dense [b, 1, S, S] masks (about {gb:.1f} GB "
        f"at S={seq_length}, micro batch {micro_batch_size}) and computes every masked score; "
        "--use-flash-attn-triton takes document ids and skips masked blocks instead "
        "(22-68x faster at 64K on an H200: docs/benchmarks/attention_documents/)"
    )


def _bind(fn, dropout):
    def core(q, k, v, document_ids=None, training=False):
        return fn(q, k, v, document_ids, dropout, training)

    return core


def _sdpa_description(device: torch.device) -> str:
    if device.type != "cuda":
        return "CPU kernels"
    cudnn = hasattr(torch.backends.cuda, "cudnn_sdp_enabled") and torch.backends.cuda.cudnn_sdp_enabled()
    return "priority cuDNN > flash > efficient > math" + ("" if cudnn else " (cuDNN SDP disabled)")


class CoreAttention(nn.Module):
    """Local attention over whole sequences of a head subset; wraps the chosen backend."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, q_bShd, k_bSgd, v_bSgd, document_ids=None):
        return self.fn(q_bShd, k_bSgd, v_bSgd, document_ids=document_ids, training=self.training)


class ParallelAttention(nn.Module):
    """Self-attention with fused QKV, GQA and RoPE, sequence-parallel through a Ulysses exchange
    (ours, fused, or DeepSpeed's DistributedAttention: ``ModelConfig.ulysses_exchange``).

    Inputs are this rank's contiguous slice of the sequence, ``x_bsH`` with global
    ``position_ids_bs``; ``document_ids_bS`` (optional) covers the whole sequence.
    """

    def __init__(self, cfg: ModelConfig, layer_number: int, sp_group=None, device=None):
        super().__init__()
        self.cfg = cfg
        self.h, self.g, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, (self.h + 2 * self.g) * self.d, bias=cfg.add_bias_linear)
        self.dense = nn.Linear(self.h * self.d, cfg.hidden_size, bias=cfg.add_bias_linear)
        self.dense.is_output_projection = True
        device = device or torch.device("cpu")
        fn, desc = select_core_attention(cfg, device)
        _log_once(desc)
        self.core_attention = CoreAttention(fn)
        self.sp_size = 1 if sp_group is None else torch.distributed.get_world_size(sp_group)
        # Fewer kv heads than SP ranks: replicate them so each rank gets one (see replicate_kv).
        self.kv_repeat = self.sp_size // self.g if self.g < self.sp_size else 1
        if self.sp_size > 1 and cfg.ulysses_exchange == "deepspeed":
            from deepspeed.sequence.layer import DistributedAttention

            self.dist_attn = DistributedAttention(self.core_attention, sp_group, scatter_idx=2, gather_idx=1)
        elif self.sp_size > 1 and cfg.ulysses_exchange == "overlap":
            kv_per_rank = self.g * self.kv_repeat // self.sp_size
            chunks = math.gcd(cfg.ulysses_overlap_chunks, kv_per_rank)
            if chunks != cfg.ulysses_overlap_chunks:
                _log_once(f"--ulysses-overlap-chunks {cfg.ulysses_overlap_chunks} -> {chunks}: "
                          f"the chunk count must divide the {kv_per_rank} key/value heads per rank")  # fmt: skip
            self.dist_attn = OverlappedUlyssesAttention(self.core_attention, sp_group, chunks)
        elif self.sp_size > 1:
            self.dist_attn = FusedUlyssesAttention(self.core_attention, sp_group)
        else:
            self.dist_attn = None

    def project(self, x_bsH, position_ids_bs):
        """Fused QKV projection, RoPE and kv-head replication: this rank's q [b, s, h, d], k and v [b, s, g', d]."""
        b, s, _ = x_bsH.shape
        qkv = self.qkv(x_bsH)
        q, k, v = qkv.split([self.h * self.d, self.g * self.d, self.g * self.d], dim=-1)
        q_bshd = q.view(b, s, self.h, self.d)
        k_bsgd = k.view(b, s, self.g, self.d)
        v_bsgd = v.view(b, s, self.g, self.d)
        if self.cfg.use_rotary_position_embeddings:
            q_bshd, k_bsgd = apply_rotary(q_bshd, k_bsgd, position_ids_bs, self.cfg.rotary_base)
        if self.kv_repeat > 1:
            k_bsgd = k_bsgd.repeat_interleave(self.kv_repeat, dim=2)
            v_bsgd = v_bsgd.repeat_interleave(self.kv_repeat, dim=2)
        return q_bshd, k_bsgd, v_bsgd

    def attend(self, q_bshd, k_bsgd, v_bsgd, document_ids_bS=None):
        """The Ulysses exchange around the core attention: [b, s, h, d] -> [b, S, h/sp, d] -> back to [b, s, h, d]."""
        if isinstance(self.dist_attn, (FusedUlyssesAttention, OverlappedUlyssesAttention)):
            return self.dist_attn(q_bshd, k_bsgd, v_bsgd, document_ids_bS)
        if self.dist_attn is not None:  # DeepSpeed's: (q, k, v, batch_dim_idx, rotary_pos_emb, *args)
            return self.dist_attn(q_bshd, k_bsgd, v_bsgd, 0, None, document_ids_bS)
        return self.core_attention(q_bshd, k_bsgd, v_bsgd, document_ids_bS)

    def output(self, out_bshd):
        """The output projection of the attention heads: [b, s, h, d] -> [b, s, H]."""
        return self.dense(out_bshd.flatten(2))

    def forward(self, x_bsH, position_ids_bs, document_ids_bS=None):
        return self.output(self.attend(*self.project(x_bsH, position_ids_bs), document_ids_bS))
