"""Attention kernel throughput: our Triton FlashAttention vs SDPA (flash, cuDNN) and flash_attn.

    python bench/attention.py                         # seq 4k,16k,64k,128k; writes benchmarks/results/<date>_attention_<gpu>/
    python bench/attention.py --seqs 4096 --impls triton,sdpa_flash --out /tmp/a.json
    python bench/attention.py --sweep                 # first tune Triton block configs at --sweep-seq
    python bench/attention.py --profile-seq 16384     # add per-kernel device times (torch.profiler)
    python bench/attention.py --dry-run               # print the plan, touch no GPU
    python bench/attention.py --doc-len 2048 --impls triton,sdpa --out /tmp/docs.json   # packed documents
    python bench/attention.py --window 4096           # sliding window; seq 32k,64k,128k
    python bench/attention.py --heads 32 --kv-heads 8 --head-dim 64 --impls triton,sdpa_cudnn,sdpa_lse

Causal, bf16, head dim 128, layout [b, s, h, d]. FLOPs count only the unmasked half:
fwd = 4*b*h*s*s*d / 2, fwd+bwd = 3.5 * fwd. Times are triton.testing.do_bench medians (ms).

--doc-len L packs each sequence with documents of L tokens (the last one shorter), as
`--reset-attention-mask` training does: a query sees earlier keys of its own document only. FLOPs
then count that work only (sum over documents of 4*h*L*L*d / 2 per sequence). `triton` takes the
document ids and skips masked blocks; `sdpa` is the model's SDPA path (megatron.model.attention),
which builds the dense [b, 1, s, s] boolean mask; sdpa_cudnn / sdpa_flash take no mask.

--window W is sliding-window attention (Mistral, Gemma): query i sees key j iff 0 <= i - j < W. Then `triton`
(ours, skipping the blocks outside the window), `sdpa` (the model's SDPA path, a dense boolean window mask) and
`flash_attn` (its window_size) run windowed, and `triton_full` is our full causal attention on the same inputs
for comparison; FLOPs count the attended (query, key) pairs (metrics.attended_pairs: about s*W, not s*s/2).
"""

import argparse
import json
import math
import re
import sys

import torch
from report import report_head, results_dir, write_json  # bench/, this script's directory

from megatron.kernels import attention_triton as fat
from megatron.kernels import interface

# triton: our kernels as the model runs them (forward="auto", backward="auto": the Gluon forward and fused
# backward wherever they apply); triton_fused: the Triton forward with the fused backward;
# triton_split: the default forward with the split backward; triton_plain: the Triton kernels only (Triton
# forward, split backward).
# sdpa_lse: the sdpa backend's log-sum-exp path (cuDNN's SDPA kernels called directly), as attention-output
# checkpointing runs it. With --kv-heads below --heads, sdpa_* repeat K/V to the query heads inside the timed call.
IMPLS = ("triton", "triton_fused", "triton_split", "triton_plain", "sdpa_flash", "sdpa_cudnn", "flash_attn")
EXTRA_IMPLS = ("sdpa_lse",)
TRITON_IMPLS = {  # impl -> flash_attention's forward=, backward=
    "triton": ("auto", "auto"),
    "triton_fused": ("triton", "auto"),
    "triton_split": ("auto", "split"),
    "triton_plain": ("triton", "split"),
}
DOC_IMPLS = ("triton", "sdpa")  # the default --impls with --doc-len
WINDOW_IMPLS = ("triton", "sdpa", "triton_full")  # the default --impls with --window
WINDOW_SEQS = "32768,65536,131072"  # the default --seqs with --window


def _document_lengths(seq, doc_len):
    if not doc_len:
        return None
    full, last = divmod(seq, doc_len)
    return [doc_len] * full + ([last] if last else [])


def causal_flops(bsz, heads, seq, head_dim, backward, doc_len=0, window=None):
    if window:  # the attended (query, key) pairs, 2 GEMMs of 2 FLOPs per multiply-add each
        from megatron.training.metrics import attended_pairs

        fwd = 4 * bsz * heads * attended_pairs(seq, window, _document_lengths(seq, doc_len)) * head_dim
        return fwd * 3.5 if backward else fwd
    if doc_len:
        full, last = divmod(seq, doc_len)
        squares = full * doc_len * doc_len + last * last
    else:
        squares = seq * seq
    fwd = 4 * bsz * heads * squares * head_dim / 2
    return fwd * 3.5 if backward else fwd


