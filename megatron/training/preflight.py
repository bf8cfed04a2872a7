"""Checks at start-up that need the file system or the data, before any training step.

Each problem is a ``ConfigError`` naming the fix, so a run does not train for hours and then
fail at its first save, or skip its validation without a word. ``rope_note`` is not an error:
training past the positions a RoPE model was trained on is how its context is extended.
"""

from __future__ import annotations

import os
import socket

from megatron.config import Config, ConfigError


def check_save_dir(save: str | None) -> None:
    """``--save`` must be a directory this process can create and write into."""
    if not save:
        return
    if os.path.exists(save) and not os.path.isdir(save):
        raise ConfigError(f"--save {save} is a file, not a directory; give a directory for the checkpoints")
    probe = os.path.join(save, f".write_test.{socket.gethostname()}.{os.getpid()}")
    try:
        os.makedirs(save, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(
            f"--save {save} is not writable ({e.strerror or e}); give a directory this job can write to"
        ) from None


def check_validation(cfg: Config) -> None:
    """``--eval-interval`` needs validation data: a --valid-data-path, or a --split that gives the
    validation split documents of some --data-path prefix."""
    t, d = cfg.train, cfg.data
    if not t.eval_interval or d.mock_data:
        return
    if d.train_data_path or d.valid_data_path or d.test_data_path:
        if d.valid_data_path:
            return
        source = "no --valid-data-path"
    else:
        from megatron.data.builder import parse_data_path, parse_split
        from megatron.data.indexed_dataset import MMapIndexedDataset

        for prefix in parse_data_path(d.data_path)[1]:
            bounds = parse_split(d.split, len(MMapIndexedDataset(prefix).sizes))
            if bounds[2] > bounds[1]:
                return
        source = f"--split {d.split} leaves the validation split no documents"
    raise ConfigError(
        f"--eval-interval {t.eval_interval} asks for validation, but there is no validation data ({source}); "
        "give the validation split a share (e.g. --split 98,2,0) or --valid-data-path, or drop --eval-interval"
    )


def rope_note(cfg: Config) -> str | None:
    """A line for a RoPE model trained beyond its ``max_position_embeddings`` (None otherwise)."""
    m = cfg.model
    if not m.use_rotary_position_embeddings or m.seq_length <= m.max_position_embeddings:
        return None
    scaling = getattr(m, "rope_scaling_type", None)
    where = f" (from {cfg.checkpoint.load})" if cfg.checkpoint.load else ""
    if scaling:
        return (
            f"--seq-length {m.seq_length} is beyond max_position_embeddings {m.max_position_embeddings}{where}; "
            f"positions past it use the {scaling} RoPE scaling as configured"
        )
    fix = "--rope-scaling-type with its factor, or " if hasattr(m, "rope_scaling_type") else ""
    return (
        f"--seq-length {m.seq_length} is beyond max_position_embeddings {m.max_position_embeddings}{where}: RoPE "
        f"extrapolates to positions the model was not trained on, and this run extends its context; to change "
        f"how, set {fix}a larger --rotary-base, and --max-position-embeddings {m.seq_length} to record the new length"
    )


def check_data_tokenizer(cfg: Config, tokenizer) -> None:
    """Every data prefix that records its tokenizer (``{prefix}.meta``) was made by this one."""
    if tokenizer is None:
        return
    from megatron.data.builder import parse_data_path
    from megatron.data.dataset_info import check_tokenizer

    d = cfg.data
    prefixes = [p for path in (d.data_path, d.train_data_path, d.valid_data_path, d.test_data_path) if path
                for p in parse_data_path(path)[1]]  # fmt: skip
    check_tokenizer(prefixes, tokenizer)
