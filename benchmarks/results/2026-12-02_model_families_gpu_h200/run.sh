#!/usr/bin/env bash
# The model-family tests on one H200 (2026-12-02): Gemma, Phi-3 and GPT-NeoX through the fused Triton RoPE kernel
# (longrope, partial rotary, head dims 80 / 96) and our Triton attention, the soft-capped tiled loss in the Triton
# kernels, and the RoPE / loss kernel suites, all on CUDA.
#   bash benchmarks/results/2026-12-02_model_families_gpu_h200/run.sh   (repository root; .whl holds DeepSpeed's wheels)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
O=${OUT:-/tmp/out}; mkdir -p "$O"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$O/gpu_tests.log"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$O/gpu_tests.log"
# the gpu-marked tests, and the fused-RoPE tests (they run on CUDA where it exists, else in the interpreter);
# the files' trainer tests are CPU (gloo) tests and are not run here
timeout 240 python3 -m pytest -q -ra -p no:cacheprovider -m gpu tests/hf/test_gemma.py tests/attention/test_rope_triton.py \
  tests/attention/test_cross_entropy_triton.py 2>&1 | grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" | cut -c1-250 | tee -a "$O/gpu_tests.log"
timeout 240 python3 -m pytest -q -ra -p no:cacheprovider -k "fused_rope" tests/hf/test_phi3.py tests/hf/test_neox.py -v 2>&1 \
  | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed" | cut -c1-250 | tee -a "$O/gpu_tests.log"
