"""The throughput peer: Hugging Face ``LlamaForCausalLM`` trained with DeepSpeed ZeRO-3 and DeepSpeed's ALST.

Run under torchrun, one process per GPU (``bench/throughput.py --peer`` launches it):

    torchrun --nproc_per_node 2 bench/peer_hf_alst.py --shape llama-1b --seq-length 32768 --sp 2 --bf16 \\
        --iters 8 --metrics-file peer.jsonl
    torchrun --nproc_per_node 2 bench/peer_hf_alst.py --shape tiny --seq-length 128 --sp 2 --iters 4 \\
        --tiled-mlp --mlp-shards 2 --loss-shards 2 --metrics-file peer.jsonl      # CPU (gloo, fp32)

DeepSpeed 0.19's ``deepspeed.runtime.sequence_parallel.ulysses_sp``, wired as ArcticTraining does:

* ``UlyssesSPAttentionHF.register_with_transformers``: replaces transformers' ``sdpa`` attention
  function by a Ulysses wrapper (all-to-all to head shards and back) and builds DeepSpeed's SP
  groups, the ``mpu`` handed to ``deepspeed.initialize``; a no-op returning None at SP 1.
* ``UlyssesSPDataLoaderAdapter``: each SP rank's loader yields whole samples; the adapter
  gathers them within the SP group and gives every rank its contiguous slice of one sample at
  a time, labels pre-shifted into ``shift_labels`` (last position -100).
* ``TiledMLP`` on every ``LlamaMLP`` (``--tiled-mlp``; ceil(local tokens / hidden) shards) and
  ``TiledFusedLogitsLoss`` for ``lm_head`` + fp32 cross-entropy (shards of ~1 GiB of fp32
  logits, ArcticTraining's default).
* HF gradient checkpointing (non-reentrant) of every decoder layer; ZeRO-3 with the DeepSpeed
  JSON our trainer derives (``megatron.training.ds_config``) and torch's AdamW, as ours.

Two properties of DeepSpeed 0.19.8's TiledFusedLogitsLoss shape the loss code (see ``rank_loss``):
it back-propagates the head inside its forward with an upstream gradient of 1 and later rescales
only the hidden states' gradient, so the head's weight gradient is right only if its output is
the loss handed to ``engine.backward`` (ArcticTraining's "sum, then divide by the token count"
scales it by the token count); and with tied embeddings ZeRO-3 queues the shared weight twice
and asserts. Here every rank folds the normalization into the shards and the tied weight's
gradient is released once, so the gradients equal the untiled ones (checked on CPU).

Model and data: random init from a ``LlamaConfig`` (nothing downloaded), the same ``--mock-data``
token stream as our trainer (``megatron.data.mock``). Rank 0 writes one JSON line of metadata
(``{"peer": ...}``) and then one record per iteration with the fields of our trainer's metrics
file: model FLOPs come from ``megatron.training.metrics.model_flops_per_token`` applied to the
peer's own Llama config, so MFU means the same thing for both systems.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import types

import torch
from report import iteration_record, peer_metrics, versions, write_iteration  # bench/, this script's directory

IGNORE_INDEX = -100
LOSS_SHARD_BYTES = 2**30  # ArcticTraining's tiled-loss shard: about 1 GiB of fp32 logits


def llama_config(shape_name: str, seq_length: int, attn_implementation: str, untie: bool = False, pad_vocab: int = 128):
    """The peer's ``LlamaConfig`` for a bench shape (written to work with transformers 4.5x and 5.x).

    ``pad_vocab``: round the vocabulary up to a multiple of it, as our trainer does with
    ``--make-vocab-size-divisible-by`` (128), so that both models have the same embedding shape. An
    odd vocabulary (GPT-2's 50257) leaves the output layer's GEMMs misaligned and several times slower."""
    import inspect

    import transformers
    from throughput import SHAPES

    kwargs = SHAPES[shape_name].hf_llama_kwargs()
    kwargs.update(max_position_embeddings=seq_length, use_cache=False)
    kwargs["vocab_size"] = -(-kwargs["vocab_size"] // pad_vocab) * pad_vocab
    if untie:
        kwargs["tie_word_embeddings"] = False
    params = inspect.signature(transformers.LlamaConfig.__init__).parameters
    if "rope_parameters" in params and "rope_theta" not in params:  # transformers 5: theta lives in rope_parameters
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": kwargs.pop("rope_theta")}
    cfg = transformers.LlamaConfig(**kwargs)
    cfg._attn_implementation = attn_implementation  # what register_with_transformers checks against
    return cfg


def megatron_model_config(hf_cfg, seq_length: int):
    """Our ``ModelConfig`` describing the peer's Llama, for the shared FLOPs formulas."""
    from megatron.config import ModelConfig

    return ModelConfig(
        num_layers=hf_cfg.num_hidden_layers, hidden_size=hf_cfg.hidden_size,
        num_attention_heads=hf_cfg.num_attention_heads, num_key_value_heads=hf_cfg.num_key_value_heads,
        ffn_hidden_size=hf_cfg.intermediate_size, seq_length=seq_length, vocab_size=hf_cfg.vocab_size,
        make_vocab_size_divisible_by=1, use_rotary_position_embeddings=True, normalization="RMSNorm", swiglu=True,
        add_bias_linear=False, untie_embeddings_and_output_weights=not hf_cfg.tie_word_embeddings,
    )  # fmt: skip


# ----------------------------------------------------------------------------- ALST pieces on the HF model
def _swiglu_mlp(mlp, x):
    """LlamaMLP's own computation (down(act(gate(x)) * up(x))), called per shard by TiledMLP."""
    return mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))


