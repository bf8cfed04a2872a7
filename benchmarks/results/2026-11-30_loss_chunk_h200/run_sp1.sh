#!/bin/bash
# One H200 (2026-11-30): GPT-1.3B, SP=1, ZeRO-3, full recomputation, the defaults (Triton tiled loss,
# 2^28-logit chunks) against the padded peer, 8k / 32k / 64k.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
B="python3 bench/throughput.py --nproc 1 --sp 1 --backends sdpa --case-timeout 150 --log-dir /tmp/runs --peer"
for s in 8192 32768 65536; do
  timeout 320 $B --seq-lens $s --out $R/h200_sp1_recompute_$s.json 2>&1 | tail -3; pack
done
