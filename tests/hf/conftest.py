"""Tiny Hugging Face models with random weights (configs built in code, nothing downloaded)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

VOCAB = 100  # not a multiple of 64/128: logits must keep HF's size


def make_llama(path, tied: bool, max_shard_size=None, dtype=torch.float32, seed=0):
    """A 2-layer Llama with GQA (8 query heads, 2 kv heads), RoPE theta 5e5, RMSNorm eps 1e-6."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=256, rope_theta=5e5, rms_norm_eps=1e-6,
        tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    _perturb_norms(model)
    model.to(dtype).save_pretrained(path, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    return model


# The families, tiny: 2 layers, GQA 8/2, windows shorter and RoPE original lengths shorter than FAMILY_SEQ.
FAMILY_SEQ = 80
_SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
              num_key_value_heads=2, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)  # fmt: skip
FAMILIES = {
    # Llama-3.1-style: llama3 scaling of an original 16-token context to 128, untied
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        max_position_embeddings=128, rope_theta=5e5, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16})),
    "llama-linear": ("LlamaConfig", "LlamaForCausalLM", dict(
        max_position_embeddings=128, rope_theta=1e4, rope_scaling={"rope_type": "linear", "factor": 4.0})),
    # yarn with DeepSeek's mscale ratio, explicit head dim (8 x 16 != 64)
    "llama-yarn": ("LlamaConfig", "LlamaForCausalLM", dict(
        max_position_embeddings=128, rope_theta=5e5, head_dim=16,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "mscale": 1.0,
                      "mscale_all_dim": 0.5})),
    # dynamic NTK: the sequence passes max_position_embeddings, so the base grows
    "llama-dynamic": ("LlamaConfig", "LlamaForCausalLM", dict(
        max_position_embeddings=32, rope_theta=1e4, rope_scaling={"rope_type": "dynamic", "factor": 2.0})),
    # Mistral: a 16-token window on every layer, head dim 16
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(
        max_position_embeddings=128, rope_theta=1e6, sliding_window=16, head_dim=16)),
    # Qwen2.5-style: q/k/v biases, the last layer windowed (max_window_layers 1), yarn, tied
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        max_position_embeddings=128, tie_word_embeddings=True, use_sliding_window=True, sliding_window=16,
        max_window_layers=1, rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                              "original_max_position_embeddings": 32})),
    # Qwen3: q/k norms, head dim 16, interleaved windows, dynamic NTK past its 32-token context
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        max_position_embeddings=32, head_dim=16, use_sliding_window=True, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"rope_type": "dynamic", "rope_theta": 1e6, "factor": 2.0})),
    # Gemma: embeddings x sqrt(H), (1 + w) RMSNorm, GeGLU, head dim 16, tied
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(
        max_position_embeddings=128, head_dim=16, attn_implementation="eager")),
    # Gemma-2: sandwich norms, query_pre_attn_scalar 24, both soft-caps, windows on the even layers, untied
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        max_position_embeddings=128, head_dim=16, query_pre_attn_scalar=24, sliding_window=16,
        attn_logit_softcapping=5.0, final_logit_softcapping=3.0, tie_word_embeddings=False,
        attn_implementation="eager")),
    # Gemma-3: (1 + w) q/k norms, a local RoPE base on the windowed layer, linear x8 on the full one
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        max_position_embeddings=128, head_dim=16, query_pre_attn_scalar=24, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"], attn_implementation="eager",
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
}  # fmt: skip


def make_family(name: str, path, seed=0, dtype=torch.float32):
    """FAMILIES[name] with random weights, norms and biases perturbed, saved to ``path``."""
    config_cls, model_cls, kwargs = FAMILIES[name]
    torch.manual_seed(seed)
    cfg = getattr(transformers, config_cls)(**_SHAPE, **kwargs)
    model = getattr(transformers, model_cls)(cfg).eval()
    _perturb_norms(model)
    model.to(dtype).save_pretrained(path)
    return model


def make_gpt2(path, seed=0):
    """A 2-layer GPT-2 (Conv1D, learned positions, LayerNorm with biases, tied, gelu_new)."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg).eval()
    _perturb_norms(model)
    model.save_pretrained(path)
    return model


@torch.no_grad()
def _perturb_norms(model):
    """Random init leaves norm weights at 1 and biases at 0; make them matter."""
    for name, p in model.named_parameters():
        if "norm" in name or "ln_" in name or name.endswith("bias"):
            p.add_(0.1 * torch.randn_like(p))


def mock_batch(seq_length: int, seed: int, n: int) -> torch.Tensor:
    """The first ``n`` samples of ``--mock-data --seed seed`` ([n, seq_length + 1] token ids)."""
    from megatron.data.mock import MockGPTDataset

    ds = MockGPTDataset(seq_length, VOCAB, seed)
    return torch.from_numpy(np.stack([ds[i]["tokens"] for i in range(n)]))


@torch.no_grad()
def hf_loss(model, tokens: torch.Tensor) -> float:
    """Mean next-token cross-entropy over the batch, as the trainer defines it."""
    logits = model(tokens[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten()).item()


def random_tokens(seq: int = FAMILY_SEQ, seed: int = 1, batch: int = 2) -> torch.Tensor:
    """[batch, seq] token ids from a seeded generator."""
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits_of(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of a transformers model or of ours (which returns the tensor itself)."""
    out = model(input_ids)
    return out.logits if hasattr(out, "logits") else out


def safetensors_of(path, with_shard: bool = False) -> dict:
    """Every tensor of a safetensors checkpoint directory by name (with its shard's file name if asked)."""
    from safetensors import safe_open

    out = {}
    for name in sorted(f for f in os.listdir(path) if f.endswith(".safetensors")):
        with safe_open(os.path.join(path, name), framework="pt") as f:
            out.update({k: (name, f.get_tensor(k)) if with_shard else f.get_tensor(k) for k in f.keys()})
    return out


def kernel_device() -> torch.device:
    """Where the fused RoPE kernel runs: the GPU, else the CPU in Triton's interpreter (else the test is skipped)."""
    from megatron.kernels import rope
    from megatron.kernels.env import interpreting

    if rope.HAVE_TRITON and torch.cuda.is_available() and not interpreting():
        return torch.device("cuda")
    if not rope.HAVE_TRITON or not interpreting():
        pytest.skip("needs Triton (on CPU: its interpreter, TRITON_INTERPRET=1 before the kernel is imported)")
    return torch.device("cpu")


def assert_conversion_refused(path, capsys, change: dict, *words) -> None:
    """``change`` merged into ``path``/config.json makes hf-to-megatron exit 2 with one ``error:`` line naming
    every one of ``words``."""
    import json

    from tools.convert_checkpoint import main as convert

    config = {**json.loads((path / "config.json").read_text()), **change}
    (path / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    rc = convert(["hf-to-megatron", "--input", str(path), "--output", str(path / "out")])
    assert_one_line_error(capsys, rc, *words)


def assert_one_line_error(capsys, rc: int, *words) -> None:
    """The command exited 2 with one ``error:`` line on stderr naming every one of ``words``."""
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, err
    for w in words:
        assert w in err, err
