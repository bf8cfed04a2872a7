#!/bin/bash
# One H200 (2026-11-30): the GPU attention tests, including test_gpu_gluon_forward_matches_reference as
# restructured in daae164.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
timeout 400 python3 -m pytest -q -m gpu tests/attention --durations=5 -rs > $OUT/gpu_tests3.log 2>&1
tail -12 $OUT/gpu_tests3.log
