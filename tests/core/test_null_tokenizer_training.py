"""Data preprocessed with NullTokenizer trains with --tokenizer-type NullTokenizer --vocab-size."""

import json
import subprocess
import sys

from tests.launch import ROOT, env, train_records


def test_null_tokenizer_dataset_trains(tmp_path):
    docs = tmp_path / "docs.jsonl"
    with docs.open("w") as f:
        for i in range(200):
            f.write(json.dumps({"text": " ".join(str((i * 7 + j) % 100) for j in range(50))}) + "\n")
    subprocess.run(
        [sys.executable, str(ROOT / "tools/preprocess_data.py"), "--input", str(docs), "--output-prefix",
         str(tmp_path / "null"), "--tokenizer-type", "NullTokenizer", "--vocab-size", "100", "--append-eod"],
        check=True, env=env(), capture_output=True,
    )  # fmt: skip
    args = ["--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2", "--seq-length", "32",
            "--data-path", str(tmp_path / "null_text_document"), "--tokenizer-type", "NullTokenizer",
            "--vocab-size", "100", "--micro-batch-size", "2", "--train-iters", "2", "--log-interval", "1",
            "--num-workers", "0", "--split", "100,0,0"]  # fmt: skip
    recs = train_records(tmp_path, "null", 1, args)
    assert [r["iteration"] for r in recs] == [1, 2] and all(r["lm_loss"] > 0 for r in recs)


def test_token_ids_beyond_the_vocabulary_stop_with_one_line(tmp_path):
    """Data tokenized with a 1000-id vocabulary, trained with --vocab-size 100 (128 rows after padding)."""
    docs = tmp_path / "docs.jsonl"
    with docs.open("w") as f:
        for i in range(50):
            f.write(json.dumps({"text": " ".join(str((i * 37 + j * 11) % 1000) for j in range(50))}) + "\n")
    subprocess.run(
        [sys.executable, str(ROOT / "tools/preprocess_data.py"), "--input", str(docs), "--output-prefix",
         str(tmp_path / "wide"), "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000", "--append-eod"],
        check=True, env=env(), capture_output=True,
    )  # fmt: skip
    (tmp_path / "wide_text_document.meta").unlink()  # data without its tokenizer's record (older, or Megatron-LM's)
    args = [sys.executable, str(ROOT / "pretrain_gpt.py"), "--num-layers", "1", "--hidden-size", "32",
            "--num-attention-heads", "2", "--seq-length", "32", "--data-path", str(tmp_path / "wide_text_document"),
            "--tokenizer-type", "NullTokenizer", "--vocab-size", "100", "--micro-batch-size", "2", "--train-iters", "2",
            "--num-workers", "0", "--split", "100,0,0", "--save", str(tmp_path / "ckpt")]  # fmt: skip
    proc = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "outside the model's vocabulary (128 rows" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())  # nothing saved


def test_tokenizer_other_than_the_datas_is_refused_before_training(tmp_path):
    """Data tokenized with a 100-id vocabulary, trained with a 1000-id one: every id is in range, so
    only the tokenizer recorded beside the data (``.meta``) tells."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": " ".join(str((i + j) % 100) for j in range(40))}) + "\n" for i in range(40)))
    subprocess.run(
        [sys.executable, str(ROOT / "tools/preprocess_data.py"), "--input", str(docs), "--output-prefix",
         str(tmp_path / "small"), "--tokenizer-type", "NullTokenizer", "--vocab-size", "100", "--append-eod"],
        check=True, env=env(), capture_output=True,
    )  # fmt: skip
    args = [sys.executable, str(ROOT / "pretrain_gpt.py"), "--num-layers", "1", "--hidden-size", "32",
            "--num-attention-heads", "2", "--seq-length", "32", "--data-path", str(tmp_path / "small_text_document"),
            "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000", "--micro-batch-size", "2", "--train-iters", "2",
            "--num-workers", "0", "--split", "100,0,0"]  # fmt: skip
    proc = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "small_text_document was tokenized by a tokenizer: NullTokenizer (vocabulary 101)" in lines[0]
    assert "this run's tokenizer is NullTokenizer (vocabulary 1001)" in lines[0] and "iteration" not in proc.stdout
