#!/bin/bash
# One H200 (2026-11-30), two runs: the loss benchmark at Llama-3's vocabulary (128256), then the fused tiled
# loss's chunk size (logits per chunk 2^26 .. 2^29) at vocabularies 128256 and 50304.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
# (1) vocabulary 128256
timeout 150 python3 bench/tiled_loss.py --hidden 2048 --vocab 128256 --tokens 16384,65536 --out $OUT/tiled_loss_h200_vocab128256.json 2>&1 | tail -12
# (2) logits per chunk
for v in 128256 50304; do for c in 67108864 134217728 268435456 536870912; do
  timeout 40 python3 bench/tiled_loss.py --vocab $v --tokens 16384,65536 --chunk-logits $c --variants tiled_fused --out $OUT/chunk_v${v}_c${c}.json 2>&1 | tail -2
done; done
