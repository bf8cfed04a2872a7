"""The tiled output layer + loss lowers the peak memory of a step: 32K vocabulary, sequence 8192.

Each mode runs forward + backward of just the output layer and loss in its own process and
reports the growth of its peak RSS; full logits are 8192 x 32000 fp32 = 1 GiB, and their
gradient another, while the tiled loss holds one ~256 MiB chunk at a time.
"""

import subprocess
import sys

from tests.launch import ROOT, env

SCRIPT = r"""
import resource, sys, torch, torch.nn.functional as F
from megatron.model.tiled import tiled_cross_entropy
torch.manual_seed(0)
S, H, V = 8192, 64, 32000
h = torch.randn(1, S, H, requires_grad=True)
w = (0.02 * torch.randn(V, H)).requires_grad_()
y = torch.randint(0, V, (1, S))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "tiled":
    loss = tiled_cross_entropy(h, w, y)
else:
    loss = F.cross_entropy(F.linear(h, w).float().flatten(0, 1), y.flatten(), reduction="none").view(1, S)
loss.sum().backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024, loss.sum().item())
"""


def _peak_growth(mode: str):
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env(), cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    return int(out[0]), float(out[1])


def test_tiled_logits_loss_lowers_peak_memory():
    full, full_loss = _peak_growth("full")
    tiled, tiled_loss = _peak_growth("tiled")
    gib = 2**30
    assert abs(full_loss - tiled_loss) <= 1e-5 * abs(full_loss)
    assert full > 1.0 * gib, f"the untiled step must materialize [S, V] fp32 logits (grew {full / gib:.2f} GiB)"
    assert tiled < 0.4 * full, f"tiled peak growth {tiled / gib:.2f} GiB vs untiled {full / gib:.2f} GiB"
