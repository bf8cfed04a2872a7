#!/bin/bash
# Two H200s (2026-11-30): Llama-1B (identical model on both sides) at 32k, SP=2, ZeRO-3, full recomputation:
# ours (fused tiled loss) and the peer, then ours with --checkpoint-keep-attention.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
B="python3 bench/throughput.py --shape llama-1b --nproc 2 --sp 2 --backends sdpa --seq-lens 32768 --case-timeout 100 --log-dir /tmp/runs"
timeout 200 $B --peer --out $OUT/llama-1b_recompute_32k.json 2>&1 | tail -3
timeout 100 $B --out $OUT/llama-1b_keep_attention_32k.json -- --checkpoint-keep-attention 2>&1 | tail -2
