"""Packed documents with a dense-mask backend: the trainer says once what it costs and what to use."""

from megatron.model.attention import document_mask_note, window_mask_note
from tests.launch import TINY_LLAMA, TRAIN, torchrun


def test_note_names_the_mask_size_and_the_triton_backend():
    assert document_mask_note("flash_triton", 65536, 1) is None
    for backend in ("classic", "sdpa", "flash"):  # flash falls back to SDPA's mask for documents
        note = document_mask_note(backend, 65536, 1)
        assert f"the {backend} backend builds dense" in note
        assert "about 12.9 GB at S=65536" in note  # 3 x 65536^2 bytes
        assert "--use-flash-attn-triton" in note
    assert "about 25.8 GB" in document_mask_note("sdpa", 65536, 2)


def test_notes_name_the_sliding_window_where_a_dense_mask_holds_it():
    assert document_mask_note("flash_triton", 65536, 1, window=4096) is None
    note = document_mask_note("sdpa", 65536, 1, window=4096)
    assert "builds document and sliding-window [b, 1, S, S] masks (about 17.2 GB" in note  # 4 x 65536^2 bytes
    assert "takes document ids and the window and skips masked blocks" in note
    assert document_mask_note("sdpa", 4096, 1, window=4096) == document_mask_note("sdpa", 4096, 1)  # no window
    # Without documents: SDPA and classic build a [1, 1, S, S] mask for the window; flash and ours do not.
    note = window_mask_note("sdpa", 65536, 4096)
    assert note.startswith("a sliding window of 4096 with the sdpa backend builds a dense [1, 1, S, S] mask")
    assert "about 12.9 GB at S=65536" in note and "--use-flash-attn-triton" in note
    assert window_mask_note("classic", 8192, 1024) is not None
    for backend, seq, window in (("flash", 65536, 4096), ("flash_triton", 65536, 4096), ("sdpa", 4096, None),
                                 ("sdpa", 4096, 4096)):  # fmt: skip
        assert window_mask_note(backend, seq, window) is None


def test_trainer_prints_the_note_once(tmp_path):
    args = TINY_LLAMA + TRAIN + ["--train-iters", "1", "--zero-stage", "1", "--attention-backend", "sdpa",
                                 "--reset-attention-mask", "--mock-document-length", "16"]  # fmt: skip
    proc = torchrun(1, args, tmp_path / "m.jsonl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [line for line in proc.stdout.splitlines() if line.startswith("> note: --reset-attention-mask")]
    assert len(notes) == 1 and "--use-flash-attn-triton" in notes[0], proc.stdout[-3000:]


def test_trainer_prints_the_window_note_once(tmp_path):
    args = TINY_LLAMA + TRAIN + ["--train-iters", "1", "--zero-stage", "1", "--attention-backend", "sdpa",
                                 "--sliding-window", "8"]  # fmt: skip
    proc = torchrun(1, args, tmp_path / "m.jsonl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [line for line in proc.stdout.splitlines() if line.startswith("> note: a sliding window of 8")]
    assert len(notes) == 1 and "--use-flash-attn-triton" in notes[0], proc.stdout[-3000:]
