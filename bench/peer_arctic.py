"""The ArcticTraining throughput peer: Snowflake's ArcticTraining trainer with its ALST recipe for long sequences.

Run under the DeepSpeed or torchrun launcher, one process per GPU (``bench/throughput.py --peers arctic``
launches it with ``--arctic-python`` / ``ARCTIC_PYTHONPATH`` for its separate environment):

    PYTHONPATH=/tmp/arctic_site torchrun --nproc_per_node 8 bench/peer_arctic.py --shape llama-1b \\
        --seq-length 131072 --bf16 --iters 8 --metrics-file peer.jsonl
    PYTHONPATH=/tmp/arctic_site torchrun --nproc_per_node 1 bench/peer_arctic.py --shape tiny --seq-length 128 \\
        --iters 2 --metrics-file peer.jsonl        # CPU (gloo, fp32)

ArcticTraining 0.8 (it requires transformers 4.56 - 4.x) runs its own ``Trainer``; the runner registers, through
ArcticTraining's registry (subclasses of its factories are registered by name when defined):

* trainer ``bench-causal``: its ``CausalTrainer`` (the ``SFTTrainer`` loss: at SP > 1 the tiled logits + loss
  of ``sequence_tiled_compute``; at SP 1 transformers' loss), with the step timed around ArcticTraining's
  own ``Trainer.step`` (forward, ``engine.backward``, ``engine.step``);
* model factory ``bench-random-init``: its Hugging Face factory, but ``from_config`` (random init) from a local
  directory holding only ``config.json`` (the shape's ``LlamaConfig``, vocabulary padded to a multiple of 128 as
  ours), so nothing is downloaded; activation checkpointing through the factory
  (``gradient_checkpointing_enable``) unless ``--ac-mode none``;
* data factory ``bench-synthetic``: our ``--mock-data`` token stream (``megatron.data.mock``) as
  ``input_ids`` / ``labels`` samples of exactly the bench length, in a torch ``DataLoader`` (no Hugging Face
  datasets, no tokenizer: tokenizer factory ``bench-none``); at SP > 1 ArcticTraining wraps it in DeepSpeed's
  ``UlyssesSPDataLoaderAdapter`` itself;
* optimizer factory ``bench-adamw``: ``torch.optim.AdamW`` (lr 1e-4, betas 0.9/0.95, weight decay 0.01; fused on
  CUDA) instead of DeepSpeed's JIT-built FusedAdam; constant learning rate.

The ALST settings (ArcticTraining's documented long-sequence recipe): ``sequence_parallel_size`` = the GPU
count (DeepSpeed Ulysses, ``UlyssesSPAttentionHF`` over SDPA), ``tiled_mlp_compute: true``, activation
checkpointing with ``activation_checkpoint_cpu_offload`` (``--ac-mode auto``: offload from 64K tokens per GPU
on, where ArcticTraining's notes say it starts to pay; ``none``, ``full``, ``offload`` force one), ZeRO-3, bf16, micro batch 1. The settings used are in
the ``{"peer": ...}`` line; rank 0 then writes one record per iteration with the fields of our metrics file,
model FLOPs from ``megatron.training.metrics.model_flops_per_token`` on the peer's Llama shape.
"""


import json
import os
import sys
import time
from pathlib import Path

import torch
from report import (  # bench/, this script's directory
    iteration_record,
    peer_arg_parser,
    peer_metrics,
    versions,
    write_iteration,
)

AC_MODES = ("auto", "none", "full", "offload")  # activation checkpointing; auto: full, offloaded from 64K tokens/GPU
OFFLOAD_FROM_TOKENS_PER_GPU = 65536


def llama_config_dict(shape_name: str, seq_length: int, pad_vocab: int = 128, sp: int = 1) -> dict:
    """The shape's ``config.json`` for a ``LlamaForCausalLM`` (transformers 4.x keys).

    At SP > 1 the output layer is untied from the embeddings: under ZeRO-3, ArcticTraining 0.8's tiled loss and
    the embedding both reduce the shared weight's gradient, which DeepSpeed refuses (an ``AssertionError`` in
    stage 3's gradient bucket). The model FLOPs are the same; the extra parameters are recorded.
    """
    from throughput import SHAPES

    kw = dict(SHAPES[shape_name].hf_llama_kwargs())
    kw["tie_word_embeddings"] = kw.get("tie_word_embeddings", True) and sp == 1
    kw["vocab_size"] = -(-kw["vocab_size"] // pad_vocab) * pad_vocab
    rope = kw.pop("rope_parameters", None)
    if rope is not None and "rope_theta" not in kw:
        kw["rope_theta"] = rope.get("rope_theta", SHAPES[shape_name].rope_base)
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": seq_length,
            "use_cache": False, **kw}  # fmt: skip


