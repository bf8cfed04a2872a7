"""bench/pointwise_fusion.py: the compiled residual add + norm gives eager's outputs and gradients, and
the report has what the benchmark README reads."""

import json
import subprocess
import sys

from tests.launch import ROOT


def test_compiled_add_norm_matches_eager_and_is_reported(tmp_path):
    out = tmp_path / "p.json"
    cmd = [sys.executable, str(ROOT / "bench/pointwise_fusion.py"), "--tiny", "--device", "cpu", "--backend", "aot_eager",
           "--warmup", "1", "--iters", "2", "--reps", "2", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=300)
    report = json.loads(out.read_text())
    assert [(r["norm"], r["tokens"]) for r in report["results"]] == [("layernorm", 96), ("rmsnorm", 96)]
    for r in report["results"]:
        assert list(r["variants"]) == ["eager", "compiled"]
        n_params = 2 if r["norm"] == "layernorm" else 1
        for v in r["variants"].values():
            assert v["ms"] > 0 and len(v["ms_all"]) == 2
            # h, norm(h), dx, dy and the norm's parameter gradients
            assert len(v["rel_diff_vs_eager"]) == 4 + n_params
            assert max(v["rel_diff_vs_eager"]) < 1e-6, v
        assert r["saving_ms_per_call"] == round(r["variants"]["eager"]["ms"] - r["variants"]["compiled"]["ms"], 4)
    assert report["command"][:2] == ["bench/pointwise_fusion.py", "--tiny"]


def test_unknown_norm_is_one_line_error(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench/pointwise_fusion.py"), "--device", "cpu", "--norms", "batchnorm",
           "--out", str(tmp_path / "p.json")]  # fmt: skip
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode != 0 and "--norms batchnorm unknown" in r.stderr
    assert not (tmp_path / "p.json").exists()
