#!/bin/bash
# Two H200s (2026-11-30): the fused tiled-loss kernels' GPU test and micro-benchmark (one GPU), then
# GPT-1.3B at 32k, SP=2, ZeRO-3, no recompute: this tree (fused loss) against ab_old/ (git archive of
# 6e6ced9, the eager loss), interleaved, twice; and ZeRO-3 contiguous_gradients false (user JSON), twice.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT
timeout 120 python3 -m pytest -q -m gpu tests/attention/test_cross_entropy_triton.py 2>&1 | tail -6 | tee $R/gpu_tests.log
timeout 120 python3 bench/tiled_loss.py --tokens 16384,65536 --out $R/tiled_loss_h200.json 2>&1 | tail -12
echo '{"zero_optimization": {"stage": 3, "contiguous_gradients": false}}' > /tmp/nocontig.json
A="--nproc 2 --sp 2 --backends sdpa --seq-lens 32768 --no-recompute --case-timeout 100 --log-dir /tmp/runs"
for rep in 1 2; do
  timeout 110 python3 bench/throughput.py $A --out $R/fused_loss_r$rep.json 2>&1 | tail -2
  (cd ab_old && PYTHONPATH=/tmp/site:$PWD timeout 110 python3 bench/throughput.py $A --out $R/eager_loss_r$rep.json 2>&1 | tail -2)
  timeout 110 python3 bench/throughput.py $A --out $R/nocontig_r$rep.json -- --deepspeed_config /tmp/nocontig.json 2>&1 | tail -2
done