def tile_mlps(model, shards: int | None) -> None:
    """Route every decoder layer's MLP through DeepSpeed's ``TiledMLP`` (this model's instances only)."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP

    def forward(mlp, x):
        # ceil(local tokens / hidden) as in ArcticTraining; identical on every rank (fixed lengths),
        # so all ranks issue the same ZeRO-3 gathers without agreeing on it first
        n = shards or max(1, math.ceil(x.shape[-2] / x.shape[-1]))
        params = [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]
        return TiledMLP.apply(_swiglu_mlp, mlp, x, n, params)

    for layer in model.model.layers:
        layer.mlp.forward = types.MethodType(forward, layer.mlp)


def _lm_head_loss(lm, hidden, shift_labels, scale: float):
    """``scale`` x summed fp32 cross-entropy of ``lm_head(hidden)`` (one shard for TiledFusedLogitsLoss)."""
    import torch.nn.functional as F

    logits = lm.lm_head(hidden).float()
    ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX,
                         reduction="sum")  # fmt: skip
    return ce * scale


def loss_shards(tokens: int, vocab: int, forced: int | None) -> int:
    return forced or max(1, math.ceil(tokens * vocab * 4 / LOSS_SHARD_BYTES))


def rank_loss(lm, batch: dict, scale: float, tiled: bool, shards: int):
    """``scale`` x this rank's summed loss over its slice of the sequence: backbone, then tiled or plain head.

    TiledFusedLogitsLoss runs the head's backward inside its forward with an upstream gradient of 1
    and only rescales the hidden states' gradient later, so its output must be the very tensor
    handed to ``engine.backward``: the normalization is folded into every shard (``scale``).
    """
    hidden = lm.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    hidden = hidden.last_hidden_state if hasattr(hidden, "last_hidden_state") else hidden[0]
    y = batch["shift_labels"]
    if not tiled:
        return _lm_head_loss(lm, hidden, y, scale)
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledFusedLogitsLoss

    def fn(module, x, labels):
        return _lm_head_loss(module, x, labels, scale)

    head = lm.lm_head.weight
    if not tied_head(lm):
        return TiledFusedLogitsLoss.apply(fn, lm, hidden, y, None, shards, [head], "sum")
    # Tied embeddings under ZeRO-3: TiledFusedLogitsLoss marks the head weight ready on its last shard, so
    # ZeRO-3 queues its gradient during this forward and again when the embedding's backward adds to it
    # (stage3 asserts on the duplicate). Keep it unready here; the embedding's backward queues the sum once.
    head.ds_grad_is_ready = False
    try:
        return TiledFusedLogitsLoss.apply(fn, lm, hidden, y, None, shards, [], "sum")
    finally:
        head.ds_grad_is_ready = True


def tied_head(lm) -> bool:
    return lm.lm_head.weight is lm.model.embed_tokens.weight


# ----------------------------------------------------------------------------- data
class MockSamples(torch.utils.data.IterableDataset):
    """This rank's endless mock samples as HF batches of one: sample r, r + W, r + 2W, ...

    With SP the adapter processes, at step k of an SP group, one sample from SP rank k mod SP,
    so with DP = 1 the group trains samples 0, 1, 2, ... in order, like our trainer.
    """

    def __init__(self, seq_length: int, vocab_size: int, seed: int, rank: int, world: int):
        from megatron.data.mock import MockGPTDataset

        self.ds = MockGPTDataset(seq_length, vocab_size, seed)
        self.seq_length, self.rank, self.world = seq_length, rank, world

    def __iter__(self):
        i = self.rank
        while True:
            tokens = torch.from_numpy(self.ds[i]["tokens"][: self.seq_length]).long()[None]
            yield {"input_ids": tokens, "labels": tokens.clone(), "position_ids": torch.arange(self.seq_length)[None]}
            i += self.world


def shift_labels(batch: dict) -> dict:
    """SP 1: the adapter's label convention without the adapter (labels shifted left, -100 at the end)."""
    labels = batch.pop("labels")
    batch["shift_labels"] = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].contiguous()
    return batch


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    from throughput import SHAPES

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=list(SHAPES), required=True)
    p.add_argument("--seq-length", type=int, required=True)
    p.add_argument("--sp", type=int, default=1, help="Ulysses sequence-parallel size")
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (else fp32, e.g. on CPU)")
    p.add_argument("--tiled-mlp", action="store_true", help="DeepSpeed TiledMLP on every LlamaMLP")
    p.add_argument("--mlp-shards", type=int, help="TiledMLP shards (default ceil(local tokens / hidden))")
    p.add_argument("--no-tiled-loss", action="store_true", help="full logits + loss instead of TiledFusedLogitsLoss")
    p.add_argument("--loss-shards", type=int, help="TiledFusedLogitsLoss shards (default ~1 GiB fp32 logits each)")
    p.add_argument("--pad-vocab", type=int, default=128,
                   help="round the vocabulary up to a multiple of this, as ours does (1: the shape's exact vocabulary, "
                        "as the peer ran until 2026-11-30); tokens stay below the shape's vocabulary")
    p.add_argument("--untie-embeddings", action="store_true", help="separate lm_head weight (the shape ties them)")
    p.add_argument("--no-checkpointing", action="store_true", help="no HF gradient checkpointing")
    p.add_argument("--zero3-leaf-layers", action="store_true", help="ZeRO-3 gathers each decoder layer at once")
    p.add_argument("--attn-implementation", default="sdpa", help="transformers attention (sdpa, flash_attention_2)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--metrics-file", help="JSONL written by rank 0")
    return p.parse_args(argv)


