#!/bin/bash
# Two H200s (2026-11-30). (1) GPT-1.3B at 8k, SP=2, full recomputation, ours with both backends, twice (the
# host-bound length, where run_a.sh's two backends differed most). (2) Llama-1B, SP=2, ZeRO-3, full
# recomputation at 8k and 64k (32k is in ../2026-11-30_loss_chunk_h200/): ours (sdpa, flash_triton) and the peer.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
B="python3 bench/throughput.py --nproc 2 --sp 2 --backends sdpa,flash_triton --case-timeout 100 --log-dir /tmp/runs"
for i in 1 2; do
  timeout 130 $B --seq-lens 8192 --out $R/gpt_sp2_recompute_8192_r$((i + 1)).json 2>&1 | tail -3; pack
done
echo "elapsed $SECONDS s"
for L in 8192 65536; do
  timeout 230 $B --shape llama-1b --peer --seq-lens $L --out $R/llama_sp2_recompute_$L.json 2>&1 | tail -4; pack
done
grep -h "step_time\|iteration  *[0-9]" /tmp/runs/*8192*/*.log 2>/dev/null | head -0
echo "elapsed $SECONDS s"
