"""HF -> ours -> HF reproduces every tensor of the safetensors bit for bit (names, dtypes, shards) and the
config.json, for every family (Gemma-1/2/3 included) and both RoPE layouts; a config we generate loads in
transformers."""

import json

import pytest
import torch

from tests.hf.conftest import FAMILIES, FAMILY_SEQ, VOCAB, make_family, make_gpt2, make_llama, safetensors_of
from tools.convert_checkpoint import main as convert


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
    ref, got = safetensors_of(src, with_shard=True), safetensors_of(back, with_shard=True)
    assert sorted(ref) == sorted(got)
    for key, (shard, tensor) in ref.items():
        assert got[key][0] == shard, key
        assert got[key][1].dtype == tensor.dtype, key
        assert torch.equal(got[key][1], tensor), key
    if (src / "model.safetensors.index.json").exists():
        index = lambda d: json.loads((d / "model.safetensors.index.json").read_text())  # noqa: E731
        assert index(src) == index(back)
    assert json.loads((src / "config.json").read_text()) == json.loads((back / "config.json").read_text())


@pytest.mark.parametrize("layout", ["v5", "v4"], ids=["rope_parameters", "rope_scaling"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_round_trip_is_bit_exact(tmp_path, family, layout):
    """Every family, its config.json in transformers 5's layout (rope_parameters) or 4's (rope_scaling +
    rope_theta, what vLLM reads): HF -> ours -> HF gives the same tensors and the same config.json."""
    src, mid, back = tmp_path / "hf", tmp_path / "ours", tmp_path / "back"
    make_family(family, src)
    if layout == "v4":
        config = json.loads((src / "config.json").read_text())
        params = dict(config.pop("rope_parameters"))
        if "full_attention" in params:  # Gemma-3's RoPE per layer type: 4.x has rope_local_base_freq for the local one
            config["rope_local_base_freq"] = params["sliding_attention"]["rope_theta"]
            params = dict(params["full_attention"])
        config["rope_theta"] = params.pop("rope_theta")
        config["rope_scaling"] = params if params["rope_type"] != "default" else None
        (src / "config.json").write_text(json.dumps(config))
    assert convert(["hf-to-megatron", "--input", str(src), "--output", str(mid)]) == 0
    assert convert(["megatron-to-hf", "--input", str(mid), "--output", str(back)]) == 0
    ref, got = safetensors_of(src, with_shard=True), safetensors_of(back, with_shard=True)
    assert sorted(ref) == sorted(got)
    assert all(torch.equal(got[k][1], t) and got[k][1].dtype == t.dtype for k, (_, t) in ref.items())
    assert json.loads((src / "config.json").read_text()) == json.loads((back / "config.json").read_text())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_generated_config_loads_in_transformers_with_equal_logits(tmp_path, family):
    """A model of ours with no HF source (trained from scratch) exports a config.json, RoPE in both layouts,
    that transformers builds the same family from, computing our logits; either layout alone reads the same."""
    import transformers

    from megatron.hf import hf_config_from_model, load_hf_checkpoint, megatron_to_hf_state_dict, write_hf_dir
    from megatron.hf_config import model_config_from_hf

    make_family(family, tmp_path / "hf")
    ours, cfg = load_hf_checkpoint(str(tmp_path / "hf"))
    config = hf_config_from_model(cfg)
    assert "rope_parameters" in config and "rope_scaling" in config and "rope_theta" in config
    hf_sd, arch = megatron_to_hf_state_dict(cfg, ours.state_dict())
    assert arch == FAMILIES[family][1]
    write_hf_dir(str(tmp_path / "out"), config, hf_sd)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(hf_model).__name__ == arch
    tokens = torch.randint(0, VOCAB, (1, FAMILY_SEQ), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(tokens).logits, ours(tokens), rtol=0, atol=1e-5)
    v4 = {k: v for k, v in config.items() if k != "rope_parameters"}
    v5 = {k: v for k, v in config.items() if k not in ("rope_scaling", "rope_theta")}
    assert model_config_from_hf(v4) == model_config_from_hf(v5) == cfg