def build_model(args, device: torch.device):
    """The randomly initialized HF Llama with the ALST switches, and DeepSpeed's SP ``mpu`` (None at SP 1)."""
    import transformers
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    transformers.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    hf_cfg = llama_config(args.shape, args.seq_length, args.attn_implementation, args.untie_embeddings, args.pad_vocab)
    with torch.device(device):  # initialize on the GPU (fast); deepspeed.initialize partitions it (ZeRO-3)
        model = transformers.LlamaForCausalLM(hf_cfg)
    if args.tiled_mlp:
        tile_mlps(model, args.mlp_shards)
    if not args.no_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if args.zero3_leaf_layers:  # the same switch as ours: one ZeRO-3 gather per decoder layer
        from deepspeed.utils import set_z3_leaf_modules
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        set_z3_leaf_modules(model, [LlamaDecoderLayer])
    mpu = UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=model, core_attn_implementation=args.attn_implementation, sequence_parallel_size=args.sp,
        micro_batch_size=1, seq_length=args.seq_length, seq_length_is_variable=False,
    )  # fmt: skip
    return model, mpu


def deepspeed_config(args, world: int) -> dict:
    """The DeepSpeed JSON our trainer derives for the same run (ZeRO-3 knobs, clipping, precision)."""
    from megatron.arguments import parse_args as megatron_args
    from megatron.training.ds_config import build_deepspeed_config

    flags = ["--micro-batch-size", "1", "--global-batch-size", str(world // args.sp), "--zero-stage", "3",
             "--ds-sequence-parallel-size", str(args.sp), "--mock-data"] + (["--bf16"] if args.bf16 else [])  # fmt: skip
    ds_config = build_deepspeed_config(megatron_args(flags), world)
    ds_config.pop("train_batch_size")  # DeepSpeed derives it from its own (SP-aware) data-parallel size
    return ds_config


def build_engine(model, mpu, ds_config: dict, lr: float, cuda: bool):
    """``deepspeed.initialize`` with torch's AdamW over the same parameter groups as our trainer."""
    import deepspeed

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=cuda,
    )  # fmt: skip
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, mpu=mpu)
    return engine


