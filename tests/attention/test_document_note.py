"""Packed documents with a dense-mask backend: the trainer says once what it costs and what to use."""

from megatron.model.attention import document_mask_note
from tests.launch import TINY_LLAMA, TRAIN, torchrun


def test_note_names_the_mask_size_and_the_triton_backend():
    assert document_mask_note("flash_triton", 65536, 1) is None
    for backend in ("classic", "sdpa", "flash"):  # flash falls back to SDPA's mask for documents
        note = document_mask_note(backend, 65536, 1)
        assert f"the {backend} backend builds dense" in note
        assert "about 12.9 GB at S=65536" in note  # 3 x 65536^2 bytes
        assert "--use-flash-attn-triton" in note
    assert "about 25.8 GB" in document_mask_note("sdpa", 65536, 2)


def test_trainer_prints_the_note_once(tmp_path):
    args = TINY_LLAMA + TRAIN + ["--train-iters", "1", "--zero-stage", "1", "--attention-backend", "sdpa",
                                 "--reset-attention-mask", "--mock-document-length", "16"]  # fmt: skip
    proc = torchrun(1, args, tmp_path / "m.jsonl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [line for line in proc.stdout.splitlines() if line.startswith("> note: --reset-attention-mask")]
    assert len(notes) == 1 and "--use-flash-attn-triton" in notes[0], proc.stdout[-3000:]
