"""Typed configuration: the one source of truth for a run.

Each field is declared once here, with a one-line docstring. From these dataclasses
``megatron.arguments`` derives the command line (flag, aliases, ``--help`` text), the YAML keys
and the flag reference (``docs/flags.md``); ``model_args.json`` holds the fields marked
``shape`` (what fixes the weights). ``__post_init__`` validates what can be checked without
knowing the world size; ``Config.resolve`` adds the world size and the tokenizer's vocabulary
once and returns the frozen config a run uses. Each error is a ``ConfigError`` whose message
names the problem and the fix.

Sections: ``model`` (shape and numerics of the weights), ``attention`` (backend and the Ulysses
exchange), ``memory`` (recomputation, tiling, offload), ``parallel`` (SP, ZeRO, process
groups), ``data``, ``train``, ``checkpoint`` (save, load, exit policy), ``logging``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from megatron.config_fields import (  # noqa: F401  (re-exported: the names users import from megatron.config)
    ATTENTION_BACKENDS,
    LAYER_TYPES,
    NORMALIZATIONS,
    ROPE_SCALING_TYPES,
    ULYSSES_EXCHANGES,
    ConfigError,
    _choice,
    _fill,
    opt,
)


@dataclass(frozen=True)
class ModelConfig:
    num_layers: int = opt(2, shape=True)
    """Number of decoder layers."""
    hidden_size: int = opt(64, shape=True)
    """Width of the residual stream."""
    ffn_hidden_size: int | None = opt(None, shape=True)
    """MLP inner width; default 4 x hidden (or 8/3 x hidden rounded up to 64 with SwiGLU)."""
    num_attention_heads: int = opt(4, shape=True)
    """Query heads."""
    num_key_value_heads: int | None = opt(None, aliases=("--num-query-groups",), shape=True)
    """Key/value heads (grouped-query attention); default as many as query heads."""
    kv_channels: int | None = opt(None, shape=True)
    """Head dimension; default hidden / heads (Qwen3 and Mistral-Nemo set their own: heads x head dim may differ
    from the hidden size)."""
    seq_length: int = 128
    """Tokens per training sample."""
    max_position_embeddings: int | None = opt(None, shape=True, override="rotary")
    """Size of the learned position table; default the sequence length. With RoPE, the context the model is
    meant for (HF's max_position_embeddings; dynamic NTK scales beyond it), which --load may change."""
    vocab_size: int = opt(256, shape=True)
    """Vocabulary size before padding (set from the tokenizer; give it for --mock-data)."""
    make_vocab_size_divisible_by: int = opt(128, shape=True)
    """Pad the embedding table to a multiple of this (faster matmuls)."""
    use_rotary_position_embeddings: bool = opt(False, shape=True)
    """Rotary position embeddings (Llama) instead of learned absolute positions (GPT)."""
    rotary_base: float = opt(10000.0, aliases=("--rope-theta",), shape=True, override=True)
    """RoPE theta (the base of the rotation frequencies)."""
    rotary_base_local: float | None = opt(None, shape=True, override=True)
    """RoPE theta of the sliding-window layers (Gemma-3's rope_local_base_freq): they rotate with plain RoPE at this
    base, and --rotary-base and --rope-scaling-type apply to the full-attention layers only; default: one RoPE for
    every layer."""
    rope_scaling_type: str | None = opt(None, choices=("none",) + ROPE_SCALING_TYPES, shape=True, override=True)
    """RoPE scaling for a longer context, computed as transformers does: linear (positions / factor), llama3
    (Llama 3.1: low frequencies / factor, a smooth band), yarn (NTK-by-parts and an attention factor on cos/sin),
    dynamic (NTK base from the longest position of the batch, when past --max-position-embeddings), longrope (Phi-3:
    per-frequency --rope-short-factor / --rope-long-factor, chosen by the global sequence length, and an attention
    factor on cos/sin); none (default) for plain RoPE."""
    rope_scaling_factor: float = opt(1.0, shape=True, override=True)
    """RoPE scaling factor: the new context / the original one (linear, llama3, yarn, dynamic; longrope: only its
    default attention factor sqrt(1 + ln(factor) / ln(original)) uses it, HF's max_position_embeddings / original
    when its config has no factor)."""
    rope_original_max_position_embeddings: int | None = opt(None, shape=True, override=True)
    """The context the scaled checkpoint was pretrained at (llama3, yarn, longrope; required by them)."""
    rope_low_freq_factor: float = opt(1.0, shape=True, override=True)
    """llama3: wavelengths above original length / this are divided by the factor."""
    rope_high_freq_factor: float = opt(4.0, shape=True, override=True)
    """llama3: wavelengths below original length / this are kept; in between, a smooth blend."""
    yarn_beta_fast: float = opt(32.0, shape=True, override=True)
    """yarn: rotations per original length above which frequencies are kept (extrapolated)."""
    yarn_beta_slow: float = opt(1.0, shape=True, override=True)
    """yarn: rotations per original length below which frequencies are divided by the factor (interpolated)."""
    yarn_mscale: float | None = opt(None, shape=True, override=True)
    """yarn: with --yarn-mscale-all-dim, the attention factor is mscale(factor, this) / mscale(factor, that)
    (DeepSeek's); default 0.1 ln(factor) + 1."""
    yarn_mscale_all_dim: float | None = opt(None, shape=True, override=True)
    """yarn: the denominator's mscale of the attention factor (with --yarn-mscale)."""
    yarn_truncate: bool = opt(True, shape=True, override=True)
    """yarn: round the correction range to whole dimensions (transformers' default; gpt-oss turns it off)."""
    rope_attention_factor: float | None = opt(None, shape=True, override=True)
    """yarn, longrope: the multiplier of cos and sin (both q and k are scaled, the scores by its square); default
    from the factor and --yarn-mscale (yarn) or sqrt(1 + ln(factor) / ln(original)) (longrope, 1 for factor <= 1)."""
    rope_short_factor: list = opt(factory=list, shape=True, override=True, parse=float)
    """longrope: one divisor per rotation frequency (rotary dim / 2 numbers, HF's short_factor): inv_freq_i = 1 /
    (short_i * theta^(2i/d)) while the longest position + 1 of the micro batch is at most
    --rope-original-max-position-embeddings. The length is the global one: under sequence parallelism the maximum
    over the SP ranks' global position ids (one all-reduce of a scalar per layer), so SP=N rotates as SP=1;
    transformers' rule (max(position_ids) + 1 > original selects the long factors) for the whole batch."""
    rope_long_factor: list = opt(factory=list, shape=True, override=True, parse=float)
    """longrope: the divisors (HF's long_factor) used instead of --rope-short-factor once the micro batch's longest
    position + 1, over all SP ranks, exceeds --rope-original-max-position-embeddings (both regimes keep the
    attention factor)."""
    rotary_percent: float = opt(1.0, shape=True)
    """Fraction of each head that RoPE rotates (Megatron-LM's --rotary-percent; HF's partial_rotary_factor,
    GPT-NeoX's rotary_pct): the first int(head dim x this) dimensions, rotate-half within them, frequencies over that
    dim; the rest pass through unrotated (Pythia 0.25, Phi-4-mini 0.75)."""
    normalization: str = opt("LayerNorm", choices=NORMALIZATIONS, shape=True)
    """LayerNorm (GPT), RMSNorm (Llama) or GemmaRMSNorm (Gemma: RMSNorm in fp32 times (1 + weight), cast back
    after the product; its weights are offsets from 1)."""
    norm_epsilon: float = opt(1e-5, shape=True)
    """Epsilon of the normalization layers."""
    qk_layernorm: bool = opt(False, shape=True)
    """RMSNorm over each query and key head (head dim, weights attention.q_norm/k_norm) before RoPE (Qwen3); with
    --normalization GemmaRMSNorm it is Gemma's (1 + weight) form (Gemma-3)."""
    sandwich_norm: bool = opt(False, shape=True)
    """Gemma-2/3 sandwich norms: the attention's and the MLP's outputs are normalized too before their residual
    add, x + norm(attn(norm(x))) and x + norm(mlp(norm(x))) (weights attention_output_norm, mlp_output_norm)."""
    swiglu: bool = opt(False, shape=True)
    """SwiGLU MLP (Llama) instead of GeLU (GPT)."""
    geglu: bool = opt(False, shape=True)
    """Gated GeLU MLP (Gemma): fc1 holds [gate; up], fc2 takes gelu(gate) * up with --activation's GeLU (Gemma's
    gelu_pytorch_tanh is gelu_tanh); not with --swiglu."""
    scale_embeddings: bool = opt(False, shape=True)
    """Multiply the word embeddings by sqrt(hidden size), rounded to the embeddings' dtype (Gemma)."""
    query_pre_attn_scalar: float | None = opt(None, shape=True)
    """Attention scores are q.k * this**-0.5 instead of head dim**-0.5 (Gemma-2/3's query_pre_attn_scalar);
    default the head dim."""
    attention_softcap: float | None = opt(None, shape=True)
    """Attention-logit soft-cap c (Gemma-2's attn_logit_softcapping): scores = c * tanh(scores / c) before the mask
    and the softmax; only --attention-backend classic computes it."""
    final_logit_softcap: float | None = opt(None, shape=True)
    """Final-logit soft-cap c (Gemma-2's final_logit_softcapping): logits = c * tanh(logits / c), in the logits and
    in the full and tiled losses (not with --use-liger-kernel)."""
    add_bias_linear: bool = opt(True, negate="--disable-bias-linear", shape=True)
    """Biases in linear layers (GPT); --disable-bias-linear turns them off (Llama)."""
    add_qkv_bias: bool = opt(False, shape=True)
    """Biases on the query, key and value projections even with --disable-bias-linear (Qwen2)."""
    sliding_window: int | None = opt(None, shape=True)
    """Sliding-window attention: query i attends key j when 0 <= i - j < window (transformers' convention), on
    the layers --layer-types names sliding_attention, or on every layer when it is empty (Mistral)."""
    layer_types: list = opt(factory=list, choices=LAYER_TYPES, shape=True)
    """Attention of each layer: full_attention or sliding_attention (transformers' names; Qwen2's
    max_window_layers); empty: every layer windowed when --sliding-window is set, else full."""
    untie_embeddings_and_output_weights: bool = opt(False, shape=True)
    """Separate output layer instead of reusing the word embeddings."""
    parallel_residual: bool = opt(False, shape=True)
    """Parallel attention and MLP (GPT-NeoX's use_parallel_residual, GPT-J): x + attn(norm1(x)) + mlp(norm2(x)),
    both branches reading the layer's input, instead of x + attn(norm1(x)) followed by + mlp(norm2(that))."""
    activation: str = opt("gelu", choices=("gelu", "gelu_tanh"), shape=True)
    """MLP activation without --swiglu, and --geglu's: gelu (exact, erf) or gelu_tanh (GPT-2's gelu_new, Gemma's
    gelu_pytorch_tanh)."""
    init_method_std: float = 0.02
    """Standard deviation of the normal initialization."""
    hidden_dropout: float = 0.0
    """Dropout on the residual branches."""
    fused_swiglu: bool = True
    """On CUDA, SwiGLU's silu(gate) * up and its backward as one Triton kernel each (megatron.kernels.swiglu), which
    also keeps only fc1's output for the backward; the eager ops elsewhere. On an H200 the gate runs 3.6x faster, and
    Llama-1B trains 1.00-1.07x faster with less memory (benchmarks/results/2026-12-03_fused_swiglu_h200)."""

    def __post_init__(self):
        if self.num_key_value_heads is None:
            _fill(self, "num_key_value_heads", self.num_attention_heads)
        if self.max_position_embeddings is None:
            _fill(self, "max_position_embeddings", self.seq_length)
        if self.ffn_hidden_size is None:
            swiglu_width = int(math.ceil(8 * self.hidden_size / 3 / 64) * 64)
            _fill(self, "ffn_hidden_size", swiglu_width if self.gated_mlp else 4 * self.hidden_size)
        _choice(self.normalization, NORMALIZATIONS, "--normalization")
        _choice(self.activation, ("gelu", "gelu_tanh"), "--activation")
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"--hidden-size {self.hidden_size} is not divisible by --num-attention-heads "
                f"{self.num_attention_heads}; pick a head count that divides the hidden size, or give --kv-channels"
            )
        if self.kv_channels is not None and (self.kv_channels < 2 or self.kv_channels % 2):
            raise ConfigError(f"--kv-channels {self.kv_channels} must be an even number >= 2 (RoPE rotates pairs)")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"--num-attention-heads {self.num_attention_heads} is not divisible by --num-key-value-heads "
                f"{self.num_key_value_heads}; each key/value head must serve the same number of query heads"
            )
        if self.max_position_embeddings < self.seq_length and not self.use_rotary_position_embeddings:
            raise ConfigError(
                f"--max-position-embeddings {self.max_position_embeddings} is smaller than --seq-length "
                f"{self.seq_length}; raise it to at least the sequence length"
            )
        self._check_rotary()
        self._check_rope_scaling()
        self._check_windows()
        self._check_gemma()

    def _check_gemma(self) -> None:
        if self.swiglu and self.geglu:
            raise ConfigError("--swiglu and --geglu were both given; an MLP has one gate activation: choose one")
        for flag, x in (("--query-pre-attn-scalar", self.query_pre_attn_scalar),
                        ("--attention-softcap", self.attention_softcap),
                        ("--final-logit-softcap", self.final_logit_softcap),
                        ("--rotary-base-local", self.rotary_base_local)):  # fmt: skip
            if x is not None and not x > 0:
                raise ConfigError(f"{flag} {x} must be > 0 (or omit it)")
        if self.rotary_base_local is not None and not self.use_rotary_position_embeddings:
            raise ConfigError("--rotary-base-local is the RoPE base of the sliding-window layers; add "
                              "--use-rotary-position-embeddings")  # fmt: skip

    def _check_rotary(self) -> None:
        """--rotary-percent and longrope's factor lists (parsed from strings: flags, one YAML string)."""
        for name in ("rope_short_factor", "rope_long_factor"):
            value = getattr(self, name)
            try:
                _fill(self, name, [float(x) for x in (value.split() if isinstance(value, str) else value or [])])
            except (TypeError, ValueError):
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} {value!r} must be numbers, one per rotation frequency") from None
        p = self.rotary_percent
        if p != 1.0 and not self.use_rotary_position_embeddings:
            raise ConfigError(f"--rotary-percent {p} is the part of each head RoPE rotates; add "
                              "--use-rotary-position-embeddings")  # fmt: skip
        if p == 1.0:
            return  # whole heads (an odd head dim is refused where RoPE is on: --kv-channels)
        if not 0 < p <= 1 or int(self.head_dim * p) < 2 or int(self.head_dim * p) % 2:
            raise ConfigError(
                f"--rotary-percent {p} must be in (0, 1] and rotate an even number of dimensions >= 2 of the head dim "
                f"{self.head_dim} (int(head dim x percent) = {int(self.head_dim * p)})"
            )

    def _check_longrope(self) -> None:
        if self.rope_original_max_position_embeddings is None:
            raise ConfigError("--rope-scaling-type longrope needs --rope-original-max-position-embeddings: the context "
                              "the checkpoint was pretrained at (the short and long factors switch there)")  # fmt: skip
        n = self.rotary_dim // 2
        for flag, factors in (("--rope-short-factor", self.rope_short_factor),
                              ("--rope-long-factor", self.rope_long_factor)):  # fmt: skip
            if len(factors) != n or not all(f > 0 for f in factors):
                raise ConfigError(
                    f"--rope-scaling-type longrope needs {flag} with {n} positive numbers (one per rotation frequency: "
                    f"rotary dim {self.rotary_dim} / 2), got {len(factors)}"
                )

    def _check_rope_scaling(self) -> None:
        kind = self.rope_scaling_type
        if kind == "none":
            _fill(self, "rope_scaling_type", None)
            kind = None
        if kind != "longrope" and (self.rope_short_factor or self.rope_long_factor):
            raise ConfigError("--rope-short-factor / --rope-long-factor are longrope's; add --rope-scaling-type "
                              "longrope or drop them")  # fmt: skip
        if kind is None:
            return
        _choice(kind, ROPE_SCALING_TYPES, "--rope-scaling-type")
        if not self.use_rotary_position_embeddings:
            raise ConfigError(f"--rope-scaling-type {kind} scales rotary embeddings; add --use-rotary-position-embeddings")
        if kind == "longrope":
            self._check_longrope()
        if not self.rope_scaling_factor > 0:
            raise ConfigError(f"--rope-scaling-factor {self.rope_scaling_factor} must be > 0 (new context / original)")
        original = self.rope_original_max_position_embeddings
        if kind in ("llama3", "yarn") and original is None:
            raise ConfigError(
                f"--rope-scaling-type {kind} needs --rope-original-max-position-embeddings: the context the "
                "checkpoint was pretrained at"
            )
        if kind == "dynamic" and original is not None and original != self.max_position_embeddings:
            raise ConfigError(
                "--rope-scaling-type dynamic scales from --max-position-embeddings (transformers' definition); "
                "drop --rope-original-max-position-embeddings or set --max-position-embeddings to it"
            )
        if kind == "llama3" and not self.rope_high_freq_factor > self.rope_low_freq_factor:
            raise ConfigError(
                f"--rope-high-freq-factor {self.rope_high_freq_factor} must exceed --rope-low-freq-factor "
                f"{self.rope_low_freq_factor}"
            )
        if kind == "dynamic" and self.rotary_dim <= 2:
            raise ConfigError("--rope-scaling-type dynamic needs a head dim > 2 (its exponent is dim / (dim - 2))")

    def _check_windows(self) -> None:
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"--sliding-window {self.sliding_window} must be >= 1 (or omit it for full attention)")
        if not self.layer_types:
            return
        if isinstance(self.layer_types, str):  # YAML may give "full_attention sliding_attention ..." as one string
            _fill(self, "layer_types", self.layer_types.split())
        _fill(self, "layer_types", list(self.layer_types))
        for t in self.layer_types:
            _choice(t, LAYER_TYPES, "--layer-types")
        if len(self.layer_types) != self.num_layers:
            raise ConfigError(
                f"--layer-types names {len(self.layer_types)} layers but --num-layers is {self.num_layers}; "
                "give one type per layer"
            )
        if "sliding_attention" in self.layer_types and self.sliding_window is None:
            raise ConfigError("--layer-types has sliding_attention layers but no --sliding-window; give the window")

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """A ModelConfig from a saved dict, ignoring keys that are not model fields (older layouts)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        """The dimensions of each head RoPE rotates: int(head dim x --rotary-percent), as transformers truncates it."""
        return int(self.head_dim * self.rotary_percent)

    @property
    def gated_mlp(self) -> bool:
        """fc1 holds [gate; up] (SwiGLU or GeGLU)."""
        return self.swiglu or self.geglu

    @property
    def softmax_scale(self) -> float | None:
        """The attention's score scale: query_pre_attn_scalar**-0.5, or None for 1/sqrt(head dim)."""
        return None if self.query_pre_attn_scalar is None else self.query_pre_attn_scalar**-0.5

    def local_rope(self, layer: int) -> bool:
        """Decoder layer ``layer`` rotates with the local RoPE (--rotary-base-local: a sliding-window layer)."""
        return self.rotary_base_local is not None and self.window(layer) is not None

    def window(self, layer: int) -> int | None:
        """The sliding window of decoder layer ``layer`` (None: full causal attention)."""
        if self.sliding_window is None:
            return None
        if not self.layer_types or self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.make_vocab_size_divisible_by)
        return int(math.ceil(self.vocab_size / m) * m)

    def num_parameters(self) -> int:
        """Parameter count of the model this config builds (padded vocabulary)."""
        h, f, v = self.hidden_size, self.ffn_hidden_size, self.padded_vocab_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        b = 1 if self.add_bias_linear else 0
        qkv_bias = 1 if self.add_bias_linear or self.add_qkv_bias else 0
        attn = h * (q + 2 * kv) + qkv_bias * (q + 2 * kv) + q * h + b * h
        attn += 2 * self.head_dim if self.qk_layernorm else 0
        mlp = (h * f * (3 if self.gated_mlp else 2)) + b * (f * (2 if self.gated_mlp else 1) + h)
        norm = 2 * h if self.normalization == "LayerNorm" else h
        per_layer = attn + mlp + (4 if self.sandwich_norm else 2) * norm
        emb = v * h + (0 if self.use_rotary_position_embeddings else self.max_position_embeddings * h)
        out = v * h if self.untie_embeddings_and_output_weights else 0
        return self.num_layers * per_layer + emb + out + norm


