"""SIGTERM mid-run -> every rank finishes its step, saves, exits 75 (saved, requeue me) -> resume
equals uninterrupted. Also: --exit-duration-in-mins (75 too) and --keep-last-n-checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.launch import ROOT, TINY_LLAMA, TRAIN, assert_close_records, env, launch, train_records

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
    assert [p.returncode for p in procs] == [75, 75], outs[0][-3000:]
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
    ckpt2, metrics = tmp_path / "ckpt2", tmp_path / "dur.jsonl"
    proc = launch(2, ARGS + ["--train-iters", "1000", "--save", str(ckpt2), "--exit-duration-in-mins", "0"], metrics)
    assert proc.returncode == 75, proc.stderr[-3000:]  # saved and stopped before --train-iters: requeue
    recs = [json.loads(x) for x in metrics.read_text().splitlines() if "lm_loss" in x]
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


def test_launcher_passes_sigterm_on_and_exits_75_once_saved(tmp_path):
    """python -m megatron.launch, signalled as a scheduler does: every rank saves, the launcher exits
    75 with no traceback (torchrun exits 1 with its SignalException), and the run resumes."""
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "run.jsonl"
    cmd = [sys.executable, "-m", "megatron.launch", "--standalone", "--nproc-per-node", "2", str(ROOT / "pretrain_gpt.py"),
           *ARGS, "--train-iters", "100000", "--exit-signal-handler", "--save", str(ckpt), "--metrics-file", str(metrics)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, out[-2000:] + err[-3000:]
    assert "Traceback" not in err and "every rank saved and stopped before --train-iters; exit status 75" in out
    stopped_at = [json.loads(x) for x in metrics.read_text().splitlines()][-1]["iteration"]
    assert (ckpt / "latest").read_text() == f"iter_{stopped_at:07d}"
    more = launch(2, ARGS + ["--train-iters", str(stopped_at + 1), "--load", str(ckpt)])
    assert more.returncode == 0 and f"resumed from {ckpt / f'iter_{stopped_at:07d}'}" in more.stdout, more.stderr[-2000:]


def test_launcher_adds_nothing_to_an_error_and_names_a_crash(tmp_path):
    from tests.launch import FAULTY_PRETRAIN

    bad = launch(2, ARGS + ["--lr", "-1e-3"])
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --lr -0.001 is negative; a learning rate is >= 0 (e.g. --lr 3e-4 --min-lr 3e-5)"], bad.stderr  # fmt: skip
    died = launch(2, ARGS + ["--train-iters", "4", "--save", str(tmp_path / "c"), "--save-interval", "2",
                             "--inject-die-before-latest", "2:1"], script=FAULTY_PRETRAIN)  # fmt: skip
    assert died.returncode == 1, died.stderr[-3000:]
    assert died.stderr.strip().splitlines()[-1].startswith("megatron.launch: rank 1 exited with status 17")
