#!/bin/bash
# The commands that wrote preprocess_data.json and build_indices.json (2026-11-23, CPU), from the repository root.
set -eu
D=${OUT:-benchmarks/results/2026-11-23_data_pipeline_cpu}
python bench/preprocess_data.py --size-mb 100 --workers 1 2 --repeat 2 --cache-dir /tmp/corp1 --out "$D/preprocess_data.json"
python bench/build_indices.py --tokens 1e9 --out "$D/build_indices.json"
