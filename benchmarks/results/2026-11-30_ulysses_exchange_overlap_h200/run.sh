#!/bin/bash
# Two H200s: the GPU tests of the overlapped exchange and the offload tape, then the Ulysses exchange
# A/B (DeepSpeed's, fused, overlapped) for GPT-1.3B at 32k, SP=2, ZeRO-3, twice, plus the overlapped
# exchange with 4 chunks; and bench/offload_copies.py on one GPU. Results: JSON per invocation + test log in $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT
timeout 150 python3 -m pytest -q -m gpu tests/core/test_distributed_attention.py tests/alst/test_tiled_units.py 2>&1 | tail -15 | tee $R/gpu_tests.log
# --checkpoint-in-cpu's copies: on the compute stream against side stream + prefetch (one GPU, GPT-1.3B layers)
timeout 100 python3 bench/offload_copies.py --shape gpt-1.3b --tokens 32768,131072 --layers 4 --out $R/offload_copies_gpt-1.3b_h200.json 2>&1 | tail -8
B="python3 bench/throughput.py --nproc 2 --sp 2 --backends sdpa --seq-lens 32768 --case-timeout 120 --log-dir /tmp/runs"
for rep in 1 2; do
  timeout 200 $B --exchanges deepspeed,fused,overlap --no-recompute --out $R/exchanges_norecompute_r$rep.json 2>&1 | tail -4
  [ $rep = 1 ] && timeout 60 $B --exchanges overlap --no-recompute --out $R/overlap4_norecompute.json -- --ulysses-overlap-chunks 4 2>&1 | tail -2
  timeout 200 $B --exchanges deepspeed,fused,overlap --out $R/exchanges_recompute_r$rep.json 2>&1 | tail -4
done

