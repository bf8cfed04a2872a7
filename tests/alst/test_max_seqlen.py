"""bench/max_seqlen.py: the search finds the boundary, and a tiny CPU run writes the report."""

import json
import subprocess
import sys

import max_seqlen  # bench/, on pytest's pythonpath (pyproject.toml)
import pytest

from tests.launch import ROOT, env


def test_search_doubles_then_bisects_to_the_granularity():
    tried = []

    def fits(seq):
        tried.append(seq)
        return {"ok": seq <= 200, "seq": seq}

    best, _ = max_seqlen.search(fits, start=64, max_seq=4096, granularity=32)
    assert best == 192 and tried == [64, 128, 256, 192, 224]
    assert max_seqlen.search(fits, start=64, max_seq=128, granularity=32)[0] == 128
    assert max_seqlen.search(lambda s: {"ok": False, "seq": s}, 64, 128, 32)[0] == 0


def test_memory_projection_extrapolates_the_two_longest_successes():
    attempts = [{"ok": True, "seq": 64, "peak_gb": 99.0}, {"ok": True, "seq": 128, "peak_gb": 30.0},
                {"ok": True, "seq": 256, "peak_gb": 40.0, "reserved_gb": 42.0}, {"ok": False, "seq": 512}]  # fmt: skip
    proj = max_seqlen.memory_projection(attempts, capacity_gb=100.0)
    # slope from (128, 30 GB) and (256, 42 GB reserved): 12 GB per 128 tokens; 58 GB left -> 256 + 618
    assert proj["seq"] == 256 + int(58 / (12 / 128)) and proj["from_seqs"] == [128, 256]
    assert max_seqlen.memory_projection(attempts[:1], 100.0) is None  # one point gives no slope
    assert max_seqlen.memory_projection(attempts, None) is None  # CPU: no device capacity
    # a slope below the checkpointed inputs' floor is raised to it: 58 GB at 0.5 GB per token
    raised = max_seqlen.memory_projection(attempts, 100.0, floor_gb_per_token=0.5)
    assert raised["seq"] == 256 + int(58 / 0.5) and "floor" in raised["basis"]
    assert raised["line_gb_per_1k_tokens"] == proj["gb_per_1k_tokens"]
    # what a one-step attempt's step left allocated is added to its peak (here above reserved)
    grown = [dict(a, first_step_growth_gb=20.0) if a["ok"] else a for a in attempts]
    g = max_seqlen.memory_projection(grown, 100.0)  # points 50 and 60 GB: 10 GB per 128 tokens
    assert g["seq"] == 256 + int(40 / (10 / 128))


def test_checkpoint_floor_counts_the_checkpointed_layer_inputs():
    from megatron.arguments import parse_args

    base = "--num-layers 4 --hidden-size 64 --num-attention-heads 4 --seq-length 128 --mock-data --bf16".split()
    cfg = parse_args(base + "--checkpoint-activations --ds-sequence-parallel-size 2".split())
    assert max_seqlen.checkpoint_bytes_per_token(cfg) == 4 * 64 * 2 / 2  # layers x hidden x bf16 / SP
    assert max_seqlen.checkpoint_bytes_per_token(parse_args(base)) == 0.0  # nothing checkpointed
    in_cpu = parse_args(base + ["--checkpoint-activations", "--checkpoint-in-cpu"])
    assert max_seqlen.checkpoint_bytes_per_token(in_cpu) == 0.0  # the host holds them
    kept = parse_args(base + "--checkpoint-activations --checkpoint-keep-attention --ds-sequence-parallel-size 2".split())
    # layer input + q, k, v (4 heads of 16) + the attention output + its copy after the exchange back
    assert max_seqlen.checkpoint_bytes_per_token(kept) == 4 * (64 + (4 + 4 + 4 + 4 + 4) * 16) * 2 / 2


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


def test_search_stops_on_a_failure_and_names_the_limit():
    def outcome(seq):
        if seq <= 128:
            return {"ok": True, "seq": seq}
        return {"ok": False, "seq": seq, "outcome": "too_slow" if seq >= 256 else "oom", "oom": "device"}

    best, attempts = max_seqlen.search(outcome, start=64, max_seq=4096, granularity=32)
    assert best == 128 and max_seqlen.limited_by(best, attempts) == "oom (device)"
    best, attempts = max_seqlen.search(lambda s: {**outcome(s), "outcome": "too_slow"} if s > 128 else outcome(s), 64, 4096, 64)
    assert best == 128 and max_seqlen.limited_by(best, attempts) == "too_slow"
    broken = max_seqlen.search(lambda s: {"ok": False, "seq": s, "outcome": "failed"}, 64, 4096, 32)
    assert broken[0] == 0 and len(broken[1]) == 1  # a non-memory, non-time failure is not bisected
    assert max_seqlen.limited_by(4096, [{"ok": True, "seq": 4096}]) is None


