"""bench/throughput.py (ours against the Hugging Face + DeepSpeed-ALST peer) and bench/plot_throughput.py."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import plot_throughput  # bench/, on pytest's pythonpath (pyproject.toml)
import pytest
import throughput  # bench/

from megatron.arguments import parse_args
from megatron.training import metrics
from tests.launch import ROOT, env


def test_tiny_cpu_run_measures_ours_and_the_peer(tmp_path):
    out = tmp_path / "tiny.json"
    cmd = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--tiny", "--peer", "--out", str(out),
           "--log-dir", str(tmp_path / "logs")]  # fmt: skip
    proc = subprocess.run(cmd, check=False, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["devices"] == ["cpu"]
    for pkg in ("python", "torch", "deepspeed", "transformers"):
        assert report["versions"][pkg], pkg
    assert {"cuda", "triton"} <= set(report["versions"])
    cases = {c["kind"]: c for c in report["cases"]}
    assert sorted(cases) == ["ours", "peer"]
    flops_per_token = metrics.model_flops_per_token(parse_args(throughput.SHAPES["tiny"].megatron_flags()).model, 128)
    for kind, c in cases.items():
        assert c["outcome"] == "ok" and c["error"] is None, (kind, c["error"], c["log"])
        assert (
            c["command"][1:4] == ["-m", "torch.distributed.run", "--standalone"]
            and "--nproc_per_node=2" in c["command"]
        )
        assert (c["shape"], c["seq_len"], c["nproc"], c["sp"], c["precision"], c["tiled_mlp"]) == (
            "tiny", 128, 2, 2, "fp32", True)  # fmt: skip
        assert (c["iterations"], c["measured_iterations"]) == (4, 2)  # default --warmup 2 left out
        assert c["tokens_per_sec_per_gpu"] > 0 and c["tflops_per_gpu"] > 0 and c["peak_mem_gb"] > 0
        assert c["mfu"] is None  # no datasheet peak for CPUs
        # the same model-FLOPs formula on the same (tiny Llama) architecture for both systems
        assert c["model_tflops_per_gpu"] * 1e12 / c["tokens_per_sec_per_gpu"] == pytest.approx(flops_per_token)
        assert len(c["losses"]) == 4 and all(math.isfinite(v) for v in c["losses"])
        assert abs(c["losses"][0] - math.log(512)) < 0.3  # both start at chance on the same mock tokens
    ours = cases["ours"]["command"]
    for flag in ("--checkpoint-activations", "--tiled-logits-loss", "--tiled-mlp-compute", "--mock-data"):
        assert flag in ours
    assert ours[ours.index("--ds-sequence-parallel-size") + 1] == "2"
    assert ours[ours.index("--attention-backend") + 1] == "sdpa"
    assert ours[ours.index("--zero-stage") + 1] == "3"
    peer = cases["peer"]["peer"]
    assert (peer["sp"], peer["world"], peer["tiled_mlp"], peer["loss_shards"]) == (2, 2, True, 2)
    assert peer["tied_head_grad_deferred"] and peer["hf_config"]["intermediate_size"] == 192
    assert peer["model_flops_per_token"] == flops_per_token
    (comp,) = report["comparisons"]
    assert (comp["shape"], comp["seq_len"], comp["nproc"], comp["sp"], comp["best_backend"]) == (
        "tiny",
        128,
        2,
        2,
        "sdpa",
    )
    assert comp["ratio_tokens_per_sec"] == pytest.approx(
        cases["ours"]["tokens_per_sec_per_gpu"] / cases["peer"]["tokens_per_sec_per_gpu"]
    )

    # The peer is a correct training job: one process with the plain (untiled) head gives the losses and
    # gradient norms of SP=2 with TiledFusedLogitsLoss (normalization and tied weight handled); --append merges.
    cmd += ["--peer-only", "--nproc", "1", "--no-tiled-loss", "--append"]
    proc = subprocess.run(cmd, check=False, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert len(report["cases"]) == 3 and len(report["comparisons"]) == 1
    single = next(c for c in report["cases"] if c["nproc"] == 1)
    assert single["outcome"] == "ok" and not single["tiled_loss"] and single["peer"]["loss_shards"] is None
    assert single["losses"] == pytest.approx(cases["peer"]["losses"], rel=1e-5)
    assert single["grad_norms"] == pytest.approx(cases["peer"]["grad_norms"], rel=1e-4)


def test_dry_run_plans_ours_per_backend_then_the_peer(capsys):
    argv = ["--shape", "llama-1b", "--nproc", "2", "--seq-lens", "8192,262144", "--backends", "sdpa,flash_triton",
            "--peer", "--tiled-mlp", "auto", "--dry-run"]  # fmt: skip
    assert throughput.main(argv) == 0
    cmds = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert len(cmds) == 6
    for cmd in cmds[:2] + cmds[3:5]:
        assert cmd[5].endswith("pretrain_gpt.py") and "--bf16" in cmd
        for flag, value in (("--ds-sequence-parallel-size", "2"), ("--num-key-value-heads", "8"),
                            ("--ffn-hidden-size", "8192"), ("--vocab-size", "128256"), ("--rotary-base", "500000"),
                            ("--global-batch-size", "1"), ("--micro-batch-size", "1")):  # fmt: skip
            assert cmd[cmd.index(flag) + 1] == value, flag
        assert "--swiglu" in cmd and "--untie-embeddings-and-output-weights" not in cmd
    assert [c[c.index("--attention-backend") + 1] for c in (cmds[0], cmds[1])] == ["sdpa", "flash_triton"]
    assert cmds[2][5].endswith("peer_hf_alst.py") and cmds[2][cmds[2].index("--sp") + 1] == "2"
    # auto tiles the MLP only from 131072 local tokens (262144 / SP 2)
    assert "--tiled-mlp-compute" not in cmds[0] and "--tiled-mlp-compute" in cmds[3]
    assert "--tiled-mlp" not in cmds[2] and "--tiled-mlp" in cmds[5]


def test_gpt_peer_matches_the_model_flops_of_gpt_1_3b():
    pytest.importorskip("transformers")
    import peer_hf_alst

    ours = parse_args(throughput.SHAPES["gpt-1.3b"].megatron_flags()).model
    hf_cfg = peer_hf_alst.llama_config("gpt-1.3b", 8192, "sdpa")
    assert (hf_cfg.num_hidden_layers, hf_cfg.hidden_size, hf_cfg.num_attention_heads) == (24, 2048, 16)
    assert (hf_cfg.num_key_value_heads, hf_cfg.vocab_size, hf_cfg.intermediate_size) == (16, 50304, 5440)
    assert ours.padded_vocab_size == hf_cfg.vocab_size  # the same embedding shape on both sides
    assert peer_hf_alst.llama_config("gpt-1.3b", 8192, "sdpa", pad_vocab=1).vocab_size == 50257
    peer = peer_hf_alst.megatron_model_config(hf_cfg, 8192)
    for seq in (8192, 131072):
        ratio = metrics.model_flops_per_token(peer, seq) / metrics.model_flops_per_token(ours, seq)
        assert abs(ratio - 1) < 0.005, (seq, ratio)
    llama = peer_hf_alst.llama_config("llama-1b", 8192, "sdpa")
    assert (llama.num_key_value_heads, llama.intermediate_size, llama.vocab_size) == (8, 8192, 128256)
    assert llama.tie_word_embeddings and peer_hf_alst.llama_rope_theta(llama) == 500000.0


def test_outcomes_from_logs():
    oom = "Traceback...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n" + (
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\nexitcode  : 1\n")  # fmt: skip
    assert throughput.classify(1, oom, 0, False) == (
        "oom",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    )
    crash = (
        "[rank0]: Traceback\n[rank0]: RuntimeError: boom\nFutureWarning: x\ntorch...ChildFailedError: \n  rank : 0\n"
    )
    assert throughput.classify(1, crash, 0, False) == ("failed", "[rank0]: RuntimeError: boom")
    assert throughput.classify(2, "error: --sp must divide\n", 0, False) == ("failed", "error: --sp must divide")
    assert throughput.classify(None, "", 3, True) == ("timeout", None)
    assert throughput.classify(0, "", 0, False)[0] == "failed"
    assert throughput.classify(0, "", 4, False) == ("ok", None)
    # the one out-of-memory test both benchmarks use (bench/procgroup.py)
    nccl = "[rank1]: torch.distributed.DistBackendError: NCCL error: Cuda failure 'out of memory'\n"
    assert throughput.classify(1, nccl, 0, False)[0] == "oom"
    assert throughput.classify(1, "RuntimeError: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate\n", 0, False)[0] == "oom"


def test_summary_drops_warmup_and_takes_medians():
    recs = [{"iteration": i, "lm_loss": 7.0 - i, "step_time_s": t, "tokens_per_sec": 100 / t,
             "tokens_per_sec_per_gpu": 50 / t, "tflops": 1 / t, "model_tflops": 0.5 / t, "mfu": None, "mem_gb": m,
             "grad_norm": 1.0} for i, (t, m) in enumerate([(9.0, 1.0), (1.0, 2.0), (2.0, 1.5), (4.0, 1.0)], 1)]  # fmt: skip
    s = throughput.summarize(recs, warmup=1)
    assert (s["iterations"], s["measured_iterations"]) == (4, 3)
    assert s["step_time_s"] == 2.0 and s["tokens_per_sec_per_gpu"] == 25.0 and s["mfu"] is None
    assert s["peak_mem_gb"] == 2.0 and s["losses"] == [6.0, 5.0, 4.0, 3.0] and s["final_loss"] == 3.0


def _case(kind, backend, seq, tps, mfu, outcome="ok"):
    return {"kind": kind, "backend": backend, "shape": "gpt-1.3b", "seq_len": seq, "nproc": 1, "sp": 1,
            "outcome": outcome, "tiled_mlp": False, "tokens_per_sec_per_gpu": tps if outcome == "ok" else None,
            "tflops_per_gpu": tps / 100 if outcome == "ok" else None, "model_tflops_per_gpu": tps / 120,
            "mfu": mfu, "peak_mem_gb": 30.0, "final_loss": 10.5}  # fmt: skip


def _synthetic_report():
    cases = [_case("ours", "sdpa", 8192, 9000.0, 0.40), _case("ours", "flash_triton", 8192, 11000.0, 0.49),
             _case("peer", "hf-sdpa", 8192, 8000.0, 0.36), _case("ours", "sdpa", 32768, 6000.0, 0.45),
             _case("ours", "flash_triton", 32768, 0.0, None, "oom"), _case("peer", "hf-sdpa", 32768, 5000.0, 0.37),
             _case("ours", "sdpa", 65536, 0.0, None, "timeout"), _case("peer", "hf-sdpa", 65536, 4000.0, 0.4)]  # fmt: skip
    report = {"devices": ["NVIDIA H100 80GB HBM3"], "versions": {"torch": "2.11.0", "deepspeed": "0.19.8"},
              "settings": {"iters": 8, "warmup": 3, "tiled_loss": True}, "cases": cases}  # fmt: skip
    report["comparisons"] = throughput.comparisons(cases)
    return report


def test_comparisons_use_the_fastest_backend_where_both_ran():
    comps = throughput.comparisons(_synthetic_report()["cases"])
    assert [(c["seq_len"], c["best_backend"]) for c in comps] == [(8192, "flash_triton"), (32768, "sdpa")]
    assert comps[0]["ratio_tokens_per_sec"] == pytest.approx(11000 / 8000)
    assert comps[1]["ratio_tokens_per_sec"] == pytest.approx(6000 / 5000)


def test_runs_without_recomputation_are_compared_only_with_each_other():
    cases = _synthetic_report()["cases"]
    fast = [dict(_case("ours", "sdpa", 32768, 7000.0, 0.5), checkpoint_activations=False),
            dict(_case("peer", "hf-sdpa", 32768, 5600.0, 0.4), checkpoint_activations=False)]  # fmt: skip
    comps = throughput.comparisons(cases + fast)
    at_32k = sorted((c["checkpoint_activations"], c["ratio_tokens_per_sec"]) for c in comps if c["seq_len"] == 32768)
    assert at_32k == [(False, pytest.approx(7000 / 5600)), (True, pytest.approx(6000 / 5000))]
    # a run without recomputation alone (no peer run of its kind) gets no ratio
    assert len(throughput.comparisons(cases + fast[:1])) == 2
    # nor is a run of ours on another ZeRO stage compared with the peer's ZeRO-3 run
    zero1 = dict(_case("ours", "sdpa", 65536, 9000.0, 0.5), zero_stage=1)
    assert [c["seq_len"] for c in throughput.comparisons(cases + [zero1])] == [8192, 32768]
    args = throughput.parse_args(["--nproc", "2", "--backends", "sdpa", "--peer", "--no-recompute", "--seq-lens", "32768", "--dry-run"])
    ours, peer = (throughput.case_command(c, 8, Path("m.jsonl"), []) for c in throughput.plan(args))
    assert "--no-checkpoint-activations" in ours and "--checkpoint-activations" not in ours
    assert "--no-checkpointing" in peer
    assert throughput._zero_stage(ours + ["--zero-stage", "1"]) == 1 and throughput._zero_stage(peer) == 3
    args = throughput.parse_args(["--nproc", "2", "--backends", "sdpa", "--peer", "--seq-lens", "64"])
    ours, peer = (throughput.case_command(c, 8, Path("m.jsonl"), []) for c in throughput.plan(args))
    assert "--zero3-leaf-layers" in ours and "--zero3-leaf-layers" in peer  # the default, in both
    args = throughput.parse_args(["--nproc", "2", "--backends", "sdpa", "--peer", "--no-zero3-leaf-layers", "--seq-lens", "64"])
    ours, peer = (throughput.case_command(c, 8, Path("m.jsonl"), []) for c in throughput.plan(args))
    assert "--no-zero3-leaf-layers" in ours and "--zero3-leaf-layers" not in peer


def test_plot_and_table(tmp_path, capsys, monkeypatch):
    src = tmp_path / "h100.json"
    src.write_text(json.dumps(_synthetic_report()))
    assert plot_throughput.main([str(src)]) == 0
    table = (tmp_path / "h100.md").read_text()
    assert "NVIDIA H100 80GB HBM3" in table and "torch 2.11.0" in table and "iterations 4-8" in table
    assert (
        "| gpt-1.3b | 8,192 | 1 | 1 | ours (flash_triton) | no | 11,000 | 110.0 | 91.7 | 49.0% | 30.0 | 10.500 | ok |"
        in table
    )
    assert "| gpt-1.3b | 32,768 | 1 | 1 | ours (flash_triton) | no | - | - | - | - | - | - | OOM |" in table
    assert "| gpt-1.3b | 65,536 | 1 | 1 | ours (sdpa) | no | - | - | - | - | - | - | timeout |" in table
    assert "| gpt-1.3b | 8,192 | 1 | 1 | full | 11,000 (flash_triton) | hf_alst | 8,000 | 1.38x | 49.0% | 36.0% |" in table
    assert "| gpt-1.3b | 32,768 | 1 | 1 | full | 6,000 (sdpa) | hf_alst | 5,000 | 1.20x | 45.0% | 37.0% |" in table
    assert table.count("x | ") == 2  # no ratio at 65,536, where ours did not finish
    out = capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in out
    else:
        for name in ("h100_tokens_per_sec.png", "h100_mfu.png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # without matplotlib: one clear line, the table still written
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    (tmp_path / "h100.md").unlink()
    assert plot_throughput.main([str(src), "--out-dir", str(tmp_path / "nompl")]) == 0
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert (tmp_path / "nompl" / "h100.md").read_text() == table
    assert not list((tmp_path / "nompl").glob("*.png"))


def test_several_calls_merge_into_one_table(tmp_path, capsys):
    """Cases from several runs: a later case replaces the same system and setting, ratios are
    recomputed over the merged cases, and the sources are listed."""
    first = _synthetic_report()
    second = {**_synthetic_report(), "versions": {"torch": "2.11.0", "deepspeed": "0.19.9"},
              "settings": {"iters": 6, "warmup": 2, "tiled_loss": True},
              "cases": [_case("ours", "sdpa", 65536, 4800.0, 0.5), _case("peer", "hf-sdpa", 8192, 10000.0, 0.4)]}  # fmt: skip
    paths = []
    for i, rep in enumerate((first, second)):
        paths.append(tmp_path / f"call{i}.json")
        paths[-1].write_text(json.dumps(rep))
    with pytest.raises(SystemExit):
        plot_throughput.main([str(p) for p in paths])  # several JSONs need --name
    assert "--name" in capsys.readouterr().err
    assert plot_throughput.main([str(p) for p in paths] + ["--name", "merged"]) == 0
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["merged_from"] == [str(p) for p in paths] and "versions_per_source" in merged
    assert len(merged["cases"]) == len(first["cases"])  # the 65,536 timeout and the 8,192 peer were replaced
    ratios = {c["seq_len"]: c["ratio_tokens_per_sec"] for c in merged["comparisons"]}
    assert ratios == {8192: pytest.approx(11000 / 10000), 32768: pytest.approx(6000 / 5000),
                      65536: pytest.approx(4800 / 4000)}  # fmt: skip
    table = (tmp_path / "merged.md").read_text()
    assert "| gpt-1.3b | 65,536 | 1 | 1 | full | 4,800 (sdpa) | hf_alst | 4,000 | 1.20x |" in table
    assert "settings_per_source" in merged and "iterations 4-8" not in table  # the calls ran different counts


def test_case_timeout_kills_the_whole_job(tmp_path):
    logs = tmp_path / "logs"
    cmd = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--tiny", "--peer-only", "--case-timeout", "3",
           "--out", str(tmp_path / "t.json"), "--log-dir", str(logs)]  # fmt: skip
    subprocess.run(cmd, check=True, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    (case,) = json.loads((tmp_path / "t.json").read_text())["cases"]
    assert case["outcome"] == "timeout" and case["iterations"] == 0 and case["tokens_per_sec_per_gpu"] is None
    survivors = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(logs).encode() in (proc / "cmdline").read_bytes():
                survivors.append(proc.name)
        except OSError:
            continue
    assert not survivors  # torchrun and both workers are gone


def test_a_terminated_benchmark_takes_its_running_case_down_with_it(tmp_path):
    # `timeout 300 python bench/throughput.py ...` sends SIGTERM: the running case's workers must not outlive it
    marker = f"procgroup-marker-{os.getpid()}-{time.time_ns()}"
    grandchild = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', '{marker}']); time.sleep(120)"
    parent = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); from procgroup import run_logged; "
              f"run_logged([sys.executable, '-c', {grandchild!r}, '{marker}'], '.', None, {str(tmp_path / 'log')!r}, 120)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=tmp_path)

    def running():
        out = []
        for p in Path("/proc").glob("[0-9]*"):
            try:
                if marker.encode() in (p / "cmdline").read_bytes() and int(p.name) != proc.pid:
                    out.append(p.name)
            except OSError:
                continue
        return out

    deadline = time.time() + 60
    while len(running()) < 2 and time.time() < deadline:  # the case and its own child
        time.sleep(0.2)
    assert len(running()) >= 2
    proc.terminate()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.time() + 30
    while running() and time.time() < deadline:
        time.sleep(0.2)
    assert not running()


def test_exchanges_are_cases_of_ours_compared_as_one_system():
    args = throughput.parse_args(["--nproc", "2", "--backends", "sdpa", "--exchanges", "deepspeed,overlap", "--peer",
                                  "--seq-lens", "32768", "--dry-run"])  # fmt: skip
    cases = throughput.plan(args)
    assert [(c.kind, c.exchange) for c in cases] == [("ours", "deepspeed"), ("ours", "overlap"), ("peer", "deepspeed")]
    assert len({c.name for c in cases}) == 3  # each case its own log and metrics file
    cmds = [throughput.case_command(c, 8, Path("m.jsonl"), []) for c in cases]
    assert [c[c.index("--ulysses-exchange") + 1] for c in cmds[:2]] == ["deepspeed", "overlap"]
    assert "--ulysses-exchange" not in cmds[2]  # the peer has DeepSpeed's own Ulysses
    assert throughput._exchange(cmds[1] + ["--ulysses-exchange", "fused"], "ours", 2) == "fused"  # an extra flag wins
    assert throughput._exchange(cmds[2], "peer", 2) is None
    # the fastest exchange of ours is compared with the peer; both records stay distinct
    recs = [dict(_case("ours", "sdpa", 32768, 6000.0, 0.4), sp=2, nproc=2, ulysses_exchange="deepspeed"),
            dict(_case("ours", "sdpa", 32768, 6300.0, 0.42), sp=2, nproc=2, ulysses_exchange="overlap"),
            dict(_case("peer", "hf-sdpa", 32768, 5000.0, 0.35), sp=2, nproc=2)]  # fmt: skip
    (comp,) = throughput.comparisons(recs)
    assert comp["best_exchange"] == "overlap" and comp["ratio_tokens_per_sec"] == pytest.approx(6300 / 5000)
    assert throughput.case_key(recs[0]) != throughput.case_key(recs[1])
    with pytest.raises(SystemExit):
        throughput.parse_args(["--nproc", "1", "--exchanges", "deepspeed,fused", "--dry-run"])  # SP=1: nothing to exchange


def test_keep_attention_recomputation_is_its_own_setting():
    """Ours with ``-- --checkpoint-keep-attention`` is recorded as such and not compared with a peer that
    recomputes whole layers."""
    args = throughput.parse_args(["--nproc", "2", "--backends", "sdpa", "--peer", "--seq-lens", "32768", "--dry-run",
                                  "--", "--checkpoint-keep-attention"])  # fmt: skip
    ours, peer = [throughput.case_command(c, 8, Path("m.jsonl"), args.extra if c.kind == "ours" else [])
                  for c in throughput.plan(args)]  # fmt: skip
    assert throughput._switch(ours, "--checkpoint-keep-attention") and not throughput._switch(peer, "--checkpoint-keep-attention")
    assert not throughput._switch(ours + ["--no-checkpoint-keep-attention"], "--checkpoint-keep-attention")
    recs = [dict(_case("ours", "sdpa", 32768, 6000.0, 0.4), checkpoint_keep_attention=True),
            dict(_case("peer", "hf-sdpa", 32768, 5000.0, 0.35))]  # fmt: skip
    assert throughput.comparisons(recs) == []
    assert throughput.comparisons([dict(recs[0], checkpoint_keep_attention=False), recs[1]])
