#!/bin/bash
# One H200 (2026-11-30), after blocks wholly inside one document run unmasked: GPU tests of the kernels
# (documents on and off 128-token edges), the packed-document benchmark, and the plain causal benchmark
# (no documents: must be unchanged).
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
timeout 150 python3 -m pytest -q -m gpu tests/attention/test_flash_attn_triton.py > $R/gpu_tests.log 2>&1; pack
tail -3 $R/gpu_tests.log
for L in 2048 8192; do
  timeout 120 python3 bench/attention.py --doc-len $L --seqs 4096,16384,65536 --out $R/attention_h200_docs${L}_v2.json > $R/docs${L}_v2.log 2>&1
  pack; tail -8 $R/docs${L}_v2.log
done
timeout 120 python3 bench/attention.py --seqs 4096,16384,65536 --impls triton,sdpa_cudnn --out $R/attention_h200_causal_v2.json > $R/causal_v2.log 2>&1
pack; tail -8 $R/causal_v2.log
