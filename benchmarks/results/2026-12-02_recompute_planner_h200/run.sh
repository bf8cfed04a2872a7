#!/bin/bash
# One H200 (2026-12-02): GPT-1.3B at 32k and 128k, SP=1, bf16, flash_triton, tiled MLP and loss, ZeRO-3 (the bench default):
# --recompute auto (the planner, no --checkpoint-activations) against full recomputation (--checkpoint-activations).
#   bash benchmarks/results/2026-12-02_recompute_planner_h200/run.sh   (from the repository root)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
O=${OUT:-/tmp/out}
mkdir -p "$O/logs"
for seq in 32768 131072; do
  for mode in auto full; do
    extra=()
    [[ $mode == auto ]] && extra=(--no-recompute)
    python3 bench/throughput.py --shape gpt-1.3b --seq-lens $seq --backends flash_triton --tiled-mlp on \
      "${extra[@]}" --iters ${ITERS:-5} --warmup ${WARMUP:-2} --case-timeout ${CASE_TIMEOUT:-150} \
      --out "$O/${mode}_${seq}.json" --log-dir "$O/logs/${mode}_${seq}" -- --recompute $mode \
      > "$O/logs/${mode}_${seq}.out" 2>&1
    echo "$mode $seq rc=$? plan: $(grep -rh 'recompute:' "$O/logs/${mode}_${seq}" | head -1)"
    echo "  $(tail -2 "$O/logs/${mode}_${seq}.out" | tr '\n' ' ' | cut -c1-400)"
  done
done
(cd "$O" && tar czf logs.tgz logs && rm -rf logs)
