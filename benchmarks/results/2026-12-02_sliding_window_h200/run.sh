#!/bin/bash
# One H200: the GPU tests of the sliding-window kernels, then bench/attention.py --window 4096
# (ours windowed, SDPA with the model's dense window mask, our full causal) at 32K-128K, head dim 128
# and 64; then a second before/after pair of the 2026-12-02_refactor_parity_h200 run (its spread).
#   bash benchmarks/results/2026-12-02_sliding_window_h200/run.sh   (from the repository root, with .head/, .after/ and .baseline/)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
TOP=$PWD
O=${OUT:-/tmp/out}
cd "$TOP/.head"
export PYTHONPATH=/tmp/site:$TOP/.head
echo "commit $(cat COMMIT)" > "$O/gpu_window_tests.log"
timeout 150 python3 -m pytest -q -m gpu tests/attention -k "window or scale" --durations=5 -rs -p no:cacheprovider \
  >> "$O/gpu_window_tests.log" 2>&1
tail -2 "$O/gpu_window_tests.log"
timeout 150 python3 bench/attention.py --window 4096 --head-dim 128 --out "$O/window4096_hd128.json" > "$O/window_hd128.log" 2>&1
tail -5 "$O/window_hd128.log"
timeout 120 python3 bench/attention.py --window 4096 --head-dim 64 --out "$O/window4096_hd64.json" > "$O/window_hd64.log" 2>&1
tail -5 "$O/window_hd64.log"
cd "$TOP"
OUT=$O/parity ATTNS=sdpa REPS=2 bash benchmarks/results/2026-12-02_refactor_parity_h200/run_pair.sh
