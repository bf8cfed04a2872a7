"""GPT-1.3B (24 x 2048, 16 heads of 128) forward + backward step time and peak memory on one GPU, SP=1, bf16,
flash_triton, tiled loss, no optimizer: full recomputation against attention-output checkpointing at each length.

    python3 benchmarks/results/2026-12-02_attention_output_checkpoint_h200/measure.py --out results.json
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())

import torch  # noqa: E402

from bench.report import report_head  # noqa: E402
from megatron.config import AttentionConfig, ModelConfig  # noqa: E402
from megatron.model import gpt  # noqa: E402
from megatron.parallelize import apply_checkpointing, apply_tiled_loss  # noqa: E402


def reset(model):
    for layer in model.layers:
        layer.__dict__.pop("forward", None)
    model.run_layer = gpt.run_layer


def step(model, ids, pos):
    loss = model(ids, pos, ids).float().mean()
    loss.backward()
    norm = torch.sqrt(sum(p.grad.float().square().sum() for p in model.parameters()))
    model.zero_grad(set_to_none=True)
    return loss.item(), norm.item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-lens", default="32768,131072")
    ap.add_argument("--policies", default="full,attention_output")
    ap.add_argument("--steps", default="3,2", help="measured steps per length (after one warm-up step)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dev = torch.device("cuda")
    report = {**report_head(__file__, device=dev), "shape": "gpt-1.3b", "dtype": "bf16", "backend": "flash_triton",
              "sp": 1, "micro_batch": 1, "optimizer": None, "cases": []}
    cfg = ModelConfig(num_layers=24, hidden_size=2048, num_attention_heads=16, vocab_size=50257,
                      seq_length=max(int(s) for s in args.seq_lens.split(",")),
                      max_position_embeddings=max(int(s) for s in args.seq_lens.split(",")))
    torch.manual_seed(0)
    with dev:
        model = gpt.GPTModel(cfg, AttentionConfig(backend="flash_triton"), device=dev)
    model = model.to(dev, torch.bfloat16).train()
    for S, steps in zip((int(s) for s in args.seq_lens.split(",")), (int(n) for n in args.steps.split(","))):
        g = torch.Generator(device=dev).manual_seed(1)
        ids = torch.randint(0, 50257, (1, S), device=dev, generator=g)
        pos = torch.arange(S, device=dev)[None]
        for policy in args.policies.split(","):
            reset(model)
            apply_tiled_loss(model)
            apply_checkpointing(model, policy)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            case = {"seq_len": S, "policy": policy}
            try:
                first = step(model, ids, pos)
                case["loss"], case["grad_norm"] = first
                times = []
                for _ in range(steps):
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    step(model, ids, pos)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t)
                case["step_s"] = times
                case["median_step_s"] = sorted(times)[len(times) // 2]
                case["tokens_per_s"] = S / case["median_step_s"]
                case["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            except torch.cuda.OutOfMemoryError as e:
                case["error"] = f"OOM: {str(e)[:200]}"
            print(json.dumps(case), flush=True)
            report["cases"].append(case)
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
