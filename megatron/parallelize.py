"""Parallelism and memory techniques, applied to a plain GPTModel from outside.

The model (``megatron.model``) knows nothing of sequence parallelism, recomputation, tiling or
ZeRO; each ``apply_*`` here changes a built model in place, keeping every parameter's name (so
checkpoints and Hugging Face conversion see the same state dict):

  apply_ulysses(model, group, exchange, chunks)   wrap each core attention in a Ulysses exchange
  apply_tiled_mlp(model, shards)                  MLPs over sequence shards, recomputed in backward
  apply_tiled_loss(model, chunk, use_liger)       output layer + loss over token chunks
  apply_checkpointing(model, policy, in_cpu)      recompute layers: "full" or "keep_attention"
  apply_zero3_leaf(model)                         ZeRO-3 gathers each layer's parameters at once

``parallelize(model, cfg, sp_group)`` applies what a Config asks for, in that order.
"""

from __future__ import annotations

import importlib.util
import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from megatron.config import Config, ConfigError
from megatron.model.attention import ParallelAttention, log_once
from megatron.model.gpt import GPTModel, TransformerLayer
from megatron.model.tiled import tiled_cross_entropy, tiled_mlp

CHECKPOINT_POLICIES = ("none", "full", "keep_attention")


def _layers(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, TransformerLayer)]


# ----------------------------------------------------------------------------- Ulysses
def apply_ulysses(model: nn.Module, group, exchange: str = "deepspeed", chunks: int = 2) -> None:
    """Every attention of ``model`` attends over the whole sequence for its share of heads.

    Each rank holds ``s = S / sp`` tokens; the exchange turns ``[b, s, h, d]`` into
    ``[b, S, h / sp, d]`` around the core attention and back. Key/value heads fewer than the
    SP ranks are replicated so that each rank gets one. Dynamic-NTK RoPE takes its sequence length
    over the SP group (``megatron.model.rotary.RotaryEmbedding``).
    """
    from megatron.model.ulysses import DeepSpeedUlyssesAttention, FusedUlyssesAttention, OverlappedUlyssesAttention

    sp = torch.distributed.get_world_size(group)
    for attn in [m for m in model.modules() if isinstance(m, ParallelAttention)]:
        attn.kv_repeat = sp // attn.g if attn.g < sp else 1
        if attn.rotary is not None:
            attn.rotary.group = group
        core = attn.core_attention
        if exchange == "deepspeed":
            attn.core_attention = DeepSpeedUlyssesAttention(core, group)
        elif exchange == "fused":
            attn.core_attention = FusedUlyssesAttention(core, group)
        elif exchange == "overlap":
            kv_per_rank = attn.g * attn.kv_repeat // sp
            n = math.gcd(chunks, kv_per_rank)
            if n != chunks:
                log_once(f"--ulysses-overlap-chunks {chunks} -> {n}: the chunk count must divide the "
                         f"{kv_per_rank} key/value heads per rank")  # fmt: skip
            attn.core_attention = OverlappedUlyssesAttention(core, group, n)
        else:
            raise ConfigError(f"--ulysses-exchange {exchange!r} is unknown; use deepspeed, fused or overlap")


# ----------------------------------------------------------------------------- tiling
class _TiledMLPForward:
    """An MLP's forward over sequence shards (``megatron.model.tiled.tiled_mlp``)."""

    def __init__(self, mlp: nn.Module, shards: int | None):
        self.run = type(mlp).forward.__get__(mlp)
        self.shards, self.params = shards, list(mlp.parameters())

    def __call__(self, x_bsH):
        return tiled_mlp(self.run, x_bsH, self.shards, self.params)


def apply_tiled_mlp(model: nn.Module, shards: int | None = None) -> None:
    """Each MLP (or ``model`` itself, if it is one) runs over ``shards`` token shards (default
    ceil(local sequence / hidden)); only one shard's intermediates exist at a time."""
    from megatron.model.gpt import MLP

    for mlp in [m for m in model.modules() if isinstance(m, MLP)]:
        mlp.forward = _TiledMLPForward(mlp, shards)


class _TiledLoss:
    def __init__(self, chunk: int | None, use_liger: bool):
        self.chunk, self.use_liger = chunk, use_liger

    def __call__(self, h_bsH, weight_VH, labels_bs):
        return tiled_cross_entropy(h_bsH, weight_VH, labels_bs, self.chunk, self.use_liger)


def apply_tiled_loss(model: GPTModel, chunk: int | None = None, use_liger: bool = False) -> None:
    """The output layer + cross-entropy over ``chunk`` tokens at a time (no full fp32 logits)."""
    if use_liger and importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("--use-liger-kernel needs liger-kernel: pip install liger-kernel (or drop the flag)")
    model.loss_fn = _TiledLoss(chunk, use_liger)


# ----------------------------------------------------------------------------- recomputation
class _FullCheckpoint:
    """``GPTModel.run_layer``: each layer recomputed in backward (torch's non-reentrant checkpoint of
    the layer module, so ZeRO-3's hooks gather its parameters for the recompute too)."""

    def __call__(self, layer, x_bsH, position_ids_bs, document_ids_bS=None):
        if not (layer.training and torch.is_grad_enabled()):
            return layer(x_bsH, position_ids_bs, document_ids_bS)
        return checkpoint(layer, x_bsH, position_ids_bs, document_ids_bS, use_reentrant=False)


