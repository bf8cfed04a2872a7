"""The recomputation planner (``--recompute auto``, megatron/training/recompute_plan.py): plans on given budgets
(fastest policies first, degrading as the budget shrinks, each fitting), the too-small refusal naming the longest
length that fits, the per-policy memory model against the bytes autograd saves for a real layer, the one-line plan
of a tiny run, and losses of planned and forced policies equal to full recomputation's."""

import json

import pytest
import torch

from megatron.config import AttentionConfig, ConfigError, ModelConfig
from megatron.model.attention import classic_attention_backward, classic_attention_lse
from megatron.model.gpt import GPTModel
from megatron.parallelize import _layers, apply_checkpointing, apply_tiled_mlp
from megatron.training.recompute_plan import (
    GB,
    POLICY_ORDER,
    LayerShape,
    layer_bytes_per_token,
    plan_recompute,
    planned_peak,
)  # fmt: skip
from tests.launch import TINY_LLAMA, TRAIN, assert_close_records, torchrun, train_records

# GPT-1.3B-like: 24 layers, hidden 2048, 16 heads
SHAPE = LayerShape(hidden=2048, heads=16, kv_heads=16, head_dim=128, ffn=8192, gated=False, layers=24, vocab=50304)
KW = dict(local_seq=32768, micro_batch=1, tiled_mlp=True, tiled_loss=True)
SPEED = {p: i for i, p in enumerate(POLICY_ORDER)}


def test_huge_budget_keeps_everything():
    plan = plan_recompute(SHAPE, budget_bytes=10**15, **KW)
    assert plan.policies == ["none"] * 24 and plan.planned_peak_bytes <= plan.budget_bytes
    assert plan.summary().startswith("recompute: 24 layers none (budget 1000000.0 GB, planned peak")


@pytest.mark.parametrize("allowed", [POLICY_ORDER, ("none", "attention_output", "full")])
def test_shrinking_budget_degrades_in_order(allowed):
    top = plan_recompute(SHAPE, budget_bytes=10**15, **KW).planned_peak_bytes
    last_peak, last_speed, seen = None, None, set()
    for budget in [int(top * f / 40) for f in range(40, 0, -1)]:
        try:
            plan = plan_recompute(SHAPE, budget_bytes=budget, allowed=allowed, **KW)
        except ConfigError:
            break
        assert plan.planned_peak_bytes <= budget
        speed = sorted(SPEED[p] for p in plan.policies)
        if last_peak is not None:
            assert plan.planned_peak_bytes <= last_peak
            assert sum(speed) >= sum(last_speed)  # never faster with less memory
        # layers ordered fastest first
        assert [SPEED[p] for p in plan.policies] == speed
        last_peak, last_speed = plan.planned_peak_bytes, speed
        seen.update(plan.policies)
    # with offload, mixing attention_output and offload layers costs less recompute than full layers
    assert seen == ({"none", "attention_output", "offload"} if "offload" in allowed else set(allowed))
    assert "keep_attention" not in seen  # dominated by attention_output: same recompute, more memory


def test_keep_attention_without_lse_backend():
    budget = planned_peak(SHAPE, ["keep_attention"] * 24, 32768, tiled_mlp=True, tiled_loss=True)
    plan = plan_recompute(SHAPE, budget_bytes=budget, allowed=("none", "keep_attention", "full", "offload"), **KW)
    assert "attention_output" not in plan.policies and "keep_attention" in plan.policies


