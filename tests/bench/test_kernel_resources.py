"""bench/kernel_resources.py compiles our Triton kernels for sm_90 on a machine without a GPU."""

import json
import os
import subprocess
import sys

from tests.launch import ROOT


def _run(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # a real target, not the interpreter
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(ROOT / "bench/kernel_resources.py"), *args], check=False, env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip


def test_reports_hopper_resources_and_stages_cost_shared_memory(tmp_path):
    rows = {}
    for stages in (2, 3):
        out = tmp_path / f"r{stages}.json"
        proc = _run("--kernels", "fwd", "--config", f"128,128,8,{stages}", "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(out.read_text())
        assert report["arch"] == 90 and report["causal"] and not report["docs"]
        (rows[stages],) = report["kernels"]
    for row in rows.values():
        assert 0 < row["registers"] <= 255 and row["spill_store_bytes"] is not None
        assert row["wgmma_in_ptx"] > 0 and row["mma_sync_in_ptx"] == 0  # Hopper's tensor-core path
    # One more pipeline stage buffers one more K and V tile: 2 x 128 x 128 bf16 = 64 KiB.
    assert rows[3]["shared_bytes"] - rows[2]["shared_bytes"] == 2 * 128 * 128 * 2


def test_bad_input_is_one_line_and_nonzero():
    for args, needle in (
        (["--kernels", "fwd,bwd"], "unknown kernel(s) ['bwd']"),
        (["--config", "128,128,8"], "is not BLOCK_M,BLOCK_N,warps,stages"),
    ):
        proc = _run(*args)
        assert proc.returncode != 0 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = _run(env_extra={"TRITON_INTERPRET": "1"})
    assert proc.returncode != 0 and "unset it" in proc.stderr and "Traceback" not in proc.stderr
