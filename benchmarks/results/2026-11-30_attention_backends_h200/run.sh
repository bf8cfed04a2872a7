#!/bin/bash
# Two H200s (2026-11-30), after the Gluon forward became the default at head dim 128 (with the fused Gluon
# backward). (1) Head-dim-64 forward sweep of the Gluon kernel's BLOCK_N / stages against the Triton forward
# (one GPU). (2) GPT-1.3B at 32k, SP=2, ZeRO-3: without recomputation (ours flash_triton and sdpa, and the
# HF + DeepSpeed-ALST peer) and with --checkpoint-keep-attention (ours flash_triton and sdpa).
# (3) Llama-1B at 32k, SP=2, full recomputation, ours flash_triton and sdpa.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
timeout 60 python3 benchmarks/results/2026-11-30_attention_backends_h200/hd64_fwd_sweep.py --out $R/hd64_fwd_sweep.json > $R/hd64_fwd_sweep.log 2>&1
pack; cat $R/hd64_fwd_sweep.log | cut -c1-400
B="python3 bench/throughput.py --nproc 2 --sp 2 --case-timeout 110 --log-dir /tmp/runs"
timeout 260 $B --seq-lens 32768 --backends flash_triton,sdpa --no-recompute --peer --out $R/gpt_norecompute_32k.json 2>&1 | tail -4; pack
timeout 170 $B --seq-lens 32768 --backends flash_triton,sdpa --out $R/gpt_keep_attention_32k.json -- --checkpoint-keep-attention 2>&1 | tail -3; pack
if [ $SECONDS -lt 430 ]; then
  timeout 150 $B --shape llama-1b --seq-lens 32768 --backends flash_triton,sdpa --out $R/llama_recompute_32k.json 2>&1 | tail -3; pack
fi
grep -h "FlashAttention-Triton" /tmp/runs/*.log 2>/dev/null | sort | uniq -c
echo "elapsed $SECONDS s"
