#!/usr/bin/env bash
# After run.sh: the sdpa backend's log-sum-exp path again (GPU tests; bench/attention.py at the Llama-1B attention
# shape against cuDNN through SDPA and ours), and Llama-1B at 8k end to end with flash_triton and with sdpa.
#   bash benchmarks/results/2026-12-02_gqa_backward_sdpa_lse_h200/run2.sh   (repository root; .whl: DeepSpeed wheels)
set -u
[[ -d /tmp/site ]] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
O=${OUT:-/tmp/out}; mkdir -p "$O/run2"
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/attention/test_sdpa_lse.py \
  tests/alst/test_attention_output_checkpoint.py > "$O/run2/gpu_tests.log" 2>&1
echo "gpu tests rc=$?: $(tail -1 "$O/run2/gpu_tests.log")"; grep -E "^(FAILED|ERROR)" "$O/run2/gpu_tests.log" | cut -c1-300
timeout 120 python3 bench/attention.py --heads 32 --kv-heads 8 --head-dim 64 --tokens 1 --impls triton,sdpa_cudnn,sdpa_lse \
  --seqs 8192,32768,131072 --out "$O/attention_h32_kv8_d64_sdpa_lse.json" > "$O/run2/attention.log" 2>&1
echo "attention rc=$?"; grep "^|" "$O/run2/attention.log"
python3 bench/throughput.py --shape llama-1b --nproc 1 --sp 1 --backends flash_triton,sdpa --seq-lens 8192 \
  --iters 5 --warmup 2 --case-timeout 150 --no-recompute --out "$O/throughput_llama-1b_8k_backends.json" \
  --log-dir "$O/run2/logs" -- --recompute auto > "$O/run2/throughput.out" 2>&1
echo "throughput rc=$?"; grep -h "^  " "$O/run2/throughput.out" | cut -c1-200
(cd "$O" && tar czf run2_logs.tgz run2 && rm -rf run2)
