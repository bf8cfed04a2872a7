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
    "negative_lr_attached": (1, BASE + ["--lr=-1e-3"], "--lr -0.001 is negative"),
    "negative_lr_separate": (1, BASE + ["--lr", "-1e-3"], "--lr -0.001 is negative"),
    "min_lr_above_lr": (1, BASE + ["--lr", "1e-4", "--min-lr", "1e-3"], "--min-lr 0.001 is above --lr 0.0001"),
    "warmup_longer_than_run": (1, BASE + ["--lr-warmup-iters", "5"], "--lr-warmup-iters 5 is outside the run (--train-iters 1)"),
    "missing_value": (1, BASE + ["--lr"], "argument --lr: expected one argument"),
    "save_is_a_file": (1, BASE + ["--save", __file__], f"--save {__file__} is a file, not a directory"),
    "deepcompile_on_cpu": (1, BASE + ["--deepcompile"], "--deepcompile compiles for CUDA GPUs and this run has none"),
    "save_unwritable": (1, BASE + ["--save", __file__ + "/ckpt"], f"--save {__file__}/ckpt is not writable"),
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


def _one_line_error(args, tmp_path=None) -> str:
    e = env()
    e.update(WORLD_SIZE="1", RANK="0")
    proc = subprocess.run([sys.executable, str(ROOT / "pretrain_gpt.py"), *args], env=e, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "iteration" not in proc.stdout
    return lines[0]


def test_malformed_yaml_is_one_line_with_its_position(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("train:\n  lr: 1e-3\n   micro_batch_size: [2\n")
    line = _one_line_error(["--config", str(bad)] + BASE)
    assert f"--config {bad} is not valid YAML (line 3, column" in line and "fix the file" in line


def test_eval_interval_without_validation_data_stops_before_training(tmp_path):
    import json

    from tests.launch import ROOT as root

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": " ".join(str((i + j) % 100) for j in range(40))}) + "\n" for i in range(40)))
    subprocess.run([sys.executable, str(root / "tools/preprocess_data.py"), "--input", str(docs), "--output-prefix",
                    str(tmp_path / "d"), "--tokenizer-type", "NullTokenizer", "--vocab-size", "100"],
                   check=True, env=env(), capture_output=True)  # fmt: skip
    data = ["--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2", "--seq-length", "32",
            "--data-path", str(tmp_path / "d_text_document"), "--tokenizer-type", "NullTokenizer", "--vocab-size", "100",
            "--micro-batch-size", "2", "--train-iters", "2", "--num-workers", "0", "--split", "100,0,0"]  # fmt: skip
    line = _one_line_error(data + ["--eval-interval", "1"])
    assert "--eval-interval 1 asks for validation, but there is no validation data (--split 100,0,0" in line


def test_rope_model_beyond_its_positions_says_what_happens():
    from tests.launch import torchrun

    args = BASE + ["--use-rotary-position-embeddings", "--max-position-embeddings", "32", "--num-workers", "0"]
    proc = torchrun(1, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [line for line in proc.stdout.splitlines() if line.startswith("> note: --seq-length 64 is beyond")]
    assert len(notes) == 1 and "max_position_embeddings 32" in notes[0] and "--max-position-embeddings 64" in notes[0]
