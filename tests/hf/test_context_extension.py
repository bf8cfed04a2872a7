"""docs/context_extension.md, run: a Llama-3-shaped checkpoint pretrained at 32 tokens is extended 4x with
yarn (flags that change the loaded checkpoint's RoPE), trained at 128 tokens with SP=2 under ZeRO-3,
exported, and transformers computes what our trained model computes.

Its first loss equals transformers' on the same batch with the same yarn config (so the scaled RoPE
under SP is transformers' RoPE), the exported config.json carries the new RoPE in both layouts,
and the exported model's logits and validation loss equal ours.
"""

import json
import shutil

import pytest
import torch

from tests.hf.conftest import VOCAB, hf_loss, mock_batch, transformers
from tests.launch import torchrun
from tools.convert_checkpoint import main as convert

ORIGINAL, FACTOR, SEED, GBS = 32, 4, 11, 2
SEQ = ORIGINAL * FACTOR
YARN = ["--rope-scaling-type", "yarn", "--rope-scaling-factor", str(FACTOR), "--rope-original-max-position-embeddings",
        str(ORIGINAL), "--max-position-embeddings", str(SEQ)]  # fmt: skip
RUN = [
    "--seq-length", str(SEQ), "--ds-sequence-parallel-size", "2", "--zero-stage", "3", "--mock-data",
    "--micro-batch-size", "1", "--global-batch-size", str(GBS), "--train-iters", "2", "--lr", "3e-3",
    "--log-interval", "1", "--seed", str(SEED), "--num-workers", "0", "--eval-interval", "2", "--eval-iters", "1",
]  # fmt: skip
YARN_PARAMETERS = {"rope_type": "yarn", "rope_theta": 5e5, "factor": float(FACTOR),
                   "original_max_position_embeddings": ORIGINAL, "beta_fast": 32.0, "beta_slow": 1.0}  # fmt: skip


def make_llama3_shaped(path):
    """Llama-3's shape in small: GQA 8/2, theta 5e5, untied, no RoPE scaling, pretrained at ORIGINAL tokens;
    q and k scaled up so that attention (and with it RoPE) is far from uniform."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=ORIGINAL, rope_theta=5e5, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(6.0)
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("context_extension")
    make_llama3_shaped(tmp / "llama3")
    assert convert(["hf-to-megatron", "--input", str(tmp / "llama3"), "--output", str(tmp / "l3")]) == 0
    metrics = tmp / "metrics.jsonl"
    proc = torchrun(2, ["--load", str(tmp / "l3"), "--save", str(tmp / "l3"), *YARN, *RUN], metrics)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert convert(["megatron-to-hf", "--input", str(tmp / "l3"), "--output", str(tmp / "l3_hf")]) == 0
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return tmp, proc.stdout, records


def test_rope_flags_change_the_loaded_checkpoint_in_one_printed_line(extended):
    _, stdout, _ = extended
    notes = [line for line in stdout.splitlines() if "RoPE changed for continued pretraining" in line]
    assert len(notes) == 1, stdout[-2000:]
    for change in ("rope_scaling_type None -> yarn", "rope_scaling_factor 1.0 -> 4.0",
                   f"rope_original_max_position_embeddings None -> {ORIGINAL}",
                   f"max_position_embeddings {ORIGINAL} -> {SEQ}"):  # fmt: skip
        assert change in notes[0], notes[0]


def test_first_loss_sp2_equals_transformers_with_the_same_yarn(extended):
    tmp, _, records = extended
    shutil.copytree(tmp / "llama3", tmp / "llama3_yarn")
    config = json.loads((tmp / "llama3_yarn" / "config.json").read_text())
    config.update(rope_parameters=YARN_PARAMETERS, max_position_embeddings=SEQ)
    (tmp / "llama3_yarn" / "config.json").write_text(json.dumps(config))
    hf_model = transformers.LlamaForCausalLM.from_pretrained(tmp / "llama3_yarn").eval()
    ref = hf_loss(hf_model, mock_batch(SEQ, SEED, GBS))
    first = next(r for r in records if r.get("iteration") == 1 and "lm_loss" in r)
    assert abs(first["lm_loss"] - ref) <= 1e-5 * ref, (first["lm_loss"], ref)
    unscaled = transformers.LlamaForCausalLM.from_pretrained(tmp / "llama3").eval()
    tokens = mock_batch(SEQ, SEED, 1)
    with torch.no_grad():  # the scaling matters at these lengths
        assert (unscaled(tokens).logits - hf_model(tokens).logits).abs().max() > 1e-2


def test_exported_config_carries_the_new_rope_in_both_layouts(extended):
    tmp, _, _ = extended
    config = json.loads((tmp / "l3_hf" / "config.json").read_text())
    assert config["rope_parameters"] == YARN_PARAMETERS
    assert config["rope_scaling"] == {k: v for k, v in YARN_PARAMETERS.items() if k != "rope_theta"}
    assert config["rope_theta"] == 5e5 and config["max_position_embeddings"] == SEQ
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)  # the source's keys stay


def test_exported_model_computes_the_trained_model_in_transformers(extended):
    from megatron.hf import load_checkpoint_any

    tmp, _, records = extended
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp / "l3_hf").eval()
    assert hf_model.config.rope_parameters["rope_type"] == "yarn"
    tokens = mock_batch(SEQ, SEED + 1, GBS)  # the validation stream the run evaluated on
    valid = next(r["valid_lm_loss"] for r in records if "valid_lm_loss" in r)
    assert abs(hf_loss(hf_model, tokens) - valid) <= 1e-5 * valid
    ours, cfg = load_checkpoint_any(str(tmp / "l3"))
    assert (cfg.rope_scaling_type, cfg.rope_scaling_factor, cfg.rope_original_max_position_embeddings) == (
        "yarn", FACTOR, ORIGINAL
    )
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf_model(tokens).logits, rtol=0, atol=1e-5)


def test_resume_without_rope_flags_keeps_the_extended_rope(extended):
    """The --save directory carries model_args.json with the run's RoPE: resuming it (here on one rank, SP=1)
    needs no RoPE flags, and the checkpoint it saves still exports yarn."""
    tmp, _, _ = extended
    shutil.copytree(tmp / "l3", tmp / "l3_resumed")
    saved = json.loads((tmp / "l3_resumed" / "model_args.json").read_text())
    assert (saved["rope_scaling_type"], saved["max_position_embeddings"]) == ("yarn", SEQ)
    resume = list(RUN)
    sp = resume.index("--ds-sequence-parallel-size")
    del resume[sp : sp + 2]
    resume[resume.index("--train-iters") + 1] = "3"
    proc = torchrun(1, ["--load", str(tmp / "l3_resumed"), "--save", str(tmp / "l3_resumed"), *resume])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RoPE changed" not in proc.stdout
    assert (tmp / "l3_resumed" / "latest").read_text().strip().endswith("3")
    assert convert(["megatron-to-hf", "--input", str(tmp / "l3_resumed"), "--output", str(tmp / "resumed_hf")]) == 0
    config = json.loads((tmp / "resumed_hf" / "config.json").read_text())
    assert config["rope_parameters"] == YARN_PARAMETERS
