#!/usr/bin/env bash
# GPT-1.3B (24 layers, hidden 2048, 16 heads), sequence 32k, SP=8 over 8 GPUs, ZeRO-3, bf16.
# Variables and their defaults: see launch_common.sh. Example: NUM_GPUS=2 SP=2 bash $0
NAME=gpt_1.3B_seq_parallel_32k
SEQ_LEN=${SEQ_LEN:-32768} SP=${SP:-8} GLOBAL_BATCH=${GLOBAL_BATCH:-$(( ${NUM_GPUS:-8} * ${NUM_NODES:-1} / ${SP:-8} ))}
TRAIN_ITERS=${TRAIN_ITERS:-1000}
MODEL_ARGS=(--num-layers 24 --hidden-size 2048 --num-attention-heads 16)
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
