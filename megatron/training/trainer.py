"""The training loop: DeepSpeed engine, Ulysses sequence sharding, exact token-weighted loss.

Loss: every SP rank holds a contiguous slice of each sample. The reported and optimized loss
is the token-weighted mean over the whole sequence and the whole global batch:
``sum(loss over all tokens of the global batch) / (number of loss tokens in it)``. DeepSpeed
divides each micro-batch loss by the accumulation steps and averages gradients over the
data-parallel size (it sums over the SP ranks of a group), so each rank back-propagates
``local_sum * DP * GAS / N_global``; the gradient is then exactly that of the global mean,
whatever the SP/DP/accumulation layout. ZeRO-3's reduce-scatter path averages over the whole
SP x DP group instead (no SP correction), so there the factor is ``SP * DP``; the SP=N vs SP=1
gradient-norm tests pin both down.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import signal
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron import parallel_state as ps
from megatron.config import Config
from megatron.training import metrics
from megatron.training.checkpointing import Layout, load_checkpoint, prepare_resume, save_checkpoint
from megatron.training.ds_config import build_deepspeed_config
from megatron.training.faults import NO_FAULTS, FaultInjector
from megatron.training.lr_schedule import lr_at


# DeepSpeed's ZeRO still calls the deprecated all_gather_into_tensor; the warning is noise to users.
warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)


def print_rank0(*args) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, flush=True)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _single_process_env() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        os.environ.setdefault(key, value)


def initialize_distributed(cfg: Config) -> torch.device:
    """Start torch.distributed through DeepSpeed (nccl on GPUs, gloo on CPUs) and build groups."""
    import deepspeed

    use_cuda = torch.cuda.is_available()
    backend = cfg.parallel.distributed_backend or ("nccl" if use_cuda else "gloo")
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ and os.environ.get("WORLD_SIZE", "1") == "1":
            _single_process_env()  # plain `python pretrain_gpt.py`: a world of one, no launcher needed
        timeout = datetime.timedelta(minutes=cfg.parallel.distributed_timeout_minutes)
        deepspeed.init_distributed(dist_backend=backend, verbose=False, timeout=timeout)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    cfg.validate_world(dist.get_world_size())
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(cfg.parallel.sequence_parallel_size, verbose=True)
    return device


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class TrainingStopped(RuntimeError):
    """The run cannot usefully continue (e.g. too many non-finite steps); the message says why
    and what to do. The entry point prints it as one line and exits non-zero."""


@dataclass
class Batch:
    """This rank's slice of one micro batch. ``document_ids`` covers the full sequence;
    ``square_sum`` is its documents' squared lengths summed (b x S² without documents), for the
    model FLOPs."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    document_ids: Optional[torch.Tensor]
    square_sum: int


