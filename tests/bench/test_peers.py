"""The optional peers of bench/throughput.py: torchtitan's and ArcticTraining's runners (their runs are skipped
where the peer is not installed: torchtitan importable here, ArcticTraining in ``$ARCTIC_PYTHON``'s environment)."""

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import peer_torchtitan  # bench/, on pytest's pythonpath
import pytest
import throughput  # bench/

from megatron.arguments import parse_args
from megatron.training import metrics
from tests.launch import ROOT, env


@pytest.mark.parametrize("shape", ["gpt-1.3b", "llama-1b", "tiny"])
def test_torchtitan_swiglu_width_and_model_flops_match_ours(shape):
    s = throughput.SHAPES[shape]
    base = int(2 * 4 * s.hidden / 3)  # torchtitan's FeedForward arithmetic, mirrored by ffn_width
    args = types.SimpleNamespace(dim=s.hidden, multiple_of=peer_torchtitan.MULTIPLE_OF,
                                 ffn_dim_multiplier=(s.peer_ffn - 0.5) / base, n_layers=s.layers, n_heads=s.heads,
                                 n_kv_heads=s.kv_heads, vocab_size=-(-s.vocab // 128) * 128)  # fmt: skip
    assert peer_torchtitan.ffn_width(args) == s.peer_ffn
    ours = parse_args(s.megatron_flags()).model
    peer = peer_torchtitan.megatron_model_config(args, 8192)
    for seq in (8192, 32768):
        ratio = metrics.model_flops_per_token(peer, seq) / metrics.model_flops_per_token(ours, seq)
        assert abs(ratio - 1) < 0.01, (shape, seq, ratio)


def test_peers_flag_plans_one_case_per_peer_and_compares_each():
    args = throughput.parse_args(["--seq-lens", "8192", "--backends", "sdpa", "--peers", "hf_alst,torchtitan"])
    cases = throughput.plan(args)
    assert [(c.kind, c.backend) for c in cases] == [("ours", "sdpa"), ("peer", "hf-sdpa"), ("peer", "torchtitan-sdpa")]
    cmd = throughput.case_command(cases[2], 5, Path("m.jsonl"), ["--ac-mode", "op"])
    assert cmd[5].endswith("peer_torchtitan.py") and "--bf16" in cmd and cmd[-2:] == ["--ac-mode", "op"]
    assert throughput.parse_args(["--peer"]).peers == ["hf_alst"]  # --peer keeps meaning hf_alst
    with pytest.raises(SystemExit):
        throughput.parse_args(["--peers", "megatron-lm"])
    recs = [{"kind": c.kind, "backend": c.backend, "shape": c.shape, "seq_len": 8192, "nproc": 1, "sp": 1,
             "precision": "bf16", "tiled_mlp": False, "tiled_loss": True, "outcome": "ok",
             "tokens_per_sec_per_gpu": tps, "zero3_leaf_layers": True, "zero_stage": 3,
             "peer": {"ac_mode": "none", "versions": {"torchtitan": "0.2.2"}} if c.backend.startswith("torch") else None}
            for c, tps in zip(cases, (300.0, 200.0, 600.0))]  # fmt: skip
    comps = {c["peer"]: c for c in throughput.comparisons(recs)}
    assert comps["hf_alst"]["ratio_tokens_per_sec"] == 1.5 and comps["torchtitan"]["ratio_tokens_per_sec"] == 0.5
    assert comps["torchtitan"]["peer_settings"] == {"version": "0.2.2", "ac_mode": "none"}


def test_torchtitan_runner_trains_the_tiny_shape_on_cpu(tmp_path):
    torchtitan = pytest.importorskip("torchtitan")
    pytest.importorskip("tyro")
    pytest.importorskip("datasets")
    out = tmp_path / "tt.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           str(ROOT / "bench" / "peer_torchtitan.py"), "--shape", "tiny", "--seq-length", "128", "--iters", "3",
           "--no-compile", "--ac-mode", "op", "--dump-folder", str(tmp_path), "--metrics-file", str(out),
           "--profile-out", str(tmp_path / "profile.json"), "--profile-steps", "1"]  # fmt: skip
    site = str(Path(torchtitan.__file__).parents[1])  # where it is installed (a --target directory, say)
    run_env = env()
    run_env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [run_env.get("PYTHONPATH"), site])))
    proc = subprocess.run(cmd, env=run_env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    meta, recs = lines[0]["peer"], lines[1:]
    assert meta["ffn_width"] == 192 and meta["ac_mode"] == "op" and meta["model_args"]["vocab_size"] == 512
    ours = metrics.model_flops_per_token(parse_args(throughput.SHAPES["tiny"].megatron_flags()).model, 128)
    assert abs(meta["model_flops_per_token"] / ours - 1) < 0.01
    assert len(recs) == 3 and all(r["tokens_per_sec_per_gpu"] > 0 and r["grad_norm"] > 0 for r in recs)
    assert recs[-1]["lm_loss"] < recs[0]["lm_loss"] + 0.5
    profile = json.loads((tmp_path / "profile.json").read_text())  # the last iteration, profiled
    assert profile["steps"] == 1 and profile["peer"]["ac_mode"] == "op" and profile["step_wall_ms"] > 0
    assert profile["top_cpu_ops_ms_per_step"]  # on CPU: host ops only


@pytest.mark.parametrize("shape", ["gpt-1.3b", "llama-1b"])
def test_torchtitan_builds_the_shapes_swiglu_width(shape):
    pytest.importorskip("torchtitan")
    pytest.importorskip("tyro")
    import torch
    from torchtitan.models.llama3.model.model import Transformer

    targs = peer_torchtitan.model_args(shape, 8192)
    with torch.device("meta"):
        model = Transformer(targs)
    ffn = model.layers["0"].feed_forward
    assert ffn.w1.out_features == ffn.w3.out_features == throughput.SHAPES[shape].peer_ffn
    assert model.output.out_features == -(-throughput.SHAPES[shape].vocab // 128) * 128


def test_iteration_record_and_writer_give_our_metrics_fields(tmp_path, capsys):
    import report  # bench/

    rec = report.iteration_record(3, 2.5, 0.5, 4096, 2, 4e12, 2e12, 1e15, 1.25, torch_scalar(7.0))
    assert rec["tokens_per_sec"] == 8192 and rec["tokens_per_sec_per_gpu"] == 4096
    assert rec["tflops"] == 4.0 and rec["model_tflops"] == 2.0 and rec["mfu"] == 2e12 / 1e15
    assert rec["grad_norm"] == 7.0 and isinstance(rec["grad_norm"], float)
    assert report.iteration_record(1, 1.0, 1.0, 1, 1, 1.0, 1.0, None, None, None)["mfu"] is None
    path = tmp_path / "m.jsonl"
    with open(path, "w") as out:
        report.write_iteration(out, rec, "arctic", 8)
    report.write_iteration(None, rec, "arctic", 8)  # not rank 0: nothing written, nothing printed
    assert [json.loads(x) for x in path.read_text().splitlines()] == [rec]
    assert capsys.readouterr().out.count("arctic iteration 3/8 | loss 2.5000") == 1


def torch_scalar(v):
    import torch

    return torch.tensor(v)


# ---------------------------------------------------------------------------------------------- ArcticTraining
@pytest.mark.parametrize("shape", ["gpt-1.3b", "llama-1b", "tiny"])
def test_arctic_llama_config_has_our_model_flops(shape):
    import peer_arctic

    hf = peer_arctic.llama_config_dict(shape, 8192)
    assert hf["vocab_size"] % 128 == 0 and hf["intermediate_size"] == throughput.SHAPES[shape].peer_ffn
    ours = parse_args(throughput.SHAPES[shape].megatron_flags()).model
    for seq in (8192, 131072):
        ratio = (metrics.model_flops_per_token(peer_arctic.megatron_model_config(hf, seq), seq)
                 / metrics.model_flops_per_token(ours, seq))  # fmt: skip
        assert abs(ratio - 1) < 0.01, (shape, seq, ratio)


def test_arctic_config_is_the_alst_recipe_and_records_it(tmp_path):
    import peer_arctic

    def cfg(seq, world, *flags):
        args = peer_arctic.parse_args(["--shape", "tiny", "--seq-length", str(seq), "--bf16", *flags])
        return peer_arctic.trainer_config(args, world, tmp_path / "model", tmp_path / "out")

    short, long_ = cfg(32768, 1), cfg(131072, 2)
    assert short["sequence_parallel_size"] == 1 and long_["sequence_parallel_size"] == 2
    # CPU offload of the checkpoints from 64K tokens per GPU on: 128K over 2 GPUs is 64K each
    assert not short["activation_checkpoint_cpu_offload"] and long_["activation_checkpoint_cpu_offload"]
    assert not cfg(131072, 4)["activation_checkpoint_cpu_offload"]
    assert cfg(32768, 1, "--ac-mode", "offload")["activation_checkpoint_cpu_offload"]
    s = peer_arctic.settings(long_)
    assert s["tiled_mlp_compute"] and s["tiled_loss"] and s["activation_checkpointing"] and s["zero_stage"] == 3
    assert not peer_arctic.settings(short)["tiled_loss"]  # at SP 1 ArcticTraining uses transformers' loss
    off = peer_arctic.settings(cfg(8192, 1, "--ac-mode", "none", "--no-tiled-mlp"))
    assert not off["activation_checkpointing"] and not off["tiled_mlp_compute"]
    assert not off["activation_checkpoint_cpu_offload"]
    full = peer_arctic.settings(cfg(131072, 1, "--ac-mode", "full"))
    assert full["activation_checkpointing"] and not full["activation_checkpoint_cpu_offload"]
    with pytest.raises(SystemExit, match="not a multiple of the SP size 3"):
        cfg(8192, 3)


def test_arctic_peer_is_planned_launched_in_its_environment_and_compared(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCTIC_PYTHONPATH", "/opt/arctic_site")
    args = throughput.parse_args(["--seq-lens", "8192,131072", "--backends", "flash_triton", "--peers", "arctic",
                                  "--tiled-mlp", "auto", "--arctic-python", "/opt/arctic/bin/python"])  # fmt: skip
    cases = [c for c in throughput.plan(args) if c.kind == "peer"]
    assert [c.backend for c in cases] == ["arctic-sdpa", "arctic-sdpa"] and throughput.peer_name(cases[0]) == "arctic"
    short, long_ = (throughput.case_command(c, 5, tmp_path / "m.jsonl", throughput.case_extra(c, args),
                                            args.arctic_python) for c in cases)  # fmt: skip
    assert short[0] == "/opt/arctic/bin/python" and short[5].endswith("peer_arctic.py")
    assert "--bf16" in short and "--no-tiled-mlp" in short and "--no-tiled-mlp" not in long_  # the tiling of ours
    path = throughput.case_env(cases[0], args)["PYTHONPATH"].split(os.pathsep)
    assert path[:2] == ["/opt/arctic_site", str(ROOT)]  # its transformers 4.x before anything else
    assert "/opt/arctic_site" not in throughput.case_env(throughput.plan(args)[0], args).get("PYTHONPATH", "")
    with pytest.raises(SystemExit):  # it runs SP = the GPU count
        throughput.parse_args(["--peers", "arctic", "--nproc", "2", "--sp", "1"])
    rec = {"kind": "peer", "backend": "arctic-sdpa", "peer": {"versions": {"arctic_training": "0.8.0"}, "settings": {
        "ac_mode": "offload", "tiled_mlp_compute": True, "tiled_loss": False, "sequence_parallel_size": 1}}}
    assert throughput._peer_settings(rec) == {"version": "0.8.0", "ac_mode": "offload", "tiled_mlp_compute": True,
                                              "tiled_loss": False, "sequence_parallel_size": 1}  # fmt: skip
    import plot_throughput  # bench/

    assert plot_throughput.system_label(rec) == "peer (arctic-sdpa, AC offload)"


def _arctic_python():
    """An interpreter that imports ArcticTraining: ``$ARCTIC_PYTHON`` (with ``$ARCTIC_PYTHONPATH``), else this one."""
    python = os.environ.get("ARCTIC_PYTHON", sys.executable)
    run_env = dict(os.environ, PYTHONPATH=os.environ.get("ARCTIC_PYTHONPATH", ""))
    probe = subprocess.run([python, "-c", "import arctic_training"], env=run_env, capture_output=True, check=False)
    if probe.returncode:
        pytest.skip("ArcticTraining is not installed (set ARCTIC_PYTHON / ARCTIC_PYTHONPATH to its environment)")
    return python


def test_arctic_runner_trains_the_tiny_shape_at_sp2_on_cpu(tmp_path):
    python = _arctic_python()
    out = tmp_path / "t.json"
    assert throughput.main(["--tiny", "--peer-only", "--peers", "arctic", "--arctic-python", python,
                            "--arctic-arg=--ac-mode=full", "--out", str(out), "--log-dir", str(tmp_path)]) == 0  # fmt: skip
    (case,) = json.loads(out.read_text())["cases"]
    assert case["outcome"] == "ok", case["error"]
    meta = case["peer"]
    ours = metrics.model_flops_per_token(parse_args(throughput.SHAPES["tiny"].megatron_flags()).model, 128)
    assert abs(meta["model_flops_per_token"] / ours - 1) < 0.01 and meta["sp"] == 2
    assert meta["settings"]["ac_mode"] == "full" and meta["settings"]["tiled_mlp_compute"]
    assert meta["settings"]["tiled_loss"] and not meta["model_config"]["tie_word_embeddings"]  # untied at SP 2
    # the model's own init (std 0.02) is applied under ZeRO-3: the first loss is that of uniform logits
    assert abs(case["losses"][0] - math.log(512)) < 0.1, case["losses"]
    assert case["tokens_per_sec_per_gpu"] > 0 and all(g > 0 for g in case["grad_norms"])
