#!/bin/bash
# One H200 (2026-11-30): GPT-1.3B at 32k with packed 2K-token documents end to end, after b4759e4 made the
# logged model FLOPs / MFU count attention within documents.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
timeout 200 python3 bench/throughput.py --nproc 1 --sp 1 --seq-lens 32768 --backends flash_triton,sdpa \
  --case-timeout 140 --log-dir /tmp/runs_docs5 --out $R/h200_gpt-1.3b_32k_docs2048_v2.json \
  -- --mock-document-length 2048 --reset-attention-mask --reset-position-ids 2>&1 | tail -3; pack
