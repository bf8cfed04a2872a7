"""Pretrain a GPT with DeepSpeed-Ulysses sequence parallelism.

    torchrun --nproc_per_node 2 pretrain_gpt.py --ds-sequence-parallel-size 2 --mock-data ...
    deepspeed --num_gpus 8 pretrain_gpt.py --ds-sequence-parallel-size 4 --data-path ... --tokenizer-type ...

All flags: ``python pretrain_gpt.py --help``. This file only turns the command line into a
``Config`` and hands it to the library. Exit statuses: ``megatron.exit_status`` (0 done, 2 a
configuration or data error, 3 the run stopped itself, 75 saved and stopped early: requeue).
"""

from __future__ import annotations

import os
import sys

from megatron import exit_status
from megatron.arguments import parse_args
from megatron.config import Config, ConfigError
from megatron.training.checkpointing import CheckpointError
from megatron.training.trainer import TrainingStopped


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def build_tokenizer(cfg: Config):
    """The tokenizer of the data files (None with --mock-data, whose vocabulary is --vocab-size)."""
    if cfg.data.mock_data:
        return None
    from megatron.tokenizer import build_tokenizer as build

    null = cfg.data.tokenizer_type == "NullTokenizer"  # its size is --vocab-size
    return build(cfg.data, cfg.model.make_vocab_size_divisible_by, cfg.model.vocab_size if null else None)


def build_datasets(cfg: Config, tokenizer):
    """(train, valid, eod) for the configured data source."""
    if cfg.data.mock_data:
        from megatron.data.mock import MockGPTDataset

        m, n = cfg.model, cfg.data.mock_document_length
        train = MockGPTDataset(m.seq_length, m.vocab_size, cfg.train.seed, document_length=n)
        valid = MockGPTDataset(m.seq_length, m.vocab_size, cfg.train.seed + 1, document_length=n)
        return train, valid, train.eod
    import torch.distributed as dist

    from megatron.data import build_gpt_datasets

    t = cfg.train
    n_train = t.train_iters * t.global_batch_size
    n_valid = (t.train_iters // t.eval_interval + 1) * t.eval_iters * t.global_batch_size if t.eval_interval else 0
    train, valid, _ = build_gpt_datasets(
        cfg.data,
        cfg.model.seq_length,
        t.seed,
        (n_train, n_valid, 0),
        is_builder_rank=dist.get_rank() == 0,
        barrier=dist.barrier,
    )
    return train, valid, tokenizer.eod


def _exit_now(code: int) -> int:
    """Every rank reached the same error: leave at once rather than let the process group's
    teardown wait on peers that are leaving too."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and __name__ == "__main__":
        _leave(code)
    return code


def _leave(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _finish(code: int) -> int:
    """Training ended on every rank: tear the process group down in order, then leave without
    running C++ static destructors. Left to interpreter exit, the teardown of communication
    threads occasionally aborted a finished run ("terminate called without an active exception",
    exit code -6) on CPU/gloo."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and __name__ == "__main__"):
        return code
    dist.barrier()
    dist.destroy_process_group()
    _leave(code)


def main(argv=None, faults=None) -> int:
    """Train as the command line says; ``faults`` (a ``FaultInjector``) is for the fault tests."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from megatron.training.memory import set_expandable_segments

    set_expandable_segments()  # before anything touches CUDA: the allocator reads it once
    print_ds_config = "--print-deepspeed-config" in argv  # validate, print the derived JSON, exit
    argv = [a for a in argv if a != "--print-deepspeed-config"]
    try:
        cfg = parse_args(argv)  # --load DIR with DIR/model_args.json sets the model shape
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if print_ds_config:
            import json

            from megatron.training.ds_config import build_deepspeed_config

            print(json.dumps(build_deepspeed_config(cfg.resolve(world_size), world_size), indent=2))
            return 0
        if not (cfg.data.mock_data or cfg.data.uses_files):
            raise ConfigError("no training data: pass --data-path PREFIX (with --tokenizer-type ...) or --mock-data")
        if cfg.checkpoint.load and not os.path.isdir(cfg.checkpoint.load):
            raise ConfigError(
                f"--load {cfg.checkpoint.load} does not exist; give an existing checkpoint directory or drop --load"
            )
        tokenizer = build_tokenizer(cfg)
        cfg = cfg.resolve(world_size, vocab_size=None if tokenizer is None else tokenizer.vocab_size)
        from megatron.training import preflight

        preflight.check_save_dir(cfg.checkpoint.save)
        preflight.check_data_tokenizer(cfg, tokenizer)
        preflight.check_validation(cfg)
        note = preflight.rope_note(cfg)
        if note and _is_rank0():
            print(f"> note: {note}", flush=True)
        from megatron.training.trainer import Trainer, initialize_distributed

        device = initialize_distributed(cfg)
        train_ds, valid_ds, eod = build_datasets(cfg, tokenizer)
        trainer = Trainer(cfg, train_ds, valid_ds, eod_token=eod, device=device, faults=faults)
        trainer.train()
        unfinished = trainer.exit_policy.early and trainer.iteration < cfg.train.train_iters
        return _finish(exit_status.REQUEUE if unfinished else exit_status.DONE)
    except ConfigError as e:
        if _is_rank0():
            print(f"error: {e}", file=sys.stderr, flush=True)
        return _exit_now(exit_status.CONFIG)
    except (TrainingStopped, CheckpointError) as e:
        if _is_rank0():
            print(f"error: {e}", file=sys.stderr, flush=True)
        return _exit_now(exit_status.STOPPED)
    except Exception as e:  # a dead peer or a timed-out collective must end the job, loudly
        import torch.distributed as dist

        if not isinstance(e, (dist.DistError, RuntimeError)) or "Connection" not in str(e) and "imeout" not in str(e):
            raise
        rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
        first = str(e).strip().splitlines()[0][:300]
        print(f"error: rank {rank} of {world} lost its process group (another rank died, or a collective "
              f"waited past --distributed-timeout-minutes); restart from the last checkpoint with --load: {first}",
              file=sys.stderr, flush=True)  # fmt: skip
        return exit_status.CRASH
    return exit_status.DONE


if __name__ == "__main__":
    sys.exit(main())
