"""Each bad configuration gives one line that names the problem and the fix, and a non-zero exit."""

import subprocess
import sys

import pytest

from tests.launch import ROOT, TINY_GPT, env

BASE = TINY_GPT + ["--mock-data", "--micro-batch-size", "2", "--train-iters", "1"]

CASES = {
    "heads_not_divisible_by_sp": (4, BASE + ["--num-attention-heads", "2", "--ds-sequence-parallel-size", "4"], "--num-attention-heads 2 is not divisible by --ds-sequence-parallel-size 4"),
    "kv_heads_vs_sp": (6, BASE + ["--num-attention-heads", "12", "--hidden-size", "48", "--num-key-value-heads", "4", "--ds-sequence-parallel-size", "6"], "--num-key-value-heads 4 and --ds-sequence-parallel-size 6 do not divide one another"),
    "world_not_divisible_by_sp": (3, BASE + ["--ds-sequence-parallel-size", "2"], "world size 3 is not divisible by --ds-sequence-parallel-size 2"),
    "seq_not_divisible_by_sp": (2, BASE + ["--seq-length", "63", "--ds-sequence-parallel-size", "2"], "--seq-length 63 is not divisible by --ds-sequence-parallel-size 2"),
    "global_batch": (2, BASE + ["--global-batch-size", "3"], "--global-batch-size 3 is not divisible by --micro-batch-size 2 x data-parallel size 2"),
    "missing_load": (1, BASE + ["--load", "/nonexistent/ckpt"], "--load /nonexistent/ckpt does not exist"),
    "tensor_parallel": (1, BASE + ["--tensor-model-parallel-size", "2"], "--tensor-model-parallel-size 2 is not supported"),
    "unknown_flag": (1, BASE + ["--no-such-flag", "3"], "unrecognized arguments: --no-such-flag 3"),
    "no_data": (1, TINY_GPT, "no training data: pass --data-path"),
    "both_precisions": (1, BASE + ["--bf16", "--fp16"], "--bf16 and --fp16 were both given"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_gives_one_line_error(case):
    world, args, expected = CASES[case]
    e = env()
    e.update(WORLD_SIZE=str(world), RANK="0")  # validation happens before any process group exists
    proc = subprocess.run([sys.executable, str(ROOT / "pretrain_gpt.py"), *args], env=e, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]


def test_accepted_legacy_flags_do_not_error():
    from megatron.arguments import parse_args

    cfg = parse_args(BASE + ["--no-pipeline-parallel", "--tensor-model-parallel-size", "1", "--deepspeed", "--use-flash-attn", "--local_rank=0"])  # fmt: skip
    assert cfg.attention.backend == "flash"


def test_offload_beyond_host_memory_stops_before_building_the_model():
    """ZeRO-Offload of a 52B model on one CPU rank: one line with the breakdown, nothing allocated."""
    from tests.launch import torchrun

    big = ["--num-layers", "64", "--hidden-size", "8192", "--num-attention-heads", "64", "--seq-length", "64",
           "--vocab-size", "128", "--mock-data", "--micro-batch-size", "1", "--train-iters", "1", "--zero-stage", "3",
           "--offload-param", "--offload-optimizer"]  # fmt: skip
    proc = torchrun(1, big, timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "host memory:" in ln]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "need about 960.2 GiB (--offload-param 192.0 + --offload-optimizer 768.1 GiB)" in lines[0]
    assert lines[0].startswith("error: ") and "drop an offload flag" in lines[0]