@dataclass(frozen=True)
class AttentionConfig:
    backend: str = opt("sdpa", flag="--attention-backend", choices=ATTENTION_BACKENDS)
    """classic (explicit fp32 softmax), sdpa (torch SDPA, cuDNN first on GPUs), flash (the flash_attn
    package) or flash_triton (our Triton/Gluon kernels; packed documents skip masked blocks)."""
    dropout: float = opt(0.0, flag="--attention-dropout")
    """Dropout on attention probabilities."""
    ulysses_exchange: str = opt("deepspeed", choices=ULYSSES_EXCHANGES)
    """SP all-to-all: deepspeed (DistributedAttention, one all-to-all per tensor), fused (Q, K, V in one,
    fewer copies) or overlap (fused, pipelined over head chunks with the attention). Same results; on two
    H200s the same speed (benchmarks/results/2026-11-30_ulysses_exchange_overlap_h200)."""
    ulysses_overlap_chunks: int = 2
    """--ulysses-exchange overlap: head chunks per rank (reduced to what divides the key/value heads per rank)."""

    def __post_init__(self):
        _choice(self.backend, ATTENTION_BACKENDS, "--attention-backend")
        _choice(self.ulysses_exchange, ULYSSES_EXCHANGES, "--ulysses-exchange")
        if self.ulysses_overlap_chunks < 1:
            raise ConfigError(f"--ulysses-overlap-chunks {self.ulysses_overlap_chunks} must be at least 1")


