"""bench/max_seqlen.py: the search finds the boundary, and a tiny CPU run writes the report."""

import json
import subprocess
import sys

from tests.launch import ROOT, env

sys.path.insert(0, str(ROOT / "bench"))
import max_seqlen


def test_search_doubles_then_bisects_to_the_granularity():
    tried = []

    def fits(seq):
        tried.append(seq)
        return {"ok": seq <= 200, "seq": seq}

    best, _ = max_seqlen.search(fits, start=64, max_seq=4096, granularity=32)
    assert best == 192 and tried == [64, 128, 256, 192, 224]
    assert max_seqlen.search(fits, start=64, max_seq=128, granularity=32)[0] == 128
    assert max_seqlen.search(lambda s: {"ok": False, "seq": s}, 64, 128, 32)[0] == 0


def test_ladder_flags_are_cumulative():
    assert "--no-tiled-logits-loss" in max_seqlen.rung_flags("baseline", 8)
    top = max_seqlen.rung_flags("+offload", 8)
    for flag in ("--tiled-logits-loss", "--tiled-mlp-compute", "--checkpoint-in-cpu", "--offload-param"):
        assert flag in top
    assert top[top.index("--ds-sequence-parallel-size") + 1] == "8"


def test_tiny_cpu_run_reports_memory_breakdown(tmp_path):
    out = tmp_path / "max_seqlen.json"
    cmd = [sys.executable, str(ROOT / "bench" / "max_seqlen.py"), "--tiny", "--nproc", "2", "--rungs", "baseline,+offload",
           "--start-seq", "64", "--max-seq", "64", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, env=env(), cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text())
    assert [r["rung"] for r in report["rungs"]] == ["baseline", "+offload"]
    for rung in report["rungs"]:
        assert rung["max_seq"] == 64
        at = rung["at_max"]
        for key in ("peak_gb", "model_states_gb", "activations_gb", "logits_gb", "step_time_s"):
            assert at[key] >= 0, key
