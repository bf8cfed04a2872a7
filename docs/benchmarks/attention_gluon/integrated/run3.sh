#!/bin/bash
# One H200 (2026-11-30, fifth session): the fused Gluon backward with packed documents (each key block
# visits only the query blocks up to its last key's document end; blocks at a document edge masked).
# GPU tests of the fused and document paths, then the packed-document benchmark, fused against split.
set -u
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
timeout 200 python3 -m pytest -q -m gpu tests/attention -k "fused or documents" > $R/gpu_tests_docs.log 2>&1; pack
tail -3 $R/gpu_tests_docs.log
for L in 2048 8192; do
  timeout 60 python3 bench/attention.py --doc-len $L --seqs 16384,65536 --impls triton,triton_split \
    --out $R/attention_h200_docs${L}_fused.json > $R/docs${L}.log 2>&1; pack; grep "^|" $R/docs${L}.log
done
