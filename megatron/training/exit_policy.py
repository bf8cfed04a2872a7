"""When a run stops before ``--train-iters``: every ``--exit-interval`` iterations, on the
``--exit-signal-handler`` signal, or after ``--exit-duration-in-mins``.

The signal and the clock are checked at the end of each step and agreed by every rank (one
tiny all-reduce), so all ranks stop after the same step and can save together.
"""

from __future__ import annotations

import signal
import time

import torch
import torch.distributed as dist

from megatron.config import CheckpointConfig


class ExitPolicy:
    """Starts the clock and installs the signal handler when built. ``early`` turns True once it
    stops a run for the signal or the duration: the run is not finished, and its exit status
    says so (``megatron.exit_status.REQUEUE``)."""

    def __init__(self, lg: CheckpointConfig, device: torch.device):
        self.lg, self.device = lg, device
        self._start_time = time.time()
        self._signal_received = False
        self.early = False
        if lg.exit_signal_handler:

            def handler(signum, frame):
                self._signal_received = True  # acted on at the end of the current step, on every rank

            signal.signal(getattr(signal, lg.exit_signal), handler)

    def reason(self, iteration: int) -> str | None:
        """Why to stop after this step, agreed by every rank (one tiny all-reduce when enabled)."""
        lg = self.lg
        if lg.exit_interval and iteration % lg.exit_interval == 0:
            return f"--exit-interval {lg.exit_interval}"
        if not lg.exit_signal_handler and lg.exit_duration_in_mins is None:
            return None
        minutes = (time.time() - self._start_time) / 60
        overtime = lg.exit_duration_in_mins is not None and minutes >= lg.exit_duration_in_mins
        flags = torch.tensor([float(self._signal_received), float(overtime)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self.early = bool(flags.max() > 0)
        if flags[0] > 0:
            return f"received {lg.exit_signal}"
        if flags[1] > 0:
            return f"--exit-duration-in-mins {lg.exit_duration_in_mins} reached"
        return None
