#!/bin/bash
# One H200 (2026-11-30, fifth session): the fused Gluon backward as the library runs it
# (megatron/model/flash_attn_gluon.py, chosen by flash_attn_triton's backward). GPU tests, the attention
# benchmark (triton = fused backward, triton_split = split backward, SDPA flash / cuDNN), then GPT-1.3B
# at 32k end to end, SP=1, ZeRO-3, full recomputation, our Triton backend against SDPA.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
timeout 170 python3 -m pytest -q -m gpu tests/attention > $R/gpu_tests.log 2>&1; pack; tail -3 $R/gpu_tests.log
timeout 170 python3 bench/attention.py --impls triton,triton_split,sdpa_flash,sdpa_cudnn --profile-seq 16384 \
  --out $R/attention_h200_fused.json > $R/attention.log 2>&1; pack; grep "^|" $R/attention.log
timeout 150 python3 bench/throughput.py --nproc 1 --sp 1 --seq-lens 32768 --backends flash_triton,sdpa \
  --case-timeout 120 --log-dir /tmp/runs_e2e --out $R/h200_gpt-1.3b_32k_sp1_fused.json 2>&1 | tail -3; pack
grep -h "FlashAttention-Triton backward" /tmp/runs_e2e/*.log 2>/dev/null | sort | uniq -c
