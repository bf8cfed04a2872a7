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


def _run(tmp_path, stage: int, lean: bool, clip: float, port: int, nproc: int) -> dict:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
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