def write_model_dir(path: Path, config: dict) -> Path:
    """A model directory ArcticTraining can name: ``config.json`` only (the weights are random init)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


def ac_mode(mode: str, seq_length: int, sp: int) -> str:
    """The activation-checkpointing mode a run uses: ``none``, ``full`` or ``offload`` (full, kept on the CPU)."""
    if mode == "auto":
        return "offload" if seq_length // sp >= OFFLOAD_FROM_TOKENS_PER_GPU else "full"
    return mode


def trainer_config(args, world: int, model_dir: Path, out_dir: Path) -> dict:
    """The ArcticTraining ``TrainerConfig`` dictionary of this run (built without importing ArcticTraining)."""
    sp = world
    mode = ac_mode(args.ac_mode, args.seq_length, sp)
    if args.seq_length % sp:
        raise SystemExit(f"error: --seq-length {args.seq_length} is not a multiple of the SP size {sp}; pick one")
    return {
        "type": "bench-causal",
        "model": {"type": "bench-random-init", "name_or_path": str(model_dir), "attn_implementation": "sdpa",
                  "dtype": "bf16" if args.bf16 else "fp32", "disable_activation_checkpoint": mode == "none"},
        "tokenizer": {"type": "bench-none"},
        "data": {"type": "bench-synthetic", "sources": [], "max_length": args.seq_length, "seed": args.seed,
                 "dl_num_workers": 0},
        "optimizer": {"type": "bench-adamw", "lr": args.lr, "betas": [0.9, 0.95], "weight_decay": 0.01},
        "scheduler": {"type": "huggingface", "name": "constant", "warmup_ratio": 0.0},
        "deepspeed": {"zero_optimization": {"stage": 3}, "gradient_clipping": 1.0,
                      "bfloat16": {"enabled": bool(args.bf16)}, "steps_per_print": 10**9},
        "micro_batch_size": 1, "gradient_accumulation_steps": 1, "train_iters": args.iters, "epochs": 1,
        "sequence_parallel_size": sp, "tiled_mlp_compute": not args.no_tiled_mlp,
        "activation_checkpoint_cpu_offload": mode == "offload",
        "train_log_iter_interval": 0, "loss_log_interval": 0, "seed": args.seed, "checkpoint": [],
        "logger": {"output_dir": str(out_dir), "level": "WARNING"},
        "train_log_metrics_path": str(out_dir / "arctic-train-log.jsonl"),
        "kill_switch_path": str(out_dir / "kill-switch"),
    }  # fmt: skip


def settings(cfg: dict) -> dict:
    """What the ``{"peer": ...}`` line records of the ArcticTraining configuration."""
    checkpointing = not cfg["model"]["disable_activation_checkpoint"]
    offload = cfg["activation_checkpoint_cpu_offload"]
    return {"ac_mode": ("offload" if offload else "full") if checkpointing else "none",
            "sequence_parallel_size": cfg["sequence_parallel_size"], "tiled_mlp_compute": cfg["tiled_mlp_compute"],
            "tiled_loss": cfg["sequence_parallel_size"] > 1,
            "activation_checkpointing": not cfg["model"]["disable_activation_checkpoint"],
            "activation_checkpoint_cpu_offload": cfg["activation_checkpoint_cpu_offload"],
            "zero_stage": cfg["deepspeed"]["zero_optimization"]["stage"], "attn_implementation":
            cfg["model"]["attn_implementation"], "dtype": cfg["model"]["dtype"],
            "micro_batch_size": cfg["micro_batch_size"], "optimizer": "torch.optim.AdamW"}  # fmt: skip


def megatron_model_config(hf: dict, seq_length: int):
    """Our ``ModelConfig`` describing the peer's Llama, for the shared FLOPs formulas."""
    from megatron.config import ModelConfig

    return ModelConfig(
        num_layers=hf["num_hidden_layers"], hidden_size=hf["hidden_size"], num_attention_heads=hf["num_attention_heads"],
        num_key_value_heads=hf["num_key_value_heads"], ffn_hidden_size=hf["intermediate_size"], seq_length=seq_length,
        vocab_size=hf["vocab_size"], make_vocab_size_divisible_by=1, use_rotary_position_embeddings=True,
        normalization="RMSNorm", swiglu=True, add_bias_linear=False, untie_embeddings_and_output_weights=True,
    )  # fmt: skip


