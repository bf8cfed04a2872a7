"""Start one training process per GPU (or CPU slot) on this node; torchrun's static flags.

    python -m megatron.launch --standalone --nproc-per-node 2 pretrain_gpt.py --mock-data ...
    python -m megatron.launch --nnodes 2 --node-rank 0 --master-addr HOST --nproc-per-node 8 pretrain_gpt.py ...

Each rank gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR and
MASTER_PORT, as under torchrun. What differs is what happens at the end:

* A rank's one-line error (exit status 2 or 3, ``megatron.exit_status``) is the last thing on
  the screen: the launcher adds no report and exits with that status. A crash (any other
  status, or a rank killed by a signal) gets one line naming the rank, and exit status 1;
  the other ranks are then stopped (SIGTERM, SIGKILL 10 s later), as torchrun does.
* SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 are passed on to every rank, and the launcher waits
  for them: with ``--exit-signal-handler`` they finish the step, save and exit 75, and so does
  the launcher (saved, requeue me), where torchrun exits 1 with a traceback. A second Ctrl-C
  kills the ranks.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from megatron.exit_status import CRASH, DONE, REPORTED, REQUEUE

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
PEER_GRACE_S = 60.0  # after a rank's own exit (error or requeue) the others are on their way out too
KILL_AFTER_S = 10.0  # SIGTERM -> SIGKILL for ranks the launcher stops


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megatron.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=1, help="processes on this node")
    p.add_argument("--nnodes", type=int, default=1, help="nodes (static: no elastic range)")
    p.add_argument("--node-rank", "--node_rank", type=int, default=0, help="this node's index, 0..nnodes-1")
    p.add_argument("--master-addr", "--master_addr", default="127.0.0.1", help="rank 0's host")
    p.add_argument("--master-port", "--master_port", type=int,
                   help="rank 0's port (default 29500; a free one with --standalone)")
    p.add_argument("--standalone", action="store_true", help="one node, a free port")
    p.add_argument("script", help="the training script, e.g. pretrain_gpt.py")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="its arguments")
    return p


def _rank_env(args, local_rank: int) -> dict:
    world = args.nnodes * args.nproc_per_node
    env = dict(os.environ)
    env.update(RANK=str(args.node_rank * args.nproc_per_node + local_rank), LOCAL_RANK=str(local_rank),
               WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(args.nproc_per_node), GROUP_RANK=str(args.node_rank),
               MASTER_ADDR=args.master_addr, MASTER_PORT=str(args.master_port))  # fmt: skip
    if args.nproc_per_node > 1:
        env.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: ranks would otherwise oversubscribe the cores
    return env


def _child_setup() -> None:
    """In each rank before exec: its own process group (a Ctrl-C reaches it once, through the
    launcher), and SIGKILL should the launcher die without stopping it (Linux)."""
    os.setpgrp()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Ranks:
    """The ranks of this node, the signals passed on to them and the ones the launcher stopped."""

    def __init__(self, procs: dict):
        self.procs = procs  # global rank -> Popen
        self.forwarded: list = []  # signals received and passed on
        self.stopped_by_launcher: set = set()
        self.term_at: float | None = None
        self.kill_at: float | None = None

    def running(self) -> list:
        return [r for r, p in self.procs.items() if p.poll() is None]

    def send(self, sig, ranks=None) -> None:
        for r in self.running() if ranks is None else ranks:
            try:
                self.procs[r].send_signal(sig)
            except ProcessLookupError:
                pass

    def on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and signal.SIGINT in self.forwarded:  # a second Ctrl-C: stop now
            self.stopped_by_launcher.update(self.running())
            self.send(signal.SIGKILL)
            return
        self.forwarded.append(signal.Signals(signum))
        self.send(signum)

    def stop_others(self, delay: float) -> None:
        """SIGTERM the ranks still running ``delay`` seconds from now, SIGKILL them ``KILL_AFTER_S`` later."""
        when = time.monotonic() + delay
        self.term_at = when if self.term_at is None else min(self.term_at, when)

    def enforce(self) -> None:
        now = time.monotonic()
        if self.term_at is not None and now >= self.term_at and self.kill_at is None:
            self.stopped_by_launcher.update(self.running())
            self.send(signal.SIGTERM)
            self.kill_at = now + KILL_AFTER_S
        elif self.kill_at is not None and now >= self.kill_at:
            self.send(signal.SIGKILL)


def _describe(rank: int, code: int) -> str:
    if code < 0:
        return f"rank {rank} was killed by {signal.Signals(-code).name}"
    return f"rank {rank} exited with status {code}"


def _why(code: int) -> str:
    if code == -signal.SIGKILL:
        return "killed from outside the job, or by the kernel's out-of-memory killer"
    if code < 0:
        return "a crash outside Python, or a signal from outside the job"
    return "its traceback is above"


def run(args) -> int:
    if args.standalone:
        args.nnodes, args.node_rank, args.master_addr = 1, 0, "127.0.0.1"
        args.master_port = args.master_port or _free_port()
    args.master_port = args.master_port or 29500
    if not 0 <= args.node_rank < args.nnodes or args.nproc_per_node < 1:
        print(f"megatron.launch: error: --node-rank {args.node_rank} of --nnodes {args.nnodes} with --nproc-per-node "
              f"{args.nproc_per_node}; give 0 <= node rank < nodes and at least one process",
              file=sys.stderr)  # fmt: skip
        return 2
    cmd = [sys.executable, "-u", args.script, *args.script_args]
    ranks = _Ranks({})
    previous = {s: signal.signal(s, ranks.on_signal) for s in FORWARDED}  # before any rank exists: none is missed
    codes: dict = {}  # rank -> exit status, in the order they ended
    try:
        for local in range(args.nproc_per_node):
            env = _rank_env(args, local)
            # preexec_fn is safe here: the launcher runs no threads
            ranks.procs[int(env["RANK"])] = subprocess.Popen(cmd, env=env, preexec_fn=_child_setup)  # noqa: PLW1509
        while len(codes) < len(ranks.procs):
            for r, p in ranks.procs.items():
                if r not in codes and p.poll() is not None:
                    codes[r] = p.returncode
                    if p.returncode in (*REPORTED, REQUEUE):
                        ranks.stop_others(PEER_GRACE_S)
                    elif p.returncode != DONE:
                        ranks.stop_others(0.0)
            ranks.enforce()
            time.sleep(0.05)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for p in ranks.procs.values():  # the launcher itself failed: leave no rank behind
            if p.poll() is None:
                p.kill()
    return _outcome(codes, ranks)


def _outcome(codes: dict, ranks: _Ranks) -> int:
    """The node's exit status from its ranks' (see the module docstring)."""
    forwarded = {-int(s) for s in ranks.forwarded}
    crashes = [(r, c) for r, c in codes.items() if c not in (DONE, *REPORTED, REQUEUE)
               and r not in ranks.stopped_by_launcher and c not in forwarded]  # fmt: skip
    if crashes:  # a rank that lost its peers exits 1 too, often in the same instant: name the others first
        crashes.sort(key=lambda rc: rc[1] == CRASH)
        r, c = crashes[0]
        also = "".join(f"; {_describe(r2, c2)}" for r2, c2 in crashes[1:])
        stopped = "; the other ranks were stopped" if len(crashes) < len(codes) else ""
        print(f"megatron.launch: {_describe(r, c)} ({_why(c)}){also}{stopped}", file=sys.stderr, flush=True)
        return CRASH
    reported = [c for c in codes.values() if c in REPORTED]
    if reported:
        return reported[0]
    by_signal = [(r, c) for r, c in codes.items() if c < 0 and c in forwarded]
    if by_signal:  # stopped by the signal itself: nothing was saved on it
        r, c = by_signal[0]
        name = signal.Signals(-c).name
        print(f"megatron.launch: {_describe(r, c)} before saving; add --exit-signal-handler --exit-signal {name} "
              "to save and exit on it", file=sys.stderr, flush=True)  # fmt: skip
        return 128 - c
    if REQUEUE in codes.values():
        print(f"megatron.launch: every rank saved and stopped before --train-iters; exit status {REQUEUE} "
              "(requeue the job, it resumes with --load)", flush=True)  # fmt: skip
        return REQUEUE
    return DONE


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
