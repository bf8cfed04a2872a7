"""A converted model trains under SP=2 starting from HF's loss, and its checkpoint converts
back to an HF model that computes what the trained model computes: a GQA Llama, a Qwen2 (q/k/v
biases, a windowed layer, yarn) and a Qwen3 (q/k norms, head dim 16, interleaved windows,
dynamic NTK past its context), a Gemma-2 (sandwich norms, both soft-caps: the final one in the tiled
loss SP=2 uses, the attention one on the classic backend), a Gemma-3 (local RoPE base, scaled global RoPE), a
Phi-4-mini-shaped Phi-3 (fused qkv / gate_up, longrope in its long regime, partial rotary, tied) and a Pythia
(parallel residual, partial rotary, fused per-head qkv) under ZeRO-3, and a GPT-2 under ZeRO-1.

One 2-process run per model serves all tests: it starts from the converted weights (the shape
flags come from model_args.json), logs the first loss, evaluates after the last step and saves
into the same directory.
"""

import json

import pytest
import torch

from tests.hf.conftest import hf_loss, make_family, make_gpt2, make_llama, mock_batch
from tests.hf.test_neox import make_neox
from tests.hf.test_phi3 import make_phi3
from tests.launch import torchrun
from tools.convert_checkpoint import main as convert

SEQ, SEED, GBS = 64, 7, 4
RUN = [
    "--ds-sequence-parallel-size", "2", "--mock-data", "--seq-length", str(SEQ),
    "--micro-batch-size", "2", "--global-batch-size", str(GBS), "--train-iters", "2", "--lr", "3e-3",
    "--log-interval", "1", "--seed", str(SEED), "--num-workers", "0", "--eval-interval", "2", "--eval-iters", "1",
]  # fmt: skip


MODELS = {
    "llama-zero3": (lambda p: make_llama(p, tied=False), "3", "LlamaForCausalLM"),
    "qwen2-zero3": (lambda p: make_family("qwen2", p), "3", "Qwen2ForCausalLM"),
    "qwen3-zero3": (lambda p: make_family("qwen3", p), "3", "Qwen3ForCausalLM"),
    "gpt2-zero1": (make_gpt2, "1", "GPT2LMHeadModel"),
    "gemma2-zero3": (lambda p: make_family("gemma2", p), "3", "Gemma2ForCausalLM"),
    "gemma3-zero3": (lambda p: make_family("gemma3", p), "3", "Gemma3ForCausalLM"),
    "phi3-zero3": (lambda p: make_phi3("partial", p), "3", "Phi3ForCausalLM"),
    "neox-zero3": (lambda p: make_neox("pythia", p), "3", "GPTNeoXForCausalLM"),
}
EXTRA = {"gemma2-zero3": ["--attention-backend", "classic"]}  # its attention soft-cap: classic only


@pytest.fixture(scope="module", params=list(MODELS))
def trained(request, tmp_path_factory):
    make, zero, _ = MODELS[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    hf_model = make(tmp / "hf")
    assert convert(["hf-to-megatron", "--input", str(tmp / "hf"), "--output", str(tmp / "init")]) == 0
    metrics = tmp / "metrics.jsonl"
    # saving into the converted directory: from then on, its `latest` checkpoint is what it holds
    args = RUN + ["--zero-stage", zero, "--load", str(tmp / "init"), "--save", str(tmp / "init")]
    args += EXTRA.get(request.param, [])
    proc = torchrun(2, args, metrics)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "loaded model weights" in proc.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return tmp, hf_model, records, request.param


def test_converted_model_first_loss_sp2_equals_hf_loss(trained):
    _, hf_model, records, _ = trained
    first = next(r for r in records if r.get("iteration") == 1 and "lm_loss" in r)
    # iteration 1's global batch is samples 0..GBS-1 of the training stream (DP 1: micro batch 2 x 2 accumulation steps)
    ref = hf_loss(hf_model, mock_batch(SEQ, SEED, GBS))
    assert abs(first["lm_loss"] - ref) <= 1e-5 * ref, (first["lm_loss"], ref)


def test_checkpoint_to_hf_reproduces_trained_model(trained):
    import transformers

    from megatron.hf import load_checkpoint_any

    tmp, _, records, name = trained
    assert (tmp / "init" / "latest").read_text() == "iter_0000002"
    assert convert(["megatron-to-hf", "--input", str(tmp / "init"), "--output", str(tmp / "back")]) == 0
    hf_model = getattr(transformers, MODELS[name][2]).from_pretrained(tmp / "back").eval()
    # the run evaluated the trained weights on samples 0..GBS-1 of the validation stream (seed + 1)
    valid = next(r["valid_lm_loss"] for r in records if "valid_lm_loss" in r)
    tokens = mock_batch(SEQ, SEED + 1, GBS)
    assert abs(hf_loss(hf_model, tokens) - valid) <= 1e-5 * valid
    ours, _ = load_checkpoint_any(str(tmp / "init"))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf_model(tokens).logits, rtol=0, atol=1e-5)


def test_missing_checkpoint_shard_is_one_line_error(trained, capsys):
    import shutil

    tmp, _, _, name = trained
    broken = tmp / "broken"
    shutil.copytree(tmp / "init", broken)
    # ZeRO-3: one rank's optimizer partition (the fp32 weights); ZeRO-1: the module states file
    zero3 = ("zero_pp_rank_1_mp_rank_00_optim_states.pt", "error: cannot consolidate the ZeRO-3 shards")
    shard, message = zero3 if name.endswith("zero3") else ("mp_rank_00_model_states.pt", "error: ")
    (broken / "iter_0000002" / shard).unlink()
    capsys.readouterr()
    rc = convert(["megatron-to-hf", "--input", str(broken), "--output", str(tmp / "broken_hf")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and err.startswith(message) and ("missing" in err or "found 1 files" in err), err
