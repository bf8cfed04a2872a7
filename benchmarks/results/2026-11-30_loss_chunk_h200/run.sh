#!/bin/bash
# Two H200s (2026-11-30): end to end with the fused tiled loss's default chunk of 2^28 logits. GPT-1.3B at
# 32k, SP=2, ZeRO-3, against the padded peer in the same invocation: no recomputation twice, full
# recomputation once; ours once more with NCCL_PROTO=Simple (NCCL's protocol choice, an A/B only);
# Llama-1B (identical model on both sides) at 32k with full recomputation.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
B="python3 bench/throughput.py --nproc 2 --sp 2 --backends sdpa --case-timeout 100 --log-dir /tmp/runs"
rep() {
  timeout 200 $B --seq-lens 32768 --no-recompute --peer --out $R/norecompute_32k_r$1.json 2>&1 | tail -3
  NCCL_PROTO=Simple timeout 100 $B --seq-lens 32768 --no-recompute --out $R/norecompute_32k_nccl_simple_r$1.json 2>&1 | tail -2
  pack
}
rep 1
timeout 200 $B --seq-lens 32768 --peer --out $R/recompute_32k.json 2>&1 | tail -3; pack
timeout 200 $B --shape llama-1b --seq-lens 32768 --peer --out $R/llama-1b_recompute_32k.json 2>&1 | tail -3; pack
rep 2
