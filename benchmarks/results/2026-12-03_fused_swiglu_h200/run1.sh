#!/usr/bin/env bash
# Fused SwiGLU (megatron.kernels.swiglu) on one H200: its tests on the GPU, bench/swiglu.py (eager against fused at
# Llama-1B's width, 8k and 32k rows), and Llama-1B at 8k end to end with the planner, eager (the default) and
# --fused-swiglu, back to back in one bench/throughput.py JSON (two rounds, alternating), and one profiled step of
# each (bench/profile_step.py).
#   bash benchmarks/results/2026-12-03_fused_swiglu_h200/run1.sh   (repository root; .whl: DeepSpeed wheels)
set -u
[[ -d /tmp/site ]] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
O=${OUT:-/tmp/out}; mkdir -p "$O/logs" "$O/run1"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/attention/test_swiglu_triton.py > "$O/logs/gpu_tests.log" 2>&1
echo "gpu tests rc=$?: $(tail -1 "$O/logs/gpu_tests.log")"
timeout 90 python3 bench/swiglu.py --out "$O/swiglu.json" > "$O/logs/swiglu.log" 2>&1; echo "swiglu rc=$?"; cat "$O/logs/swiglu.log"
for variant in eager fused eager2 fused2; do
  extra=(); [[ $variant == fused* ]] && extra=(--fused-swiglu)  # now the default: eager needs --no-fused-swiglu
  python3 bench/throughput.py --shape llama-1b --nproc 1 --sp 1 --backends flash_triton --seq-lens ${SEQ:-8192} \
    --iters 6 --warmup 2 --case-timeout 120 --no-recompute --out "$O/run1/throughput_llama-1b_8k_$variant.json" \
    --log-dir "$O/logs/$variant" -- --recompute auto "${extra[@]}" > "$O/logs/throughput_$variant.out" 2>&1
  echo "$variant rc=$?"; grep -h "^  " "$O/logs/throughput_$variant.out" | cut -c1-200
done
shape=(--num-layers 16 --hidden-size 2048 --num-attention-heads 32 --num-key-value-heads 8 --ffn-hidden-size 8192
       --vocab-size 128256 --use-rotary-position-embeddings --rotary-base 500000 --normalization RMSNorm --swiglu
       --disable-bias-linear --seq-length ${SEQ:-8192} --micro-batch-size 1 --global-batch-size 1 --train-iters 6
       --lr 1e-4 --mock-data --num-workers 0 --eval-interval 0 --log-interval 1 --ds-sequence-parallel-size 1
       --attention-backend flash_triton --tiled-logits-loss --bf16 --recompute auto --zero-stage 3)
for variant in eager fused; do
  extra=(); [[ $variant == fused ]] && extra=(--fused-swiglu)
  timeout 150 python3 -m torch.distributed.run --standalone --nproc_per_node=1 bench/profile_step.py "${shape[@]}" \
    "${extra[@]}" --profile-warmup 3 --profile-steps 2 --profile-out "$O/profile_8k_$variant.json" \
    > "$O/logs/profile_$variant.log" 2>&1
  echo "profile $variant rc=$?"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r[k] for k in ('step_wall_ms','kernel_ms_per_step')}, r['categories_ms_per_step'])" "$O/profile_8k_$variant.json"
done
(cd "$O" && tar czf logs.tgz logs && rm -rf logs)
