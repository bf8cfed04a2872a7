#!/bin/bash
# Device call 3 (one H200): as run1.sh, the transposed fused backward with k, v re-read per query block.
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv > $R/gpu.txt 2>&1
timeout 150 python3 -m pytest -q -m gpu tests/attention/test_flash_attn_triton.py > $R/gpu_tests.log 2>&1; pack
timeout 380 python3 bench/attention.py --sweep --sweep-kernels dkdv_fused --seqs 4096,16384,65536,131072 \
  --impls triton,triton_fused,triton_fused_keepkv,sdpa_cudnn --profile-seq 16384 \
  --out $R/attention_h200_fused.json > $R/bench.log 2>&1; pack
tail -30 $R/bench.log; tail -3 $R/gpu_tests.log
