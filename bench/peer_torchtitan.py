"""The torchtitan throughput peer: torchtitan's Llama-3 model, FSDP2, torch.compile and activation checkpointing.

Run under torchrun, one process per GPU (``bench/throughput.py --peers torchtitan`` launches it):

    torchrun --nproc_per_node 1 bench/peer_torchtitan.py --shape llama-1b --seq-length 32768 --bf16 \\
        --ac-mode op --iters 8 --metrics-file peer.jsonl
    torchrun --nproc_per_node 1 bench/peer_torchtitan.py --shape tiny --seq-length 128 --iters 4 \\
        --no-compile --metrics-file peer.jsonl          # CPU (gloo, fp32)

torchtitan's own components, configured through its ``JobConfig``:

* ``torchtitan.models.llama3`` ``Transformer`` with a ``TransformerModelArgs`` matching the bench shape
  (``ffn_dim_multiplier`` / ``multiple_of`` chosen so that its SwiGLU width is the shape's peer width;
  vocabulary padded to a multiple of 128 as ours; SDPA attention, which picks the cuDNN / flash kernel);
  built on the meta device, random init by its ``init_weights``. torchtitan's Llama-3 has a separate output
  layer (no tied embeddings); the model FLOPs do not depend on tying.
* ``parallelize_llama``: activation checkpointing (``--ac-mode`` none, ``op``: selective per-op, which keeps
  the matmul and attention outputs, ``layer``: every 2nd layer, ``full``), per-block ``torch.compile`` and
  FSDP2 (``fully_shard`` per block, bf16 params / fp32 reduce) over all ranks; on one GPU torchtitan uses
  autocast instead of FSDP (``maybe_enable_amp``), as its trainer does.
* ``build_optimizers`` (AdamW, lr 1e-4, betas 0.9/0.95, weight decay 0.01), ``build_lr_schedulers``,
  ``build_cross_entropy_loss`` (compiled with the model) and ``clip_grad_norm_`` (max norm 1.0): the step of
  ``torchtitan.train.Trainer.train_step`` for one micro batch, with a synthetic loader (our ``--mock-data``
  token stream) instead of its tokenizer and Hugging Face datasets, so nothing is downloaded.

Rank 0 writes one ``{"peer": ...}`` line and then one record per iteration with the fields of our metrics
file; model FLOPs come from ``megatron.training.metrics.model_flops_per_token`` on the peer's own Llama shape.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import torch
from report import (  # bench/, this script's directory
    iteration_record,
    peer_arg_parser,
    peer_metrics,
    versions,
    write_iteration,
)

AC_MODES = ("none", "op", "layer", "full")
MULTIPLE_OF = 64


def model_args(shape_name: str, seq_length: int, pad_vocab: int = 128):
    """torchtitan's ``TransformerModelArgs`` for a bench shape (SwiGLU width = the shape's ``peer_ffn``)."""
    from throughput import SHAPES
    from torchtitan.models.llama3.model.args import TransformerModelArgs

    shape = SHAPES[shape_name]
    base = int(2 * 4 * shape.hidden / 3)  # what torchtitan's FeedForward makes of hidden_dim = 4 x dim
    if shape.peer_ffn % MULTIPLE_OF:
        raise SystemExit(f"error: {shape_name}: SwiGLU width {shape.peer_ffn} is not a multiple of {MULTIPLE_OF}")
    return TransformerModelArgs(
        dim=shape.hidden, n_layers=shape.layers, n_heads=shape.heads, n_kv_heads=shape.kv_heads,
        vocab_size=-(-shape.vocab // pad_vocab) * pad_vocab, multiple_of=MULTIPLE_OF,
        ffn_dim_multiplier=(shape.peer_ffn - 0.5) / base, norm_eps=1e-5, rope_theta=shape.rope_base,
        max_seq_len=seq_length, attn_type="sdpa", attn_mask_type="causal",
    )  # fmt: skip


def ffn_width(args) -> int:
    """The SwiGLU width torchtitan's FeedForward builds from these args (its own arithmetic)."""
    hidden = int(args.ffn_dim_multiplier * int(2 * 4 * args.dim / 3))
    return args.multiple_of * ((hidden + args.multiple_of - 1) // args.multiple_of)


def megatron_model_config(targs, seq_length: int):
    """Our ``ModelConfig`` describing the peer's Llama, for the shared FLOPs formulas."""
    from megatron.config import ModelConfig

    return ModelConfig(
        num_layers=targs.n_layers, hidden_size=targs.dim, num_attention_heads=targs.n_heads,
        num_key_value_heads=targs.n_kv_heads, ffn_hidden_size=ffn_width(targs), seq_length=seq_length,
        vocab_size=targs.vocab_size, make_vocab_size_divisible_by=1, use_rotary_position_embeddings=True,
        normalization="RMSNorm", swiglu=True, add_bias_linear=False, untie_embeddings_and_output_weights=True,
    )  # fmt: skip


def job_config(args, world: int):
    """torchtitan's ``JobConfig`` for this run."""
    from torchtitan.config import JobConfig

    jc = JobConfig()
    jc.training.seq_len = args.seq_length
    jc.training.local_batch_size = 1
    jc.training.steps = args.iters
    jc.training.max_norm = 1.0
    jc.training.mixed_precision_param = "bfloat16" if args.bf16 else "float32"
    jc.training.mixed_precision_reduce = "float32"
    jc.parallelism.data_parallel_shard_degree = world
    jc.parallelism.data_parallel_replicate_degree = 1
    jc.optimizer.name, jc.optimizer.lr, jc.optimizer.eps = "AdamW", args.lr, 1e-8
    jc.optimizer.beta1, jc.optimizer.beta2, jc.optimizer.weight_decay = 0.9, 0.95, 0.01
    jc.lr_scheduler.warmup_steps = 0
    jc.lr_scheduler.decay_type = "linear"
    jc.lr_scheduler.min_lr_factor = 1.0  # constant learning rate, as our bench runs
    mode = {"op": ("selective", "op"), "layer": ("selective", "2")}.get(args.ac_mode, (args.ac_mode, "2"))
    jc.activation_checkpoint.mode, jc.activation_checkpoint.selective_ac_option = mode
    jc.compile.enable = not args.no_compile
    jc.compile.components = ["model", "loss"]
    jc.job.dump_folder = args.dump_folder
    return jc


def mock_batches(seq_length: int, vocab: int, seed: int, rank: int, world: int, device):
    """This rank's mock samples r, r + W, ...: inputs = tokens[:S], labels = tokens[1:S+1] (ours' stream)."""
    from megatron.data.mock import MockGPTDataset

    ds, i = MockGPTDataset(seq_length, vocab, seed), rank
    while True:
        tokens = torch.from_numpy(ds[i]["tokens"][: seq_length + 1]).long()[None]
        yield tokens[:, :-1].to(device), tokens[:, 1:].to(device)
        i += world


def profiler_activities() -> list:
    acts = [torch.profiler.ProfilerActivity.CPU]
    return acts + ([torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])


def write_profile(args, prof, wall_s: float, meta: dict) -> None:
    """bench/profile_step.py's summary of the profiled iterations, with the peer's settings."""
    from profile_step import summarize
    from report import report_head, write_json

    head = report_head(__file__, device="cuda" if torch.cuda.is_available() else "cpu")
    summary = {**head, "argv": sys.argv, "peer": meta, "warmup": args.iters - args.profile_steps,
               "steps": args.profile_steps, **summarize(prof, args.profile_steps, wall_s)}  # fmt: skip
    write_json(args.profile_out, summary)
    print(f"wrote {args.profile_out}: {summary.get('step_wall_ms')} ms per step", flush=True)


def parse_args(argv=None):
    p = peer_arg_parser(__doc__.split("\n")[0])
    p.add_argument("--ac-mode", choices=AC_MODES, default="op",
                   help="activation checkpointing: none, op (selective per-op), layer (every 2nd layer), full")
    p.add_argument("--no-compile", action="store_true", help="eager (CPU smoke runs)")
    p.add_argument("--dump-folder", default="/tmp/torchtitan_peer", help="torchtitan's job.dump_folder")
    p.add_argument("--profile-out", help="profile the last --profile-steps iterations: bench/profile_step.py's "
                   "JSON summary (time per kernel category, top kernels), rank 0")  # fmt: skip
    p.add_argument("--profile-steps", type=int, default=2)
    args = p.parse_args(argv)
    if args.profile_out and not 0 < args.profile_steps < args.iters:
        p.error(f"--profile-steps {args.profile_steps} must be between 1 and --iters {args.iters} - 1 (warm-up first)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch.distributed as dist
    from throughput import SHAPES
    from torchtitan.components.loss import build_cross_entropy_loss
    from torchtitan.components.lr_scheduler import build_lr_schedulers
    from torchtitan.components.optimizer import build_optimizers
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed import utils as dist_utils
    from torchtitan.models.llama3.infra.parallelize import parallelize_llama
    from torchtitan.models.llama3.model.model import Transformer

    from megatron.training import metrics

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    S = args.seq_length
    targs = model_args(args.shape, S, args.pad_vocab)
    jc = job_config(args, world)
    pdims = ParallelDims(dp_replicate=1, dp_shard=world, cp=1, tp=1, pp=1, ep=1, etp=1, world_size=world)
    if not cuda and world > 1:  # torchtitan's device mesh sets a CUDA device per rank
        raise SystemExit("error: the torchtitan peer runs one process on CPU; use --nproc_per_node 1 or GPUs")

    torch.manual_seed(args.seed)
    with torch.device("meta"):
        model = Transformer(targs)
    model = parallelize_llama(model, pdims, jc)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=device)
    model.train()
    loss_fn = build_cross_entropy_loss(jc)
    optimizers = build_optimizers([model], jc.optimizer, pdims)
    schedulers = build_lr_schedulers(optimizers, jc.lr_scheduler, args.iters)
    amp = dist_utils.maybe_enable_amp(pdims, jc.training.mixed_precision_param, device.type)
    loader = mock_batches(S, SHAPES[args.shape].vocab, args.seed, rank, world, device)

    mcfg = megatron_model_config(targs, S)
    flops_token = metrics.model_flops_per_token(mcfg, S)
    flops_model = flops_token * world * S
    flops_md = metrics.megatron_deepspeed_flops_per_iteration(mcfg, world, S, args.ac_mode != "none")
    peak = metrics.peak_flops(torch.cuda.get_device_name(device)) if cuda else None
    meta = {
        "peer": "torchtitan", "model": "torchtitan.models.llama3.Transformer (random init)", "shape": args.shape,
        "model_args": {k: getattr(targs, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size",
                                                      "multiple_of", "ffn_dim_multiplier", "rope_theta",
                                                      "attn_type")},
        "ffn_width": model.layers["0"].feed_forward.w1.out_features,
        "parameters": sum(p.numel() for p in model.parameters()), "model_flops_per_token": flops_token,
        "world": world, "dp": world, "sp": 1, "fsdp": pdims.fsdp_enabled, "ac_mode": args.ac_mode,
        "compile": not args.no_compile, "precision": "bf16" if args.bf16 else "fp32",
        "mixed_precision": "FSDP2 MixedPrecisionPolicy" if pdims.fsdp_enabled else "torch.autocast",
        "versions": versions("torchtitan"),
    }  # fmt: skip
    with peer_metrics(args.metrics_file, rank, meta) as out:
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t_prev = time.perf_counter()
        profiling = contextlib.ExitStack()
        for it in range(1, args.iters + 1):
            if args.profile_out and it == args.iters - args.profile_steps + 1:
                prof = profiling.enter_context(torch.profiler.profile(activities=profiler_activities()))
                t_prof = time.perf_counter()
            inputs, labels = next(loader)
            optimizers.zero_grad()
            n_tokens = torch.tensor(float(labels.numel() * world), device=device)  # no padding in mock samples
            with amp:
                pred = model(inputs)
                loss = loss_fn(pred, labels) / n_tokens
            del pred
            loss.backward()
            grad_norm = dist_utils.clip_grad_norm_([p for p in model.parameters()], jc.training.max_norm,
                                                   foreach=True)  # fmt: skip
            optimizers.step()
            schedulers.step()
            mean_loss = loss.detach().double()
            dist.all_reduce(mean_loss)
            mean_loss = mean_loss.item()
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            grad_norm = float(grad_norm)
            if cuda:
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            dt, t_prev = now - t_prev, now
            rec = iteration_record(it, mean_loss, dt, world * S, world, flops_md, flops_model, peak,
                                   metrics.peak_memory_gb(device), grad_norm)  # fmt: skip
            write_iteration(out, rec, "torchtitan", args.iters)
        profiling.close()
    if args.profile_out and rank == 0:
        write_profile(args, prof, time.perf_counter() - t_prof, meta)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
