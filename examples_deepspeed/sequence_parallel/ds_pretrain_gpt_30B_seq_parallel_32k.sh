#!/usr/bin/env bash
# GPT-30B (64 layers, hidden 6144, 64 heads), sequence 32k, SP=8, ZeRO-3, bf16: the run of Megatron-DeepSpeed's published GPT-30B table
# (global batch 4 on 32 GPUs). Variables and their defaults: see launch_common.sh.
NAME=gpt_30B_seq_parallel_32k
SEQ_LEN=${SEQ_LEN:-32768} SP=${SP:-8} GLOBAL_BATCH=${GLOBAL_BATCH:-$(( ${NUM_GPUS:-8} * ${NUM_NODES:-1} / ${SP:-8} ))}
TRAIN_ITERS=${TRAIN_ITERS:-1000}
MODEL_ARGS=(--num-layers 64 --hidden-size 6144 --num-attention-heads 64)
INIT_STD=${INIT_STD:-0.008}
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
