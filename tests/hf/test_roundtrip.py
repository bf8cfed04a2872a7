"""HF -> ours -> HF reproduces every tensor of the safetensors bit for bit (names, dtypes, shards)."""

import json
import os

import pytest
import torch
from safetensors import safe_open

from tests.hf.conftest import make_gpt2, make_llama
from tools.convert_checkpoint import main as convert


def _tensors(path) -> dict:
    out = {}
    for name in sorted(f for f in os.listdir(path) if f.endswith(".safetensors")):
        with safe_open(os.path.join(path, name), framework="pt") as f:
            out.update({k: (name, f.get_tensor(k)) for k in f.keys()})
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda p: make_llama(p, tied=False, max_shard_size="60KB"),
        lambda p: make_llama(p, tied=True, max_shard_size="60KB", dtype=torch.bfloat16),
        lambda p: make_gpt2(p),
    ],
    ids=["llama-untied-sharded", "llama-tied-bf16-sharded", "gpt2"],
)
def test_hf_to_megatron_to_hf_is_bit_exact(tmp_path, make):
    src, mid, back = tmp_path / "hf", tmp_path / "ours", tmp_path / "back"
    make(src)
    assert convert(["hf-to-megatron", "--input", str(src), "--output", str(mid)]) == 0
    assert (mid / "model_args.json").is_file() and (mid / "model_args.txt").is_file()
    assert convert(["megatron-to-hf", "--input", str(mid), "--output", str(back)]) == 0
    ref, got = _tensors(src), _tensors(back)
    assert sorted(ref) == sorted(got)
    for key, (shard, tensor) in ref.items():
        assert got[key][0] == shard, key
        assert got[key][1].dtype == tensor.dtype, key
        assert torch.equal(got[key][1], tensor), key
    if (src / "model.safetensors.index.json").exists():
        index = lambda d: json.loads((d / "model.safetensors.index.json").read_text())  # noqa: E731
        assert index(src) == index(back)
    assert json.loads((src / "config.json").read_text()) == json.loads((back / "config.json").read_text())
