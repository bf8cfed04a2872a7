"""Running one torchrun of a benchmark attempt in its own process group, with a time limit,
and reading the reason out of its log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path


def kill_group(proc: subprocess.Popen) -> None:
    """End the torchrun and every worker it started (its own session), politely first."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def run_logged(cmd: list, cwd: Path, env: dict, log_file: Path, timeout: float) -> tuple:
    """Run ``cmd`` with stdout and stderr in ``log_file`` (the command on its first line), killing
    its whole process group after ``timeout`` seconds or on any interruption, Ctrl-C or a SIGTERM
    (``timeout`` around the benchmark, a job scheduler), so that no worker keeps holding a GPU.
    Returns (returncode or None, timed_out)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main else None
    try:
        return _run_logged(cmd, cwd, env, log_file, timeout)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _run_logged(cmd: list, cwd: Path, env: dict, log_file: Path, timeout: float) -> tuple:
    with open(log_file, "w") as log_f:
        log_f.write(" ".join(map(str, cmd)) + "\n")
        log_f.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log_f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            return proc.returncode, True
        except BaseException:  # Ctrl-C or the caller's own time limit
            kill_group(proc)
            raise
    return proc.returncode, False


_ERROR_LINE = re.compile(r"^\s*(?:\[rank\d+\]:\s*)?(?:[\w.]+(?:Error|Exception|Interrupt)\b|error:)(?:.*)$")
_NOISE = ("ChildFailedError", "torch.distributed.elastic", "FutureWarning", "UserWarning", "DeprecationWarning")


def last_error_line(log: str) -> str | None:
    """The last line of a log that looks like an exception or an ``error:`` message (torchrun's noise skipped)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if _ERROR_LINE.match(ln) and not any(n in ln for n in _NOISE):
            return ln[:500]
    return lines[-1][:500] if lines else None


def oom_in_log(log: str) -> bool:
    """Whether a run's log shows the device running out of memory (torch's OutOfMemoryError,
    CUDA's or NCCL's "out of memory", cuBLAS failing to allocate its workspace)."""
    return "out of memory" in log.lower() or "OutOfMemoryError" in log or "CUBLAS_STATUS_ALLOC_FAILED" in log
