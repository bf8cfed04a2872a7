#!/usr/bin/env bash
# One profiled step of ours at 8k (Llama-3.2-1B shape, one H200, the bench's flags: ZeRO-3, flash_triton, tiled
# loss, --recompute auto), with ZeRO-3 and with ZeRO-1: where the step's time goes against torchtitan's.
set -u
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
O=${OUT:-/tmp/out}; mkdir -p "$O"
shape=(--num-layers 16 --hidden-size 2048 --num-attention-heads 32 --num-key-value-heads 8 --ffn-hidden-size 8192
       --vocab-size 128256 --use-rotary-position-embeddings --rotary-base 500000 --normalization RMSNorm --swiglu
       --disable-bias-linear --seq-length 8192 --micro-batch-size 1 --global-batch-size 1 --train-iters 6 --lr 1e-4
       --mock-data --num-workers 0 --eval-interval 0 --log-interval 1 --ds-sequence-parallel-size 1
       --attention-backend flash_triton --tiled-logits-loss --bf16 --recompute auto)
for z in 3 1; do
  timeout 150 python3 -m torch.distributed.run --standalone --nproc_per_node=1 bench/profile_step.py "${shape[@]}" \
    --zero-stage $z --profile-warmup 3 --profile-steps 2 --profile-out "$O/profile_8k_zero$z.json" \
    > "$O/profile_8k_zero$z.log" 2>&1
  echo "zero $z rc=$?"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r[k] for k in ('step_wall_ms','kernel_ms_per_step','gpu_busy_fraction')}); print(r.get('categories_ms_per_step') or r.get('categories'))" "$O/profile_8k_zero$z.json"
done
