#!/usr/bin/env bash
# More alternating samples of run2.sh's comparison (this tree against commit a6cc256's), Llama-1B on one H200, SP=1,
# ours with its defaults otherwise: ZeRO-3 at 8k (three pairs: its steps spread 180-210 ms), ZeRO-1 at 32k (one
# pair), and torchtitan 0.2.2 at 32k in the same run.
#   git archive a6cc256 megatron bench pretrain_gpt.py pyproject.toml | tar -x -C .old/a6cc256
#   bash benchmarks/results/2026-12-04_host_idle_h200/run3.sh   (repository root; .whl: DeepSpeed wheels,
#   .whl/peers from bench/peer_wheels.sh)
set -u
[[ -d /tmp/site ]] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
[[ -d /tmp/tt_site ]] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/tt_site .whl/peers/torchtitan/*.whl
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
O=${OUT:-/tmp/out}; R=run3; mkdir -p "$O/logs" "$O/$R"; HERE=$PWD
pack() { (cd "$O" && tar czf $R.tgz $R logs); }
shape=(--num-layers 16 --hidden-size 2048 --num-attention-heads 32 --num-key-value-heads 8 --ffn-hidden-size 8192
       --vocab-size 128256 --use-rotary-position-embeddings --rotary-base 500000 --normalization RMSNorm --swiglu
       --disable-bias-linear --seq-length 8192 --micro-batch-size 1 --global-batch-size 1 --train-iters 6
       --lr 1e-4 --mock-data --num-workers 0 --eval-interval 0 --log-interval 1 --ds-sequence-parallel-size 1
       --attention-backend flash_triton --tiled-logits-loss --bf16 --recompute auto)
prof() {  # name, extra flags...
  local name=$1; shift
  PYTHONPATH=/tmp/site:$PWD timeout 150 python3 -m torch.distributed.run --standalone --nproc_per_node=1 \
    bench/profile_step.py "${shape[@]}" "$@" --profile-out "$O/$R/profile_8k_$name.json" > "$O/logs/profile_$name.log" 2>&1
  echo "profile $name rc=$?"
  python3 -c "
import json,sys; r=json.load(open(sys.argv[1]))
print({k: round(r[k],1) for k in ('step_wall_ms','kernel_ms_per_step','compute_busy_ms_per_step','idle_ms_per_step')}, {k: round(v,1) for k,v in r['categories_ms_per_step'].items()})
print('idle by phase', r['idle_by_phase_ms_per_step'])
print('idle by op', list(r['idle_by_host_op_ms_per_step'].items())[:15])" "$O/$R/profile_8k_$name.json"
  pack
}
e2e() {  # tree, name, seq, extra trainer flags...
  local tree=$1 name=$2 seq=$3; shift 3
  (cd "$tree" && PYTHONPATH=/tmp/site:$tree python3 bench/throughput.py --shape llama-1b --nproc 1 --sp 1 --backends flash_triton \
    --seq-lens "$seq" --iters 12 --warmup 4 --case-timeout 150 --no-recompute \
    --out "$O/$R/throughput_llama-1b_${name}.json" --log-dir "$O/logs/e2e_$name" -- --recompute auto "$@" \
    > "$O/logs/throughput_$name.out" 2>&1)
  echo "e2e $name rc=$?"; grep -h "^  " "$O/logs/throughput_$name.out" | cut -c1-220; pack
}
e2e "$HERE" 8k_zero3_new_a 8192 --zero-stage 3
e2e "$HERE/.old/a6cc256" 8k_zero3_a6cc256_a 8192 --zero-stage 3
e2e "$HERE" 8k_zero3_new_b 8192 --zero-stage 3
e2e "$HERE/.old/a6cc256" 8k_zero3_a6cc256_b 8192 --zero-stage 3
e2e "$HERE" 8k_zero3_new_c 8192 --zero-stage 3
e2e "$HERE/.old/a6cc256" 8k_zero3_a6cc256_c 8192 --zero-stage 3
e2e "$HERE" 32k_zero1_new 32768 --zero-stage 1
e2e "$HERE/.old/a6cc256" 32k_zero1_a6cc256 32768 --zero-stage 1
PYTHONPATH=/tmp/site:/tmp/tt_site:$PWD python3 bench/throughput.py --shape llama-1b --nproc 1 --sp 1 \
  --backends flash_triton --seq-lens 32768 --iters 12 --warmup 4 --case-timeout 150 --no-recompute --peer-only \
  --peers torchtitan --out "$O/$R/throughput_llama-1b_32k_torchtitan.json" --log-dir "$O/logs/e2e_torchtitan" \
  > "$O/logs/throughput_torchtitan.out" 2>&1
echo "torchtitan rc=$?"; grep -h "^  " "$O/logs/throughput_torchtitan.out" | cut -c1-220; pack
rm -rf "$O/$R" "$O/logs"