def test_too_small_names_longest_length():
    budget = 3 * GB
    with pytest.raises(ConfigError) as e:
        plan_recompute(SHAPE, budget_bytes=budget, sp=4, **{**KW, "local_seq": 131072})
    msg = str(e.value)
    assert "\n" not in msg and "--ds-sequence-parallel-size" in msg and "--tiled-mlp-compute" in msg
    longest = int(msg.split("the longest --seq-length that fits is ")[1].split()[0])
    assert longest % 4 == 0
    plan_recompute(SHAPE, budget_bytes=budget, sp=4, **{**KW, "local_seq": longest // 4})
    with pytest.raises(ConfigError):
        plan_recompute(SHAPE, budget_bytes=budget, sp=4, **{**KW, "local_seq": longest // 4 + 1})


class _FlashLike(torch.autograd.Function):
    """A core attention that saves what flash attention saves: q, k, v, the output and the LSE."""

    @staticmethod
    def forward(ctx, q, k, v):
        out, lse = classic_attention_lse(q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, dout):
        return classic_attention_backward(*ctx.saved_tensors, dout)


class _Core(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.returns_lse = inner, inner.returns_lse

    def forward(self, q, k, v, document_ids=None):
        return _FlashLike.apply(q, k, v)


def _saved_bytes_per_token(policy, gated, tiled, norm, s=16, b=2):
    torch.manual_seed(0)
    cfg = ModelConfig(num_layers=1, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                      make_vocab_size_divisible_by=64, use_rotary_position_embeddings=True, normalization=norm,
                      swiglu=gated, seq_length=s)  # fmt: skip
    model = GPTModel(cfg, AttentionConfig(backend="classic")).train()
    if policy in ("none", "keep_attention"):  # the autograd core keeps its probabilities; flash keeps q, k, v, out, lse
        for a in [m for m in model.modules() if hasattr(m, "core_attention")]:
            a.core_attention = _Core(a.core_attention)
    if tiled:
        apply_tiled_mlp(model, 2)
    apply_checkpointing(model, "full" if policy == "offload" else policy, policy == "offload")
    x = torch.randn(b, s, 32, requires_grad=True)
    pos = torch.arange(s)[None].expand(b, s)
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()} | {pos.untyped_storage().data_ptr()}
    store = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip and t.numel():
            store[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.run_layer(_layers(model)[0], x, pos)
    return sum(store.values()) / (b * s), LayerShape.of(cfg)


@pytest.mark.parametrize("policy", ["none", "attention_output", "attention_output_offload", "keep_attention", "full"])
@pytest.mark.parametrize("gated,tiled,norm", [(True, False, "RMSNorm"), (False, False, "LayerNorm"),
                                              (True, True, "RMSNorm")])  # fmt: skip
def test_memory_model_matches_saved_tensors(policy, gated, tiled, norm):
    got, shape = _saved_bytes_per_token(policy, gated, tiled, norm)
    want = layer_bytes_per_token(shape, policy, 4, tiled)
    assert abs(got - want) <= 0.01 * want + 8, (policy, got, want)


def test_plan_line_and_losses_equal_full(tmp_path):
    args = TINY_LLAMA + TRAIN + ["--zero-stage", "1", "--attention-backend", "classic"]
    ref = train_records(tmp_path, "full", 1, args + ["--recompute", "full"])
    # 2 layers x 2 x 64 tokens: a budget between all-none and all-attention_output's peaks
    shape = LayerShape(64, 8, 2, 8, ModelConfig(hidden_size=64, swiglu=True).ffn_hidden_size, True, 2, 128)
    lo = planned_peak(shape, ["attention_output"] * 2, 128, dtype_bytes=4)
    hi = planned_peak(shape, ["none"] * 2, 128, dtype_bytes=4)
    budget = (lo + hi) / 2 / GB
    metrics = tmp_path / "auto.jsonl"
    proc = torchrun(1, args + ["--activation-memory-budget", f"{budget:.9f}"], metrics)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    got = [json.loads(line) for line in metrics.read_text().splitlines() if "lm_loss" in line]
    assert_close_records(ref, got, what="planned mix")
    lines = [ln for ln in out.splitlines() if "recompute:" in ln]
    assert lines, out[-2000:]
    assert "1 layers none, 1 attention_output (budget" in lines[0] and "planned peak" in lines[0]
    for policy in ("keep_attention", "offload", "attention_output_offload"):
        assert_close_records(ref, train_records(tmp_path, policy, 1, args + ["--recompute", policy]), what=policy)
