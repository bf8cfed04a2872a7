#!/usr/bin/env bash
# Wheels of the throughput peers for an offline GPU node whose image already has torch (never replaced).
#
#   bash bench/peer_wheels.sh .whl/peers         # here, with network: downloads into .whl/peers/{torchtitan,arctic}
#   # on the node (offline), beside the image's torch, each peer in its own directory:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/tt_site .whl/peers/torchtitan/*.whl
#   export PYTHONPATH=/tmp/tt_site:$PYTHONPATH     # bench/throughput.py --peers torchtitan
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/arctic_site .whl/peers/arctic/*.whl
#   export ARCTIC_PYTHONPATH=/tmp/arctic_site       # bench/throughput.py --peers arctic: first on its cases' path
#
# Every download is --no-deps: each dependency is named here, and none of them is torch, so nothing can pull
# in another torch. The torchtitan set: torchtitan 0.2.2 (0.3.0 adds spmd_types / torch_checkpointing and
# newer-torch requirements) and the pure-Python packages it imports that the image lacks (tyro and its
# docstring-parser / typeguard, torchdata, Hugging Face datasets with dill / multiprocess; tensorboard,
# einops, tokenizers, safetensors, pillow, fsspec and pyarrow are in the image).
# The arctic set, its own directory because ArcticTraining 0.8 needs transformers 4.x (the image has 5.x):
# arctic-training 0.8.0, transformers 4.57.6 with the tokenizers / huggingface_hub it requires, and what
# importing ArcticTraining's trainer loads that the image lacks or has in versions for transformers 5 (peft,
# accelerate, wandb and its telemetry, datasets 4.4.1 as in the torchtitan set, loguru, devtools, ...). DeepSpeed
# and its pydantic come from the main wheel set; torch, numpy, pandas, pyarrow, aiohttp, httpx, requests and the
# rest from the image.
set -euo pipefail
dest=${1:-.whl/peers}
py=${PY_VERSION:-3.12}
get() {  # dir, requirement...
  local d=$dest/$1; shift; mkdir -p "$d"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$d" "$@"
}
get torchtitan torchtitan==0.2.2 tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 torchdata==0.11.0 \
  datasets==4.4.1 dill==0.4.0 multiprocess==0.70.18
get arctic arctic-training==0.8.0 transformers==4.57.6 tokenizers==0.22.2 huggingface-hub==0.36.2 \
  accelerate==1.16.0 peft==0.21.2 datasets==4.4.1 dill==0.4.0 multiprocess==0.70.18 wandb==0.31.0 \
  platformdirs==4.14.9 protobuf==7.36.2 googleapis-common-protos==1.76.0 opentelemetry-api==1.45.2 \
  opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2 \
  opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-exporter-http-transport==0.66b2 \
  opentelemetry-exporter-otlp-common==0.66b2 opentelemetry-semantic-conventions==0.66b2 sniffio==1.3.1 \
  loguru==0.7.3 devtools==0.13.0 asttokens==2.4.1 executing==2.3.0 jsonlines==4.0.0 yq==4.4.5 xmltodict==1.0.4 \
  tomlkit==0.15.2 argcomplete==3.7.2
if ls "$dest"/*/torch-[0-9]*.whl >/dev/null 2>&1; then echo "error: a torch wheel in $dest" >&2; exit 1; fi
ls "$dest"/*/