def test_attempts_predicted_too_slow_are_not_run():
    cfg = max_seqlen.shape_config("llama-8b")
    from megatron.training.metrics import model_flops_per_token

    fpt = lambda s: model_flops_per_token(cfg, s)  # noqa: E731
    ref = {"seq": 65536, "step_time_s": 10.0, "wall_s": 80.0}
    assert max_seqlen.predicted_attempt_s(ref, 65536, fpt) == 80.0
    # twice the length: more than twice the step time (attention is quadratic), same start-up
    eta = max_seqlen.predicted_attempt_s(ref, 131072, fpt)
    assert 60 + 2 * 2 * 10 < eta < 60 + 2 * 4 * 10
    assert max_seqlen.predicted_attempt_s(ref, 131072, fpt, steps=1) == pytest.approx(70 + (eta - 60) / 2)

    class Args:
        attempt_timeout, steps = 100, 2

    res = max_seqlen.attempt(Args, "+tiled_mlp", 131072, ROOT, ref, fpt)  # would launch if it were not skipped
    assert res == {"ok": False, "outcome": "too_slow", "predicted_s": round(eta), "seq": 131072, "wall_s": 0.0}


def test_timed_out_attempt_is_recorded_and_the_json_kept(tmp_path):
    out = tmp_path / "max_seqlen.json"
    cmd = [sys.executable, str(ROOT / "bench" / "max_seqlen.py"), "--tiny", "--nproc", "1", "--rungs", "baseline",
           "--start-seq", "64", "--max-seq", "64", "--attempt-timeout", "2", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rung = json.loads(out.read_text())["rungs"][0]
    assert rung["max_seq"] == 0 and rung["limited_by"] == "timeout"
    assert [(a["seq"], a["outcome"]) for a in rung["attempts"]] == [(64, "timeout"), (32, "timeout")]  # bisected
    assert "baseline: max sequence 0, limited by timeout" in proc.stdout


def test_worker_killed_by_the_host_is_its_own_outcome(tmp_path):
    out = tmp_path / "max_seqlen.json"
    cmd = [sys.executable, str(ROOT / "bench" / "max_seqlen.py"), "--tiny", "--nproc", "1", "--rungs", "+offload",
           "--start-seq", "64", "--max-seq", "64", "--granularity", "64", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env={**env(), "MAX_SEQLEN_TEST_SIGKILL": "1"}, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rung = json.loads(out.read_text())["rungs"][0]
    assert rung["max_seq"] == 0 and rung["limited_by"] == "host_killed", rung


def test_one_step_attempt_that_a_second_step_would_not_fit_is_an_oom(tmp_path, monkeypatch):
    """Llama-8B +tiled_loss at 196,608 on an H200 (recorded): peak 132.7 GB plus the 32.2 GB that the
    first step leaves allocated (Adam's moments) is over the 150.1 GB device, so it is not a success."""
    recorded = {"ok": True, "peak_gb": 132.67, "first_step_growth_gb": 32.19, "step_time_s": 107.1}

    def fake_run(cmd, cwd, env, log_path, timeout):  # what a worker leaves behind
        result_dir = cmd[cmd.index("--result-dir") + 1]
        (max_seqlen.Path(result_dir) / "rank0.json").write_text(json.dumps(recorded))
        log_path.write_text("")
        return 0, False

    monkeypatch.setattr(max_seqlen, "run_logged", fake_run)
    args = max_seqlen.argparse.Namespace(tiny=False, shape="llama-8b", nproc=2, steps=1, attempt_timeout=150,
                                         attention_backend="flash", extra=[], cpu_budget_mb=None)  # fmt: skip
    res = max_seqlen.attempt(args, "+tiled_loss", 196608, tmp_path, capacity_gb=150.11)
    assert not res["ok"] and res["outcome"] == "oom" and res["oom"] == "device, next step"
    assert max_seqlen.limited_by(131072, [res]) == "oom (device, next step)"
    assert max_seqlen.attempt(args, "+tiled_loss", 196608, tmp_path, capacity_gb=170.0)["ok"]
    assert max_seqlen.attempt(args, "+tiled_loss", 196608, tmp_path, capacity_gb=None)["ok"]  # CPU: no device
