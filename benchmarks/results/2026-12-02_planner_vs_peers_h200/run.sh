#!/usr/bin/env bash
# Ours with its defaults (--recompute auto: the planner) against torchtitan and HF + DeepSpeed ALST on one H200,
# Llama-3.2-1B shape, bf16, SP 1, flash_triton, one bench/throughput.py invocation per length with ours first.
# Peers at their faster setting: torchtitan tries activation checkpointing none, op, full and keeps the first that
# fits; hf_alst runs with full recomputation, and at 8k also without (where it fits).
#   LENGTHS="8192 32768" bash benchmarks/results/2026-12-02_planner_vs_peers_h200/run.sh   (repository root;
#   .whl: DeepSpeed wheels, .whl/peers from bench/peer_wheels.sh)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/tt_site .whl/peers/torchtitan/*.whl
export PYTHONPATH=/tmp/site:/tmp/tt_site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
O=${OUT:-/tmp/out}; mkdir -p "$O/logs"
SHAPE=${SHAPE:-llama-1b}
common=(--shape $SHAPE --nproc 1 --sp 1 --backends flash_triton --iters ${ITERS:-5} --warmup ${WARMUP:-2}
        --case-timeout ${CASE_TIMEOUT:-150} --out "$O/throughput_${SHAPE}.json" --append)
for seq in ${LENGTHS:-8192 32768 131072}; do
  tiled=(); [[ $seq -ge 131072 ]] && tiled=(--tiled-mlp on)
  # ours (the planner; --no-recompute leaves the bench's --checkpoint-activations out) and torchtitan
  python3 bench/throughput.py "${common[@]}" --seq-lens $seq "${tiled[@]}" --no-recompute --peers torchtitan \
    --log-dir "$O/logs/${seq}_a" -- --recompute auto > "$O/logs/${seq}_a.out" 2>&1
  echo "$seq ours+torchtitan rc=$? plan: $(grep -rh '> recompute:' "$O/logs/${seq}_a" | head -1)"
  # hf_alst with full recomputation
  python3 bench/throughput.py "${common[@]}" --seq-lens $seq "${tiled[@]}" --peer-only --peers hf_alst \
    --log-dir "$O/logs/${seq}_b" > "$O/logs/${seq}_b.out" 2>&1
  echo "$seq hf_alst rc=$?"
  if [[ $seq -le 8192 ]]; then
    python3 bench/throughput.py "${common[@]}" --seq-lens $seq --peer-only --peers hf_alst --no-recompute \
      --log-dir "$O/logs/${seq}_c" > "$O/logs/${seq}_c.out" 2>&1
    echo "$seq hf_alst without recomputation rc=$?"
  fi
  tail -4 "$O/logs/${seq}_b.out" | cut -c1-300
done
(cd "$O" && tar czf logs.tgz logs && rm -rf logs)