def document_ids_for(bsz, seq, doc_len, device="cuda"):
    """[b, s] int32 ids of documents of doc_len tokens, or None when doc_len is 0."""
    if not doc_len:
        return None
    return (torch.arange(seq, device=device, dtype=torch.int32) // doc_len).expand(bsz, seq).contiguous()


def impl_window(impl, window):
    """The window an impl runs with under --window: triton_full is the full causal comparison."""
    return None if impl == "triton_full" else (window or None)


def make_attention(impl, document_ids=None, window=None):
    """Returns f(q_bshd, k_bshd, v_bshd) -> out_bshd, or raises if the impl is unavailable."""
    window = impl_window(impl, window)
    if impl in TRITON_IMPLS or impl == "triton_full":
        ok, why = interface.is_available()
        if not ok:
            raise RuntimeError(why)

        forward, backward = TRITON_IMPLS.get(impl, ("auto", "auto"))

        def triton_attn(q, k, v):
            return interface.flash_attention(
                q, k, v, causal=True, document_ids=document_ids, window=window, forward=forward, backward=backward
            )

        return triton_attn
    if impl == "sdpa_lse":
        from megatron.model.attention import sdpa_attention_backward, sdpa_attention_lse

        class SDPALSE(torch.autograd.Function):
            @staticmethod
            def forward(ctx, q, k, v):
                out, lse = sdpa_attention_lse(q, k, v, document_ids, window=window)
                ctx.save_for_backward(q, k, v, out, lse)
                return out

            @staticmethod
            def backward(ctx, dout):
                return sdpa_attention_backward(*ctx.saved_tensors, dout, document_ids, window=window)

        return SDPALSE.apply
    if impl == "sdpa":
        from megatron.model.attention import sdpa_attention

        return lambda q, k, v: sdpa_attention(q, k, v, document_ids, window=window)
    if document_ids is not None:
        raise ValueError(f"{impl} takes no document mask (use triton or sdpa with --doc-len)")
    if window is not None and impl != "flash_attn":
        raise ValueError(f"{impl} takes no window mask (use triton, sdpa or flash_attn with --window)")
    if impl in ("sdpa_flash", "sdpa_cudnn"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = SDPBackend.FLASH_ATTENTION if impl == "sdpa_flash" else SDPBackend.CUDNN_ATTENTION

        def sdpa(q, k, v):
            rep = q.shape[2] // k.shape[2]  # grouped-query attention: K/V repeated to the query heads (timed)
            if rep > 1:
                k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
            with sdpa_kernel(backend):
                out = torch.nn.functional.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
                )
            return out.transpose(1, 2)

        return sdpa
    if impl == "flash_attn":
        from flash_attn import flash_attn_func

        size = (window - 1, 0) if window is not None else (-1, -1)
        return lambda q, k, v: flash_attn_func(q, k, v, causal=True, window_size=size)
    raise ValueError(f"unknown impl {impl!r}; choose from {IMPLS + EXTRA_IMPLS + ('sdpa', 'triton_full')}")


def make_inputs(bsz, seq, heads, head_dim, seed=0, kv_heads=None):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q_shape, kv_shape = (bsz, seq, heads, head_dim), (bsz, seq, kv_heads or heads, head_dim)
    q, k, v, dout = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
                     for shape in (q_shape, kv_shape, kv_shape, q_shape))  # fmt: skip
    for t in (q, k, v):
        t.requires_grad_()
    return q, k, v, dout


def time_impl(attn, q, k, v, dout):
    from triton.testing import do_bench

    def fwd():
        with torch.no_grad():
            attn(q, k, v)

    def fwd_bwd():
        attn(q, k, v).backward(dout)

    fwd_ms = do_bench(fwd, warmup=50, rep=200, return_mode="median")
    fwd_bwd_ms = do_bench(fwd_bwd, warmup=50, rep=200, grad_to_none=[q, k, v], return_mode="median")
    return fwd_ms, fwd_bwd_ms


