"""bench/profile_step.py: kernels are attributed to the ops (and their callers) that launched them."""

from types import SimpleNamespace as NS

import profile_step  # bench/, on pytest's pythonpath (pyproject.toml)


def test_launched_by_sums_device_time_per_caller_path():
    backward = NS(name="autograd::engine::evaluate_function: SplitBackward0", cpu_parent=None)
    cat = NS(name="aten::cat", cpu_parent=backward, kernels=[NS(name="copy_kernel", duration=3000.0)])
    add = NS(name="aten::add", cpu_parent=NS(name="TransformerLayer", cpu_parent=None),
             kernels=[NS(name="add_kernel", duration=500.0), NS(name="copy_kernel", duration=1000.0)])  # fmt: skip
    prof = NS(events=lambda: [backward, cat, add, cat])
    got = profile_step.launched_by(prof, {"copy_kernel", "add_kernel", "missing"}, steps=2)
    assert got["copy_kernel"] == [
        {"path": "aten::cat < autograd::engine::evaluate_function: SplitBackward0", "ms": 3.0},
        {"path": "aten::add < TransformerLayer", "ms": 0.5},
    ]
    assert got["add_kernel"] == [{"path": "aten::add < TransformerLayer", "ms": 0.25}]
    assert got["missing"] == []


def test_our_attention_kernels_count_as_attention_and_rope_does_not():
    from profile_step import category

    for name in ("_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel", "_bwd_delta_kernel", "_attn_bwd_kernel",
                 "_attn_fwd_kernel", "cudnn_generated_fort_native_sdpa_sm90_flash_fprop"):
        assert category(name) == "attention", name
    for name, cat in (("_rope_kernel", "elementwise/norm/other"), ("nvjet_sm90_tst_128x256", "matmul"),
                      ("_swiglu_fwd_kernel", "elementwise/norm/other"), ("_swiglu_bwd_kernel", "elementwise/norm/other"),
                      ("_loss_kernel", "elementwise/norm/other")):
        assert category(name) == cat, name


def test_gpu_user_annotations_are_not_kernels():
    """``Optimizer.step#AdamW.step`` shows on the GPU timeline as a span over the kernels it launched: counted, it
    would add the optimizer's time twice."""
    def evt(key, us, annotation=False):
        return NS(key=key, self_device_time_total=us, device_type=NS(name="CUDA"), is_user_annotation=annotation,
                  self_cpu_time_total=0, count=1, name=key, time_range=NS(start=0, end=us), kernels=[], cpu_parent=None)
    events = [evt("multi_tensor_apply_kernel", 10000.0), evt("Optimizer.step#AdamW.step", 10100.0, annotation=True)]
    prof = NS(key_averages=lambda: events, events=lambda: events)
    got = profile_step.summarize(prof, steps=1, wall_s=0.02)
    assert got["kernel_ms_per_step"] == 10.0
    assert got["compute_busy_ms_per_step"] == 10.0


def _evt(name, start, end, device="CPU", thread=1):
    return NS(name=name, time_range=NS(start=start, end=end), device_type=NS(name=device), thread=thread,
              is_user_annotation=False)  # fmt: skip


def test_gpu_idle_is_split_by_the_innermost_host_phase_and_op():
    """Kernels 0-10, 20-30, 50-60 ms (in us) leave gaps 10-20 and 30-50: each piece goes to what the trainer's thread
    was inside meanwhile; another thread's ops do not count."""
    ms = 1000
    events = [_evt(f"k{i}", a * ms, b * ms, device="CUDA") for i, (a, b) in enumerate(((0, 10), (20, 30), (50, 60)))]
    events += [
        _evt("phase: engine.step", 5 * ms, 45 * ms),
        _evt("phase: engine.optimizer.has_overflow", 12 * ms, 18 * ms),
        _evt("aten::item", 12 * ms, 16 * ms),
        _evt("cudaStreamSynchronize", 13 * ms, 15 * ms),
        _evt("aten::other_thread", 0, 60 * ms, thread=2),
    ]
    by_phase, by_op = profile_step.idle_by_host(NS(events=lambda: events), steps=2)
    assert by_phase == {"engine.step": 9.5, "engine.optimizer.has_overflow": 3.0, "(none)": 2.5}
    assert by_op == {"(none)": 13.0, "cudaStreamSynchronize": 1.0, "aten::item": 1.0}


def test_phases_are_wrapped_from_outside_and_keep_their_results():
    import torch

    class Batches:
        def of_step(self, ds, step, gas):
            return [ds, step, gas]

    trainer = NS(batches=Batches(), engine=NS(forward=lambda x: x + 1))
    wrapped = profile_step.annotate_phases(trainer)
    assert wrapped == ["batches.of_step", "engine.forward"]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        assert trainer.batches.of_step("ds", 3, 1) == ["ds", 3, 1]
        assert trainer.engine.forward(1) == 2
    names = {e.name for e in prof.events()}
    assert {"phase: batches.of_step", "phase: engine.forward"} <= names
