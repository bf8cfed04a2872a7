#!/bin/bash
# Two H200s (2026-11-30; results packed into $OUT/callC.tar after every step): bench/tiled_loss.py at the
# padded vocabulary again; GPT-1.3B, SP=2, ZeRO-3 at 64k: ours and the peer with full recomputation, ours with
# keep-attention; a profile of ours at 32k without recomputation with the fused tiled loss
# (profile_gpt-1.3b_sp2_32k_norecompute.json); at 128k ours with full recomputation and with keep-attention.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=/tmp/c; mkdir -p $R
pack() { tar -C $R -cf $OUT/callC.tar . ; }
timeout 100 python3 bench/tiled_loss.py --tokens 16384,65536 --out $R/tiled_loss_h200.json 2>&1 | tail -10; pack
B="python3 bench/throughput.py --nproc 2 --sp 2 --backends sdpa --log-dir /tmp/runs"
timeout 200 $B --case-timeout 100 --seq-lens 65536 --peer --out $R/recompute_64k.json 2>&1 | tail -3; pack
timeout 100 $B --case-timeout 100 --seq-lens 65536 --out $R/keep_attention_64k_r2.json -- --checkpoint-keep-attention 2>&1 | tail -2; pack
timeout 150 python3 -m torch.distributed.run --standalone --nproc_per_node 2 bench/profile_step.py --num-layers 24 \
  --hidden-size 2048 --num-attention-heads 16 --ffn-hidden-size 8192 --vocab-size 50257 --use-rotary-position-embeddings \
  --mock-data --bf16 --zero-stage 3 --micro-batch-size 1 --global-batch-size 1 --ds-sequence-parallel-size 2 \
  --attention-backend sdpa --tiled-logits-loss --eval-interval 0 --log-interval 100 --seq-length 32768 \
  --profile-out $R/h200x2_gpt-1.3b_sp2_32k_norecompute_fused_loss.json 2>&1 | tail -4; pack
timeout 130 $B --case-timeout 120 --seq-lens 131072 --iters 6 --warmup 2 --out $R/recompute_128k.json 2>&1 | tail -2; pack
timeout 130 $B --case-timeout 120 --seq-lens 131072 --iters 6 --warmup 2 --out $R/keep_attention_128k.json -- --checkpoint-keep-attention 2>&1 | tail -2; pack
