"""bench/tiled_loss.py: every CPU variant runs (the Triton kernels in the interpreter) and gives the
untiled loss's loss and gradients."""

import json
import os
import subprocess
import sys

from tests.launch import ROOT


def test_variants_agree_with_untiled_and_are_reported(tmp_path):
    out = tmp_path / "l.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, str(ROOT / "bench/tiled_loss.py"), "--tiny", "--device", "cpu", "--tokens", "40,70",
           "--warmup", "1", "--iters", "2", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=300)
    report = json.loads(out.read_text())
    assert [r["tokens"] for r in report["results"]] == [40, 70]
    for r in report["results"]:
        assert list(r["variants"]) == ["untiled", "tiled_eager", "tiled_fused"]
        for v in r["variants"].values():
            assert v["ms"] > 0 and len(v["ms_all"]) == 2
            assert max(v["rel_diff_vs_untiled"]) < 1e-5, v  # loss, dh, dW
    assert report["command"][:2] == ["bench/tiled_loss.py", "--tiny"]
