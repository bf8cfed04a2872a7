#!/bin/bash
# Two H200s (2026-11-30), the code at this commit with its defaults. (1) GPT-1.3B, SP=2, ZeRO-3, full
# recomputation, 8k/32k/64k: ours with each attention backend (sdpa, flash_triton) and the HF + DeepSpeed-ALST
# peer, one invocation per length. (2) GPT-1.3B at 32k, SP=2, no recomputation, ours (sdpa) at global batch 1
# (the table's setting) and 4 (gradient accumulation, where the optimizer step is paid once per 4 sequences).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
B="python3 bench/throughput.py --nproc 2 --sp 2 --backends sdpa,flash_triton --peer --case-timeout 120 --log-dir /tmp/runs"
for L in 8192 32768 65536; do
  timeout 330 $B --seq-lens $L --out $R/gpt_sp2_recompute_$L.json 2>&1 | tail -4; pack
done
echo "elapsed $SECONDS s"
G="python3 bench/throughput.py --nproc 2 --sp 2 --backends sdpa --no-recompute --case-timeout 120 --log-dir /tmp/runs"
if [ $SECONDS -lt 430 ]; then
  timeout 80 $G --seq-lens 32768 --out $R/gpt_sp2_norecompute_gb1.json 2>&1 | tail -2; pack
  timeout 90 $G --seq-lens 32768 --out $R/gpt_sp2_norecompute_gb4.json -- --global-batch-size 4 2>&1 | tail -2; pack
fi
grep -h "FlashAttention-Triton" /tmp/runs/*.log 2>/dev/null | sort | uniq -c
echo "elapsed $SECONDS s"
