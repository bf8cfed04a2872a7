#!/bin/bash
# Two H200s (2026-11-30): ours with the classic (unfused, O(s^2) scores) attention backend, GPT-1.3B, SP=2,
# ZeRO-3, full recomputation, at 8k and 32k (flash needs the flash-attn package, not installed here).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
timeout 150 python3 bench/throughput.py --nproc 2 --sp 2 --backends classic --case-timeout 70 --log-dir /tmp/runs \
  --seq-lens 8192,32768 --out $OUT/gpt_sp2_recompute_classic.json 2>&1 | tail -3
echo "elapsed $SECONDS s"
