#!/bin/bash
# Two H200s (2026-11-30, sixth session): the packed-document step at SP=2 is host-bound (profile in this folder:
# 360 ms of compute in a 654 ms step, 288 Ulysses all-to-alls per step). Does the fused exchange (one all-to-all for
# Q, K, V) help there? GPT-1.3B, 32k, 2K-token documents, ZeRO-3, full recomputation, our Triton backend, exchanges
# deepspeed and fused, each in one case of bench/throughput.py.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
timeout 200 python3 bench/throughput.py --nproc 2 --sp 2 --seq-lens 32768 --backends flash_triton --exchanges deepspeed,fused \
  --case-timeout 100 --log-dir /tmp/runs_x --out $R/h200x2_gpt-1.3b_32k_sp2_docs2048_exchanges.json \
  -- --mock-document-length 2048 --reset-attention-mask --reset-position-ids 2>&1 | tail -3; pack
echo "elapsed $SECONDS s"
