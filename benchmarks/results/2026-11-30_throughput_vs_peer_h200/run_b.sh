#!/bin/bash
# Two H200s (2026-11-30), after run_a.sh. (1) GPT-1.3B at 128k, SP=2, ZeRO-3, full recomputation: ours (sdpa,
# flash_triton) and the peer, 6 steps, the first 2 left out. (2) GPT-1.3B at 128k on one of the two GPUs
# (SP=1): ours (sdpa) and the peer.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
timeout 330 python3 bench/throughput.py --nproc 2 --sp 2 --backends sdpa,flash_triton --peer --case-timeout 110 \
  --iters 6 --warmup 2 --log-dir /tmp/runs --seq-lens 131072 --out $R/gpt_sp2_recompute_131072.json 2>&1 | tail -4; pack
echo "elapsed $SECONDS s"
if [ $SECONDS -lt 300 ]; then
  timeout 270 python3 bench/throughput.py --nproc 1 --sp 1 --backends sdpa --peer --case-timeout 130 \
    --iters 5 --warmup 2 --log-dir /tmp/runs --seq-lens 131072 --out $R/gpt_sp1_recompute_131072.json 2>&1 | tail -3; pack
fi
echo "elapsed $SECONDS s"
