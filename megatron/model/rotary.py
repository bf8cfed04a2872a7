"""Rotary position embeddings (RoPE) in the Llama / Hugging Face convention, with RoPE scaling.

Shapes: q_bshd [batch, local seq, heads, head dim]; position_ids_bs are *global* positions,
so each sequence-parallel rank rotates its own slice exactly as SP=1 would.
The "rotate half" layout matches ``transformers``' Llama, so its weights load unpermuted.

``rope_frequencies`` computes what transformers' ``modeling_rope_utils`` computes for the same
config, in the same fp32 operations: the inverse frequencies ``inv_freq [head_dim / 2]`` and the
attention factor that multiplies cos and sin (so q and k, and the scores by its square):

  default  1 / theta^(2i/d)
  linear   default / factor (positions interpolated by the factor)
  llama3   Llama 3.1: wavelengths above original / low_freq_factor divided by the factor, below
           original / high_freq_factor kept, a smooth blend in between
  yarn     NTK-by-parts: a ramp between extrapolated and interpolated frequencies over the
           dimensions whose rotations per original length lie between beta_slow and beta_fast,
           and the attention factor 0.1 ln(factor) + 1 (or DeepSeek's mscale ratio)
  dynamic  NTK-aware base theta * (factor * L / max_pos - (factor - 1))^(d / (d - 2)) when the
           longest position L of the batch exceeds max_position_embeddings, else default
"""

from __future__ import annotations

import math

import torch

from megatron.config import ModelConfig


def inv_freq(head_dim: int, base: float, device=None) -> torch.Tensor:
    """The unscaled rotation frequencies, fp32, [head_dim / 2]."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / head_dim
    return 1.0 / (base**exponents)


def _llama3(cfg: ModelConfig, device) -> torch.Tensor:
    freqs = inv_freq(cfg.head_dim, cfg.rotary_base, device)
    factor, low, high = cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    old_context = cfg.rope_original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / freqs
    scaled = torch.where(wavelen > low_freq_wavelen, freqs / factor, freqs)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def yarn_attention_factor(cfg: ModelConfig) -> float:
    """The multiplier of cos and sin under yarn: explicit, DeepSeek's mscale ratio, or 0.1 ln(factor) + 1."""
    if cfg.rope_attention_factor is not None:
        return cfg.rope_attention_factor

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    factor = cfg.rope_scaling_factor
    if cfg.yarn_mscale and cfg.yarn_mscale_all_dim:
        return float(mscale(factor, cfg.yarn_mscale) / mscale(factor, cfg.yarn_mscale_all_dim))
    return mscale(factor)


def _yarn(cfg: ModelConfig, device) -> torch.Tensor:
    dim, base, factor = cfg.head_dim, cfg.rotary_base, cfg.rope_scaling_factor
    original = cfg.rope_original_max_position_embeddings

    def correction_dim(rotations):  # the dimension that turns `rotations` times over the original context
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(cfg.yarn_beta_fast), correction_dim(cfg.yarn_beta_slow)
    if cfg.yarn_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(device=device, dtype=torch.float) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp.to(device=device, dtype=torch.float)
    return interpolation * (1 - keep) + extrapolation * keep


