"""GPT / Llama-shaped decoder-only model.

Shape legend: b batch, s this rank's slice of the sequence, S full sequence, H hidden,
F MLP width, V padded vocabulary. Under Ulysses SP every rank runs the whole model on its
slice of tokens; only attention sees the full sequence (for a subset of heads).
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from megatron.config import AttentionConfig, ModelConfig
from megatron.model.attention import ParallelAttention
from megatron.model.norms import make_norm
from megatron.model.tiled import softcapped


def _gathered(params: list):
    """Context that materializes ZeRO-3 partitioned parameters for modification (else a no-op)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    return contextlib.nullcontext()


class MLP(nn.Module):
    """GeLU MLP (GPT), SwiGLU (Llama) or GeGLU (Gemma); the gated ones hold [gate; up] stacked in fc1."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu, self.gated = cfg.swiglu, cfg.gated_mlp
        self.fused_swiglu = cfg.swiglu and cfg.fused_swiglu
        self.gelu_approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        out = 2 * cfg.ffn_hidden_size if cfg.gated_mlp else cfg.ffn_hidden_size
        self.fc1 = nn.Linear(cfg.hidden_size, out, bias=cfg.add_bias_linear)
        self.fc2 = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=cfg.add_bias_linear)
        self.fc2.is_output_projection = True

    def forward(self, x_bsH):
        y = self.fc1(x_bsH)
        if not self.gated:
            return self.fc2(F.gelu(y, approximate=self.gelu_approximate))
        if self.fused_swiglu:
            from megatron.kernels import swiglu

            if swiglu.supported(y):
                return self.fc2(swiglu.swiglu(y))
        gate, up = y.chunk(2, dim=-1)
        act = F.silu(gate) if self.swiglu else F.gelu(gate, approximate=self.gelu_approximate)
        return self.fc2(act * up)


class TransformerLayer(nn.Module):
    """Pre-norm decoder layer: x + attn(norm(x)), then x + mlp(norm(x)); with ``--sandwich-norm`` (Gemma-2/3)
    each branch's output is normalized too: x + norm(attn(norm(x))), x + norm(mlp(norm(x))). With
    ``--parallel-residual`` (GPT-NeoX) both branches read the layer's input: x + attn(norm1(x)) + mlp(norm2(x)).

    Layer ``layer_number`` attends within ``cfg.window(layer_number)`` (its sliding window, from
    ``--sliding-window`` and ``--layer-types``) or over every earlier token, with the local RoPE
    (``--rotary-base-local``) when it is a windowed layer of a model that has one. ``project`` (norm, QKV,
    RoPE) and ``after_attention`` (output projection, residual, MLP) are the two pieces that
    ``megatron.parallelize.apply_checkpointing`` recomputes around the attention with the
    keep-attention policy.
    """

    def __init__(self, cfg: ModelConfig, attention: AttentionConfig | None = None, device=None,
                 layer_number: int = 0):  # fmt: skip
        super().__init__()
        self.window = cfg.window(layer_number)
        self.input_norm = make_norm(cfg)
        self.attention = ParallelAttention(
            cfg, attention, device=device, window=self.window, softmax_scale=cfg.softmax_scale,
            softcap=cfg.attention_softcap, local_rope=cfg.local_rope(layer_number),
        )  # fmt: skip
        self.post_attention_norm = make_norm(cfg)  # the MLP's input norm (HF Llama's post_attention_layernorm)
        self.mlp = MLP(cfg)
        self.sandwich, self.parallel_residual = cfg.sandwich_norm, cfg.parallel_residual
        if self.sandwich:  # HF Gemma-2/3's post_attention_layernorm and post_feedforward_layernorm
            self.attention_output_norm = make_norm(cfg)
            self.mlp_output_norm = make_norm(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x_bsH, position_ids_bs, document_ids_bS=None):
        out_bshd = self.attention.attend(*self.project(x_bsH, position_ids_bs), document_ids_bS)
        return self.after_attention(out_bshd, x_bsH)

    def project(self, x_bsH, position_ids_bs):
        return self.attention.project(self.input_norm(x_bsH), position_ids_bs)

    def after_attention(self, out_bshd, x_bsH):
        a_bsH = self.attention.output(out_bshd)
        if self.sandwich:
            a_bsH = self.attention_output_norm(a_bsH)
        if self.parallel_residual:  # HF GPT-NeoX: mlp(ln2(x)) + attn(ln1(x)) + x, summed in that order
            m_bsH = self.mlp(self.post_attention_norm(x_bsH))
            if self.sandwich:
                m_bsH = self.mlp_output_norm(m_bsH)
            return self.dropout(m_bsH) + self.dropout(a_bsH) + x_bsH
        x_bsH = x_bsH + self.dropout(a_bsH)
        m_bsH = self.mlp(self.post_attention_norm(x_bsH))
        if self.sandwich:
            m_bsH = self.mlp_output_norm(m_bsH)
        return x_bsH + self.dropout(m_bsH)


class GPTModel(nn.Module):
    """Embeddings, decoder layers, final norm and (tied or untied) output layer.

    ``forward(input_ids, position_ids, labels=None)`` returns logits ``[b, s, V]`` without
    labels and per-token fp32 cross-entropy ``[b, s]`` with them; Gemma's embedding scale (``--scale-embeddings``)
    and final-logit soft-cap (``--final-logit-softcap``, in the logits and in every loss) apply. Two slots are for
    techniques applied from outside (``megatron.parallelize``): ``loss_fn(h, weight, labels)`` (a tiled loss)
    and ``run_layer(layer, x, position_ids, document_ids)`` (recomputation).
    """

    def __init__(self, cfg: ModelConfig, attention: AttentionConfig | None = None, device=None):
        super().__init__()
        self.cfg = cfg
        self.loss_fn = functools.partial(full_logits_cross_entropy, softcap=cfg.final_logit_softcap)
        self.run_layer = run_layer
        V = cfg.padded_vocab_size
        self.word_embeddings = nn.Embedding(V, cfg.hidden_size)
        if not cfg.use_rotary_position_embeddings:
            self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.embedding_dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(cfg, attention, device=device, layer_number=i) for i in range(cfg.num_layers)
        )
        self.final_norm = make_norm(cfg)
        if cfg.untie_embeddings_and_output_weights:
            self.output_layer = nn.Linear(cfg.hidden_size, V, bias=False)
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
        if self.cfg.scale_embeddings:  # transformers' Gemma: sqrt(H) in fp32, then rounded to the embeddings' dtype
            x = x * torch.tensor(self.cfg.hidden_size**0.5, dtype=torch.float32).to(x.dtype).item()
        if not self.cfg.use_rotary_position_embeddings:
            x = x + self.position_embeddings(position_ids_bs)
        x = self.embedding_dropout(x)
        for layer in self.layers:
            x = self.run_layer(layer, x, position_ids_bs, document_ids_bS)
        return self.final_norm(x)

    def forward(self, input_ids_bs, position_ids_bs=None, labels_bs=None, document_ids_bS=None):
        if position_ids_bs is None:
            position_ids_bs = torch.arange(input_ids_bs.shape[1], device=input_ids_bs.device).expand_as(input_ids_bs)
        h_bsH = self.hidden_states(input_ids_bs, position_ids_bs, document_ids_bS)
        if labels_bs is None:
            return softcapped(F.linear(h_bsH, self.output_weight()), self.cfg.final_logit_softcap)
        return self.loss_fn(h_bsH, self.output_weight(), labels_bs)


def run_layer(layer, x_bsH, position_ids_bs, document_ids_bS=None):
    """One decoder layer, as it is."""
    return layer(x_bsH, position_ids_bs, document_ids_bS)


def full_logits_cross_entropy(h_bsH, weight_VH, labels_bs, softcap: float | None = None):
    """Per-token fp32 cross-entropy ``[b, s]`` through the full logits ``[b, s, V]`` (soft-capped by ``softcap``
    in their dtype, as transformers' Gemma-2 caps them, when given)."""
    logits_bsV = softcapped(F.linear(h_bsH, weight_VH), softcap)
    loss = F.cross_entropy(logits_bsV.float().flatten(0, 1), labels_bs.flatten(), reduction="none")
    return loss.view_as(labels_bs)
