#!/bin/bash
# Two H200s (2026-11-30): packed 2K-token documents end to end after the Gluon forward became the default at
# head dim 128 (with the fused Gluon backward). GPT-1.3B at 32k, ZeRO-3, full recomputation: SP=1 (one GPU)
# ours flash_triton; SP=2 ours flash_triton and sdpa (dense mask).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
D="-- --mock-document-length 2048 --reset-attention-mask --reset-position-ids"
timeout 120 python3 bench/throughput.py --nproc 1 --sp 1 --seq-lens 32768 --backends flash_triton \
  --case-timeout 110 --log-dir /tmp/runs_docs6 --out $R/h200_gpt-1.3b_32k_docs2048_v3.json $D 2>&1 | tail -2; pack
timeout 250 python3 bench/throughput.py --nproc 2 --sp 2 --seq-lens 32768 --backends flash_triton,sdpa \
  --case-timeout 120 --log-dir /tmp/runs_docs6 --out $R/h200x2_gpt-1.3b_32k_sp2_docs2048.json $D 2>&1 | tail -3; pack
grep -h "FlashAttention-Triton" /tmp/runs_docs6/*.log 2>/dev/null | sort | uniq -c
echo "elapsed $SECONDS s"
