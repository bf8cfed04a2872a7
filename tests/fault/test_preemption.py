"""SIGTERM mid-run -> every rank finishes its step, saves, exits 0 -> resume equals uninterrupted.
Also: --exit-duration-in-mins and --keep-last-n-checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.launch import ROOT, TINY_LLAMA, TRAIN, assert_close_records, env, train_records

ARGS = TINY_LLAMA + TRAIN + ["--ds-sequence-parallel-size", "2", "--zero-stage", "1", "--lr-decay-iters", "50"]


def test_sigterm_saves_and_resume_matches(tmp_path):
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "run.jsonl"
    cmd = [sys.executable, str(ROOT / "pretrain_gpt.py"), *ARGS, "--train-iters", "100000", "--exit-signal-handler",
           "--save", str(ckpt), "--metrics-file", str(metrics)]  # fmt: skip
    # Two ranks started directly (no launcher in between), so the test signals exactly the trainer.
    port = str(29700 + os.getpid() % 200)
    procs = [
        subprocess.Popen(cmd, env=dict(env(), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in (0, 1)
    ]  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:]
    assert "received SIGTERM" in outs[0]
    stopped_at = [json.loads(x) for x in metrics.read_text().splitlines()][-1]["iteration"]
    assert stopped_at >= 3 and (ckpt / "latest").read_text() == f"iter_{stopped_at:07d}"
    total = stopped_at + 3
    full = train_records(tmp_path, "full", 2, ARGS + ["--train-iters", str(total)])
    resumed = train_records(tmp_path, "resumed", 2, ARGS + ["--train-iters", str(total), "--load", str(ckpt)])
    assert [r["iteration"] for r in resumed] == list(range(stopped_at + 1, total + 1))
    assert_close_records(full[stopped_at:], resumed, rtol=1e-6, what="resume after SIGTERM")


def test_exit_duration_and_keep_last_n(tmp_path):
    ckpt = tmp_path / "ckpt"
    recs = train_records(tmp_path, "keep", 2, ARGS + ["--train-iters", "6", "--save", str(ckpt), "--save-interval", "1",
                                                      "--keep-last-n-checkpoints", "2"])  # fmt: skip
    assert len(recs) == 6
    assert sorted(d.name for d in ckpt.iterdir() if d.name.startswith("iter_")) == ["iter_0000005", "iter_0000006"]
    ckpt2 = tmp_path / "ckpt2"
    recs = train_records(tmp_path, "dur", 2, ARGS + ["--train-iters", "1000", "--save", str(ckpt2),
                                                     "--exit-duration-in-mins", "0"])  # fmt: skip
    assert [r["iteration"] for r in recs] == [1] and (ckpt2 / "latest").read_text() == "iter_0000001"


def test_killed_rank_ends_job_and_restart_resumes(tmp_path):
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "run.jsonl"
    cmd = [sys.executable, str(ROOT / "pretrain_gpt.py"), *ARGS, "--train-iters", "100000", "--save", str(ckpt),
           "--save-interval", "2", "--metrics-file", str(metrics), "--distributed-timeout-minutes", "1"]  # fmt: skip
    port = str(29500 + os.getpid() % 190)
    procs = [
        subprocess.Popen(cmd, env=dict(env(), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in (0, 1)
    ]  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        time.sleep(0.2)
    procs[1].kill()  # kill -9 of rank 1
    t0 = time.time()
    out0 = procs[0].communicate(timeout=150)[0]
    procs[1].communicate()
    assert procs[0].returncode != 0 and time.time() - t0 < 120, out0[-2000:]
    assert "error: rank 0 of 2 lost its process group" in out0, out0[-2000:]
    last = (ckpt / "latest").read_text()
    step = int(last.split("_")[1])
    assert step >= 4 and step % 2 == 0
    resumed = train_records(tmp_path, "resumed", 2, ARGS + ["--train-iters", str(step + 2), "--load", str(ckpt)])
    assert [r["iteration"] for r in resumed] == [step + 1, step + 2]
