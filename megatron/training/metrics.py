"""Throughput accounting: FLOPs per token, the Megatron-DeepSpeed TFLOPS formula, MFU, memory.

Two different numbers, kept apart on purpose:
* ``megatron_deepspeed_tflops`` is the formula Megatron-DeepSpeed prints and its published
  sequence-parallel table uses (Narayanan et al. 2021, eq. 3: full, not causal, attention;
  x4 instead of x3 with activation checkpointing; GPT-shaped MLP assumed). Use it to compare
  with that table.
* ``model_flops_per_token`` counts the model's own matmul FLOPs (no recomputation, causal
  attention counted as half of full) and is what MFU divides by the GPU's dense peak.

With packed documents (``--reset-attention-mask``) a token attends to its own document only, so
the attention work of a sequence is the sum of its documents' squared lengths, not S². The
trainer's model FLOPs count that (``document_square_sum``, ``model_flops``); the
Megatron-DeepSpeed formula stays as published (one document per sequence). With a sliding window a
query attends at most ``window`` keys: ``attended_pairs`` counts the (query, key) pairs of a sequence
under a window and documents, ``attended_pairs_of_documents`` those of a packed batch.
"""

from __future__ import annotations

import resource
import sys

import torch

from megatron.config import ModelConfig

# Dense bf16 tensor-core peak from the datasheets (FLOP/s, without sparsity).
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "H800": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "B200": 2250e12,
}


def peak_flops(device_name: str) -> float | None:
    """Datasheet dense bf16 peak for a CUDA device name, or None when unknown (e.g. CPU)."""
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in device_name.upper():
            return PEAK_BF16_FLOPS[key]
    return None


def megatron_deepspeed_flops_per_iteration(
    cfg: ModelConfig, global_batch_size: int, seq_length: int, checkpoint_activations: bool,
    keep_attention: bool = False,
) -> float:  # fmt: skip
    """FLOPs per iteration by Megatron-DeepSpeed's ``throughput_calculator``.

    With ``keep_attention`` (``--checkpoint-keep-attention``) the attention term (s / 6h) keeps the
    factor 3, since the attention is not recomputed; everything else gets the formula's 4.
    """
    factor = 4 if checkpoint_activations else 3
    attention_factor = 3 if keep_attention else factor
    h, L, V, s = cfg.hidden_size, cfg.num_layers, cfg.padded_vocab_size, seq_length
    terms = factor * (1.0 + V / (16.0 * L * h)) + attention_factor * s / (6.0 * h)
    return 24 * global_batch_size * s * L * h * h * terms


def _windowed(cfg: ModelConfig, seq_length: int) -> list:
    """The windows of the layers whose window is shorter than the sequence (the others attend in full)."""
    windows = [cfg.window(i) for i in range(cfg.num_layers)]
    return [w for w in windows if w is not None and w < seq_length]


def model_flops_per_token(cfg: ModelConfig, seq_length: int) -> float:
    """Forward+backward model FLOPs per token: 6 x matmul params + causal attention (heads x head dim wide,
    which need not be the hidden size); a layer with a sliding window shorter than the sequence counts the
    pairs it attends (``attended_pairs``), about S x W instead of S^2 / 2."""
    h, L, f = cfg.hidden_size, cfg.num_layers, cfg.ffn_hidden_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    per_layer = h * (q + 2 * kv) + q * h + h * f * (3 if cfg.gated_mlp else 2)
    matmul_params = L * per_layer + cfg.padded_vocab_size * h
    windowed = _windowed(cfg, seq_length)
    # 2 matmuls x 2 FLOP/MAC x heads x d per (query, key) pair, x3 fwd+bwd; causal pairs taken as S^2 / 2
    attention = 6 * (L - len(windowed)) * seq_length * q
    attention += sum(12 * q * attended_pairs(seq_length, w) / seq_length for w in windowed)
    return 6 * matmul_params + attention


