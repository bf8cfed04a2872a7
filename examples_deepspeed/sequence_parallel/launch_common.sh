# Shared by the ds_pretrain_gpt_*_seq_parallel*.sh scripts: they set the model shape, then
# source this file. Everything below can be overridden from the environment.
#
#   PYTHON        the interpreter (and so the environment) that runs everything  [$REPO/.venv/bin/python, else python3]
#   NUM_GPUS      processes per node (GPUs; CPU processes on a machine without GPUs)   [8]
#   NUM_NODES     nodes                                                               [1]
#   HOSTFILE      DeepSpeed hostfile for multi-node runs (launcher deepspeed)         []
#   LAUNCHER      megatron | torchrun | deepspeed                                     [megatron]
#                 megatron (python -m megatron.launch, torchrun's static flags): a rank's one-line error is
#                 the last line on screen, and SIGTERM/SIGUSR1 reach every rank, which saves and exits 75
#   NODE_RANK / MASTER_ADDR / MASTER_PORT   multi-node megatron/torchrun: this node, rank 0's host and port
#   SP            sequence-parallel size (--ds-sequence-parallel-size)                [per script]
#   SEQ_LEN       sequence length                                                     [per script]
#   MICRO_BATCH   micro batch per GPU                                                 [1]
#   GLOBAL_BATCH  global batch (samples per optimizer step)                           [per script]
#   ZERO_STAGE    DeepSpeed ZeRO stage                                                [3]
#   PRECISION     bf16 | fp16 | fp32                                                  [bf16]
#   SP_COMM_DTYPE fp32 | bf16: precision of SP gradient reductions (DeepSpeed default: fp32) []
#   ATTN          classic | sdpa | flash | flash_triton                               [flash]
#   TRAIN_ITERS   optimizer steps                                                     [per script]
#   DATA_PATH     Megatron data prefix(es); empty: the embedded corpus                []
#   TOKENIZER_TYPE / TOKENIZER_MODEL / VOCAB_FILE / MERGE_FILE   tokenizer for DATA_PATH
#   SAVE_DIR      checkpoint directory; a run finds SAVE_DIR/latest and resumes it   [runs/<name>]
#   DRY_RUN=1     print the command and the DeepSpeed config, launch nothing
# Extra command-line arguments are passed to pretrain_gpt.py last, so they override.
#
# Preemption (SLURM): pass --exit-signal-handler (and --exit-signal SIGUSR1 with #SBATCH --signal=USR1@180);
# on the signal every rank finishes its step, saves and the job exits 75: requeue it (README, "Exit status").
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"  # relative paths (SAVE_DIR, DATA_PATH, ...) are the repository's, as the run sees them
source "$REPO/examples_deepspeed/python_env.sh"
# --seq-length among the extra arguments wins: it sets SEQ_LEN (and the length in the run's name) too
for ((i = 1; i < $#; i++)); do
  if [ "${!i}" = --seq-length ]; then j=$((i + 1)) && SEQ_LEN=${!j} && NAME=$(sed -E "s/_[0-9]+k?$//" <<<"$NAME")_$SEQ_LEN; fi
done
NUM_GPUS=${NUM_GPUS:-8} NUM_NODES=${NUM_NODES:-1} HOSTFILE=${HOSTFILE:-} LAUNCHER=${LAUNCHER:-megatron}
MICRO_BATCH=${MICRO_BATCH:-1} ZERO_STAGE=${ZERO_STAGE:-3} PRECISION=${PRECISION:-bf16} ATTN=${ATTN:-flash}
SAVE_DIR=${SAVE_DIR:-runs/$NAME} DATA_PATH=${DATA_PATH:-}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [ -z "$DATA_PATH" ]; then
  if [ "${DRY_RUN:-0}" = 1 ]; then
    DATA_PREFIX="<embedded corpus>" TOKENIZER_MODEL="<embedded tokenizer>" TOKENIZER_TYPE=GPTSentencePieceTokenizer
  else
    eval "$($PYTHON "$REPO/tools/prepare_default_corpus.py" --cache-dir "${CACHE_DIR:-$REPO/.cache/corpus}" --shell)"
  fi
  DATA_PATH=$DATA_PREFIX
fi
data_args=(--data-path $DATA_PATH --tokenizer-type "${TOKENIZER_TYPE:-GPTSentencePieceTokenizer}")
[ -n "${TOKENIZER_MODEL:-}" ] && data_args+=(--tokenizer-model "$TOKENIZER_MODEL")
[ -n "${VOCAB_FILE:-}" ] && data_args+=(--vocab-file "$VOCAB_FILE")
[ -n "${MERGE_FILE:-}" ] && data_args+=(--merge-file "$MERGE_FILE")
precision_args=()
[ "$PRECISION" != fp32 ] && precision_args=(--"$PRECISION")
[ -n "${SP_COMM_DTYPE:-}" ] && precision_args+=(--seq-parallel-communication-data-type "$SP_COMM_DTYPE")

args=("${MODEL_ARGS[@]}"
  --seq-length "$SEQ_LEN" --max-position-embeddings "$SEQ_LEN"
  --ds-sequence-parallel-size "$SP" --zero-stage "$ZERO_STAGE" --attention-backend "$ATTN"
  --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" --train-iters "$TRAIN_ITERS"
  --lr "${LR:-1e-4}" --min-lr "${MIN_LR:-1e-5}" --lr-decay-style cosine --lr-warmup-iters "${WARMUP_ITERS:-10}"
  --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95 --clip-grad 1.0 --init-method-std "${INIT_STD:-0.02}"
  "${precision_args[@]}" "${data_args[@]}" --split 949,50,1
  --log-interval "${LOG_INTERVAL:-1}" --eval-interval "${EVAL_INTERVAL:-1000}" --eval-iters 10
  --save "$SAVE_DIR" --save-interval "${SAVE_INTERVAL:-1000}" --metrics-file "$SAVE_DIR/metrics.jsonl")
[ -f "$SAVE_DIR/latest" ] && args+=(--load "$SAVE_DIR")  # a requeued (or rerun) job continues where it stopped
args+=("$@")

case "$LAUNCHER" in
  megatron)
    launch=($PYTHON -m megatron.launch --nnodes "$NUM_NODES" --nproc-per-node "$NUM_GPUS")
    if [ "$NUM_NODES" = 1 ]; then launch+=(--standalone); else
      launch+=(--node-rank "${NODE_RANK:?set NODE_RANK for multi-node runs}" --master-addr "${MASTER_ADDR:?set MASTER_ADDR}" --master-port "${MASTER_PORT:-29500}")
    fi
    ;;
  deepspeed)
    launch=($PYTHON -m deepspeed.launcher.runner --num_nodes "$NUM_NODES" --num_gpus "$NUM_GPUS")
    [ -n "$HOSTFILE" ] && launch+=(--hostfile "$HOSTFILE")
    [ -z "$HOSTFILE" ] && launch+=(--master_port "${MASTER_PORT:-29500}")
    ;;
  torchrun)
    launch=($PYTHON -m torch.distributed.run --nnodes "$NUM_NODES" --nproc_per_node "$NUM_GPUS")
    if [ "$NUM_NODES" = 1 ]; then launch+=(--standalone); else
      launch+=(--node_rank "${NODE_RANK:?set NODE_RANK for multi-node torchrun}" --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" --master_port "${MASTER_PORT:-29500}")
    fi
    ;;
  *) echo "error: LAUNCHER=$LAUNCHER is unknown; use megatron, torchrun or deepspeed" >&2; exit 2 ;;
esac
cmd=("${launch[@]}" "$REPO/pretrain_gpt.py" "${args[@]}")

if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "${cmd[*]}"
  echo "# DeepSpeed config (derived from the flags by megatron/training/ds_config.py):"
  WORLD_SIZE=$((NUM_GPUS * NUM_NODES)) $PYTHON "$REPO/pretrain_gpt.py" "${args[@]}" --print-deepspeed-config
  exit 0
fi
mkdir -p "$SAVE_DIR"
exec "${cmd[@]}"
