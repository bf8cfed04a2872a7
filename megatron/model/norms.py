"""Normalization layers, by ``ModelConfig.normalization``: LayerNorm (GPT), RMSNorm (Llama) and GemmaRMSNorm.

GemmaRMSNorm is transformers' Gemma/Gemma-2/Gemma-3 RMSNorm, in the same operations: x in fp32,
x * rsqrt(mean(x^2) + eps), times (1 + w) in fp32, then cast back to x's dtype (Llama casts before multiplying
by w; Gemma after). Its weights are offsets from 1 (zeros at initialization, as transformers initializes them).
"""

from __future__ import annotations

import torch
from torch import nn

from megatron.config import ModelConfig


class GemmaRMSNorm(nn.Module):
    """RMSNorm with a (1 + weight) scale, computed in fp32 (transformers' GemmaRMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        x32 = x.float()
        out = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * (1.0 + self.weight.float())).type_as(x)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    """``cfg``'s normalization over ``dim`` features (default the hidden size)."""
    dim = dim or cfg.hidden_size
    if cfg.normalization == "GemmaRMSNorm":
        return GemmaRMSNorm(dim, eps=cfg.norm_epsilon)
    if cfg.normalization == "RMSNorm":
        return nn.RMSNorm(dim, eps=cfg.norm_epsilon)
    return nn.LayerNorm(dim, eps=cfg.norm_epsilon)


def make_head_norm(cfg: ModelConfig) -> nn.Module:
    """The per-head norm of q and k (--qk-layernorm): RMSNorm (Qwen3), or Gemma's form with GemmaRMSNorm (Gemma-3)."""
    if cfg.normalization == "GemmaRMSNorm":
        return GemmaRMSNorm(cfg.head_dim, eps=cfg.norm_epsilon)
    return nn.RMSNorm(cfg.head_dim, eps=cfg.norm_epsilon)
