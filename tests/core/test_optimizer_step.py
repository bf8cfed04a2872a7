"""megatron.training.optimizer_step: DeepSpeed's ZeRO-1/3 step with per-tensor fp32 norms and the unscale/clip inside torch's
fused AdamW gives the same parameters and gradient norms as DeepSpeed's own step (CPU, gloo, one and two ranks, a partition with
padding; clipping active on every step), and it leaves optimizers it does not recognise alone."""

import json
import subprocess
import sys

import pytest
import torch

from megatron.training import optimizer_step
from tests.launch import ROOT, env

WORKER = r"""
import json, os, sys
import torch
import deepspeed
import deepspeed.comm as dist
from megatron.training import optimizer_step

stage, lean, clip = int(sys.argv[1]), sys.argv[2] == "1", float(sys.argv[3])
if "RANK" not in os.environ:  # one process without torchrun
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[4], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
deepspeed.init_distributed(dist_backend="gloo", verbose=False)
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
# 2,591 parameters: not a multiple of the partition alignment, so the last ZeRO-1 partition is padded
model = torch.nn.Sequential(torch.nn.Linear(32, 63), torch.nn.GELU(), torch.nn.Linear(63, 8))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-2, fused=True)
# eps above the clipped gradients' size: the update follows their scale, so a wrong or missing unscale shows
cfg = {"train_batch_size": 4 * world, "train_micro_batch_size_per_gpu": 4, "gradient_clipping": clip, "zero_optimization": {"stage": stage},
       "steps_per_print": 10**9}
engine, zopt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
applied = optimizer_step.streamline(zopt) if lean else False
g = torch.Generator().manual_seed(1 + rank)  # each rank its own data
norms, scales = [], []
for _ in range(4):
    x, y = torch.randn(4, 32, generator=g), torch.randn(4, 8, generator=g)
    loss = torch.nn.functional.mse_loss(engine(x), y) * 50.0
    engine.backward(loss)
    engine.step()
    norms.append(float(engine.get_global_grad_norm()))
    scales.append(None if getattr(zopt.optimizer, "grad_scale", None) is None else float(zopt.optimizer.grad_scale))
if stage == 3:
    from deepspeed.runtime.zero import GatheredParameters
    with GatheredParameters(list(model.parameters())):
        params = [p.detach().clone().reshape(-1).tolist() for p in model.parameters()]
else:
    params = [p.detach().reshape(-1).tolist() for p in model.parameters()]
if rank == 0:
    print("RESULT " + json.dumps({"applied": applied, "norms": norms, "scales": scales, "params": params,
                                  "own_norm": "tensor_norms" in zopt.get_grad_norm_direct.__code__.co_names}))
"""


NONFINITE_WORKER = r"""
import json, os, sys
import torch
import deepspeed
import deepspeed.comm as dist
from deepspeed.runtime.zero import stage_1_and_2
from megatron.training import optimizer_step

stage, lean = int(sys.argv[1]), sys.argv[2] == "1"
if "RANK" not in os.environ:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[4], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
deepspeed.init_distributed(dist_backend="gloo", verbose=False)
rank, world = dist.get_rank(), dist.get_world_size()
scans, scan = [0], stage_1_and_2.has_inf_or_nan  # DeepSpeed's per-gradient NaN/inf scan, counted
def counted(x):
    scans[0] += 1
    return scan(x)
stage_1_and_2.has_inf_or_nan = counted
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 63), torch.nn.GELU(), torch.nn.Linear(63, 8))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
cfg = {"train_batch_size": 4 * world, "train_micro_batch_size_per_gpu": 4, "gradient_clipping": 1.0,
       "zero_optimization": {"stage": stage}, "bf16": {"enabled": True}, "steps_per_print": 10**9}
engine, zopt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
applied = optimizer_step.streamline(zopt) if lean else False
poison = [False]
def hook(g):  # one NaN in one gradient, on the last rank only
    if poison[0] and rank == world - 1:
        g = g.clone()
        g.view(-1)[5] = float("nan")
    return g
model[2].weight.register_hook(hook)
g = torch.Generator().manual_seed(1 + rank)
steps = []
for i in range(3):
    poison[0] = i == 1
    x, y = torch.randn(4, 32, generator=g).bfloat16(), torch.randn(4, 8, generator=g)
    engine.backward(torch.nn.functional.mse_loss(engine(x).float(), y))
    engine.step()
    steps.append({"skipped": engine.skipped_steps, "norm": float(engine.get_global_grad_norm())})
    if stage != 3:
        steps[-1]["param"] = float(model[0].weight.detach().float().sum())
if rank == 0:
    print("RESULT " + json.dumps({"applied": applied, "steps": steps, "scans": scans[0]}), flush=True)
dist.barrier()
torch.distributed.destroy_process_group()
"""