def batch_for(seq, tokens):
    return max(1, tokens // seq)


def kernel_report():
    """Registers, spills, shared memory and wgmma count of the latest Triton launches."""
    from kernel_resources import mma_counts  # bench/, the script's own directory

    report = {}
    for name, compiled in interface.LAST_COMPILED.items():
        ptx = compiled.asm.get("ptx", "")
        report[name] = {
            "n_regs": getattr(compiled, "n_regs", None),
            "n_spills": getattr(compiled, "n_spills", None),
            "shared_bytes": compiled.metadata.shared,
            "num_warps": compiled.metadata.num_warps,
            "num_stages": compiled.metadata.num_stages,
            **mma_counts(ptx),
        }
    return report


def _try(attn, q, k, v, dout, kernel):
    try:
        fwd_ms, fwd_bwd_ms = time_impl(attn, q, k, v, dout)
        return {"fwd_ms": fwd_ms, "fwd_bwd_ms": fwd_bwd_ms, "compiled": kernel_report().get(kernel)}
    except Exception as e:  # noqa: BLE001 - record the error (e.g. out of shared memory) and go on
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}


# (BLOCK_M, BLOCK_N, warps, stages) tried by --sweep, after the current config of each kernel.
SWEEP_CONFIGS = {
    "fwd": [(128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3)],
    "dkdv": [(64, 128, 8, 3), (64, 128, 8, 2), (32, 128, 8, 3), (64, 64, 4, 2)],
    "dq": [(128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 2)],
}


def sweep(args, log):
    """Coordinate search over Triton block configs: fwd alone (fwd time), then the dkdv and dq
    kernels (fwd+bwd time). Every row lands in the JSON; the best goes on to the benchmark."""
    d = args.head_dim
    bsz = batch_for(args.sweep_seq, args.tokens)
    q, k, v, dout = make_inputs(bsz, args.sweep_seq, args.heads, d)
    attn = make_attention("triton_plain")  # the block configs tuned here are the plain-Triton kernels'
    results = []
    for kernel, listed in SWEEP_CONFIGS.items():
        current = tuple(fat._config(kernel, d))  # today's config is always timed, first, as the baseline
        configs = [current] + [c for c in listed if c != current]
        metric_key = "fwd_ms" if kernel == "fwd" else "fwd_bwd_ms"
        timed = []
        for cfg in configs:
            fat.GPU_CONFIGS[kernel][d] = cfg
            row = {"kernel": kernel, "config": cfg, **_try(attn, q, k, v, dout, kernel)}
            results.append(row)
            timed.append((row.get(metric_key, math.inf), cfg))
            log(
                f"sweep {kernel} {cfg}: fwd {row.get('fwd_ms', float('nan')):.3f} ms, "
                f"fwd+bwd {row.get('fwd_bwd_ms', float('nan')):.3f} ms {row.get('compiled') or row.get('error')}"
            )
        fat.GPU_CONFIGS[kernel][d] = min(timed)[1]
        log(f"sweep {kernel}: best {min(timed)}")
    del q, k, v, dout
    torch.cuda.empty_cache()
    return results


