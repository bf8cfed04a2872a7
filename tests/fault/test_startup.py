"""A run killed in its first minute leaves nothing that stops the next one from starting.

DeepSpeed's CPU backend used to JIT-build its shared-memory all-reduce on first start (30-60 s,
silently); a run killed meanwhile left the build's ``lock`` and every later start waited on it
forever. Training builds no op on CPUs now, and an op that is built names a stale lock."""

import os
import time

import pytest

from megatron.config import ConfigError
from megatron.training import jit_ops
from tests.launch import TINY_GPT, TRAIN, torchrun


def test_lock_left_by_a_killed_build_does_not_block_the_next_run(tmp_path):
    ext = tmp_path / "torch_extensions"
    op_dir = ext / "deepspeed_shm_comm"  # what a run killed during DeepSpeed's CPU comm build leaves
    op_dir.mkdir(parents=True)
    (op_dir / "lock").touch()
    t0 = time.time()
    proc = torchrun(2, TINY_GPT + TRAIN + ["--train-iters", "1"], extra_env={"TORCH_EXTENSIONS_DIR": str(ext)},
                    timeout=150)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.time() - t0 < 150
    assert "built successfully" not in proc.stdout + proc.stderr
    assert sorted(os.listdir(op_dir)) == ["lock"]  # nothing was built, nothing waited


def test_stale_lock_of_a_built_op_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    said = []
    jit_ops.before_jit_build("cpu_adam", say=said.append)
    assert "building DeepSpeed's cpu_adam op on first use" in said[-1]
    lock = tmp_path / "cpu_adam" / "lock"
    lock.touch()
    jit_ops.before_jit_build("cpu_adam", say=said.append)
    assert "waiting for another process" in said[-1] and str(lock) in said[-1]
    old = time.time() - 3600
    os.utime(lock, (old, old))
    with pytest.raises(ConfigError, match=f"{lock} is left from an interrupted build .* delete it"):
        jit_ops.before_jit_build("cpu_adam", say=said.append)


def test_arch_specific_cuda_targets_are_given_to_deepspeed_as_numbers():
    from megatron.training.jit_ops import numeric_arch_list

    said = []
    env = {"TORCH_CUDA_ARCH_LIST": "8.0;9.0a 9.0 10.0f+PTX"}
    assert numeric_arch_list(env, said.append) == "8.0 9.0 10.0+PTX"
    assert env["TORCH_CUDA_ARCH_LIST"] == "8.0 9.0 10.0+PTX" and len(said) == 1 and "'8.0;9.0a" in said[0]
    for plain in ({"TORCH_CUDA_ARCH_LIST": "8.0 9.0+PTX"}, {}):
        before = dict(plain)
        assert numeric_arch_list(plain, said.append) is None and plain == before and len(said) == 1
