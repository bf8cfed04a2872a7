"""Memory-budgeted recomputation planner (``--recompute auto``).

Before the first step, each decoder layer gets one policy, fastest first as the budget allows:

  none              keeps every activation autograd saves (``layer_bytes_per_token``)
  attention_output  keeps the layer input, the attention output and its LSE; recomputes norm, QKV, RoPE, MLP
  keep_attention    keeps the layer input and q, k, v, output, LSE; recomputes the same (so it is chosen
                    only where attention_output is not available: same compute, more memory)
  full              keeps the layer input; recomputes the whole layer, attention included
  offload           full, with the kept input in host memory (two inputs on the GPU at a time)

``attention_output_offload`` (attention_output with what it keeps in pinned host memory) is costed here but
only runs when forced (``--recompute attention_output_offload``): the planner does not choose it.

The plan is the cheapest mix (estimated recompute FLOPs) whose planned peak fits the budget:
static states are outside the budget, the peak is the kept activations of all layers plus the
larger of one layer's working set during its recompute/backward and the loss head's peak. With
one memory constraint the optimal mix uses at most two policies, so every pair is tried.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron.config import ConfigError

POLICY_ORDER = ("none", "attention_output", "keep_attention", "full", "offload")
GB = 1e9


@dataclass(frozen=True)
class LayerShape:
    """What the activation memory of the model depends on (one decoder layer and the head)."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    gated: bool  # SwiGLU / GeGLU: fc1 holds [gate; up]
    layers: int
    vocab: int
    norm: str = "RMSNorm"  # LayerNorm, RMSNorm or GemmaRMSNorm (counted as RMSNorm)

    @classmethod
    def of(cls, model_cfg) -> LayerShape:
        c = model_cfg
        return cls(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.ffn_hidden_size,
                   getattr(c, "gated_mlp", c.swiglu), c.num_layers, c.padded_vocab_size, c.normalization)  # fmt: skip


@dataclass(frozen=True)
class RecomputePlan:
    policies: list
    planned_peak_bytes: int
    budget_bytes: int

    def summary(self) -> str:
        counts = [(p, self.policies.count(p)) for p in POLICY_ORDER if p in self.policies]
        parts = ", ".join(f"{n} layers {p}" if i == 0 else f"{n} {p}" for i, (p, n) in enumerate(counts))
        return (f"recompute: {parts} (budget {self.budget_bytes / GB:.1f} GB, "
                f"planned peak {self.planned_peak_bytes / GB:.1f} GB)")  # fmt: skip


def _norm_bytes(shape: LayerShape, b: int) -> int:
    """A norm's saved tensors per token: LayerNorm (one fused op) its input and fp32 mean and rstd; RMSNorm its
    input, x * rstd (for the weight's gradient) and the fp32 rstd. Its output is the next linear's input
    (counted there)."""
    if shape.norm == "LayerNorm":
        return shape.hidden * b + 8
    return 2 * shape.hidden * b + 4


def _mlp_bytes(shape: LayerShape, b: int, tiled_mlp: bool) -> int:
    """fc1's input; gated: fc1's output [gate; up] (2F), silu(gate) (F), act*up for fc2 (F); GeLU: fc1's
    output (F) and gelu's (F). The tiled MLP keeps only its input."""
    if tiled_mlp:
        return shape.hidden * b
    inner = 4 * shape.ffn if shape.gated else 2 * shape.ffn
    return (shape.hidden + inner) * b


