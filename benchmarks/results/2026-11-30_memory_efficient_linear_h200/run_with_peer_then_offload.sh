#!/bin/bash
# Two H200s (2026-11-30): ours vs peer in one invocation at 32k with memory_efficient_linear false (our new ZeRO-3 default, both systems),
# then the +offload rung of the GPT-1.3B ladder (ZeRO-Offload + DeepSpeedCPUAdam JIT build on this node).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
which ninja c++ nvcc; python3 -c "import sysconfig,os;p=sysconfig.get_paths()['include'];print(p,'Python.h',os.path.exists(p+'/Python.h'))"
B="python3 bench/throughput.py --nproc 2 --sp 2 --backends sdpa --peer --case-timeout 150 --log-dir /tmp/runs"
$B --seq-lens 32768 --out $OUT/peer_recompute.json  # committed as peer_same_call_recompute.json 2>&1 | tail -3
$B --seq-lens 32768 --no-recompute --out $OUT/peer_norecompute.json  # committed as peer_same_call_norecompute.json 2>&1 | tail -3
export TORCH_EXTENSIONS_DIR=/tmp/ext
left=$((535 - SECONDS)); echo "offload rung gets ${left}s"
timeout $left python3 bench/max_seqlen.py --shape gpt-1.3b --nproc 2 --rungs +offload --start-seq 262144 \
  --granularity 131072 --steps 1 --attempt-timeout 200 --out $OUT/max_seqlen_gpt-1.3b_2xh200_offload.json  # in docs/benchmarks/max_seqlen/ 2>&1 | grep -v "^\[rank" | tail -25
ls /tmp/ext 2>/dev/null
