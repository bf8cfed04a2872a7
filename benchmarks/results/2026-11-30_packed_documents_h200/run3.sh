#!/bin/bash
# One H200 (2026-11-30), after the first, partial key block's loop is compiled only with documents (so the
# kernels without documents are the same as before): plain causal benchmark at 16k, the packed-document
# benchmark at 64K, then the GPU tests.
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
timeout 60 python3 bench/attention.py --seqs 16384 --impls triton,sdpa_cudnn --out $R/attention_h200_causal_v3.json > $R/causal_v3.log 2>&1
pack; tail -3 $R/causal_v3.log
for L in 2048 8192; do
  timeout 60 python3 bench/attention.py --doc-len $L --seqs 65536 --out $R/attention_h200_docs${L}_v3.json > $R/docs${L}_v3.log 2>&1
  pack; tail -3 $R/docs${L}_v3.log
done
timeout 120 python3 -m pytest -q -m gpu tests/attention/test_flash_attn_triton.py > $R/gpu_tests_v3.log 2>&1; pack
tail -2 $R/gpu_tests_v3.log
