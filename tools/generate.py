"""Sample text from any of our checkpoints: greedy or top-p (nucleus) sampling, on CPU or GPU.

    python tools/generate.py --load HF_DIR --prompt "Once upon a time" --max-new-tokens 32 --greedy
    python tools/generate.py --load runs/quickstart --prompt "def main(" --top-p 0.9 --temperature 0.8 --seed 1

``--load`` takes an HF directory, a ``convert_checkpoint.py hf-to-megatron`` directory or a
``pretrain_gpt.py --save`` directory (any ZeRO stage). The tokenizer is, in this order: the
``--tokenizer-type`` flags (as for pretrain_gpt.py), ``--hf-tokenizer DIR``, a tokenizer.json
next to the weights (else a SentencePiece tokenizer.model, else GPT-2's vocab.json and merges.txt),
or the tokenizer the training run recorded. The whole text (prompt and
continuation) goes to stdout. Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from megatron.config import ConfigError, DataConfig


def next_token(logits_V: torch.Tensor, greedy: bool, top_p: float, temperature: float, generator) -> int:
    """One token id from the last position's logits: argmax, or a top-p sample at ``temperature``."""
    if greedy or temperature <= 0:
        return int(logits_V.argmax())
    probs = torch.softmax(logits_V.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(descending=True)
    keep = sorted_p.cumsum(0) - sorted_p < top_p  # smallest prefix whose mass reaches top_p (always >= 1 token)
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
    return int(order[choice])


@torch.no_grad()
def generate(model, cfg, prompt_ids: list, max_new_tokens: int, greedy=False, top_p=1.0, temperature=1.0,
             seed=1234, eod=None) -> list:  # fmt: skip
    """Prompt + new token ids; stops at ``eod``. No KV cache: each step reruns the (short) context."""
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    ids = list(prompt_ids)
    window = None if cfg.use_rotary_position_embeddings else cfg.max_position_embeddings
    for _ in range(max_new_tokens):
        context = ids[-window:] if window else ids
        logits_bsV = model(torch.tensor([context], device=device))
        token = next_token(logits_bsV[0, -1, : cfg.vocab_size].cpu(), greedy, top_p, temperature, generator)
        ids.append(token)
        if eod is not None and token == eod:
            break
    return ids


def _recorded_data_config(path: str):
    """The DataConfig a pretrain_gpt.py --save run recorded, or None."""
    from megatron.training import weights

    if not weights.is_deepspeed_checkpoint(path):
        return None
    _, _, states = weights.read_deepspeed_checkpoint(path)
    data = states["config"].get("data") or {}
    return DataConfig(**data) if data.get("tokenizer_type") else None


def build_tokenizer_for(args, path: str):
    from megatron.tokenizer import HFTokenizer, create_tokenizer

    if args.tokenizer_type:
        return create_tokenizer(args.tokenizer_type, tokenizer_model=args.tokenizer_model, vocab_file=args.vocab_file,
                                merge_file=args.merge_file, vocab_size=args.vocab_size)  # fmt: skip
    if args.hf_tokenizer:
        return HFTokenizer(args.hf_tokenizer)
    for cand in (path, os.path.join(path, "tokenizer")):
        if os.path.isfile(os.path.join(cand, "tokenizer.json")):
            return HFTokenizer(cand)
    if os.path.isfile(os.path.join(path, "tokenizer.model")):  # an export of a SentencePiece run
        return create_tokenizer("GPTSentencePieceTokenizer", tokenizer_model=os.path.join(path, "tokenizer.model"))
    if os.path.isfile(os.path.join(path, "vocab.json")) and os.path.isfile(os.path.join(path, "merges.txt")):
        return create_tokenizer("GPT2BPETokenizer", vocab_file=os.path.join(path, "vocab.json"),
                                merge_file=os.path.join(path, "merges.txt"))  # fmt: skip
    data = _recorded_data_config(path)
    if data is not None:
        return create_tokenizer(data.tokenizer_type, tokenizer_model=data.tokenizer_model, vocab_file=data.vocab_file,
                                merge_file=data.merge_file)  # fmt: skip
    raise ConfigError(
        f"no tokenizer found for {path}; pass --tokenizer-type ... (as for pretrain_gpt.py) or --hf-tokenizer DIR"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--load", required=True, help="HF dir, converted dir or pretrain_gpt.py --save dir")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--greedy", action="store_true", help="argmax decoding (same as --temperature 0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0: plain sampling)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-stop-at-eod", dest="stop_at_eod", action="store_false", help="keep going after end-of-text")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    g = p.add_argument_group("tokenizer (as for pretrain_gpt.py)")
    for flag in ("--tokenizer-type", "--tokenizer-model", "--vocab-file", "--merge-file", "--hf-tokenizer"):
        g.add_argument(flag)
    g.add_argument("--vocab-size", type=int, help="NullTokenizer only")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from megatron.hf import load_checkpoint_any
        from megatron.tokenizer import TokenizerError

        if not os.path.isdir(args.load):
            raise ConfigError(f"--load {args.load} does not exist")
        if not 0.0 < args.top_p <= 1.0:
            raise ConfigError(f"--top-p {args.top_p} must be in (0, 1]")
        try:
            tokenizer = build_tokenizer_for(args, args.load)
        except TokenizerError as e:
            raise ConfigError(str(e)) from None
        model, cfg = load_checkpoint_any(args.load, args.device, getattr(torch, args.dtype))
        if tokenizer.vocab_size > cfg.vocab_size:
            raise ConfigError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is {cfg.vocab_size}; "
                "use the tokenizer the checkpoint was trained with"
            )
        prompt_ids = tokenizer.tokenize(args.prompt)
        if not prompt_ids:
            raise ConfigError("--prompt tokenizes to nothing; give some text")
        ids = generate(model, cfg, prompt_ids, args.max_new_tokens, args.greedy, args.top_p, args.temperature,
                       args.seed, tokenizer.eod if args.stop_at_eod else None)  # fmt: skip
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(tokenizer.detokenize(ids), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