class Timer:
    """Per-iteration wall time, loss and grad norm around ArcticTraining's ``Trainer.step``."""

    def __init__(self, device):
        self.device, self.records, self.loss = device, [], None

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.t0 = time.perf_counter()

    def stop(self, engine):
        import torch.distributed as dist

        loss = self.loss.detach().double().reshape(())
        dist.all_reduce(loss)
        grad_norm = engine.get_global_grad_norm()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.records.append((time.perf_counter() - self.t0, loss.item() / dist.get_world_size(), grad_norm))


def register(timer: Timer):
    """Register the bench's trainer and factories in ArcticTraining's registry (by defining them)."""
    from arctic_training.config.tokenizer import TokenizerConfig
    from arctic_training.data.factory import DataFactory
    from arctic_training.model.hf_factory import HFModelFactory
    from arctic_training.optimizer.factory import OptimizerFactory
    from arctic_training.tokenizer.factory import TokenizerFactory
    from arctic_training.trainer.causal_trainer import CausalTrainer
    from transformers import AutoModelForCausalLM

    class RandomInitModelFactory(HFModelFactory):
        name = "bench-random-init"

        def create_model(self, model_config):
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.dtype.value, torch.float32)
            model = AutoModelForCausalLM.from_config(model_config, attn_implementation=self.config.attn_implementation,
                                                     torch_dtype=dtype)  # fmt: skip
            return hf_init(model)

    class NoTokenizerFactory(TokenizerFactory):
        name = "bench-none"
        config: TokenizerConfig

        def create_tokenizer(self):
            return None

    class SyntheticDataFactory(DataFactory):
        name = "bench-synthetic"

        def __call__(self):
            return self.create_dataloader(self.load([])), None

        def load(self, data_sources):
            return SyntheticTokens(self.config.max_length, self.trainer.config.model.name_or_path, self.config.seed,
                                   self.trainer.config.train_iters * self.world_size)  # fmt: skip

        def process(self, dataset):
            return dataset

        def split_data(self, training_data):
            return training_data, None

        def create_dataloader(self, dataset):
            from torch.utils.data import DataLoader, DistributedSampler

            sampler = DistributedSampler(dataset, num_replicas=self.world_size, rank=self.global_rank, shuffle=False)
            return DataLoader(dataset, batch_size=self.micro_batch_size, sampler=sampler, drop_last=True)

    class AdamWFactory(OptimizerFactory):
        name = "bench-adamw"

        def create_optimizer(self, model, optimizer_config):
            params = [p for p in model.parameters() if p.requires_grad]
            return torch.optim.AdamW(params, lr=optimizer_config.learning_rate, betas=tuple(optimizer_config.betas),
                                     weight_decay=optimizer_config.weight_decay)  # fmt: skip

    class BenchTrainer(CausalTrainer):
        name = "bench-causal"
        data_factory: SyntheticDataFactory
        model_factory: RandomInitModelFactory
        optimizer_factory: AdamWFactory
        tokenizer_factory: NoTokenizerFactory

        def loss(self, batch):
            timer.loss = CausalTrainer.loss(self, batch)
            return timer.loss

        def step(self, batch):
            timer.start()
            super().step(batch)
            timer.stop(self.model)

    return BenchTrainer


def hf_init(model):
    """Apply the model's own ``_init_weights`` (normal(0, initializer_range), norms at 1) to every module.

    Under ZeRO-3 transformers builds the model inside ``deepspeed.zero.Init``, where each parameter is
    partitioned as it is created and its ``_init_weights`` writes into empty tensors: the weights keep
    torch's default init (embeddings N(0, 1)), a loss of about 10 x log(vocab) at step 0 with tied embeddings.
    Each module's parameters are gathered, initialized on rank 0 and scattered back.
    """
    import deepspeed

    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if params:
            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                model._init_weights(module)
    return model


