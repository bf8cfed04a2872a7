#!/bin/bash
# Two H200s: profile of ours at 32k without recomputation, SP=2, ZeRO-3, with today's defaults
# (DeepSpeed's exchange, leaf layers, memory_efficient_linear false).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
timeout 170 python3 -m torch.distributed.run --standalone --nproc_per_node 2 bench/profile_step.py --num-layers 24 \
  --hidden-size 2048 --num-attention-heads 16 --ffn-hidden-size 8192 --vocab-size 50257 --use-rotary-position-embeddings \
  --mock-data --bf16 --zero-stage 3 --micro-batch-size 1 --global-batch-size 1 --ds-sequence-parallel-size 2 \
  --attention-backend sdpa --tiled-logits-loss --eval-interval 0 --log-interval 100 --seq-length 32768 \
  --profile-out $OUT/h200x2_gpt-1.3b_sp2_32k_norecompute_defaults.json 2>&1 | tail -15
