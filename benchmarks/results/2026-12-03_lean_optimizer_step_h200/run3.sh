#!/usr/bin/env bash
# The final lean step (per-tensor fp32 norms handed to DeepSpeed's norm; unscale/clip inside the fused AdamW) against
# DeepSpeed's own (--no-lean-optimizer-step), Llama-1B at 8k on one H200, SP=1, ours with its defaults otherwise:
# profiled steps under ZeRO-3 and ZeRO-1, end to end under both (ZeRO-3 twice each, alternating), and one ZeRO-3 step
# profiled with Python stacks (where the host waits on the GPU).
#   bash benchmarks/results/2026-12-03_lean_optimizer_step_h200/run3.sh   (repository root; .whl: DeepSpeed
#   wheels)
set -u
[[ -d /tmp/site ]] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
O=${OUT:-/tmp/out}; R=run3; mkdir -p "$O/logs" "$O/$R"
pack() { (cd "$O" && tar czf $R.tgz $R logs); }
shape=(--num-layers 16 --hidden-size 2048 --num-attention-heads 32 --num-key-value-heads 8 --ffn-hidden-size 8192
       --vocab-size 128256 --use-rotary-position-embeddings --rotary-base 500000 --normalization RMSNorm --swiglu
       --disable-bias-linear --seq-length 8192 --micro-batch-size 1 --global-batch-size 1 --train-iters 6
       --lr 1e-4 --mock-data --num-workers 0 --eval-interval 0 --log-interval 1 --ds-sequence-parallel-size 1
       --attention-backend flash_triton --tiled-logits-loss --bf16 --recompute auto)
prof() {  # name, extra flags...
  local name=$1; shift
  PYTHONPATH=/tmp/site:$PWD timeout 120 python3 -m torch.distributed.run --standalone --nproc_per_node=1 \
    bench/profile_step.py "${shape[@]}" "$@" --profile-out "$O/$R/profile_8k_$name.json" > "$O/logs/profile_$name.log" 2>&1
  echo "profile $name rc=$?"
  python3 -c "
import json,sys; r=json.load(open(sys.argv[1]))
print({k: round(r[k],1) for k in ('step_wall_ms','kernel_ms_per_step','compute_busy_ms_per_step','idle_ms_per_step')}, {k: round(v,1) for k,v in r['categories_ms_per_step'].items()})
print([(k['kernel'][:50], round(k['ms'],2)) for k in r['top_kernels_ms_per_step'] if k['category']!='matmul'])
for s in r.get('synchronizations_per_step', []): print(s)" "$O/$R/profile_8k_$name.json"
  pack
}
e2e() {  # name, seq, extra trainer flags...
  local name=$1 seq=$2; shift 2
  PYTHONPATH=/tmp/site:$PWD python3 bench/throughput.py --shape llama-1b --nproc 1 --sp 1 --backends flash_triton \
    --seq-lens "$seq" --iters 12 --warmup 4 --case-timeout 150 --no-recompute \
    --out "$O/$R/throughput_llama-1b_${name}.json" --log-dir "$O/logs/e2e_$name" -- --recompute auto "$@" \
    > "$O/logs/throughput_$name.out" 2>&1
  echo "e2e $name rc=$?"; grep -h "^  " "$O/logs/throughput_$name.out" | cut -c1-220; pack
}
prof zero3_lean --zero-stage 3 --profile-warmup 3 --profile-steps 2
prof zero3_deepspeed --zero-stage 3 --profile-warmup 3 --profile-steps 2 --no-lean-optimizer-step
prof zero1_lean --zero-stage 1 --profile-warmup 3 --profile-steps 2
prof zero1_deepspeed --zero-stage 1 --profile-warmup 3 --profile-steps 2 --no-lean-optimizer-step
e2e 8k_zero3_lean_a 8192
e2e 8k_zero3_deepspeed_a 8192 --no-lean-optimizer-step
e2e 8k_zero3_lean_b 8192
e2e 8k_zero3_deepspeed_b 8192 --no-lean-optimizer-step
e2e 8k_zero1_lean 8192 --zero-stage 1
e2e 8k_zero1_deepspeed 8192 --zero-stage 1 --no-lean-optimizer-step
prof zero3_lean_stacks --zero-stage 3 --profile-warmup 3 --profile-steps 1 --profile-stacks
rm -rf "$O/$R" "$O/logs"
