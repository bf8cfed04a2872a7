"""One optimizer step over this rank's micro batches, with the exact token-weighted loss and
the guard against non-finite steps.

Loss: every SP rank holds a contiguous slice of each sample. The reported and optimized loss
is the token-weighted mean over the whole sequence and the whole global batch:
``sum(loss over all tokens of the global batch) / (number of loss tokens in it)``. DeepSpeed
divides each micro-batch loss by the accumulation steps and averages gradients over the
data-parallel size (it sums over the SP ranks of a group), so each rank back-propagates
``local_sum * DP * GAS / N_global``; the gradient is then exactly that of the global mean,
whatever the SP/DP/accumulation layout. ZeRO-3's reduce-scatter path averages over the whole
SP x DP group instead (no SP correction), so there the factor is ``SP * DP``; the SP=N vs SP=1
gradient-norm tests pin both down.

Non-finite steps: a non-finite loss or gradient norm on any rank skips the update everywhere,
leaving the parameters and optimizer state untouched: a rank whose loss is not finite
back-propagates NaN, so the global gradient norm is NaN on every rank, and DeepSpeed's
ZeRO/bf16/fp16 optimizers discard steps whose norm is not finite (``engine.skipped_steps``).
The one optimizer without that check (plain fp32 without ZeRO) gets it here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron import parallel_state as ps
from megatron.config import Config
from megatron.training.faults import NO_FAULTS, FaultInjector
from megatron.training.lr_schedule import lr_at


class TrainingStopped(RuntimeError):
    """The run cannot usefully continue (e.g. too many non-finite steps); the message says why
    and what to do. The entry point prints it as one line and exits non-zero."""


class TrainStep:
    """``step(batches, iteration)``: one optimizer step of the DeepSpeed ``engine`` and its ``optimizer``."""

    def __init__(
        self, engine, optimizer, cfg: Config, ds_config: dict, device: torch.device, gas: int,
        faults: FaultInjector = NO_FAULTS,
    ):  # fmt: skip
        self.engine, self.optimizer, self.cfg, self.device, self.gas = engine, optimizer, cfg, device, gas
        self.faults = faults
        self.dp = ps.get_data_parallel_world_size()
        self.sp = cfg.parallel.sequence_parallel_size
        zero = ds_config["zero_optimization"]
        # what DeepSpeed divides the summed gradients by (see the module docstring)
        self.grad_divisor = self.dp * self.sp if zero["stage"] == 3 and zero.get("reduce_scatter", True) else self.dp
        # plain fp32 without ZeRO steps torch's optimizer directly, which has no overflow check
        self.needs_finite_guard = cfg.parallel.zero_stage == 0 and not (cfg.train.bf16 or cfg.train.fp16)

    def __call__(self, batches: list, iteration: int, tokens: torch.Tensor | None = None, meanwhile=None) -> dict:
        """Step over ``batches`` after ``iteration`` steps; returns lm_loss (the global batch's
        token-weighted mean), grad_norm (inf when skipped), lr and skipped. ``tokens``: their
        ``count_tokens``, when already counted; ``meanwhile()`` runs once the step's work is queued on
        the device, before waiting for its loss (the trainer prepares the next step's batches there)."""
        lr = lr_at(iteration, self.cfg.train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n_global = self.count_tokens(batches) if tokens is None else tokens
        scale = self.grad_divisor * self.gas / n_global.clamp(min=1.0)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        skipped_before = self.engine.skipped_steps
        guard_skipped, own_norm = False, None
        poison = self.faults.poison_loss(iteration + 1, dist.get_rank())
        for i, b in enumerate(batches):
            losses_bs = self.engine(b.input_ids, b.position_ids, b.labels, b.document_ids)
            local_sum = (losses_bs * b.loss_mask).sum()
            if poison and i == 0:
                local_sum = local_sum * float("nan")
            # no host sync: the scale turns NaN exactly when this rank's loss is not finite
            s = torch.where(torch.isfinite(local_sum.detach()), scale.to(local_sum.dtype), float("nan"))
            self.engine.backward(local_sum * s)
            if i == len(batches) - 1 and self.needs_finite_guard:
                own_norm = self._grad_norm_zero0()
                guard_skipped = not math.isfinite(own_norm)
            if guard_skipped:
                self._step_without_update()
            else:
                self.engine.step()
            loss_sum += local_sum.detach().to(torch.float64)
        dist.all_reduce(loss_sum, group=ps.get_sequence_data_parallel_group())
        if meanwhile is not None:
            meanwhile()
        skipped = guard_skipped or self.engine.skipped_steps > skipped_before
        grad_norm = self.engine.get_global_grad_norm() if own_norm is None else own_norm
        return {
            "lm_loss": (loss_sum / n_global).item(),
            "grad_norm": float("inf") if skipped else None if grad_norm is None else float(grad_norm),
            "lr": lr,
            "skipped": skipped,
        }

    def count_tokens(self, batches: list) -> torch.Tensor:
        """The loss tokens of the global batch whose micro batches on this rank are ``batches`` (a device
        tensor; collective over the SP x DP group)."""
        n = torch.stack([b.loss_mask.sum() for b in batches]).sum().to(torch.float64)
        dist.all_reduce(n, group=ps.get_sequence_data_parallel_group())
        return n

    def _grad_norm_zero0(self) -> float:
        """Global gradient norm for plain fp32 without ZeRO, where DeepSpeed reports none (the
        gradients are already all-reduced, so every rank holds the same ones)."""
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        norm = (
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])) if grads else 0
        )
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


@dataclass
class SkippedSteps:
    """The non-finite steps skipped in this process: in all, and in a row up to now."""

    total: int = 0
    in_a_row: int = 0

    def count(self, skipped: bool) -> None:
        self.total += skipped
        self.in_a_row = self.in_a_row + 1 if skipped else 0

    def stopped(self, iteration: int, max_skipped: int, last_good: str | None) -> TrainingStopped:
        """The error that stops a run after ``max_skipped`` skipped steps in a row."""
        return TrainingStopped(
            f"{self.in_a_row} consecutive steps (iterations {iteration - self.in_a_row + 1}-{iteration}) had a "
            f"non-finite loss or gradient norm (--max-skipped-steps {max_skipped}); stopped without saving"
            + (f", the last good checkpoint is {last_good}" if last_good else "")
            + "; lower --lr, check the data near this point, or raise --max-skipped-steps"
        )
