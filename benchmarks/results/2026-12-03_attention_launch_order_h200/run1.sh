#!/usr/bin/env bash
# Attention launch order on one H200: the kernels with every head's heaviest causal blocks first (this tree) against
# the same kernels launched head after head (.old/: the tree before, `git archive <commit> megatron bench
# pretrain_gpt.py pyproject.toml`), back to back: the GPU attention tests, bench/attention.py at Llama-1B's attention
# (32 heads of 64, 8 kv heads) and GPT-1.3B's (16 heads of 128), the fused backward with 128-query blocks at head
# dim 64, and Llama-1B at 8k end to end (old, new, old, new).
#   bash benchmarks/results/2026-12-03_attention_launch_order_h200/run1.sh   (repository root; .whl: DeepSpeed wheels)
set -u
[[ -d /tmp/site ]] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
NEW=$PWD; OLD=$PWD/.old
O=${OUT:-/tmp/out}; mkdir -p "$O/logs" "$O/run1"
(cd "$NEW" && PYTHONPATH=/tmp/site:$NEW timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu -x \
  tests/attention/test_flash_attn_triton.py tests/attention/test_fused_backward_choice.py) > "$O/logs/gpu_tests.log" 2>&1
echo "gpu tests rc=$?: $(tail -1 "$O/logs/gpu_tests.log")"
att() {  # tree name extra-args...
  local tree=$1 name=$2; shift 2
  (cd "$tree" && PYTHONPATH=/tmp/site:$tree timeout 120 python3 bench/attention.py --tokens 8192 \
     --seqs ${SEQS:-4096,8192,16384,32768} --out "$O/run1/attention_$name.json" "$@") > "$O/logs/attention_$name.log" 2>&1
  echo "attention $name rc=$?"; grep "^|" "$O/logs/attention_$name.log" | cut -c1-160
}
att "$NEW" hd64_gqa_new --heads 32 --kv-heads 8 --head-dim 64 --impls triton,sdpa_cudnn
att "$OLD" hd64_gqa_old --heads 32 --kv-heads 8 --head-dim 64 --impls triton
att "$NEW" hd64_gqa_bm128 --heads 32 --kv-heads 8 --head-dim 64 --impls triton --bwd-block-m 128
att "$NEW" hd128_new --heads 16 --head-dim 128 --impls triton,sdpa_cudnn
att "$OLD" hd128_old --heads 16 --head-dim 128 --impls triton
for variant in old new old2 new2; do
  tree=$NEW; [[ $variant == old* ]] && tree=$OLD
  (cd "$tree" && PYTHONPATH=/tmp/site:$tree python3 bench/throughput.py --shape llama-1b --nproc 1 --sp 1 \
    --backends flash_triton --seq-lens 8192 --iters 6 --warmup 2 --case-timeout 120 --no-recompute \
    --out "$O/run1/throughput_llama-1b_8k_$variant.json" --log-dir "$O/logs/e2e_$variant" -- --recompute auto) \
    > "$O/logs/throughput_$variant.out" 2>&1
  echo "e2e $variant rc=$?"; grep -h "^  " "$O/logs/throughput_$variant.out" | cut -c1-200
done
(cd "$O" && tar czf logs.tgz logs && rm -rf logs)