def layer_bytes_per_token(shape: LayerShape, policy: str, dtype_bytes: int = 2, tiled_mlp: bool = False) -> int:
    """Bytes one decoder layer keeps on the GPU per token between its forward and its backward.

    none: input norm (``_norm_bytes``), the QKV projection's input and output ([q; k; v], which the v view keeps
    alive), RoPE's cos and sin and the rotated q and k, the attention's output and fp32 LSE, the output
    projection's flattened input (a copy of the output), the MLP's norm and the MLP (``_mlp_bytes``).
    attention_output: layer input + attention output + LSE. keep_attention: layer input + the [q; k; v] storage
    (v is a view of it) + rotated q and k + output + LSE. full: the layer input. offload: nothing (its input is
    in host memory). ``tests/alst/test_recompute_plan.py`` checks these against what autograd saves.
    """
    b, H, d = dtype_bytes, shape.hidden, shape.head_dim
    qkv = (shape.heads + 2 * shape.kv_heads) * d * b
    rope_qk = (shape.heads + shape.kv_heads) * d * b
    out_lse = shape.heads * d * b + 4 * shape.heads
    if policy == "none":
        rope = 2 * d * b
        return (_norm_bytes(shape, b) + H * b + qkv + rope + rope_qk + out_lse + shape.heads * d * b
                + _norm_bytes(shape, b) + _mlp_bytes(shape, b, tiled_mlp))  # fmt: skip
    if policy == "attention_output":
        return H * b + out_lse
    if policy == "keep_attention":
        return H * b + qkv + rope_qk + out_lse
    if policy == "full":
        return H * b
    if policy in ("offload", "attention_output_offload"):
        return 0
    raise ConfigError(f"--recompute {policy!r} is unknown; use one of auto, {', '.join(POLICY_ORDER)}")


def transient_bytes_per_token(shape: LayerShape, dtype_bytes: int = 2, tiled_mlp: bool = False) -> int:
    """One layer's working set in its backward: its full activations (recomputed or kept) plus the gradients
    in flight (the residual stream's and one branch output's, and the MLP's inner gradient, 2F or a shard)."""
    b = dtype_bytes
    inner = 0 if tiled_mlp else (2 * shape.ffn if shape.gated else shape.ffn) * b
    return layer_bytes_per_token(shape, "none", b, tiled_mlp) + 3 * shape.hidden * b + inner


