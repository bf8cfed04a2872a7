"""Stop-and-resume reproduces an uninterrupted run; a save killed half way leaves `latest` alone."""

import pytest

from tests.launch import FAULTY_PRETRAIN, TINY_LLAMA, TRAIN, assert_close_records, torchrun, train_records

ARGS = TINY_LLAMA + TRAIN + ["--ds-sequence-parallel-size", "2", "--train-iters", "8"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted 8-step SP=2 run per ZeRO stage, trained on first use; the resumed runs compare with it."""
    runs = {}

    def get(zero: str):
        if zero not in runs:
            runs[zero] = train_records(tmp_path_factory.mktemp(f"full_z{zero}"), "full", 2, ARGS + ["--zero-stage", zero])
        return runs[zero]

    return get


def test_resume_gives_same_losses(uninterrupted, tmp_path):
    for zero in ("1", "3"):
        full = uninterrupted(zero)
        ckpt = tmp_path / f"ckpt_z{zero}"
        first = train_records(
            tmp_path, f"first_z{zero}", 2, ARGS + ["--zero-stage", zero, "--save", str(ckpt), "--exit-interval", "4"]
        )
        assert [r["iteration"] for r in first] == [1, 2, 3, 4]
        assert (ckpt / "latest").read_text() == "iter_0000004"
        second = train_records(
            tmp_path, f"second_z{zero}", 2, ARGS + ["--zero-stage", zero, "--load", str(ckpt), "--save", str(ckpt)]
        )
        assert [r["iteration"] for r in second] == [5, 6, 7, 8]
        assert_close_records(full[:4], first, rtol=1e-6, what=f"ZeRO-{zero} first half")
        assert_close_records(full[4:], second, rtol=1e-6, what=f"ZeRO-{zero} resumed half")


def test_killed_save_keeps_previous_checkpoint(uninterrupted, tmp_path):
    ckpt = tmp_path / "ckpt"
    args = ARGS + ["--zero-stage", "1", "--save", str(ckpt), "--save-interval", "2"]
    faults = ["--inject-die-before-latest", "4:1"]  # the last rank dies mid-save, before `latest` moves
    proc = torchrun(2, args + faults, tmp_path / "killed.jsonl", script=FAULTY_PRETRAIN)
    assert proc.returncode != 0
    assert (ckpt / "iter_0000004").is_dir(), "the dying save had started writing"
    assert (ckpt / "latest").read_text() == "iter_0000002", "latest must still name the last complete save"
    full = uninterrupted("1")
    resumed = train_records(tmp_path, "resumed", 2, ARGS + ["--zero-stage", "1", "--load", str(ckpt)])
    assert [r["iteration"] for r in resumed] == list(range(3, 9))
    assert_close_records(full[2:], resumed, rtol=1e-6, what="resume after killed save")


def test_resume_with_a_longer_run_says_how_the_learning_rate_changes(tmp_path):
    """--train-iters 4 -> 8 moves the default --lr-decay-iters, so the cosine schedule jumps back up:
    the resumed run says so, with the learning rates and the flag that keeps the checkpoint's."""
    import json

    ckpt, args = tmp_path / "ckpt", TINY_LLAMA + TRAIN + ["--zero-stage", "1"]
    train_records(tmp_path, "first", 1, args + ["--train-iters", "4", "--save", str(ckpt)])
    longer = torchrun(1, args + ["--train-iters", "8", "--load", str(ckpt)], tmp_path / "longer.jsonl")
    assert longer.returncode == 0, longer.stderr[-3000:]
    notes = [line for line in longer.stdout.splitlines() if line.startswith("> note: resuming at iteration 4")]
    assert len(notes) == 1, longer.stdout[-3000:]
    assert "lr_decay_iters 4 -> 8 (it follows --train-iters 4 -> 8)" in notes[0]
    first_lr = json.loads((tmp_path / "longer.jsonl").read_text().splitlines()[0])["lr"]
    assert f"the next step's learning rate is {first_lr:.3e}" in notes[0]
    assert "To keep the checkpoint's schedule, pass --lr-decay-iters 4" in notes[0]
    kept = torchrun(1, args + ["--train-iters", "8", "--lr-decay-iters", "4", "--load", str(ckpt)])
    assert kept.returncode == 0 and "> note: resuming" not in kept.stdout, kept.stderr[-3000:]
