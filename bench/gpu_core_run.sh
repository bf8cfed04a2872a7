#!/usr/bin/env bash
# GPT-1.3B (24 x 2048, 16 heads) at 8k, bf16, ZeRO-3, a few steps, on the GPUs of this machine.
# Writes raw logs and metrics under ${OUT:-runs/gpu_core}, the core GPU check of benchmarks/results/<date>_gpu_core_<gpu>/:
#   one H100:   NPROC=1 SP=1 bash bench/gpu_core_run.sh
#   two H200s:  NPROC=2 SP=2 bash bench/gpu_core_run.sh
set -euo pipefail
NPROC=${NPROC:-1} SP=${SP:-1} SEQ_LEN=${SEQ_LEN:-8192} ITERS=${ITERS:-10} ATTN=${ATTN:-sdpa}
OUT=${OUT:-runs/gpu_core}
mkdir -p "$OUT"
name=gpt1.3b_seq${SEQ_LEN}_sp${SP}_np${NPROC}_${ATTN}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
cmd=(python3 -m torch.distributed.run --standalone --nproc_per_node "$NPROC" pretrain_gpt.py
  --num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length "$SEQ_LEN"
  --max-position-embeddings "$SEQ_LEN" --vocab-size 50257 --mock-data --num-workers 2
  --micro-batch-size 1 --global-batch-size $((NPROC / SP)) --train-iters "$ITERS" --lr 1e-4 --lr-warmup-iters 2
  --bf16 --zero-stage 3 --ds-sequence-parallel-size "$SP" --attention-backend "$ATTN" --log-interval 1
  --metrics-file "$OUT/$name.jsonl")
echo "${cmd[*]}" > "$OUT/$name.cmd"
python3 "$(dirname "$0")/report.py" > "$OUT/$name.env.json"  # devices and package versions, as every bench report
"${cmd[@]}" 2>&1 | tee "$OUT/$name.log"
