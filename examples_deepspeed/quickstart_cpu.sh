#!/usr/bin/env bash
# The README's main job: a small GPT trained on the CPU with Ulysses sequence parallelism
# (SP=2 over 2 processes) on the embedded corpus (the Python standard library's text).
# Every setting can be overridden from the environment; extra arguments go last and win:
#   ITERS=50 bash examples_deepspeed/quickstart_cpu.sh --log-interval 5
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-2} SP=${SP:-2} ITERS=${ITERS:-300} SEQ_LEN=${SEQ_LEN:-256} WARMUP=${WARMUP:-$((ITERS < 20 ? ITERS : 20))}
SAVE_DIR=${SAVE_DIR:-runs/quickstart} CACHE_DIR=${CACHE_DIR:-.cache/corpus}
REPO=$(pwd)
source examples_deepspeed/python_env.sh  # PYTHON: $PYTHON, else .venv/bin/python, else python3
if [ -z "${DATA_PATH:-}" ]; then
  eval "$($PYTHON tools/prepare_default_corpus.py --cache-dir "$CACHE_DIR" --shell)"
  DATA_PATH=$DATA_PREFIX
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cmd=($PYTHON -m megatron.launch --standalone --nproc_per_node "$NPROC" pretrain_gpt.py
  --ds-sequence-parallel-size "$SP" --zero-stage 1
  --num-layers 4 --hidden-size 128 --num-attention-heads 4 --seq-length "$SEQ_LEN"
  --micro-batch-size 2 --global-batch-size 4 --train-iters "$ITERS"
  --lr 3e-3 --min-lr 3e-4 --lr-warmup-iters "$WARMUP" --lr-decay-style cosine --weight-decay 0.01 --clip-grad 1.0
  --data-path "$DATA_PATH" --tokenizer-type "${TOKENIZER_TYPE:-GPTSentencePieceTokenizer}"
  --tokenizer-model "${TOKENIZER_MODEL:?set TOKENIZER_MODEL with DATA_PATH}" --split 98,2,0
  --log-interval 10 --eval-interval 100 --eval-iters 4
  --save "$SAVE_DIR" --metrics-file "$SAVE_DIR/metrics.jsonl" "$@")
mkdir -p "$SAVE_DIR"
if [ "${DRY_RUN:-0}" = 1 ]; then echo "${cmd[*]}"; exit 0; fi
"${cmd[@]}"
