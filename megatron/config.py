"""Typed configuration: the one source of truth for a run.

Entry points (``pretrain_gpt.py``, ``tools/*.py``) fill these dataclasses once, through
``megatron.arguments``; library code receives them as arguments and never reads globals.
Every field has a one-line docstring; ``__post_init__`` validates what can be checked
without knowing the world size, and ``Config.validate_world`` what needs it. Each error is
a ``ConfigError`` whose message names the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


ATTENTION_BACKENDS = ("classic", "sdpa", "flash", "flash_triton")
ULYSSES_EXCHANGES = ("deepspeed", "fused", "overlap")


@dataclass
class ModelConfig:
    num_layers: int = 2
    """Number of decoder layers."""
    hidden_size: int = 64
    """Width of the residual stream."""
    num_attention_heads: int = 4
    """Query heads."""
    num_key_value_heads: Optional[int] = None
    """Key/value heads (grouped-query attention); None means as many as query heads."""
    ffn_hidden_size: Optional[int] = None
    """MLP inner width; None means 4 x hidden (or 8/3 x hidden rounded to 64 with SwiGLU)."""
    seq_length: int = 128
    """Tokens per training sample."""
    max_position_embeddings: Optional[int] = None
    """Size of the learned position table; None means seq_length."""
    vocab_size: int = 256
    """Vocabulary size before padding (from the tokenizer, or given for mock data)."""
    make_vocab_size_divisible_by: int = 128
    """Pad the embedding table to a multiple of this (faster matmuls)."""
    use_rotary_position_embeddings: bool = False
    """Rotary position embeddings (Llama) instead of learned absolute positions (GPT)."""
    rotary_base: float = 10000.0
    """RoPE theta."""
    normalization: str = "LayerNorm"
    """LayerNorm or RMSNorm."""
    norm_epsilon: float = 1e-5
    """Epsilon of the normalization layers."""
    swiglu: bool = False
    """SwiGLU MLP (Llama) instead of GeLU (GPT)."""
    add_bias_linear: bool = True
    """Biases in linear layers (GPT); --disable-bias-linear turns them off (Llama)."""
    untie_embeddings_and_output_weights: bool = False
    """Separate output layer instead of reusing the word embeddings."""
    init_method_std: float = 0.02
    """Standard deviation of the normal initialization."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""
    hidden_dropout: float = 0.0
    """Dropout on the residual branches."""
    attention_backend: str = "sdpa"
    """One of classic, sdpa, flash, flash_triton (see megatron.model.attention)."""
    ulysses_exchange: str = "deepspeed"
    """SP > 1: deepspeed (DeepSpeed's DistributedAttention, one all-to-all per tensor) or fused
    (megatron.model.ulysses: one all-to-all for Q, K, V, fewer copies). Same results; on two H200s
    the same speed (docs/benchmarks/throughput/ulysses_exchange), so the default stays DeepSpeed's.
    overlap: fused, pipelined over head chunks so that exchanges run while attention computes."""
    ulysses_overlap_chunks: int = 2
    """--ulysses-exchange overlap: head chunks per rank (reduced to the largest count that divides
    the key/value heads per rank; 1 overlaps nothing)."""
    activation: str = "gelu"
    """Non-SwiGLU MLP activation: gelu (exact, erf) or gelu_tanh (GPT-2's gelu_new)."""

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.max_position_embeddings is None:
            self.max_position_embeddings = self.seq_length
        if self.ffn_hidden_size is None:
            if self.swiglu:
                self.ffn_hidden_size = int(math.ceil(8 * self.hidden_size / 3 / 64) * 64)
            else:
                self.ffn_hidden_size = 4 * self.hidden_size
        if self.normalization not in ("LayerNorm", "RMSNorm"):
            raise ConfigError(f"--normalization {self.normalization} is unknown; use LayerNorm or RMSNorm")
        if self.activation not in ("gelu", "gelu_tanh"):
            raise ConfigError(f"--activation {self.activation} is unknown; use gelu or gelu_tanh")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ConfigError(
                f"attention backend {self.attention_backend!r} is unknown; use one of {', '.join(ATTENTION_BACKENDS)}"
            )
        if self.ulysses_exchange not in ULYSSES_EXCHANGES:
            raise ConfigError(
                f"--ulysses-exchange {self.ulysses_exchange!r} is unknown; use one of {', '.join(ULYSSES_EXCHANGES)}"
            )
        if self.ulysses_overlap_chunks < 1:
            raise ConfigError(f"--ulysses-overlap-chunks {self.ulysses_overlap_chunks} must be at least 1")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"--hidden-size {self.hidden_size} is not divisible by --num-attention-heads "
                f"{self.num_attention_heads}; pick a head count that divides the hidden size"
            )
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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.make_vocab_size_divisible_by)
        return int(math.ceil(self.vocab_size / m) * m)

    def num_parameters(self) -> int:
        """Parameter count of the model this config builds (padded vocabulary)."""
        h, f, v = self.hidden_size, self.ffn_hidden_size, self.padded_vocab_size
        kv = self.num_key_value_heads * self.head_dim
        b = 1 if self.add_bias_linear else 0
        attn = h * (h + 2 * kv) + b * (h + 2 * kv) + h * h + b * h
        mlp = (h * f * (3 if self.swiglu else 2)) + b * (f * (2 if self.swiglu else 1) + h)
        norm = 2 * h if self.normalization == "LayerNorm" else h
        per_layer = attn + mlp + 2 * norm
        emb = v * h + (0 if self.use_rotary_position_embeddings else self.max_position_embeddings * h)
        out = v * h if self.untie_embeddings_and_output_weights else 0
        return self.num_layers * per_layer + emb + out + norm


