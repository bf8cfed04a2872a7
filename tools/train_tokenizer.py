"""Train a SentencePiece tokenizer on JSON Lines (for --tokenizer-type GPTSentencePieceTokenizer).

    python tools/train_tokenizer.py --input 'corpus/*.jsonl' --json-key text \\
        --vocab-size 32000 --output-prefix tok    # writes tok.model and tok.vocab

Defaults suit GPT pretraining: byte fallback (no unknown tokens), digits split, whitespace
kept as is, eos id 2 (used as the end-of-document token). ``--max-bytes`` caps the text fed
to the trainer, taken from the start of the input in order, so runs are reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from megatron.data.preprocess import PreprocessError, expand_inputs, iter_chunks


def write_training_text(pattern: str, key: str, out_path: str, max_bytes: int) -> int:
    """Write one line per non-empty text line of the documents; returns bytes written."""
    n = 0
    with open(out_path, "w", encoding="utf-8") as out:
        for path, first, lines in iter_chunks(expand_inputs(pattern)):
            for i, raw in enumerate(lines):
                if not raw.strip():
                    continue
                try:
                    text = json.loads(raw)[key]
                except (ValueError, KeyError, TypeError) as e:
                    raise PreprocessError(f"{path}:{first + i}: cannot read key {key!r} ({e})") from None
                for line in str(text).split("\n"):
                    if line.strip():
                        out.write(line + "\n")
                        n += len(line.encode("utf-8")) + 1
                if max_bytes and n >= max_bytes:
                    return n
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="JSON Lines file, .gz, glob or comma-separated list")
    p.add_argument("--json-key", default="text")
    p.add_argument("--output-prefix", required=True, help="writes {prefix}.model and {prefix}.vocab")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--max-bytes", type=int, default=200_000_000, help="text fed to the trainer (0: all)")
    p.add_argument("--character-coverage", type=float, default=0.9999)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    try:
        import sentencepiece as spm
    except ImportError:
        print("train_tokenizer.py: error: pip install sentencepiece", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.output_prefix)), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        lines = os.path.join(tmp, "train.txt")
        try:
            n = write_training_text(args.input, args.json_key, lines, args.max_bytes)
        except PreprocessError as e:
            print(f"train_tokenizer.py: error: {e}", file=sys.stderr)
            return 1
        if n == 0:
            print(f"train_tokenizer.py: error: --input {args.input} holds no text", file=sys.stderr)
            return 1
        try:
            spm.SentencePieceTrainer.train(
                input=lines,
                model_prefix=os.path.join(tmp, "tok"),
                vocab_size=args.vocab_size,
                model_type=args.model_type,
                byte_fallback=True,
                split_digits=True,
                character_coverage=args.character_coverage,
                remove_extra_whitespaces=False,
                normalization_rule_name="identity",
                allow_whitespace_only_pieces=True,
                max_sentence_length=1 << 16,
                num_threads=args.threads,
                minloglevel=2,
            )
        except RuntimeError as e:
            print(f"train_tokenizer.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 1
        for ext in (".model", ".vocab"):
            os.replace(os.path.join(tmp, "tok" + ext), args.output_prefix + ext)
    print(f"trained on {n / 1e6:.1f} MB -> {args.output_prefix}.model ({args.vocab_size} pieces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
