"""SP=N reproduces SP=1: same per-step loss and gradient norm, GPT and Llama shapes, ZeRO-1 and ZeRO-3."""

import json

import pytest

from tests.launch import TINY_GPT, TINY_LLAMA, TRAIN, assert_close_records, torchrun, train_records

SHAPES = {"gpt": TINY_GPT, "llama": TINY_LLAMA}


@pytest.fixture(scope="module")
def reference(sp1_reference):
    return sp1_reference  # tests/conftest.py: SP=1 ZeRO-1, shared with the ALST equivalence tests


# Each shape at SP 2 and 4 and ZeRO 1, 2 and 3. The other pairs are trained below too: GPT at SP=2 ZeRO-3
# (leaf layers, overlapped exchange), Llama at SP=2 ZeRO-1 and SP=4 ZeRO-3 (with the attention features).
@pytest.mark.parametrize("shape,sp,zero", [("gpt", 2, 1), ("gpt", 2, 2), ("gpt", 4, 3),
                                           ("llama", 4, 1), ("llama", 2, 2), ("llama", 2, 3)])  # fmt: skip
def test_spN_loss_and_grad_norm_equal_sp1(reference, tmp_path, shape, sp, zero):
    got = train_records(
        tmp_path, f"{shape}_sp{sp}_z{zero}", sp, SHAPES[shape] + TRAIN + ["--ds-sequence-parallel-size", str(sp), "--zero-stage", str(zero)]
    )
    ref = reference[shape]
    assert ref[-1]["lm_loss"] < ref[0]["lm_loss"], "the reference run must learn something"
    assert_close_records(ref, got, what=f"{shape} SP={sp} ZeRO-{zero}")


def test_dp2_equals_sp2_with_two_accumulation_steps(tmp_path):
    """ALST's correctness test: DP=2/SP=1/GAS=1 and DP=1/SP=2/GAS=2 see the same data and loss."""
    args = TINY_LLAMA + TRAIN + ["--micro-batch-size", "1", "--global-batch-size", "2", "--zero-stage", "1"]
    dp2 = train_records(tmp_path, "dp2", 2, args)
    sp2 = train_records(tmp_path, "sp2_gas2", 2, args + ["--ds-sequence-parallel-size", "2"])
    assert_close_records(dp2, sp2, what="DP=2 vs SP=2 x GAS=2")


@pytest.mark.parametrize("shape", list(SHAPES))
def test_zero3_leaf_layers_equal_sp1(reference, tmp_path, shape):
    """--zero3-leaf-layers (one ZeRO-3 gather per layer, with recomputation) trains exactly like SP=1."""
    args = SHAPES[shape] + TRAIN + ["--ds-sequence-parallel-size", "2", "--zero-stage", "3", "--zero3-leaf-layers",
                                    "--checkpoint-activations"]  # fmt: skip
    proc = torchrun(2, args, tmp_path / "leaf.jsonl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "> ZeRO-3: 2 transformer layers gathered as whole modules" in proc.stdout
    got = [json.loads(line) for line in (tmp_path / "leaf.jsonl").read_text().splitlines() if "lm_loss" in line]
    assert_close_records(reference[shape], got, what=f"{shape} ZeRO-3 leaf layers")


def test_overlapped_exchange_trains_like_sp1(reference, tmp_path):
    """--ulysses-exchange overlap (two head chunks per rank, their exchanges pipelined with the
    attention) under ZeRO-3 with recomputation trains exactly like SP=1."""
    args = TINY_GPT + TRAIN + ["--ds-sequence-parallel-size", "2", "--zero-stage", "3", "--checkpoint-activations",
                               "--ulysses-exchange", "overlap", "--ulysses-overlap-chunks", "2"]  # fmt: skip
    proc = torchrun(2, args, tmp_path / "overlap.jsonl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--ulysses-overlap-chunks" not in proc.stdout  # 4 heads / SP 2: two chunks, no reduction
    got = [json.loads(line) for line in (tmp_path / "overlap.jsonl").read_text().splitlines() if "lm_loss" in line]
    assert_close_records(reference["gpt"], got, what="gpt SP=2 ZeRO-3 overlapped exchange")


@pytest.mark.parametrize("shape,zero", [("llama", 3), ("gpt", 1)])
def test_keep_attention_checkpointing_trains_like_sp1(reference, tmp_path, shape, zero):
    """--checkpoint-keep-attention (each layer checkpointed around its attention, which with its
    all-to-alls runs once) at SP=2 trains exactly like SP=1, under ZeRO-3 with leaf layers and ZeRO-1."""
    args = SHAPES[shape] + TRAIN + ["--ds-sequence-parallel-size", "2", "--zero-stage", str(zero),
                                    "--checkpoint-activations", "--checkpoint-keep-attention"]  # fmt: skip
    got = train_records(tmp_path, f"keep_attention_{shape}_z{zero}", 2, args)
    assert_close_records(reference[shape], got, what=f"{shape} SP=2 ZeRO-{zero} keep-attention checkpointing")


def test_attention_output_checkpointing_trains_like_sp1(reference, tmp_path):
    """--recompute attention_output (each layer keeps its input and its attention's output and log-sum-exp; the
    attention's backward runs from them) at SP=2 under ZeRO-3 with leaf layers trains exactly like SP=1."""
    args = TINY_LLAMA + TRAIN + ["--ds-sequence-parallel-size", "2", "--zero-stage", "3", "--zero3-leaf-layers",
                                 "--recompute", "attention_output", "--attention-backend", "classic"]  # fmt: skip
    got = train_records(tmp_path, "attention_output_llama_z3", 2, args)
    assert_close_records(reference["llama"], got, what="llama SP=2 ZeRO-3 attention-output checkpointing")


# Qwen-style attention on the tiny Llama: head dim 24 (8 x 24 != 64), q/k/v biases without an output bias,
# q/k norms, and dynamic-NTK RoPE past its 32-token context (its length is the maximum over the SP ranks).
ATTENTION_FEATURES = TINY_LLAMA + [
    "--kv-channels", "24", "--add-qkv-bias", "--qk-layernorm", "--rope-scaling-type", "dynamic",
    "--rope-scaling-factor", "2", "--max-position-embeddings", "32",
]  # fmt: skip


def test_sp2_sp4_equal_sp1_with_head_dim_qkv_bias_qk_norm_and_scaled_rope(tmp_path):
    ref = train_records(tmp_path, "features_sp1", 1, ATTENTION_FEATURES + TRAIN + ["--zero-stage", "1"])
    assert ref[-1]["lm_loss"] < ref[0]["lm_loss"], "the reference run must learn something"
    for sp, zero in ((2, 1), (4, 3)):
        args = ATTENTION_FEATURES + TRAIN + ["--ds-sequence-parallel-size", str(sp), "--zero-stage", str(zero)]
        got = train_records(tmp_path, f"features_sp{sp}_z{zero}", sp, args)
        assert_close_records(ref, got, what=f"attention features SP={sp} ZeRO-{zero}")
