#!/bin/bash
# Two H200s: the Llama-8B ladder's lower rungs (baseline = DP only with the untiled loss, then +tiled_loss),
# one training step per attempt (which also records first_step_growth_gb on a GPU).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
timeout 560 python3 bench/max_seqlen.py --shape llama-8b --nproc 2 --rungs baseline,+tiled_loss --start-seq 32768 \
  --granularity 16384 --steps 1 --attempt-timeout 150 --out $OUT/max_seqlen_llama-8b_2xh200_lower_rungs.json 2>&1 | tail -30
