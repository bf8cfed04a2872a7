#!/bin/bash
# Two H200s (2026-11-30, sixth session): where the step goes with packed 2K-token documents, GPT-1.3B at 32k,
# ZeRO-3, full recomputation, our Triton backend (Gluon forward, fused backward): SP=2 on two GPUs, then SP=1 on one
# (run6_e2e.sh's cases: 25,036 against 43,820 tokens/s per GPU). bench/profile_step.py, rank 0, 2 profiled steps.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT/r; mkdir -p $R
pack() { tar -C $R -cf $OUT/r.tar .; }
A="--num-layers 24 --hidden-size 2048 --num-attention-heads 16 --num-key-value-heads 16 --ffn-hidden-size 8192
  --vocab-size 50257 --use-rotary-position-embeddings --rotary-base 10000 --seq-length 32768 --micro-batch-size 1
  --global-batch-size 1 --lr 1e-4 --mock-data --num-workers 0 --eval-interval 0 --log-interval 100 --zero-stage 3
  --attention-backend flash_triton --checkpoint-activations --tiled-logits-loss --zero3-leaf-layers --bf16
  --mock-document-length 2048 --reset-attention-mask --reset-position-ids"
timeout 150 python3 -m torch.distributed.run --standalone --nproc_per_node 2 bench/profile_step.py $A \
  --ds-sequence-parallel-size 2 --ulysses-exchange deepspeed --profile-out $R/h200x2_gpt-1.3b_sp2_32k_docs2048.json \
  > $R/sp2.log 2>&1; pack; tail -5 $R/sp2.log
timeout 120 python3 -m torch.distributed.run --standalone --nproc_per_node 1 bench/profile_step.py $A \
  --profile-out $R/h200_gpt-1.3b_sp1_32k_docs2048.json > $R/sp1.log 2>&1; pack; tail -5 $R/sp1.log
for f in $R/*.json; do python3 -c "
import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-1])
print({k: d[k] for k in ('step_wall_ms','kernel_ms_per_step','compute_busy_ms_per_step','exposed_communication_ms_per_step','idle_ms_per_step','categories_ms_per_step')})
print([(t['kernel'][:60], round(t['ms'],1)) for t in d['top_kernels_ms_per_step'][:12]])
print([(t['op'][:50], round(t['ms'],1), t['calls']) for t in d['top_cpu_ops_ms_per_step'][:10]])" $f; done
echo "elapsed $SECONDS s"
