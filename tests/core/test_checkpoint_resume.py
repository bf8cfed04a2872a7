"""Stop-and-resume reproduces an uninterrupted run; a save killed half way leaves `latest` alone."""

from tests.launch import FAULTY_PRETRAIN, TINY_LLAMA, TRAIN, assert_close_records, torchrun, train_records

ARGS = TINY_LLAMA + TRAIN + ["--ds-sequence-parallel-size", "2", "--train-iters", "8"]


def test_resume_gives_same_losses(tmp_path):
    for zero in ("1", "3"):
        full = train_records(tmp_path, f"full_z{zero}", 2, ARGS + ["--zero-stage", zero])
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


def test_killed_save_keeps_previous_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    args = ARGS + ["--zero-stage", "1", "--save", str(ckpt), "--save-interval", "2"]
    faults = ["--inject-die-before-latest", "4:1"]  # the last rank dies mid-save, before `latest` moves
    proc = torchrun(2, args + faults, tmp_path / "killed.jsonl", script=FAULTY_PRETRAIN)
    assert proc.returncode != 0
    assert (ckpt / "iter_0000004").is_dir(), "the dying save had started writing"
    assert (ckpt / "latest").read_text() == "iter_0000002", "latest must still name the last complete save"
    full = train_records(tmp_path, "full", 2, ARGS + ["--zero-stage", "1"])
    resumed = train_records(tmp_path, "resumed", 2, ARGS + ["--zero-stage", "1", "--load", str(ckpt)])
    assert [r["iteration"] for r in resumed] == list(range(3, 9))
    assert_close_records(full[2:], resumed, rtol=1e-6, what="resume after killed save")