@dataclass
class TrainConfig:
    micro_batch_size: int = 1
    """Samples per micro batch per data-parallel rank."""
    global_batch_size: Optional[int] = None
    """Samples per optimizer step over all data-parallel ranks; None means micro x DP."""
    train_iters: int = 300
    """Optimizer steps to run."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 0.0
    """Learning rate at the end of decay."""
    lr_decay_style: str = "cosine"
    """constant, linear or cosine."""
    lr_warmup_iters: int = 0
    """Linear warmup steps from 0 to lr."""
    lr_decay_iters: Optional[int] = None
    """Steps over which lr decays to min_lr; None means train_iters."""
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
    """Micro-batch groups (global batches) per evaluation."""
    max_skipped_steps: int = 10
    """Stop (without saving) after this many consecutive steps skipped for a non-finite loss or
    gradient norm; a skipped step leaves parameters and optimizer state untouched (0: never stop)."""

    def __post_init__(self):
        if self.bf16 and self.fp16:
            raise ConfigError("--bf16 and --fp16 were both given; choose one precision")
        if self.lr_decay_style not in ("constant", "linear", "cosine"):
            raise ConfigError(f"--lr-decay-style {self.lr_decay_style} is unknown; use constant, linear or cosine")
        if self.lr_decay_iters is None:
            self.lr_decay_iters = self.train_iters
        if self.micro_batch_size < 1 or self.train_iters < 0:
            raise ConfigError("--micro-batch-size must be >= 1 and --train-iters >= 0")
        if self.max_skipped_steps < 0:
            raise ConfigError("--max-skipped-steps must be >= 0 (0 never stops on skipped steps)")

    @property
    def dtype_name(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"


@dataclass
class ParallelConfig:
    sequence_parallel_size: int = 1
    """Ulysses sequence-parallel degree (--ds-sequence-parallel-size)."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage 0-3, sharded over the sequence-data-parallel group."""
    deepspeed_config: Optional[str] = None
    """A DeepSpeed JSON to start from; batch sizes and precision are checked against this config."""
    checkpoint_activations: bool = False
    """Recompute each decoder layer in backward instead of storing its activations."""
    seq_parallel_communication_data_type: Optional[str] = None
    """fp32/bf16/fp16 for gradient reductions under SP (DeepSpeed's key); None keeps DeepSpeed's default."""
    reduce_bucket_size: Optional[int] = None
    """DeepSpeed reduce_bucket_size; None keeps DeepSpeed's default."""
    distributed_backend: Optional[str] = None
    """nccl or gloo; None chooses nccl on GPUs and gloo on CPUs."""
    distributed_timeout_minutes: float = 10.0
    """A collective waiting longer than this (e.g. for a dead rank) fails instead of hanging."""
    # ALST memory features (megatron.model.tiled, megatron.training.memory)
    tiled_mlp_compute: bool = False
    """Run each MLP over sequence shards, recomputed in backward (intermediates never span the sequence)."""
    tiled_mlp_shards: Optional[int] = None
    """Shards of the tiled MLP; None means ceil(local sequence / hidden size)."""
    tiled_logits_loss: Optional[bool] = None
    """Output layer + cross-entropy over token chunks (no full fp32 logits); None means on when SP > 1."""
    tiled_logits_chunk_size: Optional[int] = None
    """Tokens per tiled-loss chunk; None means about 256M bf16 logits (512 MiB) per chunk on GPUs
    (the Triton kernels), 64M fp32 logits (256 MiB, plus their gradient) elsewhere."""
    use_liger_kernel: bool = False
    """Use liger-kernel's fused linear cross-entropy for the loss (needs `pip install liger-kernel`)."""
    checkpoint_in_cpu: bool = False
    """With --checkpoint-activations, keep each layer's checkpointed input in pinned host memory."""
    checkpoint_keep_attention: bool = False
    """With --checkpoint-activations, keep the core attention's inputs and outputs instead of recomputing
    it (and its Ulysses all-to-alls) in backward; the rest of each layer is recomputed. More memory per
    layer (q, k, v and the output besides the layer input), less recomputation at long sequences."""
    offload_param: bool = False
    """ZeRO-3: keep partitioned parameters in pinned CPU memory (DeepSpeed offload_param)."""
    offload_optimizer: bool = False
    """ZeRO 1-3: keep optimizer states (and the step) on the CPU (DeepSpeed offload_optimizer)."""
    zero3_leaf_layers: Optional[bool] = None
    """ZeRO-3: gather each transformer layer's parameters at once (DeepSpeed "leaf modules"):
    one fetch/release hook pair per layer instead of one per linear and norm. None means on with
    ZeRO-3 (1.7x tokens/s at 8k on two H200s, equal at 32k: docs/benchmarks/throughput/leaf_layers)."""

    def __post_init__(self):
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"--zero-stage {self.zero_stage} is not a ZeRO stage; use 0, 1, 2 or 3")
        if self.sequence_parallel_size < 1:
            raise ConfigError("--ds-sequence-parallel-size must be >= 1")
        if self.tiled_mlp_shards is not None and self.tiled_mlp_shards < 1:
            raise ConfigError(f"--tiled-mlp-shards {self.tiled_mlp_shards} must be >= 1 (or omit it for the default)")
        if self.tiled_logits_chunk_size is not None and self.tiled_logits_chunk_size < 1:
            raise ConfigError(f"--tiled-logits-chunk-size {self.tiled_logits_chunk_size} must be >= 1 token")
        if self.checkpoint_in_cpu and not self.checkpoint_activations:
            raise ConfigError("--checkpoint-in-cpu offloads checkpointed activations; add --checkpoint-activations")
        if self.checkpoint_keep_attention and not self.checkpoint_activations:
            raise ConfigError("--checkpoint-keep-attention chooses what --checkpoint-activations recomputes; add --checkpoint-activations")
        if self.checkpoint_keep_attention and self.checkpoint_in_cpu:
            raise ConfigError("--checkpoint-keep-attention and --checkpoint-in-cpu do not combine (the kept attention "
                              "tensors stay on the GPU); drop one of them")  # fmt: skip
        if self.offload_param and self.zero_stage != 3:
            raise ConfigError(f"--offload-param needs ZeRO-3 (got --zero-stage {self.zero_stage}); use --zero-stage 3")
        if self.zero3_leaf_layers is True and self.zero_stage != 3:
            raise ConfigError(f"--zero3-leaf-layers needs ZeRO-3 (got --zero-stage {self.zero_stage}); drop it or use --zero-stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("--offload-optimizer needs ZeRO (--zero-stage 1, 2 or 3)")

    @property
    def use_zero3_leaf_layers(self) -> bool:
        """The resolved leaf-layer switch: explicit flag, else on with ZeRO-3."""
        return self.zero_stage == 3 if self.zero3_leaf_layers is None else self.zero3_leaf_layers

    @property
    def use_tiled_logits_loss(self) -> bool:
        """The resolved tiled-loss switch: explicit flag, else on with sequence parallelism."""
        if self.tiled_logits_loss is None:
            return self.sequence_parallel_size > 1
        return self.tiled_logits_loss


@dataclass
class DataConfig:
    mock_data: bool = False
    """Train on the deterministic synthetic stream (megatron.data.mock) instead of files."""
    data_path: list = field(default_factory=list)
    """Blended prefixes, optionally weighted: [w1, prefix1, w2, prefix2, ...] or [prefix]."""
    split: str = "969,30,1"
    """Train/valid/test proportions of --data-path."""
    train_data_path: list = field(default_factory=list)
    """Prefixes used only for training (instead of --data-path with --split)."""
    valid_data_path: list = field(default_factory=list)
    """Prefixes used only for validation."""
    test_data_path: list = field(default_factory=list)
    """Prefixes used only for testing."""
    data_cache_path: Optional[str] = None
    """Where dataset indices are cached; None means next to the data."""
    tokenizer_type: Optional[str] = None
    """GPT2BPETokenizer, SentencePieceTokenizer, GPTSentencePieceTokenizer, HFTokenizer or NullTokenizer."""
    tokenizer_model: Optional[str] = None
    """SentencePiece .model or HF tokenizer.json."""
    vocab_file: Optional[str] = None
    """GPT-2 vocab.json."""
    merge_file: Optional[str] = None
    """GPT-2 merges.txt."""
    reset_position_ids: bool = False
    """Restart position ids after each end-of-document token."""
    reset_attention_mask: bool = False
    """Do not attend across documents inside a packed sample."""
    eod_mask_loss: bool = False
    """Exclude end-of-document tokens from the loss."""
    mock_document_length: int = 0
    """With --mock-data: documents of this many tokens, each ending with an end-of-document token
    (id vocab_size - 1), for --reset-position-ids / --reset-attention-mask / --eod-mask-loss (0: none)."""
    num_workers: int = 2
    """DataLoader worker processes."""

    @property
    def uses_files(self) -> bool:
        return bool(self.data_path or self.train_data_path)

    def __post_init__(self):
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


@dataclass
class LoggingConfig:
    log_interval: int = 10
    """Print (and write metrics) every this many steps."""
    metrics_file: Optional[str] = None
    """JSON Lines file with one object per log step."""
    tensorboard_dir: Optional[str] = None
    """TensorBoard event directory."""
    save: Optional[str] = None
    """Checkpoint directory to write."""
    load: Optional[str] = None
    """Checkpoint directory to resume from."""
    save_interval: int = 0
    """Save every this many steps (0: only at the end when --save is given)."""
    exit_interval: int = 0
    """Stop (after saving) once the iteration is a multiple of this (0 disables)."""
    exit_signal_handler: bool = False
    """On --exit-signal every rank finishes its step, a checkpoint is saved and the job exits 0."""
    exit_signal: str = "SIGTERM"
    """The signal --exit-signal-handler listens for (SIGTERM, SIGINT, SIGUSR1, SIGUSR2)."""
    exit_duration_in_mins: Optional[float] = None
    """Save and exit once the run has lasted this many minutes (before a scheduler's limit)."""
    keep_last_n_checkpoints: int = 0
    """Delete older iter_* checkpoints beyond the newest N after each save (0 keeps all)."""

    def __post_init__(self):
        if self.exit_signal not in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2"):
            raise ConfigError(f"--exit-signal {self.exit_signal} is not supported; use SIGTERM, SIGINT, SIGUSR1 or SIGUSR2")
        if self.keep_last_n_checkpoints < 0:
            raise ConfigError("--keep-last-n-checkpoints must be >= 0 (0 keeps every checkpoint)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate_world(self, world_size: int) -> None:
        """Checks that need the number of processes; raises ConfigError naming the fix."""
        sp = self.parallel.sequence_parallel_size
        m = self.model
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
        if t.global_batch_size is None:
            t.global_batch_size = t.micro_batch_size * dp
        if t.global_batch_size % (t.micro_batch_size * dp):
            raise ConfigError(
                f"--global-batch-size {t.global_batch_size} is not divisible by --micro-batch-size "
                f"{t.micro_batch_size} x data-parallel size {dp}; use a multiple of {t.micro_batch_size * dp}"
            )

    def grad_accumulation_steps(self, world_size: int) -> int:
        dp = world_size // self.parallel.sequence_parallel_size
        return self.train.global_batch_size // (self.train.micro_batch_size * dp)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
