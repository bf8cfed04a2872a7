"""The DeepSpeed engine a run trains: process groups, model, weights, optimizer, resume.

``initialize_distributed`` starts torch.distributed and the SP/DP groups once per process;
``build_engine`` derives the DeepSpeed JSON from the config, checks the host memory, builds the
model (under ``zero.Init`` with ZeRO-3), loads converted weights, builds the optimizer, wraps it
all in ``deepspeed.initialize`` and finds the checkpoint to resume from; ``resume`` then loads
it into the engine.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import random
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megatron import parallel_state as ps
from megatron.config import Config, ConfigError
from megatron.training.checkpointing import Layout, Resume, load_checkpoint, prepare_resume
from megatron.training.ds_config import build_deepspeed_config
from megatron.training.jit_ops import numeric_arch_list, skip_cpu_comm_build
from megatron.training.logger import print_rank0

# DeepSpeed's ZeRO still calls the deprecated all_gather_into_tensor and reduce_scatter_tensor (twice a
# step); the warnings are noise to users.
warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*reduce_scatter_tensor.*", category=FutureWarning)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _single_process_env() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    single = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for key, value in single.items():
        os.environ.setdefault(key, value)


def initialize_distributed(cfg: Config) -> torch.device:
    """Start torch.distributed through DeepSpeed (nccl on GPUs, gloo on CPUs) and build the
    groups; returns this rank's device. Does what is not done yet, so a second call only
    returns the device. The config is not checked here: check it against the world size first
    (``cfg.resolve``)."""
    import deepspeed

    use_cuda = torch.cuda.is_available()
    backend = cfg.parallel.distributed_backend or ("nccl" if use_cuda else "gloo")
    skip_cpu_comm_build()  # deepspeed.initialize starts DeepSpeed's backend even when torch's is up
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ and os.environ.get("WORLD_SIZE", "1") == "1":
            _single_process_env()  # plain `python pretrain_gpt.py`: a world of one, no launcher needed
        timeout = datetime.timedelta(minutes=cfg.parallel.distributed_timeout_minutes)
        deepspeed.init_distributed(dist_backend=backend, verbose=False, timeout=timeout)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(cfg.parallel.sequence_parallel_size, verbose=True)
    return device


def build_model(cfg: Config, ds_config: dict, device: torch.device, sp_group) -> torch.nn.Module:
    """The plain GPT (built under ``zero.Init`` with ZeRO-3: each rank allocates only its partition),
    then SP, recomputation, tiling and ZeRO-3 leaf layers applied to it (``megatron.parallelize``),
    after checking that what stays in host memory fits."""
    import deepspeed

    from megatron.model.gpt import GPTModel
    from megatron.parallelize import parallelize
    from megatron.training import memory

    set_seed(cfg.train.seed)
    m = cfg.memory
    on = [f"{f.name}={getattr(m, f.name)}" for f in dataclasses.fields(m) if getattr(m, f.name) not in (False, None)]
    if on:
        print_rank0(f"> memory: {', '.join(on)}")
    dtype_bytes = 4 if cfg.train.dtype_name == "fp32" else 2
    memory.check_host_memory(
        checkpoint_bytes_per_rank=memory.checkpoint_offload_bytes(
            cfg.model.num_layers, cfg.train.micro_batch_size, cfg.model.seq_length // cfg.parallel.sequence_parallel_size,
            cfg.model.hidden_size, dtype_bytes,
        ) if m.checkpoint_in_cpu else 0,
        num_params=cfg.model.num_parameters(), zero_shards=dist.get_world_size(),
        offload_param=m.offload_param, offload_optimizer=m.offload_optimizer,
        param_bytes=dtype_bytes, local_ranks=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )  # fmt: skip
    with deepspeed.zero.Init(
        data_parallel_group=ps.get_sequence_data_parallel_group(),
        config_dict_or_path=ds_config,
        enabled=cfg.parallel.zero_stage == 3,
        mpu=ps,
    ):
        model = GPTModel(cfg.model, cfg.attention, device=device)
    for note in parallelize(model, cfg, sp_group):
        print_rank0(f"> {note}")
    return model


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: Config, model: torch.nn.Module, device: torch.device):
    """AdamW without decay on biases and norms. The learning rate is a pure function of the
    iteration (set before each step), so there is no scheduler state to checkpoint or to keep
    in sync with DeepSpeed's wrapper."""
    from megatron.training import memory

    t = cfg.train
    return memory.build_optimizer(
        _param_groups(model, t.weight_decay),
        lr=t.lr,
        betas=(t.adam_beta1, t.adam_beta2),
        eps=t.adam_eps,
        device=device,
        offload=cfg.memory.offload_optimizer,
    )


@dataclass
class EngineSetup:
    """What ``build_engine`` built: the DeepSpeed engine and optimizer, the JSON they were built
    from, this run's layout, and the checkpoint to resume from (None: start at iteration 0)."""

    engine: Any
    optimizer: Any
    ds_config: dict
    layout: Layout
    resume: Resume | None
    saved_config: dict | None = None  # the config the resumed checkpoint was trained with (``resume`` sets it)


def build_engine(cfg: Config, device: torch.device) -> EngineSetup:
    """Collective: the DeepSpeed engine of this run, and what ``--load`` resumes from (verified
    and, when written with another layout, converted before the engine is built)."""
    import deepspeed

    from megatron.training.optimizer_step import streamline
    from megatron.training.weights import load_weights, starts_from_weights

    world = dist.get_world_size()
    if cfg.parallel.deepcompile and device.type != "cuda":
        raise ConfigError("--deepcompile compiles for CUDA GPUs and this run has none; drop --deepcompile")
    ds_config = build_deepspeed_config(cfg, world)
    layout = Layout(world, cfg.parallel.sequence_parallel_size, cfg.parallel.zero_stage)
    start_from_weights = starts_from_weights(cfg.checkpoint.load)  # converted HF weights: iteration 0, fresh optimizer
    resume = None
    if cfg.checkpoint.load and not start_from_weights:
        resume = prepare_resume(cfg.checkpoint.load, layout)  # verifies; converts a foreign layout
        if resume is not None and resume.universal:
            ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    sp_group = ps.get_sequence_parallel_group() if cfg.parallel.sequence_parallel_size > 1 else None
    model = build_model(cfg, ds_config, device, sp_group)
    if start_from_weights:
        load_weights(model, cfg.checkpoint.load)
        print_rank0(f"> loaded model weights from {cfg.checkpoint.load} (iteration 0, fresh optimizer)")
    optimizer = build_optimizer(cfg, model, device)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, mpu=ps)
    if cfg.parallel.lean_optimizer_step:
        streamline(optimizer)  # fp32 norm, unscale/clip in the fused AdamW (no-op where it does not apply)
    if cfg.parallel.deepcompile:
        numeric_arch_list(say=print_rank0)  # DeepCompile JIT-builds its ops
        engine.compile()  # DeepCompile: the first steps trace and compile the model
        print_rank0(f"> DeepCompile on (ZeRO-{cfg.parallel.zero_stage} passes); the first steps compile")
    return EngineSetup(engine, optimizer, ds_config, layout, resume)


def resume(setup: EngineSetup, load_dir: str | None) -> tuple:
    """Collective: load the checkpoint ``build_engine`` chose into the engine; returns
    (iteration, consumed samples), (0, 0) without one."""
    if setup.resume is None:
        return 0, 0
    state = load_checkpoint(setup.engine, load_dir, setup.resume)
    setup.saved_config = state.get("config")
    return state["iteration"], state["consumed_samples"]
