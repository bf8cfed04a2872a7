#!/usr/bin/env bash
# Ours with its defaults (ZeRO-1, --recompute auto, our kernels, tiled loss, fused SwiGLU, the lean step) against
# torchtitan 0.2.2 at its fastest setting (activation checkpointing none, then op, then full: the first that fits),
# Llama-1B and GPT-1.3B at 8k and 32k on one H200, SP=1, bf16, one bench/throughput.py invocation per shape and
# length with ours first and torchtitan right after.
#   bash benchmarks/results/2026-12-04_defaults_vs_torchtitan_h200/run.sh   (repository root; .whl: DeepSpeed
#   wheels, .whl/peers from bench/peer_wheels.sh)
set -u
[[ -d /tmp/site ]] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
[[ -d /tmp/tt_site ]] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/tt_site .whl/peers/torchtitan/*.whl
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:/tmp/tt_site:$PWD
O=${OUT:-/tmp/out}; R=run; mkdir -p "$O/logs" "$O/$R"
pack() { (cd "$O" && tar czf $R.tgz $R logs); }
for shape in llama-1b gpt-1.3b; do
  for seq in 8192 32768; do
    python3 bench/throughput.py --shape $shape --nproc 1 --sp 1 --backends flash_triton --seq-lens $seq \
      --iters 10 --warmup 3 --case-timeout 150 --no-recompute --peers torchtitan \
      --out "$O/$R/throughput_${shape}_${seq}.json" --log-dir "$O/logs/${shape}_${seq}" \
      -- --recompute auto --zero-stage 1 > "$O/logs/${shape}_${seq}.out" 2>&1
    echo "$shape $seq rc=$?"; grep -h "^  " "$O/logs/${shape}_${seq}.out" | cut -c1-220; pack
  done
done
rm -rf "$O/$R" "$O/logs"
