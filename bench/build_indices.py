"""Time to build GPT dataset indices (doc, sample, shuffle) for a 1-billion-token dataset.

The dataset is synthetic: a real ``.idx`` with log-normal document lengths (mean ~600
tokens) next to a sparse ``.bin`` of the right size (no disk used), so ``GPTDataset`` runs
exactly as in training: open and validate, build the three indices with vectorized numpy,
save them to the cache, map them back. Also times a 3-way blend index.

    python bench/build_indices.py --tokens 1e9 --seq-length 2048 --out benchmarks/results/<date>_data_pipeline_cpu/build_indices.json
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import struct
import sys
import tempfile
import time

import numpy as np
from report import report_head, write_json  # bench/, this script's directory

from megatron.data.gpt_dataset import GPTDataset
from megatron.data.helpers import build_blending_indices
from megatron.data.indexed_dataset import INDEX_HEADER, MMapIndexedDataset

PACKAGES = ("sentencepiece", "tokenizers")
"""Named in the report's versions besides ``report.PACKAGES``."""


def machine() -> dict:
    """The host's CPU, cores, memory and load: what a CPU benchmark's figures depend on."""
    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else None
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1) if mem else None,
        "platform": platform.platform(),
        "load_average_1_5_15min_at_start": load,
        "note": "shared development machine: other jobs may run concurrently (see load average)",
    }


def write_synthetic(prefix: str, total_tokens: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    n = int(total_tokens / 600 * 1.02)
    sizes = np.clip(rng.lognormal(mean=6.0, sigma=0.9, size=n), 1, 60000).astype(np.int32)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes, dtype=np.int64), total_tokens) + 1]
    pointers = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1].astype(np.int64) * 2, out=pointers[1:])
    doc_idx = np.arange(len(sizes) + 1, dtype=np.int64)
    with open(prefix + ".idx", "wb") as f:
        f.write(INDEX_HEADER + struct.pack("<Q", 1) + struct.pack("<B", 8))
        f.write(struct.pack("<Q", len(sizes)) + struct.pack("<Q", len(doc_idx)))
        f.write(sizes.tobytes() + pointers.tobytes() + doc_idx.tobytes())
    with open(prefix + ".bin", "wb") as f:
        f.truncate(int(sizes.sum(dtype=np.int64)) * 2)  # sparse: no blocks written
    return len(sizes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=float, default=1e9)
    p.add_argument("--seq-length", type=int, nargs="+", default=[128, 2048, 4096])
    p.add_argument("--epochs", type=float, default=1.0, help="samples requested, in epochs")
    p.add_argument("--out", default=None, help="write results as JSON here")
    args = p.parse_args(argv)
    doc = {**report_head(__file__, argv, packages=PACKAGES), "benchmark": "build_indices", "machine": machine(),
           "note": "vectorized numpy, no C++ helpers; document lengths log-normal, mean ~600 tokens", "results": []}  # fmt: skip
    tmp = tempfile.mkdtemp(prefix="bench_indices_")
    try:
        t0 = time.time()
        ndocs = write_synthetic(os.path.join(tmp, "synth"), int(args.tokens))
        print(f"synthetic dataset: {ndocs} documents, {args.tokens:.0e} tokens ({time.time() - t0:.1f}s to write)")
        for seq in args.seq_length:
            t0 = time.time()
            indexed = MMapIndexedDataset(os.path.join(tmp, "synth"))
            t_open = time.time() - t0
            num_samples = int((args.tokens * args.epochs - 1) // seq)
            cache = os.path.join(tmp, f"cache{seq}")
            t0 = time.time()
            ds = GPTDataset("bench", indexed, np.arange(ndocs), num_samples, seq, 1234, cache)
            t_build = time.time() - t0
            t0 = time.time()
            ds2 = GPTDataset("bench", indexed, np.arange(ndocs), num_samples, seq, 1234, cache)
            t_load = time.time() - t0
            picks = np.random.default_rng(0).integers(0, len(ds2), 1000)
            t_get = []
            for _ in range(2):  # first touch (page faults on the maps), then repeated
                t0 = time.time()
                for i in picks:
                    ds2[int(i)]
                t_get.append((time.time() - t0) / len(picks))
            r = {
                "tokens": int(args.tokens),
                "documents": ndocs,
                "seq_length": seq,
                "num_samples": len(ds),
                "open_s": round(t_open, 3),
                "build_and_save_s": round(t_build, 3),
                "load_cached_s": round(t_load, 4),
                "getitem_ms_first_touch": round(t_get[0] * 1e3, 4),
                "getitem_ms_repeat": round(t_get[1] * 1e3, 4),
            }
            print(r)
            doc["results"].append(r)
            if args.out:
                write_json(args.out, doc)
        n_blend = 10_000_000
        t0 = time.time()
        build_blending_indices([0.5, 0.3, 0.2], n_blend)
        doc["blending"] = {"blend_datasets": 3, "blend_samples": n_blend, "blend_index_s": round(time.time() - t0, 3)}
        print(doc["blending"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        write_json(args.out, doc)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
