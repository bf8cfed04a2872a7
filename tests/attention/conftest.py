"""Run the Triton attention kernels through Triton's CPU interpreter when no GPU is present.

Must take effect before `triton` is imported anywhere, hence a conftest.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU")
