"""GPT / Llama-shaped decoder-only model.

Shape legend: b batch, s this rank's slice of the sequence, S full sequence, H hidden,
F MLP width, V padded vocabulary. Under Ulysses SP every rank runs the whole model on its
slice of tokens; only attention sees the full sequence (for a subset of heads).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from megatron.config import ModelConfig
from megatron.training.memory import OffloadTape, offloaded_checkpoint
from megatron.model.attention import ParallelAttention
from megatron.model.tiled import MemoryOptions, tiled_cross_entropy, tiled_mlp


def _gathered(params: list):
    """Context that materializes ZeRO-3 partitioned parameters for modification (else a no-op)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    return contextlib.nullcontext()


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.normalization == "RMSNorm":
        return nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_epsilon)
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_epsilon)


class MLP(nn.Module):
    """GeLU MLP (GPT) or SwiGLU (Llama; fc1 holds [gate; up] stacked)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.swiglu
        self.gelu_approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        out = 2 * cfg.ffn_hidden_size if cfg.swiglu else cfg.ffn_hidden_size
        self.fc1 = nn.Linear(cfg.hidden_size, out, bias=cfg.add_bias_linear)
        self.fc2 = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=cfg.add_bias_linear)
        self.fc2.is_output_projection = True
        self.tiled, self.tiled_shards = False, None  # set by GPTModel (--tiled-mlp-compute)

    def forward(self, x_bsH):
        if self.tiled:
            return tiled_mlp(self._forward, x_bsH, self.tiled_shards, list(self.parameters()))
        return self._forward(x_bsH)

    def _forward(self, x_bsH):
        y = self.fc1(x_bsH)
        if self.swiglu:
            gate, up = y.chunk(2, dim=-1)
            y = F.silu(gate) * up
        else:
            y = F.gelu(y, approximate=self.gelu_approximate)
        return self.fc2(y)


class TransformerLayer(nn.Module):
    """Pre-norm decoder layer: x + attn(norm(x)), then x + mlp(norm(x)).

    With ``keep_attention`` (``--checkpoint-keep-attention``, set by GPTModel) a training forward
    checkpoints the layer in two pieces around the attention: norm + QKV + RoPE, and output
    projection + MLP, are recomputed in backward; the Ulysses exchange and the core attention run
    once and keep what their backward needs (q, k, v, the output and its softmax statistics).
    """

    def __init__(self, cfg: ModelConfig, layer_number: int, sp_group=None, device=None):
        super().__init__()
        self.input_norm = make_norm(cfg)
        self.attention = ParallelAttention(cfg, layer_number, sp_group=sp_group, device=device)
        self.post_attention_norm = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.keep_attention = False

    def forward(self, x_bsH, position_ids_bs, document_ids_bS=None):
        if self.keep_attention and self.training and torch.is_grad_enabled():
            q, k, v = checkpoint(self._project, x_bsH, position_ids_bs, use_reentrant=False)
            out_bshd = self.attention.attend(q, k, v, document_ids_bS)
            return checkpoint(self._after_attention, out_bshd, x_bsH, use_reentrant=False)
        out_bshd = self.attention.attend(*self._project(x_bsH, position_ids_bs), document_ids_bS)
        return self._after_attention(out_bshd, x_bsH)

    def _project(self, x_bsH, position_ids_bs):
        return self.attention.project(self.input_norm(x_bsH), position_ids_bs)

    def _after_attention(self, out_bshd, x_bsH):
        x_bsH = x_bsH + self.dropout(self.attention.output(out_bshd))
        return x_bsH + self.dropout(self.mlp(self.post_attention_norm(x_bsH)))


class GPTModel(nn.Module):
    """Embeddings, decoder layers, final norm and (tied or untied) output layer.

    ``forward(input_ids, position_ids, labels=None)`` returns logits ``[b, s, V]`` without
    labels and per-token fp32 cross-entropy ``[b, s]`` with them.
    """

    def __init__(
        self, cfg: ModelConfig, sp_group=None, checkpoint_activations: bool = False, device=None,
        memory: MemoryOptions | None = None,
    ):  # fmt: skip
        super().__init__()
        self.cfg = cfg
        self.checkpoint_activations = checkpoint_activations
        self.memory = memory or MemoryOptions()
        V = cfg.padded_vocab_size
        self.word_embeddings = nn.Embedding(V, cfg.hidden_size)
        if not cfg.use_rotary_position_embeddings:
            self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.embedding_dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(cfg, i + 1, sp_group=sp_group, device=device) for i in range(cfg.num_layers)
        )
        self.final_norm = make_norm(cfg)
        if cfg.untie_embeddings_and_output_weights:
            self.output_layer = nn.Linear(cfg.hidden_size, V, bias=False)
        for layer in self.layers:
            layer.mlp.tiled, layer.mlp.tiled_shards = self.memory.tiled_mlp, self.memory.mlp_shards
            layer.keep_attention = checkpoint_activations and self.memory.checkpoint_keep_attention
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Megatron's init: N(0, std), output projections scaled by 1/sqrt(2 * layers), zero biases.

        Under ZeRO-3 (``deepspeed.zero.Init``) parameters are already partitioned here: each
        module's parameters are gathered, initialized on rank 0 and re-partitioned, one module
        at a time, in the same order (and RNG stream) as without ZeRO-3.
        """
        std = self.cfg.init_method_std
        scaled = std / math.sqrt(2.0 * self.cfg.num_layers)
        for module in self.modules():
            if not isinstance(module, (nn.Linear, nn.Embedding)):
                continue
            with _gathered(list(module.parameters(recurse=False))):
                if isinstance(module, nn.Linear):
                    out_proj = getattr(module, "is_output_projection", False)
                    nn.init.normal_(module.weight, 0.0, scaled if out_proj else std)
                    if module.bias is not None:
                        module.bias.zero_()
                else:
                    nn.init.normal_(module.weight, 0.0, std)

    def output_weight(self) -> torch.Tensor:
        if self.cfg.untie_embeddings_and_output_weights:
            return self.output_layer.weight
        return self.word_embeddings.weight

    def hidden_states(self, input_ids_bs, position_ids_bs, document_ids_bS=None):
        x = self.word_embeddings(input_ids_bs)
        if not self.cfg.use_rotary_position_embeddings:
            x = x + self.position_embeddings(position_ids_bs)
        x = self.embedding_dropout(x)
        tape = OffloadTape()  # this pass's offloaded layer inputs (--checkpoint-in-cpu)
        for layer in self.layers:
            if self.checkpoint_activations and self.training and self.memory.checkpoint_in_cpu:
                x = offloaded_checkpoint(layer, x, position_ids_bs, document_ids_bS, tape=tape)
            elif self.checkpoint_activations and self.training and not self.memory.checkpoint_keep_attention:
                x = checkpoint(layer, x, position_ids_bs, document_ids_bS, use_reentrant=False)
            else:  # no checkpointing, or the layer checkpoints itself around its attention (keep_attention)
                x = layer(x, position_ids_bs, document_ids_bS)
        return self.final_norm(x)

    def forward(self, input_ids_bs, position_ids_bs=None, labels_bs=None, document_ids_bS=None):
        if position_ids_bs is None:
            position_ids_bs = torch.arange(input_ids_bs.shape[1], device=input_ids_bs.device).expand_as(input_ids_bs)
        h_bsH = self.hidden_states(input_ids_bs, position_ids_bs, document_ids_bS)
        if labels_bs is not None and self.memory.tiled_logits:
            m = self.memory
            return tiled_cross_entropy(h_bsH, self.output_weight(), labels_bs, m.logits_chunk_size, m.use_liger)
        logits_bsV = F.linear(h_bsH, self.output_weight())
        if labels_bs is None:
            return logits_bsV
        loss = F.cross_entropy(logits_bsV.float().flatten(0, 1), labels_bs.flatten(), reduction="none")
        return loss.view_as(labels_bs)