def _forced_by_checkpoint_flags(m) -> str:
    """The --recompute policy --checkpoint-activations and its sub-flags mean."""
    return "offload" if m.checkpoint_in_cpu else "keep_attention" if m.checkpoint_keep_attention else "full"


@dataclass(frozen=True)
class MemoryConfig:
    checkpoint_activations: bool = opt(False, yaml=("activation_checkpointing", "gradient_checkpointing"))
    """Recompute each decoder layer in backward instead of storing its activations."""
    checkpoint_keep_attention: bool = False
    """With --checkpoint-activations: keep the core attention's inputs and outputs instead of recomputing it
    (and its Ulysses all-to-alls) in backward; more memory per layer, less recomputation at long sequences."""
    checkpoint_in_cpu: bool = opt(False, yaml=("activation_checkpoint_cpu_offload",))
    """With --checkpoint-activations: keep each layer's checkpointed input in pinned host memory."""
    tiled_mlp_compute: bool = False
    """Run each MLP over sequence shards, recomputed in backward (intermediates never span the sequence)."""
    tiled_mlp_shards: int | None = None
    """Shards of the tiled MLP; default ceil(local sequence / hidden size)."""
    tiled_logits_loss: bool | None = None
    """Output layer + cross-entropy over token chunks (no full fp32 logits); default on when SP > 1."""
    tiled_logits_chunk_size: int | None = None
    """Tokens per tiled-loss chunk; default about 256M bf16 logits (512 MiB) per chunk on GPUs (the Triton
    kernels), 64M fp32 logits (256 MiB, plus their gradient) elsewhere."""
    use_liger_kernel: bool = False
    """liger-kernel's fused linear cross-entropy for the loss (pip install liger-kernel)."""
    offload_param: bool = False
    """ZeRO-3: keep partitioned parameters in pinned CPU memory (DeepSpeed offload_param)."""
    offload_optimizer: bool = False
    """ZeRO 1-3: keep optimizer states (and the step) on the CPU (DeepSpeed offload_optimizer)."""
    recompute: str = opt("auto", choices=("auto", "none", "attention_output", "attention_output_offload", "keep_attention",
                                          "full", "offload"))
    """Recomputation per decoder layer. auto: on GPUs (or with --activation-memory-budget) a planner picks per layer
    the fastest of none > attention_output > keep_attention > full > offload whose planned activation peak fits the
    budget, and logs the plan in one line; on CPU without a budget, what the other flags say (no recomputation
    unless --checkpoint-activations). --checkpoint-activations (with --checkpoint-keep-attention /
    --checkpoint-in-cpu) forces full (keep_attention / offload) on every layer; any other value forces that policy
    (attention_output_offload: attention_output with what it keeps in pinned host memory; forced only, the planner
    does not choose it)."""
    activation_memory_budget: float | None = None
    """GB of GPU memory for activations under --recompute auto, instead of the measured free memory less the
    optimizer states still to come and a margin (lets the planner run on CPU)."""

    def __post_init__(self):
        if self.tiled_mlp_shards is not None and self.tiled_mlp_shards < 1:
            raise ConfigError(f"--tiled-mlp-shards {self.tiled_mlp_shards} must be >= 1 (or omit it for the default)")
        if self.tiled_logits_chunk_size is not None and self.tiled_logits_chunk_size < 1:
            raise ConfigError(f"--tiled-logits-chunk-size {self.tiled_logits_chunk_size} must be >= 1 token")
        if self.checkpoint_in_cpu and not self.checkpoint_activations:
            raise ConfigError("--checkpoint-in-cpu offloads checkpointed activations; add --checkpoint-activations")
        if self.checkpoint_keep_attention and not self.checkpoint_activations:
            raise ConfigError("--checkpoint-keep-attention chooses what --checkpoint-activations recomputes; add --checkpoint-activations")
        if self.checkpoint_activations and self.recompute not in ("auto", _forced_by_checkpoint_flags(self)):
            raise ConfigError(f"--recompute {self.recompute} and --checkpoint-activations disagree; drop one of them")
        if self.activation_memory_budget is not None and self.activation_memory_budget <= 0:
            raise ConfigError(f"--activation-memory-budget {self.activation_memory_budget} must be > 0 GB")
        if self.checkpoint_keep_attention and self.checkpoint_in_cpu:
            raise ConfigError("--checkpoint-keep-attention and --checkpoint-in-cpu do not combine (the kept attention "
                              "tensors stay on the GPU); drop one of them")  # fmt: skip

    @property
    def use_tiled_logits_loss(self) -> bool:
        """The resolved tiled-loss switch (Config fills the default from the SP size)."""
        return bool(self.tiled_logits_loss)


