#!/usr/bin/env bash
# GPT-30B (64 layers, hidden 6144, 64 heads), ZeRO-3, bf16, sequence length from SEQ_LEN.
# SP defaults follow Megatron-DeepSpeed's published GPT-30B table (8k: 2, 16k: 4, 32k and longer: 8 on one 8-GPU node).
# Variables and their defaults: see launch_common.sh. Example: SEQ_LEN=65536 bash $0
NAME=gpt_30B_seq_parallel_${SEQ_LEN:-8192}
SEQ_LEN=${SEQ_LEN:-8192}
case $SEQ_LEN in 8192) sp_default=2 ;; 16384) sp_default=4 ;; *) sp_default=8 ;; esac
SP=${SP:-$sp_default} GLOBAL_BATCH=${GLOBAL_BATCH:-$(( ${NUM_GPUS:-8} * ${NUM_NODES:-1} / ${SP:-$sp_default} ))}
TRAIN_ITERS=${TRAIN_ITERS:-1000}
MODEL_ARGS=(--num-layers 64 --hidden-size 6144 --num-attention-heads 64)
INIT_STD=${INIT_STD:-0.008}
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
