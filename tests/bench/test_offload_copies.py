"""bench/offload_copies.py: every variant runs and gives the GPU-checkpoint variant's gradients."""

import json

import offload_copies  # bench/, on pytest's pythonpath (pyproject.toml)


def test_variants_train_the_same_and_are_reported(tmp_path):
    out = tmp_path / "o.json"
    assert offload_copies.main(["--tiny", "--device", "cpu", "--tokens", "64,96", "--layers", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["tokens"] for r in report["results"]] == [64, 96]
    for r in report["results"]:
        assert set(r["variants"]) == set(offload_copies.VARIANTS)
        for v in r["variants"].values():
            assert v["ms"] > 0 and len(v["ms_all"]) == 3
            assert v["grad_rel_diff_vs_gpu_checkpoint"] < 1e-6
        assert r["side_stream_speedup"] > 0 and r["grad_rel_diff_gpu_checkpoint_repeat"] < 1e-6
    assert report["command"][:2] == ["bench/offload_copies.py", "--tiny"]
