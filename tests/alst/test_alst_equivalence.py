"""Each ALST memory feature, alone and combined, leaves the training losses unchanged (fp32, 1e-5 relative).

The reference is the plain SP=1 ZeRO-1 run of the same shape. ZeRO-3 runs partition every
parameter (persistence threshold 0), so the tiled/offloaded recomputations really go
through ZeRO-3's gather hooks; uneven shard counts and chunk sizes exercise the remainders.
"""

import json

import pytest

from tests.launch import TINY_GPT, TINY_LLAMA, TRAIN, assert_close_records, train_records

SHAPES = {"gpt": TINY_GPT, "llama": TINY_LLAMA}
MLP = ["--tiled-mlp-compute", "--tiled-mlp-shards", "3"]  # 2 x 32 local tokens -> uneven shards
LOSS = ["--tiled-logits-loss", "--tiled-logits-chunk-size", "24"]
CKPT = ["--checkpoint-activations", "--checkpoint-in-cpu"]
OFFLOAD = ["--offload-param", "--offload-optimizer"]
COMM = ["--seq-parallel-communication-data-type", "fp32", "--reduce-bucket-size", "2000"]

# (id, shape, SP, ZeRO, extra flags)
RUNS = [
    ("sp1_z1_tiled_mlp", "llama", 1, 1, MLP),
    ("sp1_z1_tiled_loss", "llama", 1, 1, LOSS),
    ("sp1_z1_ckpt_in_cpu", "llama", 1, 1, CKPT),
    ("sp2_z1_default_tiled_loss", "llama", 2, 1, []),
    ("sp2_z1_all_comm", "llama", 2, 1, MLP + LOSS + CKPT + COMM),
    ("sp2_z3_all", "llama", 2, 3, MLP + LOSS + CKPT),
    ("sp2_z3_offload", "llama", 2, 3, OFFLOAD + ["--no-tiled-logits-loss"]),
    ("sp2_z3_all_offload", "gpt", 2, 3, MLP + LOSS + CKPT + OFFLOAD),
    ("sp2_z2_ckpt_tiled_mlp_untiled_loss", "gpt", 2, 2, MLP + ["--checkpoint-activations", "--no-tiled-logits-loss"]),
]


@pytest.fixture(scope="module")
def reference(sp1_reference):
    return sp1_reference  # tests/conftest.py: SP=1 ZeRO-1, shared with the SP equivalence tests


@pytest.fixture(scope="module")
def zero3_partition_all(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "z3.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}))
    return ["--deepspeed_config", str(path)]


@pytest.mark.parametrize("name,shape,sp,zero,extra", RUNS, ids=[r[0] for r in RUNS])
def test_alst_feature_keeps_losses(reference, zero3_partition_all, tmp_path, name, shape, sp, zero, extra):
    args = SHAPES[shape] + TRAIN + ["--ds-sequence-parallel-size", str(sp), "--zero-stage", str(zero)] + extra
    if zero == 3:
        args += zero3_partition_all
    got = train_records(tmp_path, name, sp, args)
    ref = reference[shape]
    assert ref[-1]["lm_loss"] < ref[0]["lm_loss"], "the reference run must learn something"
    assert_close_records(ref, got, rtol=1e-5, grad_rtol=1e-4, what=f"{name} ({shape})")
