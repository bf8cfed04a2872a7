#!/usr/bin/env bash
# Fused SwiGLU (megatron.kernels.swiglu) on one H200: its tests on the GPU, bench/swiglu.py (eager against fused at
# Llama-1B's width, 8k and 32k rows), and Llama-1B at 8k end to end with the planner, eager (the default) and
# --fused-swiglu, back to back in one bench/throughput.py JSON.
#   bash benchmarks/results/2026-12-02_fused_swiglu_h200/run.sh   (repository root; .whl: DeepSpeed wheels)
set -u
[[ -d /tmp/site ]] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
O=${OUT:-/tmp/out}; mkdir -p "$O/logs"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/attention/test_swiglu_triton.py > "$O/logs/gpu_tests.log" 2>&1
echo "gpu tests rc=$?: $(tail -1 "$O/logs/gpu_tests.log")"
timeout 90 python3 bench/swiglu.py --out "$O/swiglu.json" > "$O/logs/swiglu.log" 2>&1; echo "swiglu rc=$?"; cat "$O/logs/swiglu.log"
for variant in eager fused; do
  extra=(); [[ $variant == fused ]] && extra=(--fused-swiglu)
  python3 bench/throughput.py --shape llama-1b --nproc 1 --sp 1 --backends flash_triton --seq-lens ${SEQ:-8192} \
    --iters 6 --warmup 2 --case-timeout 120 --no-recompute --out "$O/throughput_llama-1b_8k_swiglu.json" --append \
    --log-dir "$O/logs/$variant" -- --recompute auto "${extra[@]}" > "$O/logs/throughput_$variant.out" 2>&1
  echo "$variant rc=$?"; grep -h "^  " "$O/logs/throughput_$variant.out" | cut -c1-200
done
(cd "$O" && tar czf logs.tgz logs && rm -rf logs)