def batches(args, vocab_size: int, mpu, device: torch.device, rank: int, world: int):
    """This rank's micro batches: its slice of one sample at a time, with ``shift_labels``."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPDataLoaderAdapter

    samples = MockSamples(args.seq_length, vocab_size, args.seed, rank, world)
    dl = torch.utils.data.DataLoader(samples, batch_size=None)
    if args.sp == 1:
        for batch in dl:
            yield shift_labels({k: v.to(device) for k, v in batch.items()})
        return
    adapter = UlyssesSPDataLoaderAdapter(dl, sp_rank=mpu.get_sequence_parallel_rank(),
                                         sp_group=mpu.get_sequence_parallel_group(), sp_world_size=args.sp,
                                         device=device)  # fmt: skip
    for batch in adapter:  # the adapter hands out CPU tensors
        yield {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron.training.memory import set_expandable_segments

    set_expandable_segments()  # the allocator setting our trainer uses, before CUDA starts
    import deepspeed
    import torch.distributed as dist
    from throughput import SHAPES

    from megatron.training import metrics

    cuda = torch.cuda.is_available()
    if not cuda:  # as ours: DeepSpeed's CPU shared-memory op serves only its inference all-reduce, not training
        from megatron.training.jit_ops import skip_cpu_comm_build

        skip_cpu_comm_build()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    sp, S = args.sp, args.seq_length
    if world % sp or S % sp:
        raise SystemExit(f"error: world {world} and --seq-length {S} must be divisible by --sp {sp}")
    dp = world // sp

    model, mpu = build_model(args, device)
    hf_cfg = model.config
    ds_config = deepspeed_config(args, world)
    engine = build_engine(model, mpu, ds_config, args.lr, cuda)
    lm = engine.module
    sp_group = mpu.get_sequence_parallel_group() if sp > 1 else None
    loader = batches(args, SHAPES[args.shape].vocab, mpu, device, rank, world)  # the token stream ours sees

    tiled_loss = not args.no_tiled_loss
    n_loss_shards = loss_shards(S // sp, hf_cfg.vocab_size, args.loss_shards)
    mcfg = megatron_model_config(hf_cfg, S)
    flops_model = metrics.model_flops_per_token(mcfg, S) * dp * S
    flops_md = metrics.megatron_deepspeed_flops_per_iteration(mcfg, dp, S, not args.no_checkpointing)
    peak = metrics.peak_flops(torch.cuda.get_device_name(device)) if cuda else None
    meta = {
        "model": "transformers.LlamaForCausalLM (random init)", "shape": args.shape,
        "hf_config": {k: getattr(hf_cfg, k, None) for k in (
            "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "tie_word_embeddings", "rms_norm_eps", "hidden_act")},
        "rope_theta": llama_rope_theta(hf_cfg), "attn_implementation": args.attn_implementation,
        "parameters": sum(getattr(p, "ds_numel", p.numel()) for p in lm.parameters()),
        "model_flops_per_token": metrics.model_flops_per_token(mcfg, S), "sp": sp, "dp": dp, "world": world,
        "tiled_mlp": args.tiled_mlp, "mlp_shards": args.mlp_shards or "ceil(local tokens / hidden)",
        "tiled_loss": tiled_loss, "loss_shards": n_loss_shards if tiled_loss else None,
        "tied_head_grad_deferred": tiled_loss and tied_head(lm),
        "gradient_checkpointing": not args.no_checkpointing, "precision": "bf16" if args.bf16 else "fp32",
        "zero_optimization": ds_config["zero_optimization"],
        "versions": versions(),
    }  # fmt: skip
    with peer_metrics(args.metrics_file, rank, meta) as out:
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)  # the model was built unpartitioned: count training only
        engine.train()
        t_prev = time.perf_counter()
        for it in range(1, args.iters + 1):
            batch = next(loader)
            # Objective: the mean loss over the sample's N tokens. DeepSpeed averages gradients over the SP x DP
            # ranks and the Ulysses all-to-alls carry each rank's backward to the others, so rank r
            # back-propagates SP x (its loss sum) / N: the averaged gradient is that of the mean (GAS 1).
            n_tokens = (batch["shift_labels"] != IGNORE_INDEX).sum().double()
            if sp > 1:
                dist.all_reduce(n_tokens, group=sp_group)
            loss = rank_loss(lm, batch, sp / max(1.0, n_tokens.item()), tiled_loss, n_loss_shards)
            engine.backward(loss)
            engine.step()
            mean_loss = loss.detach().double()
            dist.all_reduce(mean_loss)  # SP x (sum of the DP groups' mean losses)
            mean_loss = mean_loss.item() / world
            grad_norm = engine.get_global_grad_norm()
            if cuda:
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            dt, t_prev = now - t_prev, now
            rec = iteration_record(it, mean_loss, dt, dp * S, world, flops_md, flops_model, peak,
                                   metrics.peak_memory_gb(device), grad_norm)  # fmt: skip
            write_iteration(out, rec, "peer", args.iters)
    dist.barrier()
    dist.destroy_process_group()
    return 0


def llama_rope_theta(hf_cfg) -> float | None:
    theta = getattr(hf_cfg, "rope_theta", None)
    rope = getattr(hf_cfg, "rope_parameters", None) or {}
    return theta if theta is not None else rope.get("rope_theta")


if __name__ == "__main__":
    sys.exit(main())
