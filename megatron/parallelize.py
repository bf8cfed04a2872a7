"""Parallelism and memory techniques, applied to a plain GPTModel from outside.

The model (``megatron.model``) knows nothing of sequence parallelism, recomputation, tiling or
ZeRO; each ``apply_*`` here changes a built model in place, keeping every parameter's name (so
checkpoints and Hugging Face conversion see the same state dict):

  apply_ulysses(model, group, exchange, chunks)   wrap each core attention in a Ulysses exchange
  apply_tiled_mlp(model, shards)                  MLPs over sequence shards, recomputed in backward
  apply_tiled_loss(model, chunk, use_liger)       output layer + loss over token chunks
  apply_checkpointing(model, policy, in_cpu)      recompute layers: a CHECKPOINT_POLICIES name, or one per layer
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

CHECKPOINT_POLICIES = ("none", "attention_output", "attention_output_offload", "keep_attention", "full")


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
    def __init__(self, chunk: int | None, use_liger: bool, softcap: float | None = None):
        self.chunk, self.use_liger, self.softcap = chunk, use_liger, softcap

    def __call__(self, h_bsH, weight_VH, labels_bs):
        return tiled_cross_entropy(h_bsH, weight_VH, labels_bs, self.chunk, self.use_liger, softcap=self.softcap)


def apply_tiled_loss(model: GPTModel, chunk: int | None = None, use_liger: bool = False) -> None:
    """The output layer + cross-entropy over ``chunk`` tokens at a time (no full fp32 logits), with the
    model's final-logit soft-cap (``--final-logit-softcap``), which liger's fused loss lacks."""
    softcap = model.cfg.final_logit_softcap
    if use_liger and softcap is not None:
        raise ConfigError(f"--use-liger-kernel's fused loss has no final-logit soft-cap (--final-logit-softcap "
                          f"{softcap}); drop --use-liger-kernel (the tiled loss applies the cap)")  # fmt: skip
    if use_liger and importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("--use-liger-kernel needs liger-kernel: pip install liger-kernel (or drop the flag)")
    model.loss_fn = _TiledLoss(chunk, use_liger, softcap)


# ----------------------------------------------------------------------------- recomputation
class _FullCheckpoint:
    """``GPTModel.run_layer``: each layer recomputed in backward (torch's non-reentrant checkpoint of
    the layer module, so ZeRO-3's hooks gather its parameters for the recompute too). ``layers``: the ids of
    the layers it recomputes (None: all; the others run as they are)."""

    def __init__(self, layers: set | None = None):
        self.layers = layers

    def __call__(self, layer, x_bsH, position_ids_bs, document_ids_bS=None):
        chosen = self.layers is None or id(layer) in self.layers
        if not (chosen and layer.training and torch.is_grad_enabled()):
            return layer(x_bsH, position_ids_bs, document_ids_bS)
        return checkpoint(layer, x_bsH, position_ids_bs, document_ids_bS, use_reentrant=False)


class _KeepAttention:
    """A layer checkpointed in two pieces around its attention: norm + QKV + RoPE, and output
    projection + MLP, are recomputed in backward; the Ulysses exchange and the core attention run
    once and keep what their backward needs (q, k, v, the output and its softmax statistics)."""

    def __init__(self, layer: TransformerLayer, offload: bool = False):
        self.layer, self.run, self.offload = layer, type(layer).forward.__get__(layer), offload

    def __call__(self, x_bsH, position_ids_bs, document_ids_bS=None):
        layer = self.layer
        if not (layer.training and torch.is_grad_enabled()):
            return self.run(x_bsH, position_ids_bs, document_ids_bS)
        q, k, v = checkpoint(layer.project, x_bsH, position_ids_bs, use_reentrant=False)
        out_bshd = layer.attention.attend(q, k, v, document_ids_bS)
        return checkpoint(layer.after_attention, out_bshd, x_bsH, use_reentrant=False)


LSE_REFUSAL = ("attention-output checkpointing needs a backend that returns its log-sum-exp (--attention-backend "
               "{name} does not); use --attention-backend flash_triton, sdpa or classic")  # fmt: skip


def _core_and_group(attention: ParallelAttention):
    """The backend of ``attention`` and, under SP, the Ulysses group of the exchange around it (else None)."""
    core = attention.core_attention
    if hasattr(core, "local_attention") and hasattr(core, "group"):
        return core.local_attention, core.group
    return core, None


def _check_lse_backend(layer: TransformerLayer) -> None:
    core, _ = _core_and_group(layer.attention)
    if not getattr(core, "returns_lse", False):
        raise ConfigError(LSE_REFUSAL.format(name=getattr(core, "name", type(core).__name__)))
    if getattr(core, "dropout", 0.0) > 0:
        raise ConfigError(f"attention-output checkpointing replays no attention dropout (--attention-dropout "
                          f"{core.dropout}); set --attention-dropout 0 or use another recomputation policy")  # fmt: skip


def _rng_states(device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


class _AttentionOutputFunction(torch.autograd.Function):
    """One decoder layer that keeps only its input, the core attention's output (in the backend's layout: under
    SP ``[b, S, h/sp, d]``) and its log-sum-exp. Forward without autograd; backward (reentrant, like DeepSpeed's
    activation checkpointing: modules are called again, so ZeRO-3's hooks gather their parameters) recomputes
    output projection + residual + MLP from the kept output (under SP after one exchange of it back to the
    local layout), then norm + QKV + RoPE (+ the Q/K/V exchange), and runs the attention's backward from the kept
    output and log-sum-exp: the attention's forward runs once a step. Parameter gradients accumulate through
    ``torch.autograd.backward`` inside; the input's gradient is returned.

    Under SP the output is kept in the backend's layout, not the local one: both are the same size, and either
    way one exchange of it is needed in backward (here back to the local layout for the recompute; the other way
    it would be to the heads layout for the attention's backward), so the one kept is the one the attention's
    backward reads as it is. The backward runs the fused exchanges whatever --ulysses-exchange is (the same data
    movement as DeepSpeed's and the overlapped one). ``offload``: what is kept waits in pinned host memory
    (``megatron.training.memory.OffloadTape``: copied on a side stream in forward; in backward the output is
    brought back first while the input and LSE follow on the side stream), so the layer keeps nothing on the
    device between its forward and its backward."""

    @staticmethod
    def forward(ctx, layer, x_bsH, position_ids_bs, document_ids_bS, _anchor, offload=False):
        from megatron.model.ulysses import heads_to_seq, seq_to_heads

        core, group = _core_and_group(layer.attention)
        with torch.no_grad():
            q, k, v = layer.project(x_bsH, position_ids_bs)
            if group is not None:
                q, k, v = seq_to_heads([q, k, v], group)
            out_bShd, lse = core.forward_lse(q, k, v, document_ids_bS)
            del q, k, v
            out_bshd = heads_to_seq([out_bShd], group)[0] if group is not None else out_bShd
            ctx.rng = _rng_states(x_bsH.device)
            y_bsH = layer.after_attention(out_bshd, x_bsH)
        ctx.layer, ctx.core, ctx.group = layer, core, group
        ctx.position_ids, ctx.document_ids = position_ids_bs, document_ids_bS
        ctx.x_needs_grad, ctx.tape = x_bsH.requires_grad, None
        if offload:
            from megatron.training.memory import OffloadTape

            ctx.tape, ctx.device = OffloadTape(), x_bsH.device
            ctx.slots = [ctx.tape.push(t) for t in (lse, x_bsH, out_bShd)]  # taken back in reverse
        else:
            ctx.save_for_backward(x_bsH, out_bShd, lse)
        return y_bsH

    @staticmethod
    def backward(ctx, dy_bsH):
        from megatron.model.ulysses import heads_to_seq, seq_to_heads

        if ctx.tape is not None:
            out_bShd, x_bsH, lse = (ctx.tape.take(slot, ctx.device) for slot in reversed(ctx.slots))
            ctx.tape = None
        else:
            x_bsH, out_bShd, lse = ctx.saved_tensors
        layer, core, group = ctx.layer, ctx.core, ctx.group
        x = x_bsH.detach().requires_grad_(ctx.x_needs_grad)
        with torch.no_grad():
            out_bshd = heads_to_seq([out_bShd], group)[0] if group is not None else out_bShd
        out_bshd = out_bshd.detach().requires_grad_(True)
        cpu_rng, cuda_rng = ctx.rng
        devices = [x.device] if cuda_rng is not None else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad():  # the same dropout masks as the forward
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, x.device)
            y = layer.after_attention(out_bshd, x)
        torch.autograd.backward(y, dy_bsH)
        dout_bshd, out_bshd, y = out_bshd.grad, None, None
        with torch.enable_grad():
            q, k, v = layer.project(x, ctx.position_ids)
        with torch.no_grad():
            qkv = seq_to_heads([q, k, v], group) if group is not None else [q, k, v]
            dout = seq_to_heads([dout_bshd], group)[0] if group is not None else dout_bshd
            grads = core.backward_lse(*qkv, out_bShd, lse, dout, ctx.document_ids)
            del qkv, dout
            if group is not None:
                grads = heads_to_seq(list(grads), group)
        torch.autograd.backward((q, k, v), tuple(grads))
        return None, x.grad if ctx.x_needs_grad else None, None, None, None, None


class _AttentionOutput:
    """``TransformerLayer.forward`` with attention-output checkpointing (``_AttentionOutputFunction``) while
    training; as it is otherwise. About 2 x hidden values a token kept (input and attention output) against
    keep-attention's 6 (input, q, k, v, output) and full recomputation's 1."""

    def __init__(self, layer: TransformerLayer, offload: bool = False):
        self.layer, self.run, self.offload = layer, type(layer).forward.__get__(layer), offload
        self.anchor = torch.empty(0, requires_grad=True)  # backward runs even if the input needs no gradient

    def __call__(self, x_bsH, position_ids_bs, document_ids_bS=None):
        layer = self.layer
        if not (layer.training and torch.is_grad_enabled()):
            return self.run(x_bsH, position_ids_bs, document_ids_bS)
        from megatron.model.ulysses import OverlappedUlyssesAttention

        if isinstance(layer.attention.core_attention, OverlappedUlyssesAttention):
            log_once("attention-output checkpointing exchanges Q/K/V and the output un-pipelined (as "
                     "--ulysses-exchange fused does); --ulysses-exchange overlap applies to the other layers")  # fmt: skip
        _check_lse_backend(layer)
        return _AttentionOutputFunction.apply(layer, x_bsH, position_ids_bs, document_ids_bS, self.anchor, self.offload)


class _OffloadedCheckpoint:
    """``GPTModel.run_layer``: each layer recomputed in backward, its kept input in pinned host memory
    until then; the layers of one forward pass share one tape (started by a pre-hook on the model).
    ``layers``: the ids of the layers it recomputes (None: all; the others run as they are)."""

    def __init__(self, layers: set | None = None):
        self.tape, self.layers = None, layers

    def start_pass(self, module, args) -> None:
        from megatron.training.memory import OffloadTape

        self.tape = OffloadTape()

    def __call__(self, layer, x_bsH, position_ids_bs, document_ids_bS=None):
        from megatron.training.memory import offloaded_checkpoint

        chosen = self.layers is None or id(layer) in self.layers
        if not (chosen and layer.training and torch.is_grad_enabled()):
            return layer(x_bsH, position_ids_bs, document_ids_bS)
        return offloaded_checkpoint(layer, x_bsH, position_ids_bs, document_ids_bS, tape=self.tape)


def _policies(model: nn.Module, policy) -> list:
    """One checked policy name per decoder layer of ``model``."""
    layers = _layers(model)
    names = [policy] * len(layers) if isinstance(policy, str) else list(policy)
    if len(names) != len(layers):
        raise ConfigError(f"a recomputation policy per layer needs {len(layers)} names (one per decoder layer), "
                          f"got {len(names)}")  # fmt: skip
    for name in names:
        if name not in CHECKPOINT_POLICIES:
            raise ConfigError(f"recomputation policy {name!r} is unknown; use one of {', '.join(CHECKPOINT_POLICIES)}")
    return names


def apply_checkpointing(model: nn.Module, policy="full", in_cpu: bool = False) -> None:
    """Recompute decoder layers of ``model`` in backward while training.

    ``policy``: one name of CHECKPOINT_POLICIES for every layer, or a list with one per decoder layer (in
    ``model.modules()`` order, i.e. layer order). ``full``: the whole layer (torch checkpoint; with ``in_cpu`` its
    input waits in host memory), through ``GPTModel.run_layer``; ``keep_attention``: everything but the exchange
    and core attention, which run once; ``attention_output``: the layer keeps its input, the core attention's
    output and log-sum-exp, recomputes the rest and runs the attention's backward from them (its forward runs
    once; flash_triton and classic backends); ``attention_output_offload``: the same with what it keeps in pinned
    host memory; ``none``: nothing. All but full change each
    layer's forward, so they also apply to a bare layer. Outputs and gradients equal the plain layer's
    (``tests/alst``).
    """
    names = _policies(model, policy)
    if policy == "none":
        return
    if in_cpu and isinstance(policy, str) and policy != "full":
        raise ConfigError(f"--checkpoint-in-cpu offloads fully recomputed layers, not the {policy} policy; drop "
                          "--checkpoint-keep-attention (or --checkpoint-in-cpu)")  # fmt: skip
    full = set()
    for layer, name in zip(_layers(model), names):
        if name == "keep_attention":
            layer.forward = _KeepAttention(layer)
        elif name in ("attention_output", "attention_output_offload"):
            _check_lse_backend(layer)
            layer.forward = _AttentionOutput(layer, offload=name == "attention_output_offload")
        elif name == "full":
            full.add(id(layer))
    if not full:
        return
    if not isinstance(model, GPTModel):
        raise TypeError(f"full recomputation applies to a GPTModel (got {type(model).__name__})")
    chosen = None if len(full) == len(names) else full
    if in_cpu:
        runner = _OffloadedCheckpoint(chosen)
        model.register_forward_pre_hook(runner.start_pass)
        model.run_layer = runner
    else:
        model.run_layer = _FullCheckpoint(chosen)


# ----------------------------------------------------------------------------- ZeRO-3
def apply_zero3_leaf(model: nn.Module) -> int:
    """ZeRO-3 fetches and releases each decoder layer's parameters at once (DeepSpeed leaf modules):
    one hook pair per layer instead of one per linear and norm. Returns the number of layers."""
    from deepspeed.utils import set_z3_leaf_modules

    return len(set_z3_leaf_modules(model, [TransformerLayer]))


# ----------------------------------------------------------------------------- all of it
def checkpoint_policy(cfg: Config) -> str:
    """The recomputation policy a Config asks for: ``--recompute attention_output`` (where the field exists),
    else --checkpoint-activations (full) with --checkpoint-keep-attention, else none."""
    m = cfg.memory
    if getattr(m, "recompute", None) == "attention_output":
        return "attention_output"
    if not m.checkpoint_activations:
        return "none"
    return "keep_attention" if m.checkpoint_keep_attention else "full"


def _apply_recompute(model: GPTModel, cfg: Config) -> list:
    """Recomputation as --recompute says: a forced policy on every layer, else (auto) the memory planner's plan
    where a budget is known (a GPU, or --activation-memory-budget), else today's default (checkpoint_policy)."""
    from megatron.training import recompute_plan

    forced = recompute_plan.forced_policy(cfg.memory)
    if forced is not None:
        recompute_plan.apply_plan(model, [forced] * len(_layers(model)), cfg.memory.checkpoint_in_cpu)
        return []
    param = next(model.parameters(), None)
    plan = recompute_plan.plan_for(cfg, model, param.device if param is not None else None)
    if plan is None:
        apply_checkpointing(model, checkpoint_policy(cfg), cfg.memory.checkpoint_in_cpu)
        return []
    recompute_plan.apply_plan(model, plan.policies)
    return [plan.summary()]


def parallelize(model: GPTModel, cfg: Config, sp_group=None) -> list:
    """Apply what ``cfg`` asks for to ``model``; returns the one-line notes of what was applied."""
    m, notes = cfg.memory, []
    if sp_group is not None and torch.distributed.get_world_size(sp_group) > 1:
        apply_ulysses(model, sp_group, cfg.attention.ulysses_exchange, cfg.attention.ulysses_overlap_chunks)
    if m.tiled_mlp_compute:
        apply_tiled_mlp(model, m.tiled_mlp_shards)
    if m.use_tiled_logits_loss or m.use_liger_kernel:
        apply_tiled_loss(model, m.tiled_logits_chunk_size, m.use_liger_kernel)
    notes += _apply_recompute(model, cfg)
    if cfg.parallel.zero_stage == 3 and cfg.parallel.use_zero3_leaf_layers:
        n = apply_zero3_leaf(model)
        notes.append(f"ZeRO-3: {n} transformer layers gathered as whole modules (leaf modules)")
    return notes
