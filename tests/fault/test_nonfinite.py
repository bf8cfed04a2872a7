"""A non-finite loss on one rank skips the update on every rank (parameters and optimizer state
untouched), is logged and counted; --max-skipped-steps consecutive ones stop the run, non-zero,
with the last good checkpoint intact."""

import json
import math

import pytest

from tests.launch import FAULTY_PRETRAIN, TINY_LLAMA, TRAIN, torchrun

ARGS = TINY_LLAMA + TRAIN + ["--ds-sequence-parallel-size", "2", "--lr-decay-style", "constant", "--lr-warmup-iters", "0"]


def _run(tmp_path, name, args, nan_at=None):
    metrics = tmp_path / f"{name}.jsonl"
    faults = ["--inject-nonfinite", nan_at] if nan_at else []
    proc = torchrun(2, args + faults, metrics, script=FAULTY_PRETRAIN)
    recs = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    train = {r["iteration"]: r for r in recs if "lm_loss" in r}
    valid = {r["iteration"]: r["valid_lm_loss"] for r in recs if "valid_lm_loss" in r}
    return proc, train, valid


@pytest.mark.parametrize("zero", ["0", "3"])  # 0: our own guard (plain fp32 optimizer); 3: DeepSpeed's ZeRO check
def test_nan_on_one_rank_is_skipped_everywhere(tmp_path, zero):
    args = ARGS + ["--zero-stage", zero, "--train-iters", "5", "--eval-interval", "1", "--eval-iters", "1"]
    proc, train, valid = _run(tmp_path, "nan", args, nan_at="3:1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skipped: non-finite loss or gradient norm (1 in a row, 1 in all" in proc.stdout
    assert math.isnan(train[3]["lm_loss"]) and train[3]["grad_norm"] == math.inf
    assert [train[i]["skipped_steps"] for i in range(1, 6)] == [0, 0, 1, 1, 1]
    # the skipped step changed nothing: validation right after it equals validation before it
    assert valid[3] == valid[2]
    assert valid[4] != valid[3] and all(math.isfinite(valid[i]) for i in range(1, 6))
    assert all(math.isfinite(train[i]["lm_loss"]) and math.isfinite(train[i]["grad_norm"]) for i in (4, 5))
    _, _, ref_valid = _run(tmp_path, "ref", args)
    assert [ref_valid[i] for i in (1, 2)] == [valid[i] for i in (1, 2)]
    assert ref_valid[3] != valid[3]  # without the NaN, step 3 does update


def test_too_many_consecutive_skips_stop_with_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    args = ARGS + ["--zero-stage", "1", "--train-iters", "10", "--save", str(ckpt), "--save-interval", "2",
                   "--max-skipped-steps", "2"]  # fmt: skip
    proc, train, _ = _run(tmp_path, "stop", args, nan_at="3:0,4:1,5:0")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "2 consecutive steps (iterations 3-4)" in err[0], proc.stderr[-3000:]
    assert f"the last good checkpoint is {ckpt / 'iter_0000002'}" in err[0]
    assert (ckpt / "latest").read_text() == "iter_0000002"
    assert sorted(d.name for d in ckpt.iterdir() if d.name.startswith("iter_")) == ["iter_0000002"]
    assert max(train) == 4
