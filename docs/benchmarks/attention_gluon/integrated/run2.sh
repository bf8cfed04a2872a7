#!/bin/bash
# One H200 (2026-11-30, fifth session): the fused Gluon backward extended to grouped-query attention
# and head dim 64. GPU tests (fused shapes with GQA and head dim 64 added), the head-dim-64 benchmark
# (32 heads, fused vs split backward vs SDPA), then Llama-1B (32 heads of 64, 8 kv heads) at 32k end
# to end, SP=1, ZeRO-3, full recomputation, our Triton backend against SDPA.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
timeout 100 python3 -m pytest -q -m gpu tests/attention -k fused > $R/gpu_tests_fused.log 2>&1; pack; tail -3 $R/gpu_tests_fused.log
timeout 120 python3 bench/attention.py --head-dim 64 --heads 32 --seqs 4096,16384,65536 \
  --impls triton,triton_split,sdpa_flash,sdpa_cudnn --out $R/attention_h200_hd64_fused.json > $R/attention_hd64.log 2>&1
pack; grep "^|" $R/attention_hd64.log
timeout 150 python3 bench/throughput.py --shape llama-1b --nproc 1 --sp 1 --seq-lens 32768 --backends flash_triton,sdpa \
  --case-timeout 120 --log-dir /tmp/runs_llama --out $R/h200_llama-1b_32k_sp1_fused.json 2>&1 | tail -3; pack
grep -h "FlashAttention-Triton backward" /tmp/runs_llama/*.log 2>/dev/null | sort | uniq -c
