"""Tokenize JSON Lines into Megatron's mmap ``.bin/.idx`` format (Megatron-LM's flags).

    python tools/preprocess_data.py --input 'corpus/*.jsonl.gz' --output-prefix data/my \\
        --tokenizer-type GPTSentencePieceTokenizer --tokenizer-model tok.model \\
        --append-eod --workers 8

writes ``data/my_text_document.bin/.idx``. Errors print one line and exit with status 1;
no partial output is left behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from megatron.data.indexed_dataset import IndexedDatasetError
from megatron.data.preprocess import PreprocessError, preprocess
from megatron.tokenizer import TOKENIZER_TYPES, TokenizerError


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input data")
    g.add_argument("--input", required=True, help="JSON Lines file, .gz, glob or comma-separated list")
    g.add_argument("--json-keys", nargs="+", default=["text"], help="keys to extract (one output pair each)")
    g.add_argument("--skip-malformed", action="store_true", help="skip and count bad lines instead of failing")
    g.add_argument(
        "--keep-newlines",
        action="store_true",
        help="accepted for Megatron compatibility; text is never sentence-split here, so newlines are always kept",
    )
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    g.add_argument("--tokenizer-model", help="SentencePiece .model or HF tokenizer.json")
    g.add_argument("--vocab-file", help="GPT-2 vocab.json")
    g.add_argument("--merge-file", help="GPT-2 merges.txt")
    g.add_argument("--vocab-size", type=int, help="NullTokenizer: ids are 0..N-1, eod is N")
    g.add_argument("--append-eod", action="store_true", help="append the end-of-document token to each document")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="writes {prefix}_{key}_document.bin/.idx")
    g.add_argument(
        "--dtype",
        choices=["uint8", "uint16", "int32", "int64"],
        help="token dtype; default uint16 when the vocabulary fits, else int32",
    )
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    g.add_argument("--log-interval", type=int, default=10000, help="progress every this many documents")
    g.add_argument("--chunk-lines", type=int, default=512, help="lines per work item")
    return p.parse_args(argv)


_STOP = threading.Event()


def _request_stop(signum, frame):
    _STOP.set()  # Ctrl-C and SIGTERM stop at the next chunk; temporary outputs are then removed


def main(argv=None) -> int:
    args = get_args(argv)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        _STOP.clear()
        previous = {s: signal.signal(s, _request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(args)
    finally:
        for s, handler in previous.items():  # callers (tests) get their handlers back
            signal.signal(s, handler)


def _run(args) -> int:
    spec = {"tokenizer_type": args.tokenizer_type}
    if args.tokenizer_type == "GPT2BPETokenizer":
        spec.update(vocab_file=args.vocab_file, merge_file=args.merge_file)
    elif args.tokenizer_type == "NullTokenizer":
        spec.update(vocab_size=args.vocab_size)
    else:
        spec.update(tokenizer_model=args.tokenizer_model)
    try:
        stats = preprocess(
            args.input,
            args.output_prefix,
            spec,
            json_keys=args.json_keys,
            append_eod=args.append_eod,
            workers=max(1, args.workers),
            log_interval=args.log_interval,
            skip_malformed=args.skip_malformed,
            dtype=args.dtype,
            chunk_lines=args.chunk_lines,
            should_stop=_STOP.is_set,
        )
    except (PreprocessError, TokenizerError, IndexedDatasetError, FileNotFoundError) as e:
        print(f"preprocess_data.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("preprocess_data.py: interrupted; no output written", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Killed workers can leave the pool's pipes mid-message, and the interpreter's exit hook
        # would wait on them forever; the outputs are already removed, so leave at once.
        os._exit(130)
    print(stats.summary())
    for prefix in stats.outputs.values():
        print(f"wrote {prefix}.bin and {prefix}.idx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