class _KeepAttention:
    """A layer checkpointed in two pieces around its attention: norm + QKV + RoPE, and output
    projection + MLP, are recomputed in backward; the Ulysses exchange and the core attention run
    once and keep what their backward needs (q, k, v, the output and its softmax statistics)."""

    def __init__(self, layer: TransformerLayer):
        self.layer, self.run = layer, type(layer).forward.__get__(layer)

    def __call__(self, x_bsH, position_ids_bs, document_ids_bS=None):
        layer = self.layer
        if not (layer.training and torch.is_grad_enabled()):
            return self.run(x_bsH, position_ids_bs, document_ids_bS)
        q, k, v = checkpoint(layer.project, x_bsH, position_ids_bs, use_reentrant=False)
        out_bshd = layer.attention.attend(q, k, v, document_ids_bS)
        return checkpoint(layer.after_attention, out_bshd, x_bsH, use_reentrant=False)


class _OffloadedCheckpoint:
    """``GPTModel.run_layer``: each layer recomputed in backward, its kept input in pinned host memory
    until then; the layers of one forward pass share one tape (started by a pre-hook on the model)."""

    def __init__(self):
        self.tape = None

    def start_pass(self, module, args) -> None:
        from megatron.training.memory import OffloadTape

        self.tape = OffloadTape()

    def __call__(self, layer, x_bsH, position_ids_bs, document_ids_bS=None):
        from megatron.training.memory import offloaded_checkpoint

        if not (layer.training and torch.is_grad_enabled()):
            return layer(x_bsH, position_ids_bs, document_ids_bS)
        return offloaded_checkpoint(layer, x_bsH, position_ids_bs, document_ids_bS, tape=self.tape)


def apply_checkpointing(model: nn.Module, policy: str = "full", in_cpu: bool = False) -> None:
    """Recompute each decoder layer of ``model`` in backward while training.

    ``full``: the whole layer (torch checkpoint; with ``in_cpu`` its input waits in host memory),
    through ``GPTModel.run_layer``; ``keep_attention``: everything but the exchange and core
    attention, which run once (each layer's forward, so it also applies to a bare layer);
    ``none``: nothing. Outputs and gradients equal the plain layer's (``tests/alst``).
    """
    if policy not in CHECKPOINT_POLICIES:
        raise ConfigError(f"recomputation policy {policy!r} is unknown; use one of {', '.join(CHECKPOINT_POLICIES)}")
    if policy == "none":
        return
    if in_cpu and policy != "full":
        raise ConfigError("--checkpoint-in-cpu offloads fully recomputed layers; drop --checkpoint-keep-attention")
    if policy == "keep_attention":
        for layer in _layers(model):
            layer.forward = _KeepAttention(layer)
        return
    if not isinstance(model, GPTModel):
        raise TypeError(f"full recomputation applies to a GPTModel (got {type(model).__name__})")
    if in_cpu:
        runner = _OffloadedCheckpoint()
        model.register_forward_pre_hook(runner.start_pass)
        model.run_layer = runner
    else:
        model.run_layer = _FullCheckpoint()


# ----------------------------------------------------------------------------- ZeRO-3
def apply_zero3_leaf(model: nn.Module) -> int:
    """ZeRO-3 fetches and releases each decoder layer's parameters at once (DeepSpeed leaf modules):
    one hook pair per layer instead of one per linear and norm. Returns the number of layers."""
    from deepspeed.utils import set_z3_leaf_modules

    return len(set_z3_leaf_modules(model, [TransformerLayer]))


# ----------------------------------------------------------------------------- all of it
def checkpoint_policy(cfg: Config) -> str:
    m = cfg.memory
    if not m.checkpoint_activations:
        return "none"
    return "keep_attention" if m.checkpoint_keep_attention else "full"


def parallelize(model: GPTModel, cfg: Config, sp_group=None) -> list:
    """Apply what ``cfg`` asks for to ``model``; returns the one-line notes of what was applied."""
    m, notes = cfg.memory, []
    if sp_group is not None and torch.distributed.get_world_size(sp_group) > 1:
        apply_ulysses(model, sp_group, cfg.attention.ulysses_exchange, cfg.attention.ulysses_overlap_chunks)
    if m.tiled_mlp_compute:
        apply_tiled_mlp(model, m.tiled_mlp_shards)
    if m.use_tiled_logits_loss or m.use_liger_kernel:
        apply_tiled_loss(model, m.tiled_logits_chunk_size, m.use_liger_kernel)
    apply_checkpointing(model, checkpoint_policy(cfg), m.checkpoint_in_cpu)
    if cfg.parallel.zero_stage == 3 and cfg.parallel.use_zero3_leaf_layers:
        n = apply_zero3_leaf(model)
        notes.append(f"ZeRO-3: {n} transformer layers gathered as whole modules (leaf modules)")
    return notes
