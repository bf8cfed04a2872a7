"""Summary of raw/*.jsonl: per run the losses, the median tokens/s and MFU of steps 3 onwards, peak memory."""

import glob
import json
import os
import statistics

here = os.path.dirname(os.path.abspath(__file__))
out = {"env": json.load(open(os.path.join(here, "raw", "env.json"))), "runs": {}}
for path in sorted(glob.glob(os.path.join(here, "raw", "*.jsonl"))):
    recs = [json.loads(line) for line in open(path)]
    name = os.path.basename(path)[: -len(".jsonl")]
    out["runs"][name] = {
        "command": open(path[: -len(".jsonl")] + ".cmd").read().strip(),
        "lm_loss": [r["lm_loss"] for r in recs],
        "tokens_per_sec_median_from_step3": statistics.median(r["tokens_per_sec"] for r in recs[2:]),
        "mfu_median_from_step3": statistics.median(r["mfu"] for r in recs[2:]),
        "peak_mem_gb": max(r["mem_gb"] for r in recs),
    }
with open(os.path.join(here, "summary.json"), "w") as f:
    json.dump(out, f, indent=1)
for name, r in out["runs"].items():
    print(f"{name:24s} loss[0]={r['lm_loss'][0]:.6f} loss[-1]={r['lm_loss'][-1]:.6f} "
          f"tokens/s={r['tokens_per_sec_median_from_step3']:.0f} mfu={100 * r['mfu_median_from_step3']:.1f}% "
          f"mem={r['peak_mem_gb']:.2f} GB")
