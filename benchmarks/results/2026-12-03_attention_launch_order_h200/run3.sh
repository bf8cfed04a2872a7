#!/usr/bin/env bash
# The final kernels (this tree) against the tree before (.old/, as in run1.sh) on one H200: the GPU tests of the
# Triton kernels' two launch orders (windows, forced kernels), one profiled Llama-1B step at 8k of each tree
# (bench/profile_step.py: the attention kernels' time in the model), and Llama-1B at 32k end to end, new, old and
# torchtitan 0.2.2 at its fastest setting.
#   bash benchmarks/results/2026-12-03_attention_launch_order_h200/run3.sh   (repository root; .whl: DeepSpeed
#   wheels, .whl/peers from bench/peer_wheels.sh)
set -u
[[ -d /tmp/site ]] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
[[ -d /tmp/tt_site ]] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/tt_site .whl/peers/torchtitan/*.whl
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
NEW=$PWD; OLD=$PWD/.old
O=${OUT:-/tmp/out}; mkdir -p "$O/logs" "$O/run3"
pack() { (cd "$O" && tar czf run3.tgz run3 logs); }
(PYTHONPATH=/tmp/site:$NEW timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu \
  tests/attention/test_flash_attn_triton.py -k "window or softmax_scale or bf16_matches_sdpa") > "$O/logs/gpu_tests.log" 2>&1
echo "gpu tests rc=$?: $(tail -1 "$O/logs/gpu_tests.log")"; pack
shape=(--num-layers 16 --hidden-size 2048 --num-attention-heads 32 --num-key-value-heads 8 --ffn-hidden-size 8192
       --vocab-size 128256 --use-rotary-position-embeddings --rotary-base 500000 --normalization RMSNorm --swiglu
       --disable-bias-linear --seq-length 8192 --micro-batch-size 1 --global-batch-size 1 --train-iters 6
       --lr 1e-4 --mock-data --num-workers 0 --eval-interval 0 --log-interval 1 --ds-sequence-parallel-size 1
       --attention-backend flash_triton --tiled-logits-loss --bf16 --recompute auto --zero-stage 3)
prof() {  # tree name
  (cd "$1" && PYTHONPATH=/tmp/site:$1 timeout 100 python3 -m torch.distributed.run --standalone --nproc_per_node=1 \
    bench/profile_step.py "${shape[@]}" --profile-warmup 3 --profile-steps 2 --profile-out "$O/run3/profile_8k_$2.json") \
    > "$O/logs/profile_$2.log" 2>&1
  echo "profile $2 rc=$?"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r[k] for k in ('step_wall_ms','kernel_ms_per_step')}, r['categories_ms_per_step']); print([(k['kernel'][:40], round(k['ms'],2)) for k in r['top_kernels_ms_per_step'] if k['category']=='attention'])" "$O/run3/profile_8k_$2.json"
  pack
}
prof "$NEW" new
e2e() {  # tree name
  (cd "$1" && PYTHONPATH=/tmp/site:$1 python3 bench/throughput.py --shape llama-1b --nproc 1 --sp 1 \
    --backends flash_triton --seq-lens 32768 --iters 6 --warmup 2 --case-timeout 150 --no-recompute \
    --out "$O/run3/throughput_llama-1b_32k_$2.json" --log-dir "$O/logs/e2e_$2" -- --recompute auto) \
    > "$O/logs/throughput_$2.out" 2>&1
  echo "e2e $2 rc=$?"; grep -h "^  " "$O/logs/throughput_$2.out" | cut -c1-200; pack
}
e2e "$NEW" new
e2e "$OLD" old
PYTHONPATH=/tmp/site:/tmp/tt_site:$NEW python3 bench/throughput.py --shape llama-1b --nproc 1 --sp 1 \
  --backends flash_triton --seq-lens 32768 --iters 6 --warmup 2 --case-timeout 150 --no-recompute --peer-only \
  --peers torchtitan --out "$O/run3/throughput_llama-1b_32k_torchtitan.json" --log-dir "$O/logs/e2e_torchtitan" \
  > "$O/logs/throughput_torchtitan.out" 2>&1
echo "torchtitan rc=$?"; grep -h "^  " "$O/logs/throughput_torchtitan.out" | cut -c1-200; pack
prof "$OLD" old
rm -rf "$O/run3" "$O/logs"
