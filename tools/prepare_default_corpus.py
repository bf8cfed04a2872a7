"""Build (once, cached) the embedded default corpus: text of the Python standard library,
a SentencePiece tokenizer trained on it, and its Megatron .bin/.idx files.

    python tools/prepare_default_corpus.py --cache-dir .cache/corpus          # human-readable
    eval "$(python tools/prepare_default_corpus.py --cache-dir DIR --shell)"  # sets DATA_PREFIX, TOKENIZER_MODEL, TOKENIZER_TYPE
"""

from __future__ import annotations

import argparse
import shlex
import sys

from megatron.data.corpus import prepare_default_corpus


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default=".cache/corpus", help="where the corpus is built and cached")
    p.add_argument("--shell", action="store_true", help="print shell assignments (progress goes to stderr)")
    args = p.parse_args()
    stdout = sys.stdout
    if args.shell:
        sys.stdout = sys.stderr  # keep progress off the stream that `eval` reads
    info = prepare_default_corpus(args.cache_dir)
    sys.stdout = stdout
    if args.shell:
        for key in ("data_prefix", "tokenizer_model", "tokenizer_type"):
            print(f"{key.upper()}={shlex.quote(str(info[key]))}")
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