def head_bytes(shape: LayerShape, tokens: int, dtype_bytes: int = 2, tiled_loss: bool = False,
               chunk: int | None = None) -> int:  # fmt: skip
    """The loss head's peak: the final norm's saved tensors and either the full logits (dtype, their fp32 copy
    and its gradient) or one tiled-loss chunk's fp32 logits and gradient (``chunk`` tokens, default 64M logits)."""
    b = dtype_bytes
    base = tokens * (_norm_bytes(shape, b) + shape.hidden * b)
    if tiled_loss:
        c = min(tokens, chunk or max(1, 2**26 // shape.vocab))
        return base + c * shape.vocab * 8
    return base + tokens * shape.vocab * (b + 8)


def _recompute_flops_per_token(shape: LayerShape, policy: str, seq: int) -> float:
    """Estimated forward FLOPs a policy recomputes per token and layer (its speed cost)."""
    H, d = shape.hidden, shape.head_dim
    linear = 2 * H * (shape.heads + 2 * shape.kv_heads) * d + 2 * shape.heads * d * H
    linear += 2 * H * shape.ffn * (3 if shape.gated else 2)
    attention = 2 * shape.heads * d * seq  # causal: half of 4 * s * heads * d
    cost = {"none": 0.0, "attention_output": linear, "attention_output_offload": linear * 1.05,
            "keep_attention": linear, "full": linear + attention}  # fmt: skip
    return cost.get(policy, (linear + attention) * 1.05)  # offload: full + the copies


def planned_peak(shape: LayerShape, policies: list, tokens: int, dtype_bytes: int = 2, tiled_mlp: bool = False,
                 tiled_loss: bool = False, chunk: int | None = None) -> int:  # fmt: skip
    """Activation peak of a plan: kept bytes of every layer + max(one layer's working set, the head's peak),
    + two layer inputs on the GPU when any layer offloads (one layer's input, output and LSE for
    attention_output_offload)."""
    kept = (sum(layer_bytes_per_token(shape, p, dtype_bytes, tiled_mlp) for p in policies) + 16) * tokens  # + ids
    transient = transient_bytes_per_token(shape, dtype_bytes, tiled_mlp) * tokens
    peak = kept + max(transient, head_bytes(shape, tokens, dtype_bytes, tiled_loss, chunk))
    if "offload" in policies:
        peak += 2 * shape.hidden * dtype_bytes * tokens
    if "attention_output_offload" in policies:
        peak += layer_bytes_per_token(shape, "attention_output", dtype_bytes) * tokens
    return int(peak)


def plan_recompute(shape: LayerShape, *, local_seq: int, micro_batch: int = 1, budget_bytes: int,
                   dtype_bytes: int = 2, tiled_mlp: bool = False, tiled_loss: bool = False, chunk: int | None = None,
                   allowed: tuple = POLICY_ORDER, seq: int | None = None, sp: int = 1) -> RecomputePlan:  # fmt: skip
    """The fastest per-layer policies whose planned peak fits ``budget_bytes`` (see the module docstring).

    ``allowed``: the policies this model supports (attention_output only where the backend returns its LSE).
    ``seq``: the full sequence the attention spans (default local_seq x sp). Faster policies go on the first
    layers. Raises ConfigError naming the longest sequence that fits when even the leanest plan does not.
    """
    tokens, seq = local_seq * micro_batch, seq or local_seq * sp
    order = [p for p in POLICY_ORDER if p in allowed]
    L = shape.layers
    kw = dict(dtype_bytes=dtype_bytes, tiled_mlp=tiled_mlp, tiled_loss=tiled_loss, chunk=chunk)
    best = None
    for i, fast in enumerate(order):
        for slow in order[i:]:
            if (fast, slow) == ("full", "offload"):
                continue  # one run_layer runner: offload applies to every fully recomputed layer
            for k in range(L, -1, -1):  # k layers on the faster policy
                if slow == fast and k != L:
                    break
                policies = [fast] * k + [slow] * (L - k)
                peak = planned_peak(shape, policies, tokens, **kw)
                if peak <= budget_bytes:
                    cost = sum(_recompute_flops_per_token(shape, p, seq) for p in policies)
                    key = (cost, peak)
                    if best is None or key < best[0]:
                        best = (key, policies, peak)
                    break
    if best is None:
        longest = longest_fitting_seq(shape, micro_batch=micro_batch, budget_bytes=budget_bytes, sp=sp,
                                      allowed=order, **kw)  # fmt: skip
        fits = f"the longest --seq-length that fits is {longest}" if longest else "no sequence length fits"
        raise ConfigError(
            f"--recompute: activations of --seq-length {local_seq * sp} need at least "
            f"{planned_peak(shape, [order[-1]] * L, tokens, **kw) / GB:.1f} GB but the budget is "
            f"{budget_bytes / GB:.1f} GB ({fits} with this model); add SP ranks (--ds-sequence-parallel-size), "
            "--tiled-mlp-compute, --tiled-logits-loss or --checkpoint-in-cpu (offload), or raise --activation-memory-budget"
        )
    return RecomputePlan(best[1], best[2], int(budget_bytes))


def longest_fitting_seq(shape: LayerShape, *, micro_batch: int = 1, budget_bytes: int, sp: int = 1,
                        allowed: tuple = POLICY_ORDER, **kw) -> int:  # fmt: skip
    """The longest sequence (a multiple of ``sp``) whose leanest allowed plan fits ``budget_bytes``; 0 if none."""
    leanest = [p for p in POLICY_ORDER if p in allowed][-1]

    def fits(local: int) -> bool:
        return planned_peak(shape, [leanest] * shape.layers, local * micro_batch, **kw) <= budget_bytes

    lo, hi = 0, 1
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo * sp


# ----------------------------------------------------------------------------- the budget on a GPU
def static_bytes_to_come(num_params: int, zero_stage: int, ranks: int, dtype_bytes: int = 2,
                         offload_optimizer: bool = False, layer_params: int = 0) -> int:  # fmt: skip
    """GPU bytes the optimizer will still allocate after the model is built (so they are not in free memory
    yet): gradients (dtype; partitioned from ZeRO-2), fp32 master weights and Adam moments (12 bytes, partitioned
    from ZeRO-1; none with --offload-optimizer, which exist only after the first step), and under ZeRO-3 two
    layers' gathered parameters."""
    grads = num_params * dtype_bytes // (ranks if zero_stage >= 2 else 1)
    states = 0 if offload_optimizer else num_params * 12 // (ranks if zero_stage >= 1 else 1)
    gathered = 2 * layer_params * dtype_bytes if zero_stage == 3 else 0
    return grads + states + gathered


def gpu_budget(cfg, device) -> int:
    """Free GPU memory now, less the states still to come and a margin (2 GB or 5% of the GPU)."""
    import torch

    from megatron.parallel_state import get_sequence_data_parallel_group

    free, total = torch.cuda.mem_get_info(device)
    ranks = torch.distributed.get_world_size(get_sequence_data_parallel_group())
    n, L = cfg.model.num_parameters(), cfg.model.num_layers
    layer_params = (n - cfg.model.padded_vocab_size * cfg.model.hidden_size) // max(L, 1)
    dtype_bytes = 4 if cfg.train.dtype_name == "fp32" else 2
    to_come = static_bytes_to_come(n, cfg.parallel.zero_stage, ranks, dtype_bytes, cfg.memory.offload_optimizer,
                                   layer_params)  # fmt: skip
    return int(free - to_come - max(2 * GB, 0.05 * total))


def supported_policies(model) -> tuple:
    """The policies ``model`` can run: attention_output only where every core attention returns its LSE and
    has no attention dropout (``megatron.parallelize._check_lse_backend``)."""
    from megatron.parallelize import CHECKPOINT_POLICIES, _check_lse_backend, _layers

    try:
        for layer in _layers(model):
            _check_lse_backend(layer)
        lse = "attention_output" in CHECKPOINT_POLICIES
    except ConfigError:
        lse = False
    return tuple(p for p in POLICY_ORDER if p != "attention_output" or lse)


def plan_for(cfg, model, device=None) -> RecomputePlan | None:
    """The plan for ``cfg`` under ``--recompute auto`` (None: no budget known, i.e. on CPU without
    --activation-memory-budget), or the forced policy on every layer."""
    import torch

    m, c = cfg.memory, cfg.model
    dtype_bytes = 4 if cfg.train.dtype_name == "fp32" else 2
    sp = cfg.parallel.sequence_parallel_size
    if m.activation_memory_budget is not None:
        budget = int(m.activation_memory_budget * GB)
    elif device is not None and getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        budget = gpu_budget(cfg, device)
    else:
        return None
    allowed = supported_policies(model)
    return plan_recompute(LayerShape.of(c), local_seq=c.seq_length // sp, micro_batch=cfg.train.micro_batch_size,
                          budget_bytes=budget, dtype_bytes=dtype_bytes, tiled_mlp=m.tiled_mlp_compute,
                          tiled_loss=m.use_tiled_logits_loss or m.use_liger_kernel, chunk=m.tiled_logits_chunk_size,
                          allowed=allowed, sp=sp)  # fmt: skip


# ----------------------------------------------------------------------------- applying a plan
def apply_plan(model, policies: list, in_cpu: bool = False) -> None:
    """One policy per decoder layer through ``apply_checkpointing``'s per-layer list; offload is full with the
    inputs in host memory (a plan never mixes full and offload layers)."""
    from megatron.parallelize import apply_checkpointing

    offload = "offload" in policies
    if offload and "full" in policies:
        raise ConfigError("a recomputation plan cannot mix full and offload layers")
    names = ["full" if p == "offload" else p for p in policies]
    apply_checkpointing(model, names[0] if len(set(names)) == 1 else names, in_cpu or offload)


def forced_policy(memory_cfg) -> str | None:
    """The policy the flags force on every layer (--recompute X, or --checkpoint-activations and its
    sub-flags), else None (auto)."""
    m = memory_cfg
    if m.checkpoint_activations:
        if m.checkpoint_in_cpu:
            return "offload"
        return "keep_attention" if m.checkpoint_keep_attention else "full"
    return None if m.recompute == "auto" else m.recompute