def _run(tmp_path, stage: int, lean: bool, clip: float, port: int, nproc: int, worker: str = WORKER) -> dict:
    script = tmp_path / "worker.py"
    script.write_text(worker)
    launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  f"--nproc_per_node={nproc}"]  # fmt: skip
    proc = subprocess.run([*launch, str(script), str(stage), "1" if lean else "0", str(clip), str(port)],
                          env={**env(), "CUDA_VISIBLE_DEVICES": ""}, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("stage,nproc", [(1, 1), (3, 1), (1, 2), (3, 2)])
def test_streamlined_step_matches_deepspeeds(tmp_path, stage, nproc):
    clip = 0.05  # below every step's norm: the clip factor is > 1 each step
    ref = _run(tmp_path, stage, False, clip, 29611 + stage, nproc)
    got = _run(tmp_path, stage, True, clip, 29621 + stage, nproc)
    assert got["applied"] and not ref["applied"]
    assert got["own_norm"] and not ref["own_norm"]
    assert all(n > clip * 2 for n in ref["norms"]), ref["norms"]  # clipping acted
    assert got["norms"] == pytest.approx(ref["norms"], rel=1e-5)
    for a, b in zip(got["params"], ref["params"]):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-6)
    # the fused kernel got the combined factor: norm / clip (loss scale 1)
    assert got["scales"][-1] == pytest.approx(got["norms"][-1] / clip, rel=1e-5)
    # and the step changed the parameters (a comparison of untouched weights would pass trivially)
    torch.manual_seed(0)
    first = torch.nn.Linear(32, 63).weight.reshape(-1)
    assert not torch.allclose(first, torch.tensor(got["params"][0]), atol=1e-3)


@pytest.mark.parametrize("stage,nproc", [(1, 2), (3, 1)])
def test_non_finite_gradients_skip_the_step_without_deepspeeds_scan(tmp_path, stage, nproc):
    """bf16: a NaN in one gradient on one rank skips the step on every rank, as DeepSpeed's own step does; under
    ZeRO-1 the lean step finds it through the norm, without DeepSpeed's per-gradient scan."""
    ref = _run(tmp_path, stage, False, 1.0, 29631 + stage, nproc, NONFINITE_WORKER)
    got = _run(tmp_path, stage, True, 1.0, 29641 + stage, nproc, NONFINITE_WORKER)
    assert got["applied"]
    assert [s["skipped"] for s in got["steps"]] == [s["skipped"] for s in ref["steps"]] == [0, 1, 1]
    assert got["steps"][1]["norm"] == ref["steps"][1]["norm"] == float("inf")
    for a, b in zip(got["steps"], ref["steps"]):
        if "param" in b:
            assert a["param"] == pytest.approx(b["param"], rel=1e-3)  # bf16 parameters
        if a["norm"] != float("inf"):
            assert a["norm"] == pytest.approx(b["norm"], rel=1e-3)
    if stage == 1:
        assert ref["scans"] > 0 and got["scans"] == 0
        assert ref["steps"][1]["param"] == ref["steps"][0]["param"] and ref["steps"][2]["param"] != ref["steps"][1]["param"]


def test_combined_scale_is_deepspeeds_factor():
    norm = torch.tensor(8.0)
    assert optimizer_step.combined_scale(1.0, 0.0, norm) is None  # nothing to divide by
    assert optimizer_step.combined_scale(1024.0, 0.0, norm) == 1024.0
    assert float(optimizer_step.combined_scale(1.0, 1.0, torch.tensor(0.5))) == 1.0  # under the clip: no change
    assert float(optimizer_step.combined_scale(1.0, 2.0, norm)) == pytest.approx(4.0)
    assert float(optimizer_step.combined_scale(4.0, 1.0, norm)) == pytest.approx(8.0)  # (8 / 4) / 1, times 4


def test_leaves_other_optimizers_alone():
    p = torch.nn.Parameter(torch.zeros(3))

    class Zero:  # a ZeRO optimizer's surface
        def __init__(self, inner, **kw):
            self.optimizer, self.loss_scale, self.clip_grad, self.device = inner, 1.0, 1.0, "cpu"
            self.__dict__.update(kw)

        def unscale_and_clip_grads(self, *_):
            return "deepspeed"

    for zero in (Zero(torch.optim.AdamW([p])), Zero(torch.optim.SGD([p], lr=1.0)),  # not fused, not AdamW
                 Zero(torch.optim.AdamW([p], fused=True), cpu_offload=True),
                 Zero(torch.optim.AdamW([p], fused=True), offload_optimizer=True),
                 torch.optim.AdamW([p], fused=True)):  # fmt: skip  (ZeRO-0: torch's optimizer itself)
        assert not optimizer_step.streamline(zero)
        if isinstance(zero, Zero):
            assert zero.unscale_and_clip_grads() == "deepspeed"


def test_tensor_norms_accumulate_in_fp32_and_skip_padding():
    g = [torch.randn(5000, dtype=torch.bfloat16), torch.randn(7, 3, dtype=torch.bfloat16)]
    pad = torch.zeros(4, dtype=torch.bfloat16)
    pad._zero_padding = True
    got = optimizer_step.tensor_norms([*g, pad], 2.0)
    assert len(got) == 2 and all(n.dtype == torch.float32 for n in got)
    for n, x in zip(got, g):
        assert float(n) == pytest.approx(float(torch.linalg.vector_norm(x.double())), rel=1e-6)
    total = torch.linalg.vector_norm(torch.stack(got).double())  # what DeepSpeed makes of them
    assert float(total) == pytest.approx(float(torch.linalg.vector_norm(torch.cat([x.reshape(-1) for x in g]).double())), rel=1e-6)
    assert [float(n) for n in optimizer_step.tensor_norms(g, float("inf"))] == [float(x.abs().max()) for x in g]
    assert optimizer_step.tensor_norms([pad], 2.0) == []
