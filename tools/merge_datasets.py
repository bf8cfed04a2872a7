"""Merge several Megatron ``.bin/.idx`` pairs into one (documents in the order given).

    python tools/merge_datasets.py --input data/a_text_document data/b_text_document \\
        --output-prefix data/ab_text_document

``--input`` may also be a folder: every pair in it is merged, sorted by name (Megatron's
behaviour). All inputs must share a dtype and, where they record it (``{prefix}.meta``), the
tokenizer, which the output then records too. Output is published atomically.
"""

from __future__ import annotations

import argparse
import os
import sys

from megatron.data.dataset_info import merged_info, write_raw_info
from megatron.data.errors import DataError
from megatron.data.indexed_dataset import IndexedDatasetError, IndexWriter, MMapIndexedDataset


def expand(inputs: list) -> list:
    prefixes = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(f[:-4] for f in os.listdir(item) if f.endswith(".idx"))
            if not found:
                raise IndexedDatasetError(f"--input {item} holds no .idx files")
            prefixes += [os.path.join(item, f) for f in found]
        else:
            prefixes.append(item[:-4] if item.endswith((".bin", ".idx")) else item)
    return prefixes


def merge(prefixes: list, output_prefix: str) -> int:
    """Concatenate ``prefixes`` into ``output_prefix``; returns the number of documents."""
    if not prefixes:
        raise IndexedDatasetError("nothing to merge; give --input prefixes or a folder")
    first = MMapIndexedDataset(prefixes[0])  # validates the pair and gives the dtype
    dtype = first.dtype
    first.close()
    info = merged_info(prefixes)  # the inputs' tokenizer, refused when they disagree
    with IndexWriter(output_prefix, dtype) as w:
        for p in prefixes:
            w.add_index(p)
        w.finalize()
    if info is not None:
        write_raw_info(output_prefix, info)
    return len(MMapIndexedDataset(output_prefix).doc_idx) - 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="prefixes (or a folder of pairs) to merge, in order")
    p.add_argument("--output-prefix", required=True, help="writes {prefix}.bin and {prefix}.idx")
    args = p.parse_args(argv)
    try:
        n = merge(expand(args.input), args.output_prefix)
    except (IndexedDatasetError, DataError) as e:
        print(f"merge_datasets.py: error: {e}", file=sys.stderr)
        return 1
    print(f"merged {len(args.input)} inputs, {n} documents -> {args.output_prefix}.bin/.idx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