@dataclass(frozen=True)
class ParallelConfig:
    sequence_parallel_size: int = opt(
        1, flag="--ds-sequence-parallel-size", aliases=("--sequence-parallel-size",),
        yaml=("sequence_parallel_size", "ulysses_sequence_parallel_size"),
    )  # fmt: skip
    """Ulysses sequence-parallel degree: consecutive ranks that share one sample's tokens."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage 0-3, sharded over the sequence-data-parallel group (all SP x DP ranks)."""
    lean_optimizer_step: bool = True
    """ZeRO-1/2/3 with torch's fused AdamW on GPUs: the gradient norm from per-tensor norms accumulated in fp32 and
    the unscale/clip inside the AdamW kernel, instead of DeepSpeed's fp64 copy of the gradients for the norm and its
    separate multiply, and under ZeRO-1/2 no separate NaN/inf scan of the gradients (the norm check skips the same
    steps); same update up to rounding. --no-lean-optimizer-step runs DeepSpeed's own step."""
    zero3_leaf_layers: bool | None = None
    """ZeRO-3: gather each transformer layer's parameters at once (DeepSpeed leaf modules); default on with
    ZeRO-3 (1.7x tokens/s at 8k on two H200s, equal at 32k: benchmarks/results/2026-11-30_zero3_leaf_layers_h200)."""
    deepspeed_config: str | None = opt(None, flag="--deepspeed_config", aliases=("--deepspeed-config",))
    """A DeepSpeed JSON to start from; batch sizes, precision and ZeRO stage are checked against the flags."""
    seq_parallel_communication_data_type: str | None = opt(None, choices=("fp32", "bf16", "fp16"))
    """Data type of gradient reductions under SP (DeepSpeed's key); default DeepSpeed's."""
    reduce_bucket_size: int | None = opt(None, parse=lambda v: int(float(v)))
    """DeepSpeed reduce_bucket_size in elements (2e8 is accepted); default DeepSpeed's."""
    distributed_backend: str | None = opt(None, choices=("nccl", "gloo"))
    """nccl or gloo; default nccl on GPUs and gloo on CPUs."""
    distributed_timeout_minutes: float = 10.0
    """A collective waiting longer than this (e.g. for a dead rank) fails instead of hanging."""
    deepcompile: bool = False
    """Compile the model with DeepSpeed's compiler (DeepCompile: torch.compile with DeepSpeed's ZeRO-1 pass,
    ``compile.deepcompile`` in the DeepSpeed JSON); CUDA GPUs, ZeRO-1 and the untiled loss only. Off by default: with
    DeepSpeed 0.19.8 its ZeRO-3 pass meets a partitioned embedding and the tiled loss's backward does not trace
    (benchmarks/results/2026-12-02_short_sequence_zero_h200)."""

    def __post_init__(self):
        if self.deepcompile and self.zero_stage != 1:
            raise ConfigError(f"--deepcompile runs with ZeRO-1 only (got --zero-stage {self.zero_stage}; its ZeRO-3 "
                              "pass fails on our partitioned embedding); use --zero-stage 1 or drop --deepcompile")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"--zero-stage {self.zero_stage} is not a ZeRO stage; use 0, 1, 2 or 3")
        if self.sequence_parallel_size < 1:
            raise ConfigError("--ds-sequence-parallel-size must be >= 1")
        if self.zero3_leaf_layers is True and self.zero_stage != 3:
            raise ConfigError(f"--zero3-leaf-layers needs ZeRO-3 (got --zero-stage {self.zero_stage}); drop it or use --zero-stage 3")

    @property
    def use_zero3_leaf_layers(self) -> bool:
        """The resolved leaf-layer switch: explicit flag, else on with ZeRO-3."""
        return self.zero_stage == 3 if self.zero3_leaf_layers is None else self.zero3_leaf_layers


