"""A tiny model trained with each attention backend gives the same losses (fp32, CPU).

flash_triton runs our Triton kernels through the interpreter (TRITON_INTERPRET=1), with SP=1
and under DistributedAttention with SP=2.
"""

import pytest

from tests.launch import TINY_LLAMA, TRAIN, assert_close_records, train_records

ARGS = TINY_LLAMA + TRAIN + ["--train-iters", "3", "--zero-stage", "1", "--num-attention-heads", "4", "--num-key-value-heads", "2"]  # head dim 16
INTERPRET = {"TRITON_INTERPRET": "1"}


@pytest.fixture(scope="module")
def classic(tmp_path_factory):
    return train_records(tmp_path_factory.mktemp("classic"), "classic", 1, ARGS + ["--attention-backend", "classic"])


@pytest.mark.parametrize(
    "backend,sp", [("sdpa", 1), ("flash", 1), ("flash_triton", 1), ("flash_triton", 2), ("sdpa", 2)]
)
def test_backend_losses_equal_classic(classic, tmp_path, backend, sp):
    got = train_records(
        tmp_path, f"{backend}_sp{sp}", sp,
        ARGS + ["--attention-backend", backend, "--ds-sequence-parallel-size", str(sp)], extra_env=INTERPRET,
    )  # fmt: skip
    assert_close_records(classic, got, rtol=2e-5, grad_rtol=2e-4, what=f"{backend} SP={sp}")
