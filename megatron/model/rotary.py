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
  longrope Phi-3 (LongRoPE): 1 / (f_i theta^(2i/d)) with the per-frequency factors f = long_factor when
           the longest position + 1 of the batch exceeds original_max_position_embeddings, else
           short_factor; the attention factor sqrt(1 + ln(factor) / ln(original)) (or the given
           one) in both regimes

With ``--rotary-percent`` below 1 (partial rotary: GPT-NeoX's rotary_pct, HF's partial_rotary_factor)
``d`` above is the rotary dim ``int(head_dim * percent)``, as transformers computes it: the frequencies
rotate the first ``d`` dimensions of each head (rotate-half within them) and the others pass through.

With ``--rotary-base-local`` (Gemma-3's rope_local_base_freq) the sliding-window layers rotate with plain
RoPE at that base (``local=True``) and the scaling above applies to the full-attention layers only, as
transformers' Gemma-3 computes one RoPE per layer type.
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
    freqs = inv_freq(cfg.rotary_dim, cfg.rotary_base, device)
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
    dim, base, factor = cfg.rotary_dim, cfg.rotary_base, cfg.rope_scaling_factor
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
    dim, base, factor, max_pos = cfg.rotary_dim, cfg.rotary_base, cfg.rope_scaling_factor, cfg.max_position_embeddings
    at_max = base * ((factor * max_pos / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    short = inv_freq(dim, at_max, device)
    if extent is None:
        return short
    length = torch.maximum(extent, torch.tensor(max_pos, dtype=extent.dtype, device=extent.device))
    grown = base * ((factor * length / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    long = 1.0 / (grown**exponents)
    return torch.where(extent > max_pos, long, short)


def longrope_attention_factor(cfg: ModelConfig) -> float:
    """The multiplier of cos and sin under longrope (both regimes): explicit, or sqrt(1 + ln(factor) / ln(original))
    (1 for a factor of at most 1), transformers' _compute_longrope_parameters."""
    if cfg.rope_attention_factor is not None:
        return cfg.rope_attention_factor
    factor, original = cfg.rope_scaling_factor, cfg.rope_original_max_position_embeddings
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


def longrope_frequencies(cfg: ModelConfig, device=None) -> tuple:
    """longrope's (short, long) inv_freq [rotary dim / 2]: 1 / (factor_i * theta^(2i/d)), in transformers' fp32 ops."""
    d = cfg.rotary_dim
    exponents = torch.arange(0, d, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / d
    powers = cfg.rotary_base**exponents
    short = 1.0 / (torch.tensor(cfg.rope_short_factor, dtype=torch.float32, device=device) * powers)
    long = 1.0 / (torch.tensor(cfg.rope_long_factor, dtype=torch.float32, device=device) * powers)
    return short, long


def rope_frequencies(cfg: ModelConfig, device=None, extent: torch.Tensor | None = None, local: bool = False):
    """(inv_freq [rotary dim / 2] fp32, attention factor) of ``cfg``'s RoPE, as transformers computes them.

    ``extent`` (dynamic, longrope): the longest position + 1 the batch holds, a 0-d integer tensor
    (None: at most max_position_embeddings, the unscaled frequencies; longrope's short factors). ``local``: the
    sliding-window layers' RoPE of a model with ``--rotary-base-local`` (plain, at that base).
    """
    kind, d = cfg.rope_scaling_type, cfg.rotary_dim
    if local:
        return inv_freq(d, cfg.rotary_base_local, device), 1.0
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
    if kind == "longrope":
        short, long = longrope_frequencies(cfg, device)
        if extent is None:
            return short, longrope_attention_factor(cfg)
        freqs = torch.where(extent > cfg.rope_original_max_position_embeddings, long, short)
        return freqs, longrope_attention_factor(cfg)
    raise ValueError(f"RoPE scaling {kind!r} is not implemented")


class RotaryEmbedding:
    """``cfg``'s RoPE applied to q and k (held by ParallelAttention; no parameters, no buffers).

    Static types compute their frequencies once per device. Dynamic NTK depends on the longest
    position of the batch, and here position ids are global: under SP no rank holds the whole
    sequence, so ``group`` (set by ``megatron.parallelize.apply_ulysses``) takes the maximum over
    the SP ranks (one all-reduce of a scalar per layer, no host sync), and each rank rotates with
    the frequencies transformers computes for the micro batch's full sequences. transformers keeps
    the longest length it has seen between calls (an inference cache); here every forward uses
    its own batch's, which is the same on the first call and in training. ``local``: a sliding-window
    layer of a model with ``--rotary-base-local`` (static, plain RoPE at that base).

    longrope switches between its short and long factors by the same global extent (transformers'
    rule: long when the longest position + 1 exceeds original_max_position_embeddings), so SP=N rotates
    every token as SP=1 does even when only the last rank's positions pass the original length; both
    frequency sets are computed once per device and the choice is a ``torch.where`` on the device.
    """

    def __init__(self, cfg: ModelConfig, fused: bool | None = None, local: bool = False):
        self.cfg, self.fused, self.group, self.local = cfg, fused, None, local
        self._static: dict = {}

    def frequencies(self, position_ids_bs: torch.Tensor, device) -> tuple:
        kind = self.cfg.rope_scaling_type
        if self.local or kind not in ("dynamic", "longrope"):
            if device not in self._static:
                self._static[device] = rope_frequencies(self.cfg, device, local=self.local)
            return self._static[device]
        extent = position_ids_bs.max().to(torch.int64) + 1
        if self.group is not None:
            torch.distributed.all_reduce(extent, op=torch.distributed.ReduceOp.MAX, group=self.group)
        if kind == "dynamic":
            return rope_frequencies(self.cfg, device, extent)
        if device not in self._static:
            self._static[device] = (*longrope_frequencies(self.cfg, device), longrope_attention_factor(self.cfg))
        short, long, factor = self._static[device]
        return torch.where(extent > self.cfg.rope_original_max_position_embeddings, long, short), factor

    def __call__(self, q_bshd, k_bsgd, position_ids_bs):
        freqs, factor = self.frequencies(position_ids_bs, q_bshd.device)
        return apply_rotary(q_bshd, k_bsgd, position_ids_bs, freqs, self.fused, factor)


def rotary_cos_sin(position_ids_bs: torch.Tensor, freqs, dtype: torch.dtype, attention_factor: float = 1.0):
    """cos and sin of shape [b, s, 1, rotary dim = 2 * len(freqs)], computed in fp32 (times the attention factor),
    then cast."""
    freqs_bsf = position_ids_bs.float()[..., None] * freqs.to(position_ids_bs.device, torch.float)
    emb = torch.cat([freqs_bsf, freqs_bsf], dim=-1)[:, :, None, :]
    return (emb.cos() * attention_factor).to(dtype), (emb.sin() * attention_factor).to(dtype)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(q_bshd, k_bsgd, position_ids_bs, freqs, fused: bool | None = None, attention_factor: float = 1.0):
    """Rotate q and k by ``freqs`` (inv_freq [r / 2], or a float theta for plain RoPE over the whole head), cos and
    sin times ``attention_factor``; r < d (partial rotary) rotates the first r dimensions of each head and passes the
    rest through, as transformers' GPT-NeoX and Phi-3 do. ``fused`` (default: on CUDA when supported) uses the
    Triton kernel of ``megatron.kernels.rope`` (one kernel per tensor, angles in fp32, contiguous output, the
    pass-through dimensions copied in the same kernel); otherwise the eager rotate-half formula."""
    from megatron.kernels import rope

    if not torch.is_tensor(freqs):
        freqs = inv_freq(q_bshd.shape[-1], freqs, q_bshd.device)
    if fused is None:
        fused = q_bshd.is_cuda and rope.supported(q_bshd)
    if fused:
        return (rope.fused_rotary(q_bshd, position_ids_bs, freqs, attention_factor),
                rope.fused_rotary(k_bsgd, position_ids_bs, freqs, attention_factor))  # fmt: skip
    cos, sin = rotary_cos_sin(position_ids_bs, freqs, q_bshd.dtype, attention_factor)
    r = cos.shape[-1]
    if r == q_bshd.shape[-1]:
        return q_bshd * cos + _rotate_half(q_bshd) * sin, k_bsgd * cos + _rotate_half(k_bsgd) * sin
    q_rot, q_pass = q_bshd[..., :r], q_bshd[..., r:]
    k_rot, k_pass = k_bsgd[..., :r], k_bsgd[..., r:]
    q = torch.cat([q_rot * cos + _rotate_half(q_rot) * sin, q_pass], dim=-1)
    k = torch.cat([k_rot * cos + _rotate_half(k_rot) * sin, k_pass], dim=-1)
    return q, k
