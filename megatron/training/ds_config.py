"""The DeepSpeed JSON, derived from the typed config so that no setting has two sources.

A user's ``--deepspeed_config`` file is a starting point for what we do not model
(communication and ZeRO tuning, fp16 loss scaling, monitors): those keys are passed on as they
are. What the flags set (batch sizes, precision, clipping, ZeRO stage, bucket size, offload,
the SP reduction type) must agree with the file, or it is rejected with the flag to use; the
optimizer and learning-rate schedule are built from the flags, so ``optimizer`` and
``scheduler`` blocks are rejected with the equivalent flags. No key is dropped or overridden
silently.
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


def _flag_value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _reject_optimizer_and_scheduler(user: dict) -> None:
    """The optimizer (AdamW) and schedule come from the flags; a block DeepSpeed would build them
    from is refused, naming the flags that say the same."""
    opt = user.get("optimizer")
    if opt is not None:
        params = opt.get("params", {}) if isinstance(opt, dict) else {}
        flags = [f"{flag} {_flag_value(params[key])}" for key, flag in
                 (("lr", "--lr"), ("weight_decay", "--weight-decay"), ("eps", "--adam-eps")) if key in params]  # fmt: skip
        betas = params.get("betas")
        if isinstance(betas, (list, tuple)) and len(betas) == 2:
            flags += [f"--adam-beta1 {_flag_value(betas[0])}", f"--adam-beta2 {_flag_value(betas[1])}"]
        kind = opt.get("type", "?") if isinstance(opt, dict) else "?"
        raise ConfigError(
            f"--deepspeed_config has an optimizer block ({kind}), but the optimizer is AdamW built from the flags; "
            f"remove the block{' and pass ' + ' '.join(flags) if flags else ''}"
        )
    sched = user.get("scheduler")
    if sched is not None:
        params = sched.get("params", {}) if isinstance(sched, dict) else {}
        kind = sched.get("type", "?") if isinstance(sched, dict) else "?"
        flags = []
        if "warmup_num_steps" in params:
            flags.append(f"--lr-warmup-iters {params['warmup_num_steps']}")
        if "warmup_max_lr" in params:
            flags.append(f"--lr {_flag_value(params['warmup_max_lr'])}")
        if "total_num_steps" in params:
            style = "cosine" if "Cosine" in str(kind) else "linear"
            flags += [f"--lr-decay-iters {params['total_num_steps']}", f"--lr-decay-style {style}"]
        raise ConfigError(
            f"--deepspeed_config has a scheduler block ({kind}), but the learning rate follows the flags (linear "
            f"warmup, then constant, linear or cosine decay to --min-lr); remove the block"
            f"{' and pass ' + ' '.join(flags) if flags else ''}"
        )


def _check_top_level(user: dict, ours: dict, cfg: Config) -> None:
    """Batch sizes, clipping and precision in the file must agree with the flags; no optimizer or scheduler."""
    t = cfg.train
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if key in user and user[key] not in ("auto", ours[key]):
            raise ConfigError(
                f"--deepspeed_config sets {key}={user[key]} but the flags give {ours[key]}; "
                "remove it from the JSON (batch sizes come from --micro-batch-size/--global-batch-size)"
            )
    if "gradient_clipping" in user and user["gradient_clipping"] not in ("auto", ours["gradient_clipping"]):
        raise ConfigError(
            f"--deepspeed_config sets gradient_clipping={user['gradient_clipping']} but --clip-grad is {t.clip_grad}; "
            f"remove it from the JSON and pass --clip-grad {user['gradient_clipping']}"
        )
    _reject_optimizer_and_scheduler(user)
    for prec in ("bf16", "fp16"):
        enabled = user.get(prec, {}).get("enabled", ours[prec]["enabled"])
        if enabled not in ("auto", ours[prec]["enabled"]):
            raise ConfigError(f"--deepspeed_config enables {prec}={enabled} but --{prec} says otherwise; make them agree")


def _zero_section(user: dict, cfg: Config) -> dict:
    """The file's zero_optimization with the stage, our long-sequence defaults, the bucket size and offload."""
    p = cfg.parallel
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
        # Measured on two H200s, GPT-1.3B, SP=2: benchmarks/results/2026-11-29_zero3_settings_h200/.
        zero.setdefault("reduce_bucket_size", 5e8)
        zero.setdefault("stage3_prefetch_bucket_size", 5e8)
        zero.setdefault("stage3_max_reuse_distance", 1e9)
        zero.setdefault("stage3_param_persistence_threshold", 1e5)
        zero.setdefault("stage3_max_live_parameters", 3e9)
        zero.setdefault("stage3_gather_16bit_weights_on_model_save", False)
        # Plain F.linear instead of DeepSpeed's LinearFunctionForZeroStage3, whose separate
        # `output += bias` pass is a full read-write of every linear's output: +6.6% tokens/s at
        # 32k with recomputation, no change elsewhere, lower peak memory, same loss
        # (benchmarks/results/2026-11-30_memory_efficient_linear_h200/).
        zero.setdefault("memory_efficient_linear", False)
    if p.reduce_bucket_size is not None:
        if "reduce_bucket_size" in user.get("zero_optimization", {}) and zero["reduce_bucket_size"] != p.reduce_bucket_size:
            raise ConfigError(
                f"--deepspeed_config has zero_optimization.reduce_bucket_size={zero['reduce_bucket_size']} but "
                f"--reduce-bucket-size is {p.reduce_bucket_size}; keep one of them"
            )
        zero["reduce_bucket_size"] = p.reduce_bucket_size
    for key, flag, on in (("offload_param", "--offload-param", cfg.memory.offload_param),
                          ("offload_optimizer", "--offload-optimizer", cfg.memory.offload_optimizer)):  # fmt: skip
        device = zero[key].get("device") if isinstance(zero.get(key), dict) else None
        if device not in (None, "cpu", "none") or (device == "cpu" and not on) or (device == "none" and on):
            what = {"cpu": f"pass {flag}", "none": f"drop {flag}"}.get(device, f"pass {flag} (CPU: NVMe is not supported)")
            raise ConfigError(
                f"--deepspeed_config has zero_optimization.{key}.device={device}; offload is set by {flag} "
                f"(the optimizer and the host-memory check follow the flag): remove the device from the JSON and {what}"
            )
    # ZeRO-Offload (--offload-param / --offload-optimizer); pinned host buffers only exist with CUDA
    import torch

    pin = torch.cuda.is_available()
    for key, on in (("offload_param", cfg.memory.offload_param), ("offload_optimizer", cfg.memory.offload_optimizer)):
        if on:  # the file's other offload keys stay; pinning needs CUDA
            zero[key] = {"pin_memory": pin, **zero.get(key, {}), "device": "cpu"}
            zero[key]["pin_memory"] = zero[key]["pin_memory"] and pin
        if not pin:  # CPU-only: torch's AdamW steps the states (see megatron.training.memory.build_optimizer)
            user.setdefault("zero_force_ds_cpu_optimizer", False)
    return zero


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
    _check_top_level(user, ours, cfg)
    zero = _zero_section(user, cfg)
    ds = {**user, **ours, "zero_optimization": zero}
    # fp16's loss-scaling keys have no flags: the file's win over our defaults; the switches are the flags'
    ds["fp16"] = {**(ours["fp16"] if t.fp16 else {}), **user.get("fp16", {}), "enabled": t.fp16}
    ds["bf16"] = {**user.get("bf16", {}), "enabled": t.bf16}
    sp_dtype = p.seq_parallel_communication_data_type
    if sp_dtype is not None:
        if user.get("seq_parallel_communication_data_type", sp_dtype) != sp_dtype:
            raise ConfigError(
                f"--deepspeed_config has seq_parallel_communication_data_type="
                f"{user['seq_parallel_communication_data_type']} but --seq-parallel-communication-data-type is "
                f"{sp_dtype}; keep one of them"
            )
        ds["seq_parallel_communication_data_type"] = sp_dtype
    user_compile = user.get("compile", {}).get("deepcompile", p.deepcompile)
    if user_compile != p.deepcompile:
        raise ConfigError(f"--deepspeed_config has compile.deepcompile={user_compile} but --deepcompile is "
                          f"{'on' if p.deepcompile else 'off'}; {'pass' if user_compile else 'drop'} --deepcompile")
    if p.deepcompile:
        ds["compile"] = {**user.get("compile", {}), "deepcompile": True}
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds
