#!/usr/bin/env bash
# Ours against the hf_alst and torchtitan peers on one H200 (bf16, 1 GPU, SP 1), 8k and 32k tokens.
# Carry .whl (DeepSpeed wheels, and .whl/peers from bench/peer_wheels.sh).
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/tt_site .whl/peers/torchtitan/*.whl || exit 1
export PYTHONPATH=/tmp/site:/tmp/tt_site:$PWD
R=${OUT:-/tmp/out}; mkdir -p $R
# GPU shakedown of the torchtitan runner (compile on) with the tiny shape
timeout 120 python3 -m torch.distributed.run --standalone --nproc_per_node=1 bench/peer_torchtitan.py --shape tiny \
  --seq-length 1024 --bf16 --iters 3 --metrics-file $R/shakedown.jsonl > $R/shakedown.log 2>&1; echo "shakedown rc $?"
tail -3 $R/shakedown.log
common="--nproc 1 --sp 1 --iters 5 --warmup 2 --case-timeout ${CASE_TIMEOUT:-150} --peers hf_alst,torchtitan"
for shape in llama-1b gpt-1.3b; do
  timeout ${SHAPE_TIMEOUT:-400} python3 bench/throughput.py --shape $shape --seq-lens ${SEQ_LENS:-8192,32768} $common \
    --out $R/throughput_${shape}.json --log-dir /tmp/logs_$shape 2>&1 | tee -a $R/log.txt
done