class SyntheticTokens(torch.utils.data.Dataset):
    """Our mock token stream as causal-LM samples: input_ids = tokens[:S], labels = tokens[:S] (transformers
    shifts), position_ids 0..S-1, ``len`` = the samples the run needs."""

    def __init__(self, seq_length: int, model_dir, seed: int, n: int):
        from megatron.data.mock import MockGPTDataset

        vocab = json.loads((Path(model_dir) / "config.json").read_text())["bench_vocab"]
        self.ds, self.S, self.n = MockGPTDataset(seq_length, vocab, seed), seq_length, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        tokens = torch.from_numpy(self.ds[i]["tokens"][: self.S]).long()
        return {"input_ids": tokens, "labels": tokens.clone(), "attention_mask": torch.ones_like(tokens),
                "position_ids": torch.arange(self.S)}  # Ulysses SP shards by position: one document per sample


def parse_args(argv=None):
    p = peer_arg_parser(__doc__.split("\n")[0])
    p.add_argument("--ac-mode", choices=AC_MODES, default="auto",
                   help="activation checkpointing: none, full, offload (full, checkpoints on the CPU); auto (the "
                        f"recipe): full, offloaded from {OFFLOAD_FROM_TOKENS_PER_GPU} tokens per GPU")
    p.add_argument("--no-tiled-mlp", action="store_true", help="ArcticTraining's tiled MLP compute off")
    p.add_argument("--work-dir", default="/tmp/arctic_peer", help="model config.json and ArcticTraining's logs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch.distributed as dist
    from throughput import SHAPES

    from megatron.training import metrics

    try:
        from arctic_training.config.trainer import get_config
    except ImportError as e:
        raise SystemExit(f"error: ArcticTraining is not importable ({e}); install the arctic set of "
                         "bench/peer_wheels.sh and pass --arctic-python / ARCTIC_PYTHONPATH") from e  # fmt: skip
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    S = args.seq_length
    work = Path(args.work_dir) / f"{args.shape}_{S}_{world}"
    hf = llama_config_dict(args.shape, S, args.pad_vocab, world)
    if rank == 0:
        write_model_dir(work / "model", {**hf, "bench_vocab": SHAPES[args.shape].vocab})
    dist.barrier()
    cfg_dict = trainer_config(args, world, work / "model", work / "logs")
    timer = Timer(device)
    trainer_cls = register(timer)
    cfg = get_config(cfg_dict)
    trainer = trainer_cls(cfg)

    mcfg = megatron_model_config(hf, S)
    flops_token = metrics.model_flops_per_token(mcfg, S)
    flops_model = flops_token * S  # one sequence per iteration, spread over the SP group
    recompute = not cfg_dict["model"]["disable_activation_checkpoint"]
    flops_md = metrics.megatron_deepspeed_flops_per_iteration(mcfg, 1, S, recompute)
    peak = metrics.peak_flops(torch.cuda.get_device_name(device)) if cuda else None
    model = trainer.model_unwrapped
    meta = {
        "peer": "arctic", "model": "transformers LlamaForCausalLM (random init) in arctic_training.Trainer",
        "shape": args.shape, "model_config": {k: v for k, v in hf.items() if k != "architectures"},
        "parameters": sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()),
        "model_flops_per_token": flops_token, "world": world, "dp": 1, "sp": world,
        "settings": settings(cfg_dict), "precision": "bf16" if args.bf16 else "fp32",
        "versions": versions("arctic_training", "torch"),
    }  # fmt: skip
    with peer_metrics(args.metrics_file, rank, meta) as out:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        trainer.train()
        for it, (dt, loss, grad_norm) in enumerate(timer.records, 1):
            rec = iteration_record(it, loss, dt, S, world, flops_md, flops_model, peak,
                                   metrics.peak_memory_gb(device), grad_norm)  # fmt: skip
            write_iteration(out, rec, "arctic", args.iters)
    if len(timer.records) != args.iters:
        raise SystemExit(f"error: ArcticTraining ran {len(timer.records)} of {args.iters} iterations")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
