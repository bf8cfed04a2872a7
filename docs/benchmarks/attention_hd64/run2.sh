#!/bin/bash
# One H200 (2026-11-30, fifth session, second call): the GPU attention tests with the new head-dim-64
# configs (documents now also at head dim 64), then Llama-1B (32 heads of 64, 8 kv heads) end to end
# at 32k, SP=1, ZeRO-3, full recomputation: our Triton kernel against SDPA.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
timeout 150 python3 -m pytest -q -m gpu tests/attention > $R/gpu_tests.log 2>&1; pack; tail -2 $R/gpu_tests.log
timeout 200 python3 bench/throughput.py --shape llama-1b --nproc 1 --sp 1 --seq-lens 32768 \
  --backends flash_triton,sdpa --case-timeout 140 --log-dir /tmp/runs_llama --out $R/h200_llama-1b_32k_sp1.json 2>&1 | tail -3; pack
