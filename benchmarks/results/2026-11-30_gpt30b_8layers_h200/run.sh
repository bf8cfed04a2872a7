#!/bin/bash
# The command that wrote gpt30b_8layers_2xh200_seq8192_sp2.json (2026-11-30, two H200s), from the repository root:
# the 30B script with 8 of its 64 layers, 6 steps, no checkpoint; the JSON is the run's --metrics-file with the
# command, devices and versions added.
set -eu
NUM_GPUS=2 SEQ_LEN=8192 LAUNCHER=torchrun TRAIN_ITERS=6 SAVE_DIR=/tmp/s30 CACHE_DIR=/tmp/corpus \
  bash examples_deepspeed/sequence_parallel/ds_pretrain_gpt_30B_seq_parallel.sh --num-layers 8 --save "" --eval-interval 0
