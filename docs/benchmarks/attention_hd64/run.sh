#!/bin/bash
# One H200 (2026-11-30, fifth session): time the head-dim-64 block configs (Llama-1B's shape: 32 heads
# of 64), today's config first in each sweep, then the causal benchmark with the best configs.
set -u
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
timeout 200 python3 bench/attention.py --head-dim 64 --heads 32 --sweep --seqs 4096,16384,65536 \
  --impls triton,sdpa_flash,sdpa_cudnn --out $R/attention_h200_hd64_sweep.json > $R/hd64_sweep.log 2>&1
pack; grep -E "best|configs|triton|sdpa" $R/hd64_sweep.log | tail -12