def document_square_sum(document_ids_bs: torch.Tensor) -> int:
    """Sum over the batch's sequences of their documents' squared lengths (S² per sequence of one
    document). ``document_ids_bs`` [b, s]: ids from 0, non-decreasing along each sequence."""
    b, s = document_ids_bs.shape
    distinct = document_ids_bs.long() + torch.arange(b, device=document_ids_bs.device).unsqueeze(1) * s
    return int((torch.bincount(distinct.reshape(-1)).long() ** 2).sum())


def _pairs_per_document(lengths: torch.Tensor, window: int | None) -> torch.Tensor:
    """Per document of length L: sum over its queries i of min(i + 1, window) keys."""
    pairs = lengths * (lengths + 1) // 2
    if window is not None:
        pairs = torch.where(lengths <= window, pairs, window * (window + 1) // 2 + (lengths - window) * window)
    return pairs


def attended_pairs(seq_length: int, window: int | None = None, document_lengths=None) -> int:
    """(query, key) pairs one sequence attends, exactly: query i sees key j iff 0 <= i - j < window (None: every
    earlier key and itself) within the same document. ``document_lengths``: its documents' lengths, summing to
    ``seq_length`` (None: one document). Without a window and documents this is S (S + 1) / 2 (the FLOPs formulas
    above take the causal half as S^2 / 2)."""
    lengths = torch.tensor([seq_length] if document_lengths is None else list(document_lengths), dtype=torch.long)
    if int(lengths.sum()) != seq_length or (lengths < 0).any():
        raise ValueError(f"document lengths {list(lengths.tolist())} do not sum to the sequence length {seq_length}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    return int(_pairs_per_document(lengths, window).sum())


def attended_pairs_of_documents(document_ids_bs: torch.Tensor, window: int | None = None) -> int:
    """``attended_pairs`` summed over a batch of packed sequences, from their document ids ([b, s], ids from 0,
    non-decreasing along each sequence, as ``document_square_sum`` takes them)."""
    b, s = document_ids_bs.shape
    distinct = document_ids_bs.long() + torch.arange(b, device=document_ids_bs.device).unsqueeze(1) * s
    lengths = torch.bincount(distinct.reshape(-1)).long().cpu()
    return int(_pairs_per_document(lengths, window).sum())


def windows_shorter_than_sequence(cfg: ModelConfig) -> list:
    """The distinct sliding windows of ``cfg``'s layers that are shorter than ``cfg.seq_length``, sorted."""
    return sorted(set(_windowed(cfg, cfg.seq_length)))


def window_pairs_of_documents(cfg: ModelConfig, document_ids_bs: torch.Tensor) -> dict:
    """{window: attended pairs of the packed batch under it} for each of ``windows_shorter_than_sequence``."""
    return {w: attended_pairs_of_documents(document_ids_bs, w) for w in windows_shorter_than_sequence(cfg)}


def model_flops(cfg: ModelConfig, tokens: int, square_sum: int, window_pairs: dict | None = None) -> float:
    """Forward+backward model FLOPs of ``tokens`` tokens (sequences of ``cfg.seq_length``) whose documents'
    squared lengths sum to ``square_sum``; with one document per sequence of length S this is
    ``model_flops_per_token(cfg, S) * tokens``. A layer with a sliding window counts the pairs the sequences
    attend under it: ``window_pairs[w]`` when given (``window_pairs_of_documents``: exact with packed
    documents), else the pairs of whole sequences, capped by the documents' causal pairs."""
    width, S = cfg.num_attention_heads * cfg.head_dim, cfg.seq_length
    windowed = _windowed(cfg, S)
    attention = 6 * (cfg.num_layers - len(windowed)) * width * square_sum
    for w in windowed:
        if window_pairs is not None and w in window_pairs:
            attention += 12 * width * window_pairs[w]
        else:
            attention += 12 * width * min(tokens / S * attended_pairs(S, w), (square_sum + tokens) / 2)
    return model_flops_per_token(cfg, 0) * tokens + attention


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated GPU memory, or the process's peak RSS on CPU, in GB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9
