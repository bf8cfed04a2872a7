#!/bin/bash
# Two H200s: (1) the GPU test of --checkpoint-in-cpu's side-stream copies; (2) bench/offload_copies.py on
# one GPU (GPT-1.3B and Llama-8B layers); (3) the Llama-8B baseline rung with two steps per attempt, to check
# the one-step rule "peak + first_step_growth_gb > device = out of memory on the next step" (49,152 trained
# one step at 124.6 + 32.2 GB > 150.1 GB); (4) the +tiled_loss rung at 163,840, one step (between the
# 131,072 that fits and the 196,608 that a second step would not).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
timeout 90 python3 -m pytest -q -m gpu tests/alst/test_tiled_units.py 2>&1 | tail -6 | tee $OUT/gpu_tests.log
timeout 100 python3 bench/offload_copies.py --shape gpt-1.3b --tokens 32768,131072 --layers 4 --out $OUT/offload_copies_gpt-1.3b_h200.json 2>&1 | tail -10
timeout 60 python3 bench/offload_copies.py --shape llama-8b --tokens 65536 --layers 2 --out $OUT/offload_copies_llama-8b_h200.json 2>&1 | tail -5
timeout 150 python3 bench/max_seqlen.py --shape llama-8b --nproc 2 --rungs baseline --start-seq 32768 --max-seq 49152 \
  --granularity 16384 --steps 2 --attempt-timeout 100 --out $OUT/max_seqlen_llama-8b_2xh200_baseline_two_steps.json 2>&1 | tail -5
timeout 170 python3 bench/max_seqlen.py --shape llama-8b --nproc 2 --rungs +tiled_loss --start-seq 163840 --max-seq 163840 \
  --granularity 16384 --steps 1 --attempt-timeout 160 --out $OUT/max_seqlen_llama-8b_2xh200_tiled_loss_163840.json 2>&1 | tail -5