@dataclass(frozen=True)
class TrainConfig:
    micro_batch_size: int = 1
    """Samples per micro batch per data-parallel rank."""
    global_batch_size: int | None = None
    """Samples per optimizer step over all data-parallel ranks; default micro batch x DP."""
    train_iters: int = 300
    """Optimizer steps to run."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 0.0
    """Learning rate at the end of decay."""
    lr_decay_style: str = opt("cosine", choices=("constant", "linear", "cosine"))
    """Shape of the decay after warmup: constant, linear or cosine."""
    lr_warmup_iters: int = 0
    """Linear warmup steps from 0 to --lr."""
    lr_decay_iters: int | None = None
    """Steps over which the learning rate decays to --min-lr; default --train-iters."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and norms)."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.95
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    clip_grad: float = 1.0
    """Gradient norm clipping threshold (0 disables)."""
    bf16: bool = False
    """Train in bfloat16 mixed precision."""
    fp16: bool = False
    """Train in float16 mixed precision with loss scaling."""
    seed: int = 1234
    """Seed for initialization, data order and dropout."""
    eval_interval: int = 0
    """Evaluate every this many steps (0 disables)."""
    eval_iters: int = 2
    """Global batches per evaluation."""
    max_skipped_steps: int = 10
    """Stop (without saving) after this many consecutive steps skipped for a non-finite loss or gradient
    norm; a skipped step leaves parameters and optimizer state untouched (0: never stop)."""

    def __post_init__(self):
        if self.bf16 and self.fp16:
            raise ConfigError("--bf16 and --fp16 were both given; choose one precision")
        _choice(self.lr_decay_style, ("constant", "linear", "cosine"), "--lr-decay-style")
        if self.lr_decay_iters is None:
            _fill(self, "lr_decay_iters", self.train_iters)
        if self.micro_batch_size < 1 or self.train_iters < 0:
            raise ConfigError("--micro-batch-size must be >= 1 and --train-iters >= 0")
        if self.max_skipped_steps < 0:
            raise ConfigError("--max-skipped-steps must be >= 0 (0 never stops on skipped steps)")
        if self.lr < 0 or self.min_lr < 0:
            flag, value = ("--lr", self.lr) if self.lr < 0 else ("--min-lr", self.min_lr)
            raise ConfigError(f"{flag} {value:g} is negative; a learning rate is >= 0 (e.g. --lr 3e-4 --min-lr 3e-5)")
        if self.min_lr > self.lr:
            raise ConfigError(f"--min-lr {self.min_lr:g} is above --lr {self.lr:g}: the decay would raise the learning "
                              "rate; give a --min-lr at most --lr (often --lr / 10)")  # fmt: skip
        if self.lr_warmup_iters < 0 or self.train_iters and self.lr_warmup_iters > self.train_iters:
            raise ConfigError(f"--lr-warmup-iters {self.lr_warmup_iters} is outside the run (--train-iters "
                              f"{self.train_iters}): the learning rate would never reach --lr; use 0 to "
                              f"{self.train_iters} warmup steps (often 1-10% of the run)")  # fmt: skip

    @property
    def dtype_name(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"


@dataclass(frozen=True)
class DataConfig:
    mock_data: bool = False
    """Train on the deterministic synthetic stream (megatron.data.mock) instead of files."""
    data_path: list = opt(factory=list)
    """Blended prefixes, optionally weighted: w1 prefix1 w2 prefix2 ... or one prefix."""
    split: str = "969,30,1"
    """Train/valid/test proportions of --data-path."""
    train_data_path: list = opt(factory=list)
    """Prefixes used only for training (instead of --data-path with --split)."""
    valid_data_path: list = opt(factory=list)
    """Prefixes used only for validation."""
    test_data_path: list = opt(factory=list)
    """Prefixes used only for testing."""
    data_cache_path: str | None = None
    """Where dataset indices are cached; default next to the data."""
    tokenizer_type: str | None = None
    """GPT2BPETokenizer, SentencePieceTokenizer, GPTSentencePieceTokenizer, HFTokenizer or NullTokenizer."""
    tokenizer_model: str | None = None
    """SentencePiece .model or HF tokenizer.json."""
    vocab_file: str | None = None
    """GPT-2 vocab.json."""
    merge_file: str | None = None
    """GPT-2 merges.txt."""
    reset_position_ids: bool = False
    """Restart position ids after each end-of-document token."""
    reset_attention_mask: bool = False
    """Do not attend across documents inside a packed sample."""
    eod_mask_loss: bool = False
    """Exclude end-of-document tokens from the loss."""
    mock_document_length: int = 0
    """With --mock-data: documents of this many tokens, each ending with an end-of-document token (id
    vocab_size - 1), for --reset-position-ids / --reset-attention-mask / --eod-mask-loss (0: none)."""
    num_workers: int = 2
    """DataLoader worker processes."""

    @property
    def uses_files(self) -> bool:
        return bool(self.data_path or self.train_data_path)

    def __post_init__(self):
        for name in ("data_path", "train_data_path", "valid_data_path", "test_data_path"):
            if isinstance(getattr(self, name), str):  # YAML may give "w1 p1 w2 p2" as one string
                _fill(self, name, getattr(self, name).split())
        if self.mock_document_length < 0:
            raise ConfigError(f"--mock-document-length must be >= 0, got {self.mock_document_length}")
        if self.mock_document_length and not self.mock_data:
            raise ConfigError("--mock-document-length shapes the --mock-data stream; add --mock-data or drop it")
        if self.mock_data and not self.mock_document_length:
            used = [f for f, on in (("--reset-position-ids", self.reset_position_ids),
                                    ("--reset-attention-mask", self.reset_attention_mask),
                                    ("--eod-mask-loss", self.eod_mask_loss)) if on]  # fmt: skip
            if used:
                raise ConfigError(
                    f"{' '.join(used)} would do nothing: the --mock-data stream has no documents; "
                    "add --mock-document-length N (documents of N tokens)"
                )


@dataclass(frozen=True)
class CheckpointConfig:
    save: str | None = None
    """Checkpoint directory to write."""
    load: str | None = None
    """Checkpoint (or converted weights) directory to start from."""
    save_interval: int = 0
    """Save every this many steps (0: only at the end when --save is given)."""
    keep_last_n_checkpoints: int = 0
    """Delete older iter_* checkpoints beyond the newest N after each save (0 keeps all)."""
    exit_interval: int = 0
    """Stop (after saving) once the iteration is a multiple of this (0 disables)."""
    exit_signal_handler: bool = False
    """On --exit-signal every rank finishes its step, a checkpoint is saved and the job exits 75 (saved, requeue)."""
    exit_signal: str = "SIGTERM"
    """The signal --exit-signal-handler listens for: SIGTERM, SIGINT, SIGUSR1 or SIGUSR2."""
    exit_duration_in_mins: float | None = None
    """Save and exit once the run has lasted this many minutes (before a scheduler's limit)."""

    def __post_init__(self):
        if self.exit_signal not in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2"):
            raise ConfigError(f"--exit-signal {self.exit_signal} is not supported; use SIGTERM, SIGINT, SIGUSR1 or SIGUSR2")
        if self.keep_last_n_checkpoints < 0:
            raise ConfigError("--keep-last-n-checkpoints must be >= 0 (0 keeps every checkpoint)")


@dataclass(frozen=True)
class LoggingConfig:
    log_interval: int = 10
    """Print (and write metrics) every this many steps."""
    metrics_file: str | None = None
    """JSON Lines file with one object per log step."""
    tensorboard_dir: str | None = None
    """TensorBoard event directory."""


SECTIONS = {
    "model": ModelConfig,
    "attention": AttentionConfig,
    "memory": MemoryConfig,
    "parallel": ParallelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
}


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self):
        """Checks and defaults that span sections."""
        m, p = self.memory, self.parallel
        if m.tiled_logits_loss is None:
            _fill(m, "tiled_logits_loss", p.sequence_parallel_size > 1)
        if m.offload_param and p.zero_stage != 3:
            raise ConfigError(f"--offload-param needs ZeRO-3 (got --zero-stage {p.zero_stage}); use --zero-stage 3")
        if m.offload_optimizer and p.zero_stage == 0:
            raise ConfigError("--offload-optimizer needs ZeRO (--zero-stage 1, 2 or 3)")
        if p.deepcompile and (m.use_tiled_logits_loss or m.use_liger_kernel):
            raise ConfigError("--deepcompile does not trace the tiled loss's backward; add --no-tiled-logits-loss "
                              "(and drop --use-liger-kernel) or drop --deepcompile")
        md = self.model
        if md.attention_softcap is not None and self.attention.backend != "classic":
            raise ConfigError(
                f"--attention-softcap {md.attention_softcap} (Gemma-2's attn_logit_softcapping) is computed only by "
                f"--attention-backend classic (explicit fp32 softmax; {self.attention.backend} has no soft-cap); add "
                "--attention-backend classic"
            )
        if md.final_logit_softcap is not None and m.use_liger_kernel:
            raise ConfigError(
                f"--use-liger-kernel's fused loss has no final-logit soft-cap (--final-logit-softcap "
                f"{md.final_logit_softcap}, Gemma-2's final_logit_softcapping); drop --use-liger-kernel (the tiled "
                "loss, --tiled-logits-loss, applies the cap)"
            )

    def resolve(self, world_size: int, vocab_size: int | None = None) -> Config:
        """The config of a run on ``world_size`` processes (and the tokenizer's vocabulary), checked.

        Fills the global batch size (micro batch x DP when not given) and raises ConfigError
        naming the fix for what the world size rules out.
        """
        sp = self.parallel.sequence_parallel_size
        m = self.model if vocab_size is None else dataclasses.replace(self.model, vocab_size=vocab_size)
        if world_size % sp:
            raise ConfigError(
                f"world size {world_size} is not divisible by --ds-sequence-parallel-size {sp}; "
                f"launch a multiple of {sp} processes or lower the SP size"
            )
        if m.num_attention_heads % sp:
            raise ConfigError(
                f"--num-attention-heads {m.num_attention_heads} is not divisible by --ds-sequence-parallel-size {sp}; "
                "choose an SP size that divides the head count"
            )
        kv = m.num_key_value_heads
        if kv % sp and sp % kv:
            raise ConfigError(
                f"--num-key-value-heads {kv} and --ds-sequence-parallel-size {sp} do not divide one another; "
                "choose an SP size that divides the kv heads or is a multiple of them"
            )
        if m.seq_length % sp:
            raise ConfigError(
                f"--seq-length {m.seq_length} is not divisible by --ds-sequence-parallel-size {sp}; "
                f"use a multiple of {sp} (ideally of {256 * sp})"
            )
        dp = world_size // sp
        t = self.train
        gbs = t.micro_batch_size * dp if t.global_batch_size is None else t.global_batch_size
        if gbs % (t.micro_batch_size * dp):
            raise ConfigError(
                f"--global-batch-size {gbs} is not divisible by --micro-batch-size "
                f"{t.micro_batch_size} x data-parallel size {dp}; use a multiple of {t.micro_batch_size * dp}"
            )
        return dataclasses.replace(self, model=m, train=dataclasses.replace(t, global_batch_size=gbs))

    def replace(self, **sections) -> Config:
        """A copy with fields changed per section: ``cfg.replace(train={"lr": 1e-4})``."""
        new = {name: dataclasses.replace(getattr(self, name), **fields) for name, fields in sections.items()}
        return dataclasses.replace(self, **new)

    def grad_accumulation_steps(self, world_size: int) -> int:
        dp = world_size // self.parallel.sequence_parallel_size
        return self.train.global_batch_size // (self.train.micro_batch_size * dp)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
