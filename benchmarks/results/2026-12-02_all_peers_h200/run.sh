#!/usr/bin/env bash
# Ours with its defaults (--recompute auto: the planner) against all three peers on one H200, SP 1, bf16,
# flash_triton: torchtitan, ArcticTraining and HF + DeepSpeed ALST, one length per bench/throughput.py
# invocation with ours first, then the peers back to back. Each peer at its fastest setting that fits: torchtitan
# tries activation checkpointing none, op, full; ArcticTraining none, full, offload; hf_alst runs with full
# recomputation (and at 8k also without). From 128k the tiled MLP is on for every system, and the peers start at
# the mode that fit there before (torchtitan full, ArcticTraining offload: its recipe from 64K tokens per GPU)
# instead of retrying the ones that ran out of memory.
#   SHAPE=llama-1b LENGTHS="8192 32768" bash benchmarks/results/2026-12-02_all_peers_h200/run.sh
#   (repository root; .whl: DeepSpeed wheels, .whl/peers: bench/peer_wheels.sh)
#   ARCTIC_ONLY=1 ...: only ArcticTraining and hf_alst (ours and torchtitan measured in an earlier call)
#   PROFILE=32768 ...: also one profiled torchtitan step at that length (its fastest mode there: none)
set -u
inst() { [[ -d $1 ]] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$1" "${@:2}"; }
inst /tmp/site .whl/*.whl
inst /tmp/tt_site .whl/peers/torchtitan/*.whl
inst /tmp/arctic_site .whl/peers/arctic/*.whl
export PYTHONPATH=/tmp/site:/tmp/tt_site:$PWD ARCTIC_PYTHONPATH=/tmp/arctic_site
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
PYTHONPATH=/tmp/arctic_site:$PYTHONPATH python3 -c "import arctic_training, transformers, deepspeed
from importlib.metadata import version
print('arctic env: arctic_training', version('arctic_training'), 'transformers', transformers.__version__)"
O=${OUT:-/tmp/out}; mkdir -p "$O/logs"
SHAPE=${SHAPE:-llama-1b}
common=(--shape $SHAPE --nproc 1 --sp 1 --backends flash_triton --iters ${ITERS:-5} --warmup ${WARMUP:-2}
        --case-timeout ${CASE_TIMEOUT:-200} --out "$O/throughput_${SHAPE}.json" --append)
for seq in ${LENGTHS:-8192 32768 131072}; do
  long=(); [[ $seq -ge 131072 ]] && long=(--tiled-mlp on --torchtitan-arg=--ac-mode=full --arctic-arg=--ac-mode=offload)
  if [[ -n ${ARCTIC_ONLY:-} ]]; then  # ArcticTraining alone (then hf_alst), when ours and torchtitan ran before
    python3 bench/throughput.py "${common[@]}" --seq-lens $seq "${long[@]:0:2}" "${long[@]:3}" --peer-only --peers arctic \
      --log-dir "$O/logs/${SHAPE}_${seq}_a" > "$O/logs/${SHAPE}_${seq}_a.out" 2>&1
  else
    python3 bench/throughput.py "${common[@]}" --seq-lens $seq "${long[@]}" --no-recompute --peers torchtitan,arctic \
      --log-dir "$O/logs/${SHAPE}_${seq}_a" -- --recompute auto > "$O/logs/${SHAPE}_${seq}_a.out" 2>&1
  fi
  echo "$SHAPE $seq ours+torchtitan+arctic rc=$? plan: $(grep -rh '> recompute:' "$O/logs/${SHAPE}_${seq}_a" | head -1)"
  python3 bench/throughput.py "${common[@]}" --seq-lens $seq "${long[@]:0:2}" --peer-only --peers hf_alst \
    --log-dir "$O/logs/${SHAPE}_${seq}_b" > "$O/logs/${SHAPE}_${seq}_b.out" 2>&1
  echo "$SHAPE $seq hf_alst rc=$?"
  if [[ $seq -le 8192 ]]; then
    python3 bench/throughput.py "${common[@]}" --seq-lens $seq --peer-only --peers hf_alst --no-recompute \
      --log-dir "$O/logs/${SHAPE}_${seq}_c" > "$O/logs/${SHAPE}_${seq}_c.out" 2>&1
    echo "$SHAPE $seq hf_alst without recomputation rc=$?"
  fi
  grep -h "^  " "$O"/logs/${SHAPE}_${seq}_*.out | cut -c1-260
done
if [[ -n ${PROFILE:-} ]]; then
  timeout 240 python3 -m torch.distributed.run --standalone --nproc_per_node=1 bench/peer_torchtitan.py --shape $SHAPE \
    --seq-length $PROFILE --bf16 --ac-mode none --iters 6 --profile-steps 2 \
    --profile-out "$O/profile_torchtitan_${SHAPE}_${PROFILE}.json" --metrics-file "$O/logs/profile_tt.jsonl" \
    > "$O/logs/profile_tt_${SHAPE}_${PROFILE}.log" 2>&1
  echo "torchtitan profile rc=$?"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r[k] for k in ('step_wall_ms','kernel_ms_per_step','gpu_busy_fraction')}); print(r['categories_ms_per_step'])" "$O/profile_torchtitan_${SHAPE}_${PROFILE}.json"
fi
(cd "$O" && tar czf "logs_${SHAPE}_$(date +%H%M%S).tgz" logs && rm -rf logs)