class Trainer:
    def __init__(
        self, cfg: Config, train_ds, valid_ds=None, eod_token: Optional[int] = None, *,
        device: Optional[torch.device] = None, faults: Optional[FaultInjector] = None,
    ):  # fmt: skip
        import deepspeed

        self.cfg = cfg
        self.faults = NO_FAULTS if faults is None else faults
        self.device = initialize_distributed(cfg) if device is None else device
        self.world = dist.get_world_size()
        self.sp = cfg.parallel.sequence_parallel_size
        self.sp_rank = ps.get_sequence_parallel_rank()
        self.dp = ps.get_data_parallel_world_size()
        self.dp_rank = ps.get_data_parallel_rank()
        self.gas = cfg.grad_accumulation_steps(self.world)
        self.train_ds, self.valid_ds, self.eod = train_ds, valid_ds, eod_token
        self.ds_config = build_deepspeed_config(cfg, self.world)
        self.layout = Layout(self.world, self.sp, cfg.parallel.zero_stage)
        from megatron.training.weights import load_weights, starts_from_weights

        start_from_weights = starts_from_weights(cfg.logging.load)  # converted HF weights: iteration 0, fresh optimizer
        self._resume = None
        if cfg.logging.load and not start_from_weights:
            self._resume = prepare_resume(cfg.logging.load, self.layout)  # verifies; converts a foreign layout
            if self._resume is not None and self._resume.universal:
                self.ds_config["checkpoint"] = {**self.ds_config.get("checkpoint", {}), "load_universal": True}

        set_seed(cfg.train.seed)
        from megatron.model.attention import document_mask_note
        from megatron.model.gpt import GPTModel, TransformerLayer
        from megatron.model.tiled import MemoryOptions
        from megatron.training import memory

        memory_options = MemoryOptions.from_config(cfg.parallel)  # ALST: tiled MLP/loss, offloaded checkpoints
        on = [f"{k}={v}" for k, v in vars(memory_options).items() if v not in (False, None)]
        on += [k for k in ("offload_param", "offload_optimizer") if getattr(cfg.parallel, k)]
        if on:
            print_rank0(f"> memory: {', '.join(on)}")
        dtype_bytes = 4 if cfg.train.dtype_name == "fp32" else 2
        memory.check_host_memory(
            checkpoint_bytes_per_rank=memory.checkpoint_offload_bytes(
                cfg.model.num_layers, cfg.train.micro_batch_size, cfg.model.seq_length // self.sp,
                cfg.model.hidden_size, dtype_bytes,
            ) if cfg.parallel.checkpoint_in_cpu else 0,
            num_params=cfg.model.num_parameters(), zero_shards=self.world, offload_param=cfg.parallel.offload_param,
            offload_optimizer=cfg.parallel.offload_optimizer, param_bytes=dtype_bytes,
            local_ranks=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
        )  # fmt: skip
        sp_group = ps.get_sequence_parallel_group() if self.sp > 1 else None
        with deepspeed.zero.Init(
            data_parallel_group=ps.get_sequence_data_parallel_group(),
            config_dict_or_path=self.ds_config,
            enabled=cfg.parallel.zero_stage == 3,
            mpu=ps,
        ):
            model = GPTModel(
                cfg.model, sp_group=sp_group, checkpoint_activations=cfg.parallel.checkpoint_activations, device=self.device,
                memory=memory_options,
            )
        if start_from_weights:
            load_weights(model, cfg.logging.load)
            print_rank0(f"> loaded model weights from {cfg.logging.load} (iteration 0, fresh optimizer)")
        t = cfg.train
        optimizer = memory.build_optimizer(
            _param_groups(model, t.weight_decay),
            lr=t.lr,
            betas=(t.adam_beta1, t.adam_beta2),
            eps=t.adam_eps,
            device=self.device,
            offload=cfg.parallel.offload_optimizer,
        )
        # The learning rate is a pure function of the iteration (set before each step), so
        # there is no scheduler state to checkpoint or to keep in sync with DeepSpeed's wrapper.
        if cfg.parallel.use_zero3_leaf_layers:
            from deepspeed.utils import set_z3_leaf_modules

            leaves = set_z3_leaf_modules(model, [TransformerLayer])
            print_rank0(f"> ZeRO-3: {len(leaves)} transformer layers gathered as whole modules (leaf modules)")
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.ds_config, mpu=ps
        )
        self.iteration = 0
        self.consumed_samples = 0
        self.skipped_steps = 0  # total non-finite steps skipped in this process
        self._consecutive_skipped = 0
        self._install_exit_handlers()
        if self._resume is not None:
            state = load_checkpoint(self.engine, cfg.logging.load, self._resume)
            self.iteration = state["iteration"]
            self.consumed_samples = state["consumed_samples"]
        n_params = cfg.model.num_parameters()
        print_rank0(
            f"> model: {n_params / 1e6:.2f}M parameters | world {self.world} = SP {self.sp} x DP {self.dp} | "
            f"micro batch {t.micro_batch_size} x accumulation {self.gas} x DP {self.dp} = global batch "
            f"{t.global_batch_size} | ZeRO-{cfg.parallel.zero_stage} | {t.dtype_name} | device {self.device}"
        )
        if cfg.data.reset_attention_mask:
            note = document_mask_note(cfg.model.attention_backend, cfg.model.seq_length, t.micro_batch_size)
            if note:
                print_rank0(f"> note: {note}")
        self._tb = None
        if cfg.logging.tensorboard_dir and dist.get_rank() == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("--tensorboard-dir needs the tensorboard package: pip install tensorboard") from None
            self._tb = SummaryWriter(cfg.logging.tensorboard_dir)

    # ---------------------------------------------------------------- data
    def _sample_indices(self, dataset_offset: int, step_in_epoch: int, micro: int) -> list:
        """Global sample indices of this DP rank's micro batch ``micro`` of a step (Megatron order)."""
        mbs, gbs = self.cfg.train.micro_batch_size, self.cfg.train.global_batch_size
        start = dataset_offset + step_in_epoch * gbs + micro * mbs * self.dp + self.dp_rank * mbs
        return list(range(start, start + mbs))

    def _make_batch(self, dataset, indices: list) -> Batch:
        tokens = torch.from_numpy(np.stack([dataset[i]["tokens"] for i in indices])).long()
        self._check_token_ids(tokens, indices)
        input_ids, labels = tokens[:, :-1], tokens[:, 1:]
        d = self.cfg.data
        if self.eod is not None and (d.reset_position_ids or d.reset_attention_mask or d.eod_mask_loss):
            from megatron.data.packing import get_ltor_masks_and_position_ids

            loss_mask, position_ids, document_ids = get_ltor_masks_and_position_ids(
                input_ids, self.eod, d.reset_position_ids, d.reset_attention_mask, d.eod_mask_loss
            )
        else:
            loss_mask = torch.ones_like(input_ids, dtype=torch.float32)
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
            document_ids = None
        S = input_ids.shape[1]
        s = S // self.sp
        sl = slice(self.sp_rank * s, (self.sp_rank + 1) * s)
        to = lambda x: x.to(self.device, non_blocking=True)  # noqa: E731
        return Batch(
            to(input_ids[:, sl].contiguous()),
            to(labels[:, sl].contiguous()),
            to(loss_mask[:, sl].contiguous()),
            to(position_ids[:, sl].contiguous()),
            None if document_ids is None else to(document_ids),
            metrics.document_square_sum(document_ids) if document_ids is not None else input_ids.numel() * S,
        )

    def _check_token_ids(self, tokens: torch.Tensor, indices: list) -> None:
        """Stop on a token id the embedding and the loss have no row for (data tokenized with a larger
        vocabulary). Checked on the host, before the copy to the GPU: no synchronization, and no
        device-side assert or silently masked label later."""
        rows = self.cfg.model.padded_vocab_size
        top = int(tokens.max()) if tokens.numel() else 0
        if top >= rows:
            from megatron.data.errors import DataError

            sample = indices[int((tokens >= rows).any(dim=1).nonzero()[0])]
            raise DataError(
                f"token id {top} in sample {sample} of the data is outside the model's vocabulary ({rows} rows: "
                f"vocabulary {self.cfg.model.vocab_size} padded to a multiple of "
                f"{self.cfg.model.make_vocab_size_divisible_by}); the data was tokenized with a larger vocabulary: "
                "train with that tokenizer (or its --vocab-size), or preprocess the data again with this one"
            )

    def _grad_divisor(self) -> int:
        """What DeepSpeed divides the summed gradients by (see the module docstring)."""
        zero = self.ds_config["zero_optimization"]
        if zero["stage"] == 3 and zero.get("reduce_scatter", True):
            return self.dp * self.sp
        return self.dp

    def _square_sum(self, window: list) -> float:
        """Documents' squared lengths per iteration over the global batch (gbs x S² without documents).
        With documents they differ across data-parallel ranks and are summed over them; the SP
        ranks of a group hold the same sequences."""
        local = sum(w["square_sum"] for w in window) / len(window)
        if not self.cfg.data.reset_attention_mask or self.dp == 1:
            return local * self.dp
        total = torch.tensor(local, dtype=torch.float64, device=self.device)
        dist.all_reduce(total, group=ps.get_data_parallel_group())
        return total.item()

    def _global_token_count(self, batches: list) -> torch.Tensor:
        n = torch.stack([b.loss_mask.sum() for b in batches]).sum().to(torch.float64)
        dist.all_reduce(n, group=ps.get_sequence_data_parallel_group())
        return n

    # ---------------------------------------------------------------- steps
    def train_step(self, batches: list) -> dict:
        """One optimizer step over this rank's micro batches.

        A non-finite loss or gradient norm on any rank skips the update everywhere, leaving the
        parameters and optimizer state untouched: a rank whose loss is not finite back-propagates
        NaN, so the global gradient norm is NaN on every rank, and DeepSpeed's ZeRO/bf16/fp16
        optimizers discard steps whose norm is not finite (``engine.skipped_steps``). The one
        optimizer without that check (plain fp32 without ZeRO) gets it here.
        """
        lr = lr_at(self.iteration, self.cfg.train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n_global = self._global_token_count(batches)
        scale = self._grad_divisor() * self.gas / n_global.clamp(min=1.0)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        skipped_before = self.engine.skipped_steps
        guard_skipped, own_norm = False, None
        poison = self.faults.poison_loss(self.iteration + 1, dist.get_rank())
        for i, b in enumerate(batches):
            losses_bs = self.engine(b.input_ids, b.position_ids, b.labels, b.document_ids)
            local_sum = (losses_bs * b.loss_mask).sum()
            if poison and i == 0:
                local_sum = local_sum * float("nan")
            # no host sync: the scale turns NaN exactly when this rank's loss is not finite
            s = torch.where(torch.isfinite(local_sum.detach()), scale.to(local_sum.dtype), float("nan"))
            self.engine.backward(local_sum * s)
            if i == len(batches) - 1 and self._needs_finite_guard:
                own_norm = self._grad_norm_zero0()
                guard_skipped = not math.isfinite(own_norm)
            if guard_skipped:
                self._step_without_update()
            else:
                self.engine.step()
            loss_sum += local_sum.detach().to(torch.float64)
        dist.all_reduce(loss_sum, group=ps.get_sequence_data_parallel_group())
        skipped = guard_skipped or self.engine.skipped_steps > skipped_before
        grad_norm = self.engine.get_global_grad_norm() if own_norm is None else own_norm
        return {
            "lm_loss": (loss_sum / n_global).item(),
            "grad_norm": float("inf") if skipped else None if grad_norm is None else float(grad_norm),
            "lr": lr,
            "skipped": skipped,
        }

    @property
    def _needs_finite_guard(self) -> bool:
        """Plain fp32 without ZeRO steps torch's optimizer directly, which has no overflow check."""
        return self.cfg.parallel.zero_stage == 0 and not (self.cfg.train.bf16 or self.cfg.train.fp16)

    def _grad_norm_zero0(self) -> float:
        """Global gradient norm for plain fp32 without ZeRO, where DeepSpeed reports none (the
        gradients are already all-reduced, so every rank holds the same ones)."""
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])) if grads else 0
        bad = torch.tensor([0.0 if torch.isfinite(torch.as_tensor(norm)) else 1.0], device=self.device)
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return float("inf") if bad.item() > 0 else float(norm)

    def _step_without_update(self) -> None:
        """Advance DeepSpeed's step bookkeeping and clear the gradients, but leave parameters and
        optimizer state untouched: the torch optimizer's step is shadowed for this one call."""
        opt = self.engine.optimizer
        for p in self.engine.module.parameters():
            if p.grad is not None:
                p.grad.zero_()  # finite, so DeepSpeed's clipping has something to measure
        opt.step = lambda *args, **kwargs: None
        try:
            self.engine.step()
        finally:
            del opt.step
        self.engine.zero_grad()

    @torch.no_grad()
    def evaluate(self) -> float:
        self.engine.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        n = torch.zeros((), dtype=torch.float64, device=self.device)
        for step in range(self.cfg.train.eval_iters):
            for m in range(self.gas):
                b = self._make_batch(self.valid_ds, self._sample_indices(0, step, m))
                losses_bs = self.engine(b.input_ids, b.position_ids, b.labels, b.document_ids)
                loss_sum += (losses_bs * b.loss_mask).sum().to(torch.float64)
                n += b.loss_mask.sum().to(torch.float64)
        dist.all_reduce(loss_sum, group=ps.get_sequence_data_parallel_group())
        dist.all_reduce(n, group=ps.get_sequence_data_parallel_group())
        self.engine.train()
        return (loss_sum / n.clamp(min=1.0)).item()

    def save(self) -> None:
        path = save_checkpoint(
            self.engine,
            self.cfg.logging.save,
            self.iteration,
            {"consumed_samples": self.consumed_samples, "config": self.cfg.to_dict()},
            self.layout,
            keep_last_n=self.cfg.logging.keep_last_n_checkpoints,
            faults=self.faults,
        )
        print_rank0(f"> saved checkpoint {path}")

    # ---------------------------------------------------------------- loop
    def train(self) -> list:
        cfg, t, lg = self.cfg, self.cfg.train, self.cfg.logging
        S = cfg.model.seq_length
        flops_md = metrics.megatron_deepspeed_flops_per_iteration(
            cfg.model, t.global_batch_size, S, cfg.parallel.checkpoint_activations,
            cfg.parallel.checkpoint_keep_attention,
        )  # fmt: skip
        peak = metrics.peak_flops(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None
        records, window, window_start = [], [], time.perf_counter()
        metrics_f = open(lg.metrics_file, "a") if lg.metrics_file and dist.get_rank() == 0 else None
        self.engine.train()
        while self.iteration < t.train_iters:
            step_in_epoch = self.consumed_samples // t.global_batch_size
            batches = [self._make_batch(self.train_ds, self._sample_indices(0, step_in_epoch, m)) for m in range(self.gas)]
            out = self.train_step(batches)
            out["square_sum"] = sum(b.square_sum for b in batches)  # this DP rank's, for the model FLOPs
            self.iteration += 1
            self.consumed_samples += t.global_batch_size
            if out["skipped"]:
                self.skipped_steps += 1
                self._consecutive_skipped += 1
                print_rank0(
                    f" iteration {self.iteration:>7d}/{t.train_iters:>7d} | skipped: non-finite loss or gradient norm "
                    f"({self._consecutive_skipped} in a row, {self.skipped_steps} in all; parameters unchanged)"
                )
            else:
                self._consecutive_skipped = 0
            window.append(out)
            if self.iteration % lg.log_interval == 0 or self.iteration == t.train_iters:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                elapsed = (time.perf_counter() - window_start) / len(window)
                flops_model = metrics.model_flops(cfg.model, t.global_batch_size * S, self._square_sum(window))
                rec = {
                    "iteration": self.iteration,
                    "lm_loss": sum(w["lm_loss"] for w in window) / len(window),
                    "lr": window[-1]["lr"],
                    "grad_norm": window[-1]["grad_norm"],
                    "step_time_s": elapsed,
                    "tokens_per_sec": t.global_batch_size * S / elapsed,
                    "tokens_per_sec_per_gpu": t.global_batch_size * S / elapsed / self.world,
                    "tflops": flops_md / elapsed / self.world / 1e12,
                    "model_tflops": flops_model / elapsed / self.world / 1e12,
                    "mfu": (flops_model / elapsed / self.world / peak) if peak else None,
                    "mem_gb": metrics.peak_memory_gb(self.device),
                    "consumed_samples": self.consumed_samples,
                    "skipped_steps": self.skipped_steps,
                }
                records.append(rec)
                self._log(rec, metrics_f)
                window, window_start = [], time.perf_counter()
            if t.eval_interval and self.iteration % t.eval_interval == 0 and self.valid_ds is not None:
                val = self.evaluate()
                print_rank0(f" validation at iteration {self.iteration} | lm loss: {val:.6f}")
                records.append({"iteration": self.iteration, "valid_lm_loss": val})
                if metrics_f:
                    metrics_f.write(json.dumps(records[-1]) + "\n")
                    metrics_f.flush()
                window_start = time.perf_counter()
            if t.max_skipped_steps and self._consecutive_skipped >= t.max_skipped_steps:
                if metrics_f:
                    metrics_f.close()
                first = self.iteration - self._consecutive_skipped + 1
                last_good = self._latest_checkpoint()
                raise TrainingStopped(
                    f"{self._consecutive_skipped} consecutive steps (iterations {first}-{self.iteration}) had a non-finite "
                    f"loss or gradient norm (--max-skipped-steps {t.max_skipped_steps}); stopped without saving"
                    + (f", the last good checkpoint is {last_good}" if last_good else "")
                    + "; lower --lr, check the data near this point, or raise --max-skipped-steps"
                )
            saving_now = lg.save and lg.save_interval and self.iteration % lg.save_interval == 0
            exit_reason = self._exit_reason()
            if saving_now or (exit_reason and lg.save):
                self.save()
            if exit_reason:
                print_rank0(f"> exiting at iteration {self.iteration} ({exit_reason})")
                break
        else:
            if lg.save and not (lg.save_interval and self.iteration % lg.save_interval == 0):
                self.save()
        if metrics_f:
            metrics_f.close()
        return records

    def _latest_checkpoint(self) -> Optional[str]:
        save = self.cfg.logging.save
        latest = os.path.join(save, "latest") if save else None
        return os.path.join(save, open(latest).read().strip()) if latest and os.path.isfile(latest) else None

    def _install_exit_handlers(self) -> None:
        lg = self.cfg.logging
        self._start_time = time.time()
        self._signal_received = False
        if lg.exit_signal_handler:

            def handler(signum, frame):
                self._signal_received = True  # acted on at the end of the current step, on every rank

            signal.signal(getattr(signal, lg.exit_signal), handler)

    def _exit_reason(self) -> Optional[str]:
        """Why to stop after this step, agreed by every rank (one tiny all-reduce when enabled)."""
        lg = self.cfg.logging
        if lg.exit_interval and self.iteration % lg.exit_interval == 0:
            return f"--exit-interval {lg.exit_interval}"
        if not lg.exit_signal_handler and lg.exit_duration_in_mins is None:
            return None
        minutes = (time.time() - self._start_time) / 60
        overtime = lg.exit_duration_in_mins is not None and minutes >= lg.exit_duration_in_mins
        flags = torch.tensor([float(self._signal_received), float(overtime)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0] > 0:
            return f"received {lg.exit_signal}"
        if flags[1] > 0:
            return f"--exit-duration-in-mins {lg.exit_duration_in_mins} reached"
        return None

    def _log(self, rec: dict, metrics_f) -> None:
        mfu = f"{100 * rec['mfu']:.1f}%" if rec["mfu"] is not None else "n/a"
        gn = f"{rec['grad_norm']:.4f}" if rec["grad_norm"] is not None else "n/a"
        skipped = f" | skipped steps: {rec['skipped_steps']}" if rec["skipped_steps"] else ""
        print_rank0(
            f" iteration {rec['iteration']:>7d}/{self.cfg.train.train_iters:>7d} | lm loss: {rec['lm_loss']:.6f} | "
            f"lr: {rec['lr']:.3e} | grad norm: {gn} | step: {1000 * rec['step_time_s']:.1f} ms | "
            f"tokens/s: {rec['tokens_per_sec']:.0f} | TFLOPS/GPU: {rec['tflops']:.2f} | MFU: {mfu} | "
            f"mem: {rec['mem_gb']:.2f} GB{skipped}"
        )
        if metrics_f:
            metrics_f.write(json.dumps(rec) + "\n")
            metrics_f.flush()
        if self._tb is not None:
            for k, v in rec.items():
                if k != "iteration" and v is not None:
                    self._tb.add_scalar(k, v, rec["iteration"])
