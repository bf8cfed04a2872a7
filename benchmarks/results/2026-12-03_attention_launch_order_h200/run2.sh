#!/usr/bin/env bash
# The fused Gluon backward's query block (64 or 128) and launch order (interleaved: every head's heaviest key block
# first; per-head: one head's blocks after another's) at head dim 64, the Triton kernels' launch order at head dim
# 128 (Triton forward, split backward), against the tree before (.old/, as in run1.sh), and Llama-1B at 8k end to
# end: old, new (block 128, interleaved), new with per-head order, twice each, 12 iterations of which 4 warm-up.
#   bash benchmarks/results/2026-12-03_attention_launch_order_h200/run2.sh   (repository root; .whl: DeepSpeed wheels)
set -u
[[ -d /tmp/site ]] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
NEW=$PWD; OLD=$PWD/.old; PERHEAD=/tmp/tree_perhead
rm -rf "$PERHEAD"; mkdir -p "$PERHEAD"; cp -r megatron bench pretrain_gpt.py pyproject.toml "$PERHEAD"/
sed -i 's/^INTERLEAVED_BY_HEAD_DIM = {64: True,/INTERLEAVED_BY_HEAD_DIM = {64: False,/' "$PERHEAD/megatron/kernels/attention_gluon_bwd_sm90.py"
grep -n "^INTERLEAVED_BY_HEAD_DIM" "$PERHEAD/megatron/kernels/attention_gluon_bwd_sm90.py"
O=${OUT:-/tmp/out}; mkdir -p "$O/logs" "$O/run2"
(PYTHONPATH=/tmp/site:$NEW timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu -x \
  tests/attention/test_flash_attn_triton.py -k "tiles_and_order or fused_backward_matches or choice or gpu_fused_backward_with_documents" \
  tests/attention/test_fused_backward_choice.py) > "$O/logs/gpu_tests.log" 2>&1
echo "gpu tests rc=$?: $(tail -1 "$O/logs/gpu_tests.log")"
att() {  # tree name extra-args...
  local tree=$1 name=$2; shift 2
  (cd "$tree" && PYTHONPATH=/tmp/site:$tree timeout 90 python3 bench/attention.py --tokens 8192 \
     --seqs ${SEQS:-4096,8192,16384,32768} --out "$O/run2/attention_$name.json" "$@") > "$O/logs/attention_$name.log" 2>&1
  echo "attention $name rc=$?"; grep "^| [a-z]" "$O/logs/attention_$name.log" | cut -c1-160
}
gqa=(--heads 32 --kv-heads 8 --head-dim 64)
att "$OLD" hd64_gqa_old "${gqa[@]}" --impls triton
att "$NEW" hd64_gqa_bm64_perhead "${gqa[@]}" --impls triton --bwd-block-m 64 --bwd-order per-head
att "$NEW" hd64_gqa_bm64_interleaved "${gqa[@]}" --impls triton --bwd-block-m 64 --bwd-order interleaved
att "$NEW" hd64_gqa_bm128_perhead "${gqa[@]}" --impls triton --bwd-block-m 128 --bwd-order per-head
att "$NEW" hd64_gqa_bm128_interleaved "${gqa[@]}" --impls triton,sdpa_cudnn --bwd-block-m 128 --bwd-order interleaved
mha=(--heads 16 --head-dim 64)
att "$NEW" hd64_mha_bm64_perhead "${mha[@]}" --impls triton --bwd-block-m 64 --bwd-order per-head
att "$NEW" hd64_mha_bm128_perhead "${mha[@]}" --impls triton --bwd-block-m 128 --bwd-order per-head
att "$NEW" hd64_mha_bm128_interleaved "${mha[@]}" --impls triton,sdpa_cudnn --bwd-block-m 128 --bwd-order interleaved
att "$OLD" hd128_old --heads 16 --head-dim 128 --impls triton,triton_plain
att "$NEW" hd128_new --heads 16 --head-dim 128 --impls triton,triton_plain,sdpa_cudnn
for variant in old new perhead old2 new2 perhead2; do
  case $variant in old*) tree=$OLD;; new*) tree=$NEW;; perhead*) tree=$PERHEAD;; esac
  (cd "$tree" && PYTHONPATH=/tmp/site:$tree python3 bench/throughput.py --shape llama-1b --nproc 1 --sp 1 \
    --backends flash_triton --seq-lens 8192 --iters 12 --warmup 4 --case-timeout 120 --no-recompute \
    --out "$O/run2/throughput_llama-1b_8k_$variant.json" --log-dir "$O/logs/e2e_$variant" -- --recompute auto) \
    > "$O/logs/throughput_$variant.out" 2>&1
  echo "e2e $variant rc=$?"; grep -h "^  " "$O/logs/throughput_$variant.out" | cut -c1-200
done
(cd "$O" && tar czf run2.tgz run2 && rm -rf run2 && tar czf logs2.tgz logs && rm -rf logs)
