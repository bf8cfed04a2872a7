#!/bin/bash
# One H200 (2026-11-30): bench/pointwise_fusion.py, residual add + norm eager against torch.compile
# (Inductor), forward + backward, at 16k and 32k rows of hidden 2048 (GPT-1.3B and Llama-1B at 32k with
# SP=2 and SP=1). h200_wall.json is an earlier run of the same command, before kernel time was recorded.
set -u
timeout 300 python3 bench/pointwise_fusion.py --out $OUT/h200.json 2>&1 | tail -12
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/gpu.txt 2>&1
