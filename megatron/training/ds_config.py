"""The DeepSpeed JSON, derived from the typed config so that no setting has two sources.

A user's ``--deepspeed_config`` file is a starting point for what we do not model (e.g.
offload, communication settings); the batch sizes, precision, clipping and ZeRO stage come
from our flags, and a file that disagrees with them is rejected rather than silently
overridden.
"""

from __future__ import annotations

import json
import os

from megatron.config import Config, ConfigError


def _load_user_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"--deepspeed_config {path} does not exist; pass an existing JSON file or omit the flag")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--deepspeed_config {path} is not valid JSON ({e}); fix the file") from None


def build_deepspeed_config(cfg: Config, world_size: int) -> dict:
    t, p = cfg.train, cfg.parallel
    gas = cfg.grad_accumulation_steps(world_size)
    ours = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": t.clip_grad,
        "bf16": {"enabled": t.bf16},
        "fp16": {"enabled": t.fp16, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2},
    }
    user = _load_user_config(p.deepspeed_config) if p.deepspeed_config else {}
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if key in user and user[key] not in ("auto", ours[key]):
            raise ConfigError(
                f"--deepspeed_config sets {key}={user[key]} but the flags give {ours[key]}; "
                "remove it from the JSON (batch sizes come from --micro-batch-size/--global-batch-size)"
            )
    for prec in ("bf16", "fp16"):
        enabled = user.get(prec, {}).get("enabled", ours[prec]["enabled"])
        if enabled not in ("auto", ours[prec]["enabled"]):
            raise ConfigError(f"--deepspeed_config enables {prec}={enabled} but --{prec} says otherwise; make them agree")

    zero = dict(user.get("zero_optimization", {}))
    if "stage" in zero and zero["stage"] != p.zero_stage:
        raise ConfigError(
            f"--deepspeed_config has zero_optimization.stage={zero['stage']} but --zero-stage is {p.zero_stage}; "
            "make them agree"
        )
    zero["stage"] = p.zero_stage
    if p.zero_stage >= 2:
        zero.setdefault("overlap_comm", True)
        zero.setdefault("contiguous_gradients", True)
    if p.zero_stage == 3:
        # Long-sequence defaults: prefetch the next layer's parameters while this one computes
        # (5e8 parameters, 1 GB in bf16, ten times DeepSpeed's default), keep small tensors (norms,
        # biases) resident, and bound what is gathered at once (3e9 parameters, 6 GB).
        # Measured on two H200s, GPT-1.3B, SP=2: docs/benchmarks/throughput/README.md.
        zero.setdefault("reduce_bucket_size", 5e8)
        zero.setdefault("stage3_prefetch_bucket_size", 5e8)
        zero.setdefault("stage3_max_reuse_distance", 1e9)
        zero.setdefault("stage3_param_persistence_threshold", 1e5)
        zero.setdefault("stage3_max_live_parameters", 3e9)
        zero.setdefault("stage3_gather_16bit_weights_on_model_save", False)
        # Plain F.linear instead of DeepSpeed's LinearFunctionForZeroStage3, whose separate
        # `output += bias` pass is a full read-write of every linear's output: +6.6% tokens/s at
        # 32k with recomputation, no change elsewhere, lower peak memory, same loss
        # (docs/benchmarks/throughput/memory_efficient_linear/).
        zero.setdefault("memory_efficient_linear", False)
    if p.reduce_bucket_size is not None:
        zero["reduce_bucket_size"] = p.reduce_bucket_size
    # ZeRO-Offload (--offload-param / --offload-optimizer); pinned host buffers only exist with CUDA
    import torch

    pin = torch.cuda.is_available()
    if cfg.memory.offload_param:
        zero["offload_param"] = {**zero.get("offload_param", {}), "device": "cpu", "pin_memory": pin}
    if cfg.memory.offload_optimizer:
        zero["offload_optimizer"] = {**zero.get("offload_optimizer", {}), "device": "cpu", "pin_memory": pin}
        if not pin:  # CPU-only: torch's AdamW steps the states (see megatron.training.memory.build_optimizer)
            user.setdefault("zero_force_ds_cpu_optimizer", False)

    ds = {**user, **ours, "zero_optimization": zero}
    ds["fp16"] = {**user.get("fp16", {}), **ours["fp16"]} if t.fp16 else {"enabled": False}
    ds["bf16"] = {"enabled": t.bf16}
    if p.seq_parallel_communication_data_type is not None:
        ds["seq_parallel_communication_data_type"] = p.seq_parallel_communication_data_type
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds
