"""Which kernels FlashAttention-Triton runs: the Gluon forward and fused backward only where they support
the inputs (their numerics are checked on the GPU in test_flash_attn_triton.py), the Triton kernels
elsewhere, and one line for each saying which."""

import pytest
import torch

from megatron.kernels import attention_gluon_bwd_sm90 as fag
from megatron.kernels import attention_gluon_fwd_sm90 as gfwd
from megatron.kernels import gluon_sm90
from megatron.kernels import interface as fat


def _qk(b=1, s=256, h=4, g=4, d=128, dtype=torch.bfloat16):
    return torch.zeros(b, s, h, d, dtype=dtype), torch.zeros(b, s, g, d, dtype=dtype)


@pytest.mark.parametrize(
    "kwargs,causal,reason",
    [
        ({}, False, "not causal"),
        ({"dtype": torch.float16}, True, "torch.float16 (bf16 only)"),
        ({"d": 32}, True, "head dim 32 (not in (64, 128))"),
        ({"s": 200}, True, "sequence 200 not a multiple of 128"),
        ({}, True, "not an sm_90 GPU"),  # supported inputs, on the CPU
        ({"d": 64, "g": 2}, True, "not an sm_90 GPU"),  # head dim 64 and grouped-query attention too
    ],
)
def test_unsupported_inputs_are_named(kwargs, causal, reason):
    q, k = _qk(**kwargs)
    assert fag.unsupported_reason(q, k, causal) == reason
    assert fat._fused_backward_unsupported(q, k, causal) == reason
    assert gfwd.unsupported_reason(q, k, causal) == reason  # the Gluon forward checks the same first
    assert fat._gluon_forward_unsupported(q, k, causal) == reason


def test_gluon_forward_is_chosen_at_head_dim_128_only(monkeypatch):
    """On an sm_90 GPU (stubbed): head dim 128 runs the Gluon forward, head dim 64 the Triton forward."""
    monkeypatch.setattr(gluon_sm90, "environment_reason", lambda device: None)
    assert gfwd.unsupported_reason(*_qk(d=128, g=2), True) is None
    assert gfwd.unsupported_reason(*_qk(d=64), True) == "head dim 64 (the Triton forward is faster there)"
    assert fag.unsupported_reason(*_qk(d=64), True) is None  # the fused backward runs there


def test_a_window_runs_the_triton_kernels(monkeypatch):
    """The Gluon kernels have no sliding window: with one the Triton kernels run (even on an sm_90 GPU), and asking
    for the Gluon ones raises, saying why."""
    monkeypatch.setattr(gluon_sm90, "environment_reason", lambda device: None)
    q, k = _qk()
    assert fat._gluon_forward_unsupported(q, k, True) is None and fat._fused_backward_unsupported(q, k, True) is None
    assert fat._gluon_forward_unsupported(q, k, True, "auto", 64) == fat.WINDOW_REASON
    assert fat._fused_backward_unsupported(q, k, True, "auto", 64) == fat.WINDOW_REASON
    q, k, v = (torch.randn(1, 40, 2, 16) for _ in range(3))
    with pytest.raises(ValueError, match=r"forward='gluon' cannot run here: sliding window \(the Gluon kernels"):
        fat.flash_attention(q, k, v, window=8, forward="gluon")


def test_triton_kernels_can_be_forced():
    q, k = _qk()
    assert fat._fused_backward_unsupported(q, k, True, "split") == "backward='split'"
    assert fat._gluon_forward_unsupported(q, k, True, "triton") == "forward='triton'"


def test_gluon_kernels_asked_for_where_they_cannot_run_raise_saying_why():
    q, k, v = (torch.randn(1, 40, 2, 16) for _ in range(3))
    with pytest.raises(ValueError, match=r"forward='gluon' cannot run here: torch.float32 \(bf16 only\)"):
        fat.flash_attention(q, k, v, forward="gluon")
    with pytest.raises(ValueError, match=r"backward='fused' cannot run here: torch.float32 \(bf16 only\)"):
        fat.flash_attention(q, k, v, backward="fused")
    with pytest.raises(ValueError, match=r"forward='cudnn'; choose one of \('auto', 'triton', 'gluon'\)"):
        fat.flash_attention(q, k, v, forward="cudnn")
    with pytest.raises(ValueError, match=r"backward='split_kernels'; choose one of \('auto', 'fused', 'split'\)"):
        fat.flash_attention(q, k, v, backward="split_kernels")


def test_each_backward_runs_what_its_forward_chose(monkeypatch, capsys):
    """The choice is the call's: two outputs of one graph, made with different backward= arguments, each run
    their own backward."""
    monkeypatch.setattr(fat, "_NOTED", set())
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 40, 2, 16, requires_grad=True) for _ in range(3))
    split = fat.flash_attention(q, k, v, backward="split")
    auto = fat.flash_attention(q, k, v)
    (split + auto).sum().backward()
    lines = [line for line in capsys.readouterr().out.splitlines() if "backward" in line]
    assert sorted(lines) == [
        "> attention: FlashAttention-Triton backward: split kernels (backward='split')",
        "> attention: FlashAttention-Triton backward: split kernels (torch.float32 (bf16 only))",
    ]


def test_the_choice_is_printed_once(monkeypatch, capsys):
    monkeypatch.setattr(fat, "_NOTED", set())
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 40, 2, 16, requires_grad=True) for _ in range(3))
    for _ in range(2):
        fat.flash_attention(q, k, v, causal=True).sum().backward()
    lines = [line for line in capsys.readouterr().out.splitlines() if "FlashAttention-Triton" in line]
    assert lines == [
        "> attention: FlashAttention-Triton forward: Triton kernel (torch.float32 (bf16 only))",
        "> attention: FlashAttention-Triton backward: split kernels (torch.float32 (bf16 only))",
    ]


def test_makespan_is_greedy_list_scheduling():
    """Each program goes to the SM that frees first: a heavy program last leaves the others idle."""
    assert fag._makespan([4, 1, 1, 1, 1], sms=2) == 4
    assert fag._makespan([1, 1, 1, 1, 4], sms=2) == 6
    assert fag._makespan([3, 3, 3], sms=4) == 3


@pytest.mark.parametrize(
    "units,blocks,group,want",
    [
        (8, 64, 4, True),  # Llama-1B at 8k: per-head leaves the last heads' heavy blocks for the end
        (16, 32, 4, True),  # batch 2 at 4k
        (16, 64, 1, True),  # 16 heads of 64 at 8k
        (8, 128, 4, False),  # 16k: both orders balance within INTERLEAVE_GAIN; per-head keeps its L2 reuse
        (8, 256, 4, False),  # 32k
        (8, 2048, 4, False),  # 256k: not simulated (both balance)
    ],
)
def test_launch_order_by_shape(units, blocks, group, want):
    """The fused backward's launch order at head dim 64 (chosen by shape; fixed per-head at head dim 128), on an
    H200's 132 SMs, at the shapes the order was measured on."""
    assert fag.INTERLEAVED_BY_HEAD_DIM[64] is None and fag.INTERLEAVED_BY_HEAD_DIM[128] is False
    assert fag.interleaved_order(units, blocks, group, 132) is want