def profile_kernels(impls, seq, args, log):
    """Per-kernel device time (ms per fwd+bwd step) from torch.profiler, averaged over 3 steps."""
    from torch.profiler import ProfilerActivity, profile

    bsz = batch_for(seq, args.tokens)
    q, k, v, dout = make_inputs(bsz, seq, args.heads, args.head_dim, kv_heads=args.kv_heads)
    report = {}
    for impl in impls:
        try:
            attn = make_attention(impl)
            for _ in range(2):
                attn(q, k, v).backward(dout)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    attn(q, k, v).backward(dout)
                torch.cuda.synchronize()
            kernels = {}
            for evt in prof.key_averages():
                t = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
                if t > 0 and evt.key not in ("", None):
                    kernels[evt.key[:120]] = round(t / 3 / 1e3, 4)  # us total over 3 steps -> ms per step
            report[impl] = dict(sorted(kernels.items(), key=lambda kv: -kv[1])[:8])
            log(f"profile {impl} seq {seq}: {report[impl]}")
        except Exception as e:  # noqa: BLE001 - an impl that fails is recorded, not fatal
            report[impl] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        q.grad = k.grad = v.grad = None
    del q, k, v, dout
    torch.cuda.empty_cache()
    return {"seq": seq, "batch": bsz, "ms_per_step_by_kernel": report}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", default=None, help=f"default 4096,16384,65536,131072; with --window {WINDOW_SEQS}")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--kv-heads", type=int, default=0, help="key/value heads (grouped-query attention); 0: --heads")
    p.add_argument("--tokens", type=int, default=16384, help="batch = max(1, tokens // seq)")
    p.add_argument("--impls", default=None, help=f"default {','.join(IMPLS)}; with --doc-len {','.join(DOC_IMPLS)}; "
                   f"with --window {','.join(WINDOW_IMPLS)}")  # fmt: skip
    p.add_argument("--doc-len", type=int, default=0, help="pack documents of this many tokens (0: one per sequence)")
    p.add_argument("--window", type=int, default=0, help="sliding window of this many keys (0: full causal)")
    p.add_argument("--sweep", action="store_true", help="tune Triton block configs first")
    p.add_argument("--sweep-seq", type=int, default=16384)
    p.add_argument("--profile-seq", type=int, default=0, help="also profile kernels per impl at this seq")
    p.add_argument("--bwd-block-m", type=int, default=0, choices=(0, 64, 128),
                   help="queries per step of the fused Gluon backward at --head-dim (0: the kernel's default)")
    p.add_argument("--bwd-order", default="", choices=("", "interleaved", "per-head"),
                   help="launch order of the fused Gluon backward at --head-dim: every head's heaviest key block first "
                   "(interleaved) or one head after another (per-head); empty: the kernel's default (at head dim 64 by shape)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<date>_attention_<gpu>/attention_<gpu>.json)")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    if args.doc_len < 0:
        sys.exit(f"--doc-len must be >= 0, got {args.doc_len}")
    if args.window < 0:
        sys.exit(f"--window must be >= 0 (0: full causal), got {args.window}")
    if args.kv_heads < 0 or (args.kv_heads and args.heads % args.kv_heads):
        sys.exit(f"--kv-heads must divide --heads ({args.heads}), got {args.kv_heads}")
    seqs = [int(s) for s in (args.seqs or (WINDOW_SEQS if args.window else "4096,16384,65536,131072")).split(",")]
    default_impls = WINDOW_IMPLS if args.window else DOC_IMPLS if args.doc_len else IMPLS
    impls = (args.impls or ",".join(default_impls)).split(",")

    if args.dry_run:
        for seq in seqs:
            bsz = batch_for(seq, args.tokens)
            flops = causal_flops(bsz, args.heads, seq, args.head_dim, False, args.doc_len, args.window or None)
            window = f", window {args.window}" if args.window else ""
            print(f"seq {seq}: batch {bsz}, heads {args.heads}{window}, fwd {flops / 1e12:.2f} TFLOP; impls {impls}")
        return
    if not torch.cuda.is_available():
        sys.exit("bench/attention.py needs a CUDA GPU (use --dry-run to see the plan)")

    def log(msg):
        print(msg, flush=True)

    import triton

    device = torch.cuda.get_device_name()
    slug = (re.search(r"(H100|H200|A100|B200|GB200|L40S?|RTX\s*\d+)", device) or re.search(r"\w+$", device)).group(0)
    slug = slug.lower().replace(" ", "")
    out_path = args.out or str(results_dir("attention", slug) / f"attention_{slug}.json")

    record = {
        **report_head(__file__, device="cuda"),
        "dtype": "bfloat16",
        "causal": True,
        "head_dim": args.head_dim,
        "heads": args.heads,
        "kv_heads": args.kv_heads or args.heads,
        "doc_len": args.doc_len,
        "window": args.window or None,
        "flops": "fwd = 4*b*h*s*s*d/2 (causal half; with doc_len, s*s is the sum of squared document lengths; "
        "with a window, s*s/2 is the attended (query, key) pairs, metrics.attended_pairs); fwd+bwd = 3.5*fwd",
        "timer": "triton.testing.do_bench median, warmup 50 ms, rep 200 ms",
    }
    if args.sweep:
        record["sweep_seq"] = args.sweep_seq
        record["sweep"] = sweep(args, log)
    from megatron.kernels import attention_gluon_bwd_sm90 as gluon_bwd

    if args.bwd_block_m:
        gluon_bwd.BLOCK_M_BY_HEAD_DIM[args.head_dim] = args.bwd_block_m
    if args.bwd_order:
        gluon_bwd.INTERLEAVED_BY_HEAD_DIM[args.head_dim] = args.bwd_order == "interleaved"
    record["fused_backward_block_m"] = gluon_bwd.BLOCK_M_BY_HEAD_DIM.get(args.head_dim)
    record["fused_backward_interleaved"] = gluon_bwd.INTERLEAVED_BY_HEAD_DIM.get(args.head_dim)
    record["triton_configs"] = {k: {str(d): list(c) for d, c in v.items()} for k, v in fat.GPU_CONFIGS.items()}
    log(f"triton configs {record['triton_configs']}")
    if args.profile_seq:
        record["profile"] = profile_kernels([i for i in impls if i != "flash_attn"], args.profile_seq, args, log)

    rows = record["results"] = []
    for seq in seqs:
        bsz = batch_for(seq, args.tokens)
        q, k, v, dout = make_inputs(bsz, seq, args.heads, args.head_dim, seed=seq, kv_heads=args.kv_heads)
        document_ids = document_ids_for(bsz, seq, args.doc_len)
        reference_out = {}  # per window: the first impl's output
        for impl in impls:
            window = impl_window(impl, args.window)
            flops_fwd, flops_fwd_bwd = (causal_flops(bsz, args.heads, seq, args.head_dim, b, args.doc_len, window)
                                        for b in (0, 1))  # fmt: skip
            row = {"impl": impl, "seq": seq, "batch": bsz, "heads": args.heads, "kv_heads": args.kv_heads or args.heads,
                   "head_dim": args.head_dim}  # fmt: skip
            if args.doc_len:
                row["doc_len"] = args.doc_len
            if args.window:
                row["window"] = window
            try:
                attn = make_attention(impl, document_ids, window)
                with torch.no_grad():
                    out = attn(q, k, v).float()
                if window not in reference_out:
                    reference_out[window] = impl, out
                else:  # each impl's output against the first impl's of the same mask (a sanity check, not a test)
                    first, ref = reference_out[window]
                    row["rel_diff_vs_" + first] = ((out - ref).norm() / ref.norm()).item()
                del out
                # Memory one forward+backward adds on top of the inputs (a dense mask shows here).
                q.grad = k.grad = v.grad = None
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                attn(q, k, v).backward(dout)
                torch.cuda.synchronize()
                row["extra_mem_gb"] = (torch.cuda.max_memory_allocated() - base) / 1e9
                q.grad = k.grad = v.grad = None
                fwd_ms, fwd_bwd_ms = time_impl(attn, q, k, v, dout)
                row.update(
                    fwd_ms=fwd_ms,
                    fwd_bwd_ms=fwd_bwd_ms,
                    fwd_tflops=flops_fwd / fwd_ms / 1e9,
                    fwd_bwd_tflops=flops_fwd_bwd / fwd_bwd_ms / 1e9,
                )
                if impl in ("triton", "triton_full"):
                    row["compiled"] = kernel_report()
            except Exception as e:  # noqa: BLE001 - an impl that fails is recorded, not fatal
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            rows.append(row)
            write_json(out_path, record)  # after every result: a run cut short keeps what finished
            log(json.dumps({k: v for k, v in row.items() if k != "compiled"}))
            torch.cuda.empty_cache()
        del q, k, v, dout, reference_out, document_ids
        torch.cuda.empty_cache()
    write_json(out_path, record)
    print(f"\n{device} | torch {torch.__version__} | triton {triton.__version__} | CUDA {torch.version.cuda}")
    print("| impl | seq | batch x heads | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['impl']} | {r['seq']} | {r['batch']}x{r['heads']} | error: {r['error'][:60]} | | | |")
        else:
            print(
                f"| {r['impl']} | {r['seq']} | {r['batch']}x{r['heads']} | {r['fwd_ms']:.3f} | {r['fwd_tflops']:.0f} "
                f"| {r['fwd_bwd_ms']:.3f} | {r['fwd_bwd_tflops']:.0f} |"
            )
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
