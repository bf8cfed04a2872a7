#!/usr/bin/env bash
# Llama-1B on one H200, SP 1, ours with its defaults (the planner, fused SwiGLU) against ours with the eager gate
# (--no-fused-swiglu) and torchtitan at its fastest setting, at 8k and 32k: one bench/throughput.py JSON per case.
#   bash benchmarks/results/2026-12-03_fused_swiglu_h200/run2.sh   (repository root; .whl: DeepSpeed wheels,
#   .whl/peers from bench/peer_wheels.sh)
set -u
[[ -d /tmp/site ]] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
[[ -d /tmp/tt_site ]] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/tt_site .whl/peers/torchtitan/*.whl
export PYTHONPATH=/tmp/site:/tmp/tt_site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
O=${OUT:-/tmp/out}; mkdir -p "$O/logs" "$O/run2"
for seq in ${LENGTHS:-8192 32768}; do
  common=(--shape llama-1b --nproc 1 --sp 1 --backends flash_triton --seq-lens $seq --iters 6 --warmup 2
          --case-timeout 150 --no-recompute)
  for variant in defaults eager; do
    extra=(); [[ $variant == eager ]] && extra=(--no-fused-swiglu)
    python3 bench/throughput.py "${common[@]}" --out "$O/run2/throughput_llama-1b_${seq}_$variant.json" \
      --log-dir "$O/logs/${seq}_$variant" -- --recompute auto "${extra[@]}" > "$O/logs/${seq}_$variant.out" 2>&1
    echo "$seq $variant rc=$?"; grep -h "^  " "$O/logs/${seq}_$variant.out" | cut -c1-200
  done
  python3 bench/throughput.py "${common[@]}" --peer-only --peers torchtitan \
    --out "$O/run2/throughput_llama-1b_${seq}_torchtitan.json" --log-dir "$O/logs/${seq}_torchtitan" \
    > "$O/logs/${seq}_torchtitan.out" 2>&1
  echo "$seq torchtitan rc=$?"; grep -h "^  " "$O/logs/${seq}_torchtitan.out" | cut -c1-200
done
(cd "$O" && tar czf logs2.tgz logs && rm -rf logs)
