#!/bin/bash
# One H200, one device call: packed documents (what --reset-attention-mask trains), our Triton
# kernel with document ids against the model's SDPA path with its dense [b, 1, s, s] mask.
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
for L in 2048 8192; do
  timeout 200 python3 bench/attention.py --doc-len $L --seqs 4096,16384,65536 --out $R/attention_h200_docs$L.json > $R/docs$L.log 2>&1
  pack; tail -8 $R/docs$L.log
done