def _dynamic(cfg: ModelConfig, device, extent: torch.Tensor | None) -> torch.Tensor:
    dim, base, factor, max_pos = cfg.head_dim, cfg.rotary_base, cfg.rope_scaling_factor, cfg.max_position_embeddings
    at_max = base * ((factor * max_pos / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    short = inv_freq(dim, at_max, device)
    if extent is None:
        return short
    length = torch.maximum(extent, torch.tensor(max_pos, dtype=extent.dtype, device=extent.device))
    grown = base * ((factor * length / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    long = 1.0 / (grown**exponents)
    return torch.where(extent > max_pos, long, short)


def rope_frequencies(cfg: ModelConfig, device=None, extent: torch.Tensor | None = None):
    """(inv_freq [head_dim / 2] fp32, attention factor) of ``cfg``'s RoPE, as transformers computes them.

    ``extent`` (dynamic only): the longest position + 1 the batch holds, a 0-d integer tensor
    (None: at most max_position_embeddings, the unscaled frequencies).
    """
    kind, d = cfg.rope_scaling_type, cfg.head_dim
    if kind is None:
        return inv_freq(d, cfg.rotary_base, device), 1.0
    if kind == "linear":
        return inv_freq(d, cfg.rotary_base, device) / cfg.rope_scaling_factor, 1.0
    if kind == "llama3":
        return _llama3(cfg, device), 1.0
    if kind == "yarn":
        return _yarn(cfg, device), yarn_attention_factor(cfg)
    if kind == "dynamic":
        return _dynamic(cfg, device, extent), 1.0
    raise ValueError(f"RoPE scaling {kind!r} is not implemented")


class RotaryEmbedding:
    """``cfg``'s RoPE applied to q and k (held by ParallelAttention; no parameters, no buffers).

    Static types compute their frequencies once per device. Dynamic NTK depends on the longest
    position of the batch, and here position ids are global: under SP no rank holds the whole
    sequence, so ``group`` (set by ``megatron.parallelize.apply_ulysses``) takes the maximum over
    the SP ranks (one all-reduce of a scalar per layer, no host sync), and each rank rotates with
    the frequencies transformers computes for the micro batch's full sequences. transformers keeps
    the longest length it has seen between calls (an inference cache); here every forward uses
    its own batch's, which is the same on the first call and in training.
    """

    def __init__(self, cfg: ModelConfig, fused: bool | None = None):
        self.cfg, self.fused, self.group = cfg, fused, None
        self._static: dict = {}

    def frequencies(self, position_ids_bs: torch.Tensor, device) -> tuple:
        if self.cfg.rope_scaling_type != "dynamic":
            if device not in self._static:
                self._static[device] = rope_frequencies(self.cfg, device)
            return self._static[device]
        extent = position_ids_bs.max().to(torch.int64) + 1
        if self.group is not None:
            torch.distributed.all_reduce(extent, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return rope_frequencies(self.cfg, device, extent)

    def __call__(self, q_bshd, k_bsgd, position_ids_bs):
        freqs, factor = self.frequencies(position_ids_bs, q_bshd.device)
        return apply_rotary(q_bshd, k_bsgd, position_ids_bs, freqs, self.fused, factor)


def rotary_cos_sin(position_ids_bs: torch.Tensor, freqs, dtype: torch.dtype, attention_factor: float = 1.0):
    """cos and sin of shape [b, s, 1, head_dim], computed in fp32 (times the attention factor), then cast."""
    freqs_bsf = position_ids_bs.float()[..., None] * freqs.to(position_ids_bs.device, torch.float)
    emb = torch.cat([freqs_bsf, freqs_bsf], dim=-1)[:, :, None, :]
    return (emb.cos() * attention_factor).to(dtype), (emb.sin() * attention_factor).to(dtype)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(q_bshd, k_bsgd, position_ids_bs, freqs, fused: bool | None = None, attention_factor: float = 1.0):
    """Rotate q and k by ``freqs`` (inv_freq [d / 2], or a float theta for plain RoPE), cos and sin
    times ``attention_factor``. ``fused`` (default: on CUDA when supported) uses the Triton kernel of
    ``megatron.kernels.rope`` (one kernel per tensor, angles in fp32, contiguous output);
    otherwise the eager rotate-half formula."""
    from megatron.kernels import rope

    if not torch.is_tensor(freqs):
        freqs = inv_freq(q_bshd.shape[-1], freqs, q_bshd.device)
    if fused is None:
        fused = q_bshd.is_cuda and rope.supported(q_bshd)
    if fused:
        return (rope.fused_rotary(q_bshd, position_ids_bs, freqs, attention_factor),
                rope.fused_rotary(k_bsgd, position_ids_bs, freqs, attention_factor))  # fmt: skip
    cos, sin = rotary_cos_sin(position_ids_bs, freqs, q_bshd.dtype, attention_factor)
    q = q_bshd * cos + _rotate_half(q_bshd) * sin
    k = k_bsgd * cos + _rotate_half(k_bsgd) * sin
    return q, k
