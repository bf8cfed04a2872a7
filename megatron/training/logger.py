"""What a run reports: the start-up lines, one line per log window, validation and skipped
steps on rank 0; the same records in ``--metrics-file`` (one JSON object a line) and TensorBoard.

A log window is the steps since the last report. Its record holds the mean loss, the last
learning rate and gradient norm, the mean step time, tokens/s, the Megatron-DeepSpeed TFLOPS,
the model TFLOPS and MFU (``megatron.training.metrics``), peak memory, consumed samples and
the skipped steps so far.
"""

from __future__ import annotations

import json
import time

import torch
import torch.distributed as dist

from megatron import parallel_state as ps
from megatron.config import Config
from megatron.training import metrics


def print_rank0(*args) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, flush=True)


def print_run(cfg: Config, world: int, dp: int, gas: int, device: torch.device) -> None:
    """The run's shape in one line, and a note when packed documents or a sliding window meet a
    dense-mask backend."""
    from megatron.model.attention import document_mask_note, window_mask_note

    t = cfg.train
    print_rank0(
        f"> model: {cfg.model.num_parameters() / 1e6:.2f}M parameters | world {world} = SP "
        f"{cfg.parallel.sequence_parallel_size} x DP {dp} | micro batch {t.micro_batch_size} x accumulation {gas} "
        f"x DP {dp} = global batch {t.global_batch_size} | ZeRO-{cfg.parallel.zero_stage} | {t.dtype_name} | "
        f"device {device}"
    )
    m, backend = cfg.model, cfg.attention.backend
    if cfg.data.reset_attention_mask:
        note = document_mask_note(backend, m.seq_length, t.micro_batch_size, window=m.sliding_window)
    else:
        note = window_mask_note(backend, m.seq_length, m.sliding_window)
    if note:
        print_rank0(f"> note: {note}")


class TrainingLog:
    """The reports of ``Trainer.train``: ``start`` opens them, ``add`` takes each step's result,
    ``end_window`` and ``validation`` report, ``close`` ends; ``records`` holds what was reported."""

    def __init__(self, cfg: Config, device: torch.device, world: int, dp: int):
        self.cfg, self.device, self.world, self.dp = cfg, device, world, dp
        self.peak = metrics.peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        self.records: list = []
        self._window: list = []
        self._window_start = time.perf_counter()
        self._file = None
        self._tb = None
        if cfg.logging.tensorboard_dir and dist.get_rank() == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("--tensorboard-dir needs the tensorboard package: pip install tensorboard") from None
            self._tb = SummaryWriter(cfg.logging.tensorboard_dir)

    def start(self) -> None:
        """A new list of records, the metrics file opened for appending (rank 0), the clock started."""
        self.records, self._window = [], []
        path = self.cfg.logging.metrics_file
        self._file = open(path, "a") if path and dist.get_rank() == 0 else None  # noqa: SIM115 (closed by close())
        self._window_start = time.perf_counter()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None

    def add(self, step: dict) -> None:
        """One step's result: lm_loss, grad_norm, lr, skipped, square_sum and window_pairs (this DP rank's)."""
        self._window.append(step)

    def skipped_step(self, iteration: int, in_a_row: int, total: int) -> None:
        print_rank0(
            f" iteration {iteration:>7d}/{self.cfg.train.train_iters:>7d} | skipped: non-finite loss or gradient norm "
            f"({in_a_row} in a row, {total} in all; parameters unchanged)"
        )

    def end_window(self, iteration: int, consumed_samples: int, skipped_steps: int) -> dict:
        """Report the steps since the last report (collective with packed documents and DP > 1)."""
        cfg, t, window = self.cfg, self.cfg.train, self._window
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = (time.perf_counter() - self._window_start) / len(window)
        tokens = t.global_batch_size * cfg.model.seq_length
        flops_md = metrics.megatron_deepspeed_flops_per_iteration(
            cfg.model, t.global_batch_size, cfg.model.seq_length, cfg.memory.checkpoint_activations,
            cfg.memory.checkpoint_keep_attention,
        )  # fmt: skip
        square_sum, window_pairs = self._attention_pairs(window)
        flops_model = metrics.model_flops(cfg.model, tokens, square_sum, window_pairs)
        rec = {
            "iteration": iteration,
            "lm_loss": sum(w["lm_loss"] for w in window) / len(window),
            "lr": window[-1]["lr"],
            "grad_norm": window[-1]["grad_norm"],
            "step_time_s": elapsed,
            "tokens_per_sec": tokens / elapsed,
            "tokens_per_sec_per_gpu": tokens / elapsed / self.world,
            "tflops": flops_md / elapsed / self.world / 1e12,
            "model_tflops": flops_model / elapsed / self.world / 1e12,
            "mfu": (flops_model / elapsed / self.world / self.peak) if self.peak else None,
            "mem_gb": metrics.peak_memory_gb(self.device),
            "consumed_samples": consumed_samples,
            "skipped_steps": skipped_steps,
        }
        self._print_window(rec)
        self._write(rec)
        if self._tb is not None:
            for k, v in rec.items():
                if k != "iteration" and v is not None:
                    self._tb.add_scalar(k, v, rec["iteration"])
        self._window, self._window_start = [], time.perf_counter()
        return rec

    def validation(self, iteration: int, lm_loss: float) -> None:
        """Report a validation loss; the next window's clock starts after it."""
        print_rank0(f" validation at iteration {iteration} | lm loss: {lm_loss:.6f}")
        self._write({"iteration": iteration, "valid_lm_loss": lm_loss})
        self._window_start = time.perf_counter()

    def _print_window(self, rec: dict) -> None:
        mfu = f"{100 * rec['mfu']:.1f}%" if rec["mfu"] is not None else "n/a"
        gn = f"{rec['grad_norm']:.4f}" if rec["grad_norm"] is not None else "n/a"
        skipped = f" | skipped steps: {rec['skipped_steps']}" if rec["skipped_steps"] else ""
        print_rank0(
            f" iteration {rec['iteration']:>7d}/{self.cfg.train.train_iters:>7d} | lm loss: {rec['lm_loss']:.6f} | "
            f"lr: {rec['lr']:.3e} | grad norm: {gn} | step: {1000 * rec['step_time_s']:.1f} ms | "
            f"tokens/s: {rec['tokens_per_sec']:.0f} | TFLOPS/GPU: {rec['tflops']:.2f} | MFU: {mfu} | "
            f"mem: {rec['mem_gb']:.2f} GB{skipped}"
        )

    def _write(self, rec: dict) -> None:
        self.records.append(rec)
        if self._file:
            self._file.write(json.dumps(rec) + "\n")
            self._file.flush()

    def _attention_pairs(self, window: list) -> tuple:
        """(documents' squared lengths, {sliding window: pairs attended} or None) per iteration over the global
        batch (gbs x S² and no window pairs without documents). With documents they differ across data-parallel
        ranks and are summed over them; the SP ranks of a group hold the same sequences."""
        windows = sorted(window[0].get("window_pairs") or {})
        local = [sum(w["square_sum"] for w in window) / len(window)]
        local += [sum(w["window_pairs"][x] for w in window) / len(window) for x in windows]
        if not self.cfg.data.reset_attention_mask or self.dp == 1:
            totals = [v * self.dp for v in local]
        else:
            t = torch.tensor(local, dtype=torch.float64, device=self.device)
            dist.all_reduce(t, group=ps.get_data_parallel_group())
            totals = t.tolist()
        return totals[0], (dict(zip(windows, totals[1:])) or None)
