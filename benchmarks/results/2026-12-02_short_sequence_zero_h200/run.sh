#!/bin/bash
# One H200 (2026-12-02): GPT-1.3B at 8k, SP=1, bf16, no recomputation, our kernels: ZeRO-1, ZeRO-2 and ZeRO-3,
# and DeepSpeed's compiler (--deepcompile) with ZeRO-1 and ZeRO-3, one bench/throughput.py run each, alternated.
#   bash benchmarks/results/2026-12-02_short_sequence_zero_h200/run.sh   (from the repository root of a clean tree)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
O=${OUT:-/tmp/out}
mkdir -p "$O/logs"
for rep in ${REPS:-1}; do
  for setting in ${SETTINGS:-zero1 zero2 zero3 zero1_deepcompile zero3_deepcompile}; do
    stage=${setting:4:1}
    extra=(--zero-stage "$stage")
    [[ $setting == *deepcompile ]] && extra+=(--deepcompile)
    python3 bench/throughput.py --shape gpt-1.3b --seq-lens 8192 --backends flash_triton --no-recompute \
      --iters ${ITERS:-12} --warmup ${WARMUP:-4} --case-timeout ${CASE_TIMEOUT:-420} \
      --out "$O/${setting}_r${rep}.json" --log-dir "$O/logs/${setting}_r${rep}" -- "${extra[@]}" > "$O/logs/${setting}_r${rep}.out" 2>&1
    echo "$setting r$rep rc=$? $(tail -2 "$O/logs/${setting}_r${rep}.out" | tr '\n' ' ' | cut -c1-300)"
  done
done
(cd "$O" && tar czf logs.tgz logs && rm -rf logs)
