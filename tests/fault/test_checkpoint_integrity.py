"""Checkpoint hygiene and portability: a shard cut short while saving keeps `latest` on the
previous checkpoint; a damaged checkpoint is reported by file name on load; a checkpoint
resumes on another layout (SP=2 -> SP=4, 2 -> 4 processes, ZeRO-3 <-> ZeRO-1) with the losses
of an uninterrupted run."""

import json
import shutil

import pytest

from tests.launch import FAULTY_PRETRAIN, TINY_LLAMA, TRAIN, assert_close_records, torchrun, train_records

ARGS = TINY_LLAMA + TRAIN + ["--lr-decay-style", "constant", "--lr-warmup-iters", "0"]
SP2 = ["--ds-sequence-parallel-size", "2"]


def _error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def test_shard_cut_short_while_saving_keeps_previous_latest(tmp_path):
    ckpt = tmp_path / "ckpt"
    args = ARGS + SP2 + ["--zero-stage", "1", "--train-iters", "6", "--save", str(ckpt), "--save-interval", "2"]
    proc = torchrun(2, args + ["--inject-truncate-on-save", "4:1"], script=FAULTY_PRETRAIN)
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = _error_lines(proc)
    assert len(err) == 1, proc.stderr[-2000:]
    assert f"checkpoint {ckpt / 'iter_0000004'} failed verification: rng_state_rank00001.pt is unreadable" in err[0]
    assert "'latest' still points at iter_0000002" in err[0]
    assert (ckpt / "latest").read_text() == "iter_0000002"
    manifest = json.loads((ckpt / "iter_0000002" / "manifest.json").read_text())
    assert manifest["layout"] == {"world_size": 2, "sequence_parallel_size": 2, "zero_stage": 1}
    assert set(manifest["files"]) == {"mp_rank_00_model_states.pt", "rng_state_rank00000.pt", "rng_state_rank00001.pt",
                                      "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                      "zero_pp_rank_1_mp_rank_00_optim_states.pt"}  # fmt: skip


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory):
    """Per saved ZeRO stage (SP=2 on 2 processes): an uninterrupted 5-step run, and a 3-step run that
    saved its checkpoint. Built on first use; each test loads from its own copy of the checkpoint
    (a load on another layout writes the universal conversion next to it)."""
    runs = {}

    def get(saved_zero: str):
        if saved_zero not in runs:
            tmp = tmp_path_factory.mktemp(f"saved_z{saved_zero}")
            saved = ARGS + SP2 + ["--zero-stage", saved_zero]
            full = train_records(tmp, "full", 2, saved + ["--train-iters", "5"])
            train_records(tmp, "first", 2, saved + ["--train-iters", "3", "--save", str(tmp / "ckpt")])
            runs[saved_zero] = (full, tmp / "ckpt")
        return runs[saved_zero]

    return get


def _copy_checkpoint(saved_runs, saved_zero, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved_runs(saved_zero)[1], ckpt)
    return ckpt


@pytest.mark.parametrize("damage", ["truncate", "delete", "garble"])
def test_damaged_checkpoint_is_named_on_load(saved_runs, tmp_path, damage):
    ckpt = _copy_checkpoint(saved_runs, "1", tmp_path)  # ZeRO-1, SP=2, saved at iteration 3
    args = ARGS + SP2 + ["--zero-stage", "1"]
    shard = ckpt / "iter_0000003" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    if damage == "truncate":
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "garble":  # same size, zip directory intact: the pickle inside is changed
        data = bytearray(shard.read_bytes())
        data[100:300] = bytes(b ^ 0x5A for b in data[100:300])
        shard.write_bytes(bytes(data))
    else:
        shard.unlink()
    proc = torchrun(2, args + ["--train-iters", "5", "--load", str(ckpt)])
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]  # the ranks exit 2; torchrun says 1
    err = _error_lines(proc)
    assert len(err) == 1, proc.stderr[-2000:]
    what = {"truncate": "is truncated", "delete": "is missing", "garble": "is unreadable or damaged (Bad CRC-32"}[damage]
    assert f"{ckpt / 'iter_0000003'} is damaged: zero_pp_rank_1_mp_rank_00_optim_states.pt {what}" in err[0]


@pytest.mark.parametrize(
    "saved_zero,nproc,sp,zero",
    [
        ("1", 4, 4, "1"),  # SP=2 -> SP=4
        ("3", 4, 2, "3"),  # 2 processes SP=2 -> 4 processes SP=2 x DP=2
        ("3", 2, 2, "1"),  # ZeRO-3 -> ZeRO-1
        ("1", 4, 2, "3"),  # ZeRO-1 -> ZeRO-3 on 4 processes
    ],
)
def test_resume_on_another_layout_continues_the_loss(saved_runs, tmp_path, saved_zero, nproc, sp, zero):
    full = saved_runs(saved_zero)[0]
    ckpt = _copy_checkpoint(saved_runs, saved_zero, tmp_path)
    resumed_args = ARGS + ["--ds-sequence-parallel-size", str(sp), "--zero-stage", zero]
    proc = torchrun(nproc, resumed_args + ["--train-iters", "5", "--load", str(ckpt)], tmp_path / "resumed.jsonl")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "converting" in proc.stdout and "universal format" in proc.stdout
    resumed = [json.loads(x) for x in (tmp_path / "resumed.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in resumed] == [4, 5]
    what = f"ZeRO-{saved_zero} SP2 -> {nproc} procs SP{sp} ZeRO-{zero}"
    assert_close_records(full[3:], resumed, rtol=1e-5, grad_rtol=1e-4, what=what)


def test_zero0_stage_change_is_refused_with_the_fix(saved_runs, tmp_path):
    ckpt = _copy_checkpoint(saved_runs, "1", tmp_path)  # written with ZeRO-1
    proc = torchrun(2, ARGS + SP2 + ["--zero-stage", "0", "--train-iters", "5", "--load", str(ckpt)])
    assert proc.returncode != 0
    err = _error_lines(proc)
    assert len(err) == 1 and "written with ZeRO-1 and this run uses ZeRO-0" in err[0] and "--zero-stage 1" in err[0]
