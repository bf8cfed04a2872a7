#!/bin/bash
# One H200 (2026-11-30): the library after the Gluon forward became the default (GQA, head dim 64, documents).
# All GPU attention tests; the attention benchmark at head dim 128 (triton = Gluon forward + fused backward,
# triton_fused = Triton forward + fused backward, triton_split, SDPA flash, cuDNN; profiled at 16k), at head
# dim 64 (32 heads), and with packed documents; then GPT-1.3B and Llama-1B at 32k end to end, SP=1, ZeRO-3,
# full recomputation, our Triton backend against SDPA.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
timeout 200 python3 -m pytest -q -m gpu tests/attention --durations=5 > $R/gpu_tests2.log 2>&1; pack; tail -2 $R/gpu_tests2.log
timeout 150 python3 bench/attention.py --impls triton,triton_fused,triton_split,sdpa_flash,sdpa_cudnn --profile-seq 16384 \
  --out $R/attention_h200_gluon.json > $R/attention2.log 2>&1; pack; grep "^|" $R/attention2.log
timeout 60 python3 bench/attention.py --head-dim 64 --heads 32 --seqs 4096,16384,65536 \
  --impls triton,triton_fused,sdpa_flash,sdpa_cudnn --out $R/attention_h200_hd64_gluon.json > $R/attention_hd64.log 2>&1
pack; grep "^|" $R/attention_hd64.log
for L in 2048 8192; do
  timeout 40 python3 bench/attention.py --doc-len $L --seqs 16384,65536 --impls triton,triton_fused,triton_split \
    --out $R/attention_h200_docs${L}_gluon.json > $R/docs${L}.log 2>&1; pack; grep "^|" $R/docs${L}.log
done
timeout 150 python3 bench/throughput.py --nproc 1 --sp 1 --seq-lens 32768 --backends flash_triton,sdpa \
  --case-timeout 120 --log-dir /tmp/runs_gpt --out $R/h200_gpt-1.3b_32k_sp1_gluon.json 2>&1 | tail -3; pack
grep -h "FlashAttention-Triton" /tmp/runs_gpt/*.log 2>/dev/null | sort | uniq -c
if [ $SECONDS -lt 420 ]; then
  timeout 150 python3 bench/throughput.py --shape llama-1b --nproc 1 --sp 1 --seq-lens 32768 --backends flash_triton,sdpa \
    --case-timeout 120 --log-dir /tmp/runs_llama --out $R/h200_llama-1b_32k_sp1_gluon.json 2>&1 | tail -3; pack
  grep -h "FlashAttention-Triton" /tmp/runs_llama/*.log 2>/dev/null | sort | uniq -c
fi
echo "elapsed $SECONDS s"
