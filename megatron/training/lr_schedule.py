"""Learning-rate schedule: linear warmup, then constant, linear or cosine decay to min_lr."""

from __future__ import annotations

import dataclasses
import math

from megatron.config import ConfigError, TrainConfig

SCHEDULE_FIELDS = ("lr", "min_lr", "lr_decay_style", "lr_warmup_iters", "lr_decay_iters")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    if cfg.lr_warmup_iters > 0 and step < cfg.lr_warmup_iters:
        return cfg.lr * (step + 1) / cfg.lr_warmup_iters
    if cfg.lr_decay_style == "constant":
        return cfg.lr
    decay_steps = max(1, cfg.lr_decay_iters - cfg.lr_warmup_iters)
    progress = min(1.0, (step - cfg.lr_warmup_iters) / decay_steps)
    if cfg.lr_decay_style == "linear":
        coeff = 1.0 - progress
    else:
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * coeff


def schedule_change(saved: dict | None, now: TrainConfig, iteration: int) -> str | None:
    """A line saying how resuming at ``iteration`` changes the learning rate, when this run's
    schedule differs from the one the checkpoint was trained with (``saved``: its train section),
    e.g. a longer --train-iters that moves the default --lr-decay-iters; None when they agree."""
    if not saved or any(k not in saved for k in SCHEDULE_FIELDS):
        return None
    changed = [k for k in SCHEDULE_FIELDS if saved[k] != getattr(now, k)]
    if not changed:
        return None
    try:
        before = lr_at(iteration, dataclasses.replace(now, **{k: saved[k] for k in SCHEDULE_FIELDS}))
    except ConfigError:  # the saved schedule does not fit this run's --train-iters
        before = None
    what = ", ".join(f"{k} {saved[k]} -> {getattr(now, k)}" for k in changed)
    if "lr_decay_iters" in changed and saved.get("train_iters") == saved["lr_decay_iters"] != now.train_iters:
        what += f" (it follows --train-iters {saved['train_iters']} -> {now.train_iters})"
    keep = " ".join(f"--{k.replace('_', '-')} {saved[k]}" for k in changed)
    return (
        f"resuming at iteration {iteration} with another learning-rate schedule than the checkpoint's: {what}; the "
        f"next step's learning rate is {lr_at(iteration, now):.3e}"
        f"{'' if before is None else f' instead of {before:.3e}'}. "
        f"To keep the checkpoint's schedule, pass {keep}"
    )
