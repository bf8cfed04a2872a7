"""The launch scripts run on the CPU with a tiny overriding model, dry-run, and span two 'nodes'."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch import ROOT, TINY_GPT, assert_close_records, env

SCRIPTS = ROOT / "examples_deepspeed" / "sequence_parallel"
TINY = TINY_GPT + ["--max-position-embeddings", "64", "--train-iters", "2", "--lr-warmup-iters", "1", "--log-interval", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def corpus_env(tmp_path_factory):
    """The embedded corpus, built once into a temporary cache the scripts then reuse."""
    cache = tmp_path_factory.mktemp("corpus")
    subprocess.run([sys.executable, str(ROOT / "tools/prepare_default_corpus.py"), "--cache-dir", str(cache)],
                   check=True, capture_output=True, env=env())  # fmt: skip
    e = env()
    e.update(CACHE_DIR=str(cache), PYTHON=sys.executable, PATH=os.path.dirname(sys.executable) + os.pathsep + e["PATH"])
    return e


def _run(script, e, *extra, timeout=300):
    return subprocess.run(["bash", str(SCRIPTS / script), *extra], env=e, capture_output=True, text=True, timeout=timeout)


def _records(path: Path) -> list:
    return [json.loads(x) for x in path.read_text().splitlines() if "lm_loss" in x]


@pytest.mark.parametrize(
    "script,launcher",
    [
        ("ds_pretrain_gpt_1.3B_seq_parallel_32k.sh", "deepspeed"),
        ("ds_pretrain_gpt_30B_seq_parallel_32k.sh", "torchrun"),
        ("ds_pretrain_gpt_30B_seq_parallel.sh", "torchrun"),
    ],
)
def test_script_trains_tiny_model_on_cpu(corpus_env, tmp_path, script, launcher):
    e = dict(corpus_env, NUM_GPUS="2", SP="2", LAUNCHER=launcher, SAVE_DIR=str(tmp_path / "ckpt"), MASTER_PORT=str(_free_port()))
    proc = _run(script, e, *TINY)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = _records(tmp_path / "ckpt" / "metrics.jsonl")
    assert [r["iteration"] for r in recs] == [1, 2]
    assert (tmp_path / "ckpt" / "latest").read_text() == "iter_0000002"
    assert "world 2 = SP 2 x DP 1" in proc.stdout and "ZeRO-3" in proc.stdout and "bf16" in proc.stdout


@pytest.mark.parametrize("seq_len,sp", [("8192", "2"), ("16384", "4"), ("65536", "8")])
def test_dry_run_prints_command_and_deepspeed_config(seq_len, sp):
    e = dict(env(), DRY_RUN="1", SEQ_LEN=seq_len, PYTHON=sys.executable)
    proc = _run("ds_pretrain_gpt_30B_seq_parallel.sh", e)
    assert proc.returncode == 0, proc.stderr
    cmd, _, ds_json = proc.stdout.partition("# DeepSpeed config")
    assert f"--ds-sequence-parallel-size {sp} " in cmd and f"--seq-length {seq_len} " in cmd
    assert "--num-layers 64 --hidden-size 6144 --num-attention-heads 64" in cmd
    ds = json.loads(ds_json[ds_json.index("{"):])
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    assert ds["train_batch_size"] == 8 // int(sp)  # one sample per SP group on 8 GPUs


def test_two_nodes_match_one_node(corpus_env, tmp_path):
    base = dict(corpus_env, SP="2", LAUNCHER="torchrun", PRECISION="fp32", ZERO_STAGE="1")
    one = dict(base, NUM_GPUS="2", SAVE_DIR=str(tmp_path / "one"))
    proc = _run("ds_pretrain_gpt_1.3B_seq_parallel_32k.sh", one, *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    port = str(_free_port())
    two = dict(base, NUM_GPUS="1", NUM_NODES="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port, SAVE_DIR=str(tmp_path / "two"))
    nodes = [
        subprocess.Popen(["bash", str(SCRIPTS / "ds_pretrain_gpt_1.3B_seq_parallel_32k.sh"), *TINY],
                         env=dict(two, NODE_RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]  # fmt: skip
    outs = [n.communicate(timeout=300) for n in nodes]
    assert all(n.returncode == 0 for n in nodes), outs[0][1][-3000:]
    assert_close_records(_records(tmp_path / "one" / "metrics.jsonl"), _records(tmp_path / "two" / "metrics.jsonl"))


def test_30b_script_eight_ranks_sp8_matches_one_rank(corpus_env, tmp_path):
    """The eight-GPU layout of the 30B sweep's longer lengths (SP=8, ZeRO-3 over eight ranks), as
    eight CPU processes, against one process: the same losses and gradient norms."""
    tiny = TINY_GPT + ["--num-attention-heads", "8", "--max-position-embeddings", "64", "--train-iters", "3",
                       "--lr-warmup-iters", "1", "--log-interval", "1"]  # fmt: skip
    base = dict(corpus_env, LAUNCHER="torchrun", PRECISION="fp32", OMP_NUM_THREADS="1")
    runs = {}
    for n in ("1", "8"):
        e = dict(base, NUM_GPUS=n, SP=n, SAVE_DIR=str(tmp_path / n), MASTER_PORT=str(_free_port()))
        proc = _run("ds_pretrain_gpt_30B_seq_parallel.sh", e, *tiny, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"world {n} = SP {n} x DP 1" in proc.stdout and "ZeRO-3" in proc.stdout
        runs[n] = _records(tmp_path / n / "metrics.jsonl")
    assert [r["iteration"] for r in runs["8"]] == [1, 2, 3]
    assert_close_records(runs["1"], runs["8"], what="SP=8 on eight ranks against one rank")


def test_alst_yaml_configs_parse_and_run_tiny(tmp_path):
    from megatron.arguments import parse_args

    llama = parse_args(["--config", str(SCRIPTS / "alst_llama_8b.yaml"), "--mock-data"])
    assert llama.parallel.sequence_parallel_size == 8 and llama.model.num_key_value_heads == 8
    assert llama.model.ffn_hidden_size == 14336 and llama.model.swiglu and llama.parallel.zero_stage == 3
    gpt = parse_args(["--config", str(SCRIPTS / "alst_gpt_1.3B_32k.yaml"), "--mock-data"])
    assert gpt.model.seq_length == 32768 and gpt.attention.backend == "flash"
    from tests.launch import train_records

    recs = train_records(tmp_path, "yaml", 2, ["--config", str(SCRIPTS / "alst_llama_8b.yaml"), "--mock-data"] + TINY
                         + ["--num-attention-heads", "8", "--num-key-value-heads", "2", "--ffn-hidden-size", "128",
                            "--vocab-size", "128", "--ds-sequence-parallel-size", "2", "--zero-stage", "1",
                            "--num-workers", "0"])  # fmt: skip
    assert len(recs) == 2


def test_preempted_script_exits_75_and_its_rerun_resumes(corpus_env, tmp_path):
    """The SLURM story with the scripts' default launcher: SIGTERM (what a scheduler sends) -> every
    rank saves -> exit status 75 -> the requeued script finds SAVE_DIR/latest and resumes it."""
    import signal
    import time

    save = tmp_path / "ckpt"
    e = dict(corpus_env, NUM_GPUS="2", SP="2", PRECISION="fp32", ZERO_STAGE="1", SAVE_DIR=str(save))
    long = TINY + ["--train-iters", "100000", "--exit-signal-handler"]
    proc = subprocess.Popen(["bash", str(SCRIPTS / "ds_pretrain_gpt_1.3B_seq_parallel_32k.sh"), *long], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics, deadline = save / "metrics.jsonl", time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(_records(metrics)) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # the script exec'd the launcher: same process
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, out[-2000:] + err[-3000:]
    stopped_at = _records(metrics)[-1]["iteration"]
    assert (save / "latest").read_text() == f"iter_{stopped_at:07d}" and "Traceback" not in err
    again = _run("ds_pretrain_gpt_1.3B_seq_parallel_32k.sh", e, *TINY, "--train-iters", str(stopped_at + 2))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert f"resumed from {save / f'iter_{stopped_at:07d}'} at iteration {stopped_at}" in again.stdout
    assert (save / "latest").read_text() == f"iter_{stopped_at + 2:07d}"


def _bare_env(**extra) -> dict:
    """A shell without an activated environment: no PYTHON, no venv on PATH."""
    return dict(PATH="/usr/bin:/bin", HOME=os.environ.get("HOME", "/tmp"), DRY_RUN="1", **extra)


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="needs the repository's .venv")
def test_scripts_find_the_repository_venv_and_launch_through_it(tmp_path):
    venv = str(ROOT / ".venv" / "bin" / "python")
    for launcher, how in (("megatron", "-m megatron.launch"), ("deepspeed", "-m deepspeed.launcher.runner"),
                          ("torchrun", "-m torch.distributed.run")):  # fmt: skip
        proc = subprocess.run(["bash", str(SCRIPTS / "ds_pretrain_gpt_30B_seq_parallel.sh"), "--seq-length", "64"],
                              env=_bare_env(NUM_GPUS="2", SP="2", LAUNCHER=launcher), cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        cmd = proc.stdout.splitlines()[0]
        assert cmd.startswith(f"{venv} {how} "), cmd
        # the overriding --seq-length names the run and sets the position table
        assert "--save runs/gpt_30B_seq_parallel_64 " in cmd and "--max-position-embeddings 64 " in cmd
    quick = subprocess.run(["bash", str(ROOT / "examples_deepspeed/quickstart_cpu.sh")], cwd=tmp_path, check=False,
                           env=_bare_env(DATA_PATH="/data/x", TOKENIZER_MODEL="/tok.model", SAVE_DIR=str(tmp_path / "q")),
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert quick.returncode == 0 and quick.stdout.startswith(f"{venv} -m megatron.launch "), quick.stderr


def test_a_python_without_torch_is_named_in_one_line(tmp_path):
    no_site = tmp_path / "python"  # the interpreter without its site-packages: no torch, no deepspeed
    no_site.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    no_site.chmod(0o755)
    for python, expected in ((str(no_site), "cannot import torch or deepspeed"), ("no-such-python", "does not run")):
        proc = subprocess.run(["bash", str(SCRIPTS / "ds_pretrain_gpt_1.3B_seq_parallel_32k.sh")], check=False,
                              env=_bare_env(PYTHON=python), capture_output=True, text=True, timeout=60)  # fmt: skip
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"error: PYTHON={python} {expected}") and "set PYTHON to" in lines[0]


def test_a_zero2_run_prints_no_deprecation_warnings(tmp_path):
    from megatron.training.checkpointing import Layout
    from tests.launch import launch

    proc = launch(2, TINY + ["--mock-data", "--zero-stage", "2", "--micro-batch-size", "1", "--num-workers", "0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "deprecated" not in proc.stdout + proc.stderr
    assert str(Layout(1, 1, 1)) == "1 process (SP 1 x DP 1), ZeRO-1"
