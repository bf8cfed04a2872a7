"""The training loop: each step's micro batches, the optimizer step, reports, validation,
checkpoints and when to stop.

The parts, one file each: ``engine`` (process groups, model, optimizer, DeepSpeed, resume),
``batches`` (Megatron sample order and the sequence-parallel slice), ``step`` (the
token-weighted loss and the non-finite guard), ``exit_policy`` (exit interval, signal,
duration), ``logger`` (the log lines, metrics file and TensorBoard), ``checkpointing`` (save
and load) and ``faults`` (what the fault tests inject).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from megatron import parallel_state as ps
from megatron.config import Config
from megatron.training.batches import BatchBuilder
from megatron.training.checkpointing import LATEST, save_checkpoint
from megatron.training.engine import build_engine, initialize_distributed, resume
from megatron.training.exit_policy import ExitPolicy
from megatron.training.faults import NO_FAULTS, FaultInjector
from megatron.training.logger import TrainingLog, print_rank0, print_run
from megatron.training.lr_schedule import schedule_change
from megatron.training.step import SkippedSteps, TrainingStopped, TrainStep
from megatron.training.weights import model_args_from_config

__all__ = ["Trainer", "TrainingStopped", "initialize_distributed"]


class Trainer:
    """Trains ``cfg`` on ``train_ds`` (validating on ``valid_ds``) from where ``--load`` left off.

    ``device`` is the one ``initialize_distributed`` returned; without it the Trainer starts
    torch.distributed itself and checks the config against the world size. ``faults`` is for the
    fault tests."""

    def __init__(
        self, cfg: Config, train_ds, valid_ds=None, eod_token: int | None = None, *,
        device: torch.device | None = None, faults: FaultInjector | None = None,
    ):  # fmt: skip
        if device is None:  # a caller that did not start torch.distributed (bench): start it, check the world
            cfg = cfg.resolve(int(os.environ.get("WORLD_SIZE", "1")))
            device = initialize_distributed(cfg)
        self.cfg, self.device, self.train_ds, self.valid_ds = cfg, device, train_ds, valid_ds
        self.faults = NO_FAULTS if faults is None else faults
        self.world = dist.get_world_size()
        self.dp = ps.get_data_parallel_world_size()
        self.gas = cfg.grad_accumulation_steps(self.world)
        setup = build_engine(cfg, device)
        self.engine, self.layout = setup.engine, setup.layout
        self.exit_policy = ExitPolicy(cfg.checkpoint, device)
        self.iteration, self.consumed_samples = resume(setup, cfg.checkpoint.load)
        note = schedule_change((setup.saved_config or {}).get("train"), cfg.train, self.iteration)
        if note:
            print_rank0(f"> note: {note}")
        self.step = TrainStep(setup.engine, setup.optimizer, cfg, setup.ds_config, device, self.gas, self.faults)
        self.skips = SkippedSteps()
        self.batches = BatchBuilder(
            cfg, eod_token, device, ps.get_sequence_parallel_rank(), ps.get_data_parallel_rank(), self.dp
        )
        print_run(cfg, self.world, self.dp, self.gas, device)
        self.log = TrainingLog(cfg, device, self.world, self.dp)
        self._ahead = None  # (step, its batches, their token count), prepared during the step before

    def train(self, until: int | None = None) -> list:
        """Train up to iteration ``until`` (default ``--train-iters``) or an exit; returns the records
        reported. The final save happens only at ``--train-iters``."""
        t, lg, ck = self.cfg.train, self.cfg.logging, self.cfg.checkpoint
        last = t.train_iters if until is None else min(until, t.train_iters)
        self.log.start()
        self.engine.train()

        def prepare_next():  # the next step's batches and token count, while the device runs this step
            if self.iteration + 1 < t.train_iters:
                n = self.consumed_samples // t.global_batch_size + 1
                self._ahead = (n, *self._batches_of(n))

        try:
            while self.iteration < last:
                n = self.consumed_samples // t.global_batch_size
                ahead, self._ahead = self._ahead, None
                batches, tokens = ahead[1:] if ahead and ahead[0] == n else self._batches_of(n)
                out = self.step(batches, self.iteration, tokens, meanwhile=prepare_next)
                out["square_sum"] = sum(b.square_sum for b in batches)  # this DP rank's, for the model FLOPs
                out["window_pairs"] = {w: sum(b.window_pairs[w] for b in batches) for w in batches[0].window_pairs}
                self.iteration += 1
                self.consumed_samples += t.global_batch_size
                self.skips.count(out["skipped"])
                if out["skipped"]:
                    self.log.skipped_step(self.iteration, self.skips.in_a_row, self.skips.total)
                self.log.add(out)
                if self.iteration % lg.log_interval == 0 or self.iteration == last:
                    self.log.end_window(self.iteration, self.consumed_samples, self.skips.total)
                if t.eval_interval and self.iteration % t.eval_interval == 0 and self.valid_ds is not None:
                    self.log.validation(self.iteration, self.evaluate())
                if t.max_skipped_steps and self.skips.in_a_row >= t.max_skipped_steps:
                    raise self.skips.stopped(self.iteration, t.max_skipped_steps, self._latest_checkpoint())
                exit_reason = self.exit_policy.reason(self.iteration)
                if self._save_due() or (exit_reason and ck.save):
                    self.save()
                if exit_reason:
                    print_rank0(f"> exiting at iteration {self.iteration} ({exit_reason})")
                    break
            else:
                if ck.save and not self._save_due() and self.iteration == t.train_iters:
                    self.save()
        finally:
            self.log.close()
        return self.log.records

    def _batches_of(self, step: int) -> tuple:
        """Training step ``step``'s micro batches on this rank, and their global loss-token count."""
        batches = self.batches.of_step(self.train_ds, step, self.gas)
        return batches, self.step.count_tokens(batches)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted mean loss over ``--eval-iters`` global batches of the validation data."""
        self.engine.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        n = torch.zeros((), dtype=torch.float64, device=self.device)
        for step in range(self.cfg.train.eval_iters):
            for b in self.batches.of_step(self.valid_ds, step, self.gas):
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
            self.cfg.checkpoint.save,
            self.iteration,
            {"consumed_samples": self.consumed_samples, "config": self.cfg.to_dict()},
            self.layout,
            keep_last_n=self.cfg.checkpoint.keep_last_n_checkpoints,
            faults=self.faults,
            model_args=model_args_from_config(self.cfg.model),
        )
        print_rank0(f"> saved checkpoint {path}")

    def _save_due(self) -> bool:
        lg = self.cfg.checkpoint
        return bool(lg.save and lg.save_interval and self.iteration % lg.save_interval == 0)

    def _latest_checkpoint(self) -> str | None:
        save = self.cfg.checkpoint.save
        latest = os.path.join(save, LATEST) if save else None
        if not (latest and os.path.isfile(latest)):
            return None
        with open(latest) as f:
            return os.path.join(save, f.read().strip())
