#!/bin/bash
# The before/after training runs of run.sh alone (no tests, no install): a repeat for the spread.
set -u
ROOT=$PWD/.after
BASE=$PWD/.baseline
R=${OUT:-/tmp/out}/raw
mkdir -p "$R"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
run() {  # run TREE ATTN REPEAT
  local tree=$1 attn=$2 rep=$3 dir=$ROOT
  [ "$tree" = before ] && dir=$BASE
  local name=${tree}_${attn}_r${rep}
  local cmd=(python3 pretrain_gpt.py --num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 32768
    --max-position-embeddings 32768 --vocab-size 50257 --mock-data --num-workers 2 --micro-batch-size 1
    --global-batch-size 1 --train-iters ${ITERS:-8} --lr 1e-4 --lr-warmup-iters 2 --bf16 --zero-stage 3
    --checkpoint-activations --tiled-logits-loss --attention-backend "$attn" --log-interval 1
    --metrics-file "$R/$name.jsonl")
  echo "cd $dir ($(cat $dir/COMMIT 2>/dev/null || echo 8a8bac2)) && ${cmd[*]}" > "$R/$name.cmd"
  (cd "$dir" && PYTHONPATH=/tmp/site:$dir timeout 240 "${cmd[@]}" > "$R/$name.log" 2>&1)
  echo "$name rc=$? $(grep -c iteration "$R/$name.log") log lines; $(tail -1 "$R/$name.log" | cut -c1-160)"
}
for attn in ${ATTNS:-sdpa flash_triton}; do
  for rep in ${REPS:-1}; do
    run before "$attn" "$rep"
    run after "$attn" "$rep"
  done
done
(cd "${OUT:-/tmp/out}" && tar czf raw.tgz raw && rm -rf raw)
