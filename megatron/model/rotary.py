"""Rotary position embeddings (RoPE) in the Llama / Hugging Face convention.

Shapes: q_bshd [batch, local seq, heads, head dim]; position_ids_bs are *global* positions,
so each sequence-parallel rank rotates its own slice exactly as SP=1 would.
The "rotate half" layout matches ``transformers``' Llama, so its weights load unpermuted.
"""

from __future__ import annotations

from typing import Optional

import torch


def inv_freq(head_dim: int, base: float, device=None) -> torch.Tensor:
    """The rotation frequencies, fp32, [head_dim / 2]."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))


def rotary_cos_sin(position_ids_bs: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype):
    """cos and sin of shape [b, s, 1, head_dim], computed in fp32."""
    freqs_bsf = position_ids_bs.float()[..., None] * inv_freq(head_dim, base, position_ids_bs.device)
    emb = torch.cat([freqs_bsf, freqs_bsf], dim=-1)[:, :, None, :]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(q_bshd, k_bsgd, position_ids_bs, base: float, fused: Optional[bool] = None):
    """Rotate q and k. ``fused`` (default: on CUDA when supported) uses the Triton kernel of
    ``megatron.kernels.rope`` (one kernel per tensor, angles in fp32, contiguous output);
    otherwise the eager rotate-half formula."""
    from megatron.kernels import rope

    if fused is None:
        fused = q_bshd.is_cuda and rope.supported(q_bshd)
    if fused:
        freqs = inv_freq(q_bshd.shape[-1], base, q_bshd.device)
        return rope.fused_rotary(q_bshd, position_ids_bs, freqs), rope.fused_rotary(
            k_bsgd, position_ids_bs, freqs
        )
    cos, sin = rotary_cos_sin(position_ids_bs, q_bshd.shape[-1], base, q_bshd.dtype)
    q = q_bshd * cos + _rotate_half(q_bshd) * sin
    k = k_bsgd * cos + _rotate_half(k_bsgd) * sin
    return q, k
