#!/bin/bash
# Two H200s: ours against the HF + DeepSpeed-ALST peer at 32k, SP=2, ZeRO-3, same call, each setting twice
# (without and with full recomputation), with today's defaults on both sides.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
B="python3 bench/throughput.py --nproc 2 --sp 2 --backends sdpa --seq-lens 32768 --peer --case-timeout 120 --log-dir /tmp/runs"
for rep in 1 2; do
  timeout 200 $B --no-recompute --out $OUT/peer_norecompute_r$rep.json 2>&1 | tail -4
  timeout 200 $B --out $OUT/peer_recompute_r$rep.json 2>&1 | tail -4
done
