#!/usr/bin/env bash
# Wheels of the throughput peers for an offline GPU node whose image already has torch (never replaced).
#
#   bash bench/peer_wheels.sh .whl/peers         # here, with network: downloads into .whl/peers/{torchtitan,arctic}
#   # on the node (offline), beside the image's torch, each peer in its own directory:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/tt_site .whl/peers/torchtitan/*.whl
#   export PYTHONPATH=/tmp/tt_site:$PYTHONPATH     # bench/throughput.py --peers torchtitan
#
# Every download is --no-deps: each dependency is named here, and none of them is torch, so nothing can pull
# in another torch. The torchtitan set: torchtitan 0.2.2 (0.3.0 adds spmd_types / torch_checkpointing and
# newer-torch requirements) and the pure-Python packages it imports that the image lacks (tyro and its
# docstring-parser / typeguard, torchdata, Hugging Face datasets with dill / multiprocess; tensorboard,
# einops, tokenizers, safetensors, pillow, fsspec and pyarrow are in the image).
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
if ls "$dest"/torchtitan/torch-[0-9]*.whl >/dev/null 2>&1; then echo "error: a torch wheel in $dest" >&2; exit 1; fi
ls "$dest"/*/
