#!/bin/bash
# Two H200s (2026-11-30). (1) bench/tiled_loss.py at the padded vocabulary (one GPU). (2) GPT-1.3B, SP=2,
# ZeRO-3, the defaults (fused tiled loss), ours against the HF + DeepSpeed-ALST peer, whose vocabulary is
# padded like ours (50304): at 32k without recomputation and with full recomputation, plus ours with
# --checkpoint-keep-attention, twice; the peer once with its exact vocabulary (50257); at 64k ours with full
# recomputation and with keep-attention. run_output_tail.log is this script's output.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
R=$OUT
timeout 100 python3 bench/tiled_loss.py --tokens 16384,65536 --out $R/tiled_loss_h200.json 2>&1 | tail -10
B="python3 bench/throughput.py --nproc 2 --sp 2 --backends sdpa --case-timeout 100 --log-dir /tmp/runs"
rep_32k() {
  timeout 200 $B --seq-lens 32768 --no-recompute --peer --out $R/norecompute_32k_r$1.json 2>&1 | tail -3
  timeout 200 $B --seq-lens 32768 --peer --out $R/recompute_32k_r$1.json 2>&1 | tail -3
  timeout 100 $B --seq-lens 32768 --out $R/keep_attention_32k_r$1.json -- --checkpoint-keep-attention 2>&1 | tail -2
}
rep_32k 1
timeout 100 $B --seq-lens 32768 --no-recompute --peer-only --out $R/peer_exact_vocab_32k.json --peer-arg=--pad-vocab=1 2>&1 | tail -2
timeout 120 $B --seq-lens 65536 --out $R/recompute_64k.json 2>&1 | tail -2
timeout 120 $B --seq-lens 65536 --out $R/keep_attention_64k.json -- --checkpoint-keep-attention 2>&1 | tail -2
rep_32k 2
