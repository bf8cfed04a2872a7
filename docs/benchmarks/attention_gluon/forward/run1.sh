#!/bin/bash
# One H200 (2026-11-30, sixth session): the Gluon forward through the library (flash_attn_gluon_fwd, opt-in
# FORWARD = "auto") with the fused Gluon backward. All GPU attention tests; the attention benchmark with
# triton_gluon (Gluon forward + fused backward), triton (Triton forward + fused backward), triton_split,
# SDPA flash and cuDNN side by side, profiled at 16k; then the v2 forward prototype's check (GQA, head dim 64,
# packed documents).
set -u
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
timeout 190 python3 -m pytest -q -m gpu tests/attention --durations=5 > $R/gpu_tests.log 2>&1; pack; tail -2 $R/gpu_tests.log
timeout 210 python3 bench/attention.py --impls triton_gluon,triton,triton_split,sdpa_flash,sdpa_cudnn --profile-seq 16384 \
  --out $R/attention_h200_gluon_fwd.json > $R/attention.log 2>&1; pack; grep "^|" $R/attention.log; grep -i "attention:" $R/attention.log | sort | uniq -c
timeout 160 python3 docs/benchmarks/attention_gluon/fwd/v2/gpu_check_v2.py --out $R/v2 --budget 150 > $R/v2_check.log 2>&1; pack
tail -25 $R/v2_check.log
