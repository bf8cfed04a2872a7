#!/usr/bin/env bash
# Grouped-query attention's fused backward on K/V repeated to the query heads against the grouped kernel, and the
# sdpa backend's log-sum-exp path (cuDNN's SDPA kernels, as attention-output checkpointing calls them), on one H200:
#   1. the GPU tests of both (numerics against fp32 / fp64 references);
#   2. bench/attention.py at the Llama-3.2-1B attention shape (32 query heads of dim 64, 8 KV heads, batch 1) from
#      4k to 128k, at head dim 128 with the same heads, and GPT-1.3B's (16 heads of 128, no GQA);
#   3. (E2E=1) bench/throughput.py, Llama-1B at 8k: ours with flash_triton and with sdpa, each with its defaults.
#   bash benchmarks/results/2026-12-02_gqa_backward_sdpa_lse_h200/run.sh   (repository root; .whl: DeepSpeed wheels)
set -u
[[ -d /tmp/site ]] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
O=${OUT:-/tmp/out}; mkdir -p "$O"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$O/gpu.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/attention/test_sdpa_lse.py \
  tests/attention/test_flash_attn_triton.py::test_gpu_fused_backward_gqa_expanded_matches_native_and_reference \
  tests/attention/test_flash_attn_triton.py::test_gpu_fused_backward_matches_reference \
  tests/alst/test_attention_output_checkpoint.py > "$O/gpu_tests.log" 2>&1
echo "gpu tests rc=$?: $(tail -1 "$O/gpu_tests.log")"; grep -E "^(FAILED|ERROR)" "$O/gpu_tests.log" | cut -c1-300
impls=triton_gqa_native,triton_gqa_expand,sdpa_cudnn,sdpa_lse
timeout 240 python3 bench/attention.py --heads 32 --kv-heads 8 --head-dim 64 --tokens 1 --impls $impls \
  --seqs ${SEQS64:-4096,8192,16384,32768,65536,131072} --out "$O/attention_h32_kv8_d64.json" > "$O/attention_d64.log" 2>&1
echo "head dim 64 rc=$?"; grep "^|" "$O/attention_d64.log"
timeout 150 python3 bench/attention.py --heads 32 --kv-heads 8 --head-dim 128 --tokens 1 --impls $impls \
  --seqs ${SEQS128:-8192,32768,131072} --out "$O/attention_h32_kv8_d128.json" > "$O/attention_d128.log" 2>&1
echo "head dim 128 GQA rc=$?"; grep "^|" "$O/attention_d128.log"
timeout 120 python3 bench/attention.py --heads 16 --head-dim 128 --tokens 1 --impls triton,sdpa_cudnn,sdpa_lse \
  --seqs ${SEQS128:-8192,32768,131072} --out "$O/attention_h16_d128.json" > "$O/attention_mha.log" 2>&1
echo "head dim 128 MHA rc=$?"; grep "^|" "$O/attention_mha.log"
if [[ -n ${E2E:-} ]]; then
  python3 bench/throughput.py --shape llama-1b --nproc 1 --sp 1 --backends flash_triton,sdpa --seq-lens ${E2E_SEQ:-8192} \
    --iters 5 --warmup 2 --case-timeout 200 --no-recompute --out "$O/throughput_llama-1b_backends.json" \
    --log-dir "$O/logs" -- --recompute auto > "$O/throughput.out" 2>&1
  echo "throughput rc=$?"; grep -h "^  " "$O/throughput.out" | cut -c1-200
  (cd "$O" && tar czf logs.tgz logs && rm -rf logs)
fi
