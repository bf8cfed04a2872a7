#!/bin/bash
# A/B of DeepSpeed ZeRO-3 memory_efficient_linear (true = DeepSpeed default, false = F.linear)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
echo '{"zero_optimization": {"stage": 3, "memory_efficient_linear": false}}' > /tmp/mel_false.json
echo '{"zero_optimization": {"stage": 3, "memory_efficient_linear": true}}' > /tmp/mel_true.json
B="python3 bench/throughput.py --nproc 2 --sp 2 --backends sdpa --case-timeout 150 --log-dir /tmp/runs"
for rep in 1 2; do
  for mel in true false; do
    $B --seq-lens 32768 --no-recompute --out $OUT/mel_${mel}_norecompute_r$rep.json -- --deepspeed_config /tmp/mel_$mel.json 2>&1 | tail -3
    $B --seq-lens 8192,32768 --out $OUT/mel_${mel}_recompute_r$rep.json -- --deepspeed_config /tmp/mel_$mel.json 2>&1 | tail -3
  done
done
