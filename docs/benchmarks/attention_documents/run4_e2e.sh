#!/bin/bash
# One H200 (2026-11-30, fifth session): packed documents end to end. GPT-1.3B, 32k, SP=1, ZeRO-3, full
# recomputation, mock data packed into 2,048-token documents with --reset-attention-mask
# --reset-position-ids; our Triton kernel (document ids, masked blocks skipped) against SDPA (dense
# [b, 1, s, s] mask), then both without documents for the reference.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
B="python3 bench/throughput.py --nproc 1 --sp 1 --seq-lens 32768 --backends flash_triton,sdpa --case-timeout 140"
timeout 300 $B --log-dir /tmp/runs_docs --out $R/h200_gpt-1.3b_32k_docs2048.json \
  -- --mock-document-length 2048 --reset-attention-mask --reset-position-ids 2>&1 | tail -4; pack
timeout 240 $B --log-dir /tmp/runs_nodocs --out $R/h200_gpt-1.3b_32k_nodocs.json 2>&1 | tail -4; pack
