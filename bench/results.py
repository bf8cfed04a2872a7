"""docs/results.md and the README's headline table, generated from the raw results in benchmarks/results/.

    python bench/results.py           # rewrite docs/results.md and the README block between its markers
    python bench/results.py --check   # exit 1 when either differs from what the results give (a test runs this)

Each measurement has its own folder, ``benchmarks/results/<date>_<topic>_<gpu>/``, with the JSON the bench
scripts wrote, their command scripts and logs. Each section below reads the newest folder of its topic, so a
new measurement replaces a figure the day its folder lands, and no figure is copied by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "results.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- results:begin (bench/results.py writes this table) -->", "<!-- results:end -->"
PEER = "the peer (Hugging Face `LlamaForCausalLM` + DeepSpeed's ALST pieces, `bench/peer_hf_alst.py`)"


# ---------------------------------------------------------------------------------------------- finding results


def latest(topic: str) -> Path:
    """The newest folder ``<date>_<topic>_<gpu>`` of a topic (dates sort as text)."""
    pattern = re.compile(rf"^\d{{4}}-\d{{2}}-\d{{2}}_{re.escape(topic)}_[a-z0-9-]+$")
    folders = sorted(p for p in RESULTS.iterdir() if p.is_dir() and pattern.match(p.name))
    if not folders:
        raise FileNotFoundError(f"no benchmarks/results/<date>_{topic}_<gpu>/ folder")
    return folders[-1]


def load(path: Path):
    return json.loads(path.read_text())


def link(path: Path, text: str | None = None) -> str:
    """A Markdown link from docs/results.md to a file or folder of the repository."""
    target = Path("..") / path.relative_to(ROOT)
    return f"[{text or path.name}]({target.as_posix()}{'/' if path.is_dir() else ''})"


def source(*folders: Path) -> str:
    return "Raw results, commands and logs: " + ", ".join(link(f, f.name + "/") for f in folders) + "."


SHAPES = {"gpt-1.3b": "GPT-1.3B", "llama-1b": "Llama-1B", "llama-8b": "Llama-3.1-8B shape", "tiny": "tiny"}


def shape_name(shape: str) -> str:
    return SHAPES.get(shape, shape)


def gpu(name: str) -> str:
    """The short name of a GPU ("H200" for "NVIDIA H200")."""
    m = re.search(r"(H100|H200|A100|B200|GB200|L40S?)", name or "")
    return m.group(1) if m else (name or "?")


def recompute_label(case: dict) -> str:
    if not case["checkpoint_activations"]:
        return "none"
    return "keep-attention" if case.get("checkpoint_keep_attention") else "full"


def throughput_reports(folder: Path) -> list:
    """(path, report) of every bench/throughput.py JSON in a folder, merged tables included."""
    out = []
    for path in sorted(folder.glob("*.json")):
        report = load(path)
        if isinstance(report, dict) and report.get("benchmark") == "throughput":
            out.append((path, report))
    return out


def ok_cases(report: dict) -> list:
    return [c for c in report["cases"] if c.get("outcome") == "ok"]


def global_batch(case: dict) -> int:
    cmd = case.get("command") or []
    values = [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == "--global-batch-size"]
    return int(values[-1]) if values else case["nproc"] // case["sp"]


# ---------------------------------------------------------------------------------------------- formatting


def num(x: float) -> str:
    return f"{x:,.0f}"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def ratio(x: float) -> str:
    return f"{x:.2f}x"


def seq_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else num(n)


def span(values: list, fmt=num) -> str:
    """One value, or the range of several runs of the same setting."""
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}-{fmt(hi)}"


def table(header: list, rows: list, right_from: int = 1) -> str:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def versions_line(versions: dict) -> str:
    keys = ("torch", "cuda", "cudnn", "triton", "deepspeed", "transformers")
    parts = [f"{k} {versions[k]}" for k in keys if versions.get(k) is not None]
    return "Versions: " + ", ".join(parts) + "." if parts else ""


# ---------------------------------------------------------------------------------------------- sections


def attention_kernels(facts: dict) -> str:
    folder = latest("attention_kernels")
    reports = [load(p) for p in sorted(folder.glob("attention_*.json"))]
    main = next(r for r in reports if r["head_dim"] == 128 and not r["doc_len"])
    by = {(r["impl"], r["seq"]): r for r in main["results"] if not r.get("error")}
    seqs = sorted({s for _, s in by})
    impls = [("triton", "ours (default)"), ("triton_fused", "ours, Triton forward"),
             ("triton_split", "ours, split backward"), ("sdpa_flash", "SDPA FlashAttention-2"),
             ("sdpa_cudnn", "SDPA cuDNN")]  # fmt: skip
    rows, vs_cudnn, vs_fa2 = [], [], []
    for s in seqs:
        ours, cudnn = by[("triton", s)]["fwd_bwd_tflops"], by[("sdpa_cudnn", s)]["fwd_bwd_tflops"]
        vs_cudnn.append(ours / cudnn)
        vs_fa2.append(ours / by[("sdpa_flash", s)]["fwd_bwd_tflops"])
        batch = by[("triton", s)]["batch"]
        row = [f"{seq_label(s)} (batch {batch})"]
        row += [num(by[(i, s)]["fwd_bwd_tflops"]) if (i, s) in by else "-" for i, _ in impls]
        rows.append(row + [f"{100 * ours / cudnn:.0f}%"])
    facts["attention"] = dict(device=main["device"], vs_cudnn=vs_cudnn, vs_fa2=vs_fa2, seqs=seqs)
    out = [
        f"## Attention kernels\n\n{main['device']}, causal, bf16, {main['heads']} heads of {main['head_dim']}, "
        f"forward + backward, TFLOP/s (`bench/attention.py`, {main['timer']}; {main['flops']}). "
        "\"ours (default)\" is what `--attention-backend flash_triton` runs on Hopper: the Gluon forward and the "
        "fused Gluon backward.\n",
        table(["sequence", *[name for _, name in impls], "ours / cuDNN"], rows),
    ]
    fwd = [f"{seq_label(s)} {num(by[('triton', s)]['fwd_tflops'])} / {num(by[('sdpa_cudnn', s)]['fwd_tflops'])}"
           for s in seqs]  # fmt: skip
    out.append("\nForward only, ours / cuDNN, TFLOP/s: " + ", ".join(fwd) + ".")
    prof = main.get("profile")
    if prof:
        ms = {k: sum(t for name, t in v.items() if "CUDAFunctor_add" not in name)
              for k, v in prof["ms_per_step_by_kernel"].items()}  # fmt: skip
        out.append(
            f"Kernel time per forward + backward at {seq_label(prof['seq'])} (torch.profiler, without the profiling "
            "loop's gradient accumulation): ours "
            f"{ms['triton']:.2f} ms, cuDNN {ms['sdpa_cudnn']:.2f} ms, SDPA FlashAttention-2 {ms['sdpa_flash']:.2f} ms."
        )
    hd64 = next((r for r in reports if r["head_dim"] == 64 and not r["doc_len"]), None)
    if hd64:
        by64 = {(r["impl"], r["seq"]): r for r in hd64["results"] if not r.get("error")}
        rows = []
        for s in sorted({s for _, s in by64}):
            default, cudnn = by64[("triton_fused", s)]["fwd_bwd_tflops"], by64[("sdpa_cudnn", s)]["fwd_bwd_tflops"]
            rows.append([seq_label(s), num(default), num(by64[("triton", s)]["fwd_bwd_tflops"]),
                         num(by64[("sdpa_flash", s)]["fwd_bwd_tflops"]), num(cudnn), f"{100 * default / cudnn:.0f}%"])  # fmt: skip
        out += [
            f"\nHead dim 64 ({hd64['heads']} heads, as Llama-1B), forward + backward, TFLOP/s. At head dim 64 the "
            "default runs the Triton forward with the fused backward; the Gluon forward measured slower there. These "
            "are the kernels of this table's date: the fused backward's 128-query blocks and launch order since then, "
            "against cuDNN with grouped-query attention, are in [the launch-order section]"
            "(#attention-launch-order-and-the-head-dim-64-backward).\n",
            table(["sequence", "ours (default)", "ours, Gluon forward", "SDPA FlashAttention-2", "SDPA cuDNN",
                   "ours / cuDNN"], rows),  # fmt: skip
        ]
    docs = [r for r in reports if r["doc_len"]]
    if docs:
        rows = []
        for r in sorted(docs, key=lambda r: r["doc_len"]):
            b = {(x["impl"], x["seq"]): x for x in r["results"] if not x.get("error")}
            for s in sorted({s for _, s in b}):
                rows.append([f"{num(r['doc_len'])} tokens", seq_label(s), f"{b[('triton', s)]['fwd_ms']:.2f}",
                             f"{b[('triton_fused', s)]['fwd_ms']:.2f}", f"{b[('triton', s)]['fwd_bwd_ms']:.2f}",
                             f"{b[('triton_fused', s)]['fwd_bwd_ms']:.2f}", f"{b[('triton_split', s)]['fwd_bwd_ms']:.2f}"])  # fmt: skip
        out += [
            "\nPacked documents (`--reset-attention-mask`), head dim 128, ms (masked blocks are skipped):\n",
            table(["documents", "sequence", "forward: Gluon", "forward: Triton", "fwd+bwd: ours (default)",
                   "fwd+bwd: Triton forward", "fwd+bwd: split backward"], rows, right_from=2),  # fmt: skip
        ]
    backends = latest("attention_backends")
    rows = []
    for _, r in throughput_reports(folder) + throughput_reports(backends):
        c = {x["backend"]: x for x in ok_cases(r) if x["kind"] == "ours"}
        if {"flash_triton", "sdpa"} <= set(c):
            x, f = c["sdpa"], c["flash_triton"]
            rows.append([shape_name(x["shape"]), f"{x['nproc']} x {gpu(r['devices'][0])}, SP={x['sp']}",
                         recompute_label(x), seq_label(x["seq_len"]), num(f["tokens_per_sec_per_gpu"]),
                         num(x["tokens_per_sec_per_gpu"]), ratio(f["tokens_per_sec_per_gpu"] / x["tokens_per_sec_per_gpu"])])  # fmt: skip
    if rows:
        out += ["\nEnd to end (ZeRO-3, tokens/s per GPU), the two backends in one invocation:\n",
                table(["model", "GPUs", "recomputation", "sequence", "`flash_triton`", "`sdpa` (cuDNN)", "ratio"], rows, 3)]  # fmt: skip
    out.append("\n" + versions_line({**main, **main.get("versions", {})}) + " " + source(folder, backends)
               + " The head-dim-64 forward tile sweep behind the Triton forward at head dim 64: "
               + link(next(backends.glob("hd64_fwd_sweep.json"))) + ".")
    return "\n".join(out)


def sliding_window(facts: dict) -> str:
    folder = latest("sliding_window")
    rows = []
    for path in sorted(folder.glob("*.json")):
        r = load(path)
        if not r.get("window"):
            continue
        by = {(x["impl"], x["seq"]): x for x in r["results"] if not x.get("error")}
        for s in sorted({s for _, s in by}):
            ours, sdpa, full = by.get(("triton", s)), by.get(("sdpa", s)), by.get(("triton_full", s))
            rows.append([r["head_dim"], seq_label(s),
                         f"{ours['fwd_bwd_ms']:.1f} ({num(ours['fwd_bwd_tflops'])})" if ours else "-",
                         f"{sdpa['fwd_bwd_ms']:.1f}" if sdpa else "-", f"{full['fwd_bwd_ms']:.1f}" if full else "-"])  # fmt: skip
    window = next(load(p)["window"] for p in sorted(folder.glob("*.json")) if load(p).get("window"))
    return "\n".join([
        f"## Sliding-window attention\n\n`bench/attention.py --window {window}`, one H200, causal, bf16, 16 heads, batch 1, "
        "forward + backward in ms (TFLOP/s of the attended pairs in brackets): our kernels skip the blocks outside "
        "the window, SDPA gets a dense window mask.\n",
        table(["head dim", "sequence", f"ours, window {num(window)}", "SDPA with the window mask", "ours, full causal"],
              rows),  # fmt: skip
        "\n" + source(folder),
    ])  # fmt: skip


def packed_documents(facts: dict) -> str:
    folder = latest("packed_documents")
    cells = {}  # (doc_len, seq, impl) -> result; later files (sorted by name) replace earlier ones
    for path in sorted(folder.glob("attention_*.json")):
        r = load(path)
        for x in r["results"]:
            if r["doc_len"] and not x.get("error"):
                cells[(r["doc_len"], x["seq"], x["impl"])] = x
    rows, speedups = [], {}
    for doc_len, s in sorted({(d, s) for d, s, _ in cells}):
        ours, sdpa = cells[(doc_len, s, "triton")], cells[(doc_len, s, "sdpa")]
        speedups[(doc_len, s)] = sdpa["fwd_bwd_ms"] / ours["fwd_bwd_ms"]
        rows.append([f"{num(doc_len)} tokens", seq_label(s), f"{ours['fwd_bwd_ms']:.1f} ms ({ours['extra_mem_gb']:.2f} GB)",
                     f"{sdpa['fwd_bwd_ms']:.1f} ms ({sdpa['extra_mem_gb']:.2f} GB)", f"{speedups[(doc_len, s)]:.1f}x"])  # fmt: skip
    e2e = []
    for _, r in throughput_reports(folder):
        c = {x["backend"]: x for x in ok_cases(r)}
        if {"flash_triton", "sdpa"} <= set(c):
            o, s = c["flash_triton"], c["sdpa"]
            e2e.append([f"{o['nproc']} GPU, SP={o['sp']}", seq_label(o["seq_len"]),
                        f"{num(o['tokens_per_sec_per_gpu'])} (MFU {pct(o['mfu'])})",
                        f"{num(s['tokens_per_sec_per_gpu'])} (MFU {pct(s['mfu'])})",
                        f"{o['tokens_per_sec_per_gpu'] / s['tokens_per_sec_per_gpu']:.1f}x"])  # fmt: skip
    best = max(speedups, key=lambda k: k[1] * 10 + speedups[k] / 1e6)  # the longest sequence
    facts["documents"] = dict(doc_len=best[0], seq=best[1], speedup=speedups[best])
    return "\n".join([
        "## Packed documents\n\nWith `--reset-attention-mask` a query sees only its own document. Our kernel "
        "(`flash_triton`) takes the document ids and skips masked blocks; SDPA gets a dense `[b, 1, s, s]` mask and "
        "computes every score. One H200, 16 heads of 128, forward + backward (extra memory in brackets):\n",
        table(["documents", "sequence", "ours", "SDPA with the mask", "SDPA / ours"], rows, right_from=2),
        "\nGPT-1.3B at 32k with 2,048-token documents, ZeRO-3, full recomputation, tokens/s per GPU:\n",
        table(["GPUs", "sequence", "`flash_triton`", "`sdpa` with the mask", "ratio"], e2e, right_from=1),
        "\n" + source(folder),
    ])  # fmt: skip


def _best_ours(cases: list) -> dict | None:
    ours = [c for c in cases if c["kind"] == "ours"]
    return max(ours, key=lambda c: c["tokens_per_sec_per_gpu"]) if ours else None


def throughput_vs_peer(facts: dict) -> str:
    folder = latest("throughput_vs_peer")
    reports = throughput_reports(folder)
    merged = [(p, r) for p, r in reports if "merged_from" in r]
    raw = [(p, r) for p, r in reports if "merged_from" not in r]
    out = [
        "## End to end against the peer\n\n"
        f"`bench/throughput.py`: `pretrain_gpt.py` against {PEER}, same shapes, lengths and GPUs, each length in one "
        "invocation so both ran back to back. Defaults of today on both sides: ZeRO-3, bf16, micro batch 1, full "
        "recomputation, tiled loss, leaf layers; the peer pads its vocabulary like ours. Tokens/s per GPU, median of "
        "the measured steps."
    ]
    facts["peer"] = []
    for path, report in sorted(merged, key=lambda pr: (-pr[1]["cases"][0]["nproc"], pr[1]["cases"][0]["shape"])):
        cases = ok_cases(report)
        first = cases[0]
        seqs = sorted({c["seq_len"] for c in cases})
        at = {s: [c for c in cases if c["seq_len"] == s] for s in seqs}
        backends = sorted({c["backend"] for c in cases if c["kind"] == "ours"}, key=lambda b: b != "sdpa")
        rows = []
        for b in backends:
            label = "`sdpa` (cuDNN)" if b == "sdpa" else f"`{b}` (our kernels)" if b == "flash_triton" else f"`{b}`"
            rows.append([f"ours, {label}"] + [next((num(c["tokens_per_sec_per_gpu"]) for c in at[s] if c["kind"] == "ours"
                                                     and c["backend"] == b), "-") for s in seqs])  # fmt: skip
        peer = {s: next((c for c in at[s] if c["kind"] == "peer"), None) for s in seqs}
        best = {s: _best_ours(at[s]) for s in seqs}
        rows.append(["peer"] + [num(peer[s]["tokens_per_sec_per_gpu"]) if peer[s] else "-" for s in seqs])
        ratios = {s: best[s]["tokens_per_sec_per_gpu"] / peer[s]["tokens_per_sec_per_gpu"] for s in seqs if peer[s]}
        rows.append(["**ours (faster backend) / peer**"] + [f"**{ratio(ratios[s])}**" if s in ratios else "-" for s in seqs])
        rows.append(["ours MFU (faster backend)"] + [pct(best[s]["mfu"]) for s in seqs])
        rows.append(["ours TFLOPS/GPU, Megatron-DeepSpeed formula"] + [num(best[s]["tflops_per_gpu"]) for s in seqs])
        rows.append(["peak memory, ours / peer (GB)"] + [f"{best[s]['peak_mem_gb']:.1f} / {peer[s]['peak_mem_gb']:.1f}"
                                                         if peer[s] else "-" for s in seqs])  # fmt: skip
        title = f"{shape_name(first['shape'])}, {first['nproc']} x {gpu(report['devices'][0])}, SP={first['sp']}"
        facts["peer"].append(dict(shape=first["shape"], nproc=first["nproc"], sp=first["sp"], ratios=ratios, title=title,
                                  best_mfu=max(b["mfu"] for b in best.values())))  # fmt: skip
        out += [f"\n### {title}\n", table(["", *[seq_label(s) for s in seqs]], rows)]
        pngs = [p for p in (path.with_name(path.stem + "_tokens_per_sec.png"), path.with_name(path.stem + "_mfu.png"))
                if p.exists()]  # fmt: skip
        if pngs:
            out.append("\nPlots: " + ", ".join(link(p) for p in pngs) + f"; table with every column: {link(path.with_suffix('.md'))}.")
        repeats = []
        for s in seqs:
            for b in backends:
                values = sorted({round(c["tokens_per_sec_per_gpu"]) for _, r in raw for c in ok_cases(r)
                                 if c["kind"] == "ours" and c["backend"] == b and c["seq_len"] == s and c["shape"] == first["shape"]
                                 and c["nproc"] == first["nproc"] and c["checkpoint_activations"] and global_batch(c) == 1})  # fmt: skip
                if len(values) > 1:
                    repeats.append(f"{seq_label(s)} `{b}` " + "; ".join(num(v) for v in values))
        if repeats:
            out.append("Repeated runs of ours (host-bound lengths spread widely): " + ", ".join(repeats) + ".")
    gb_rows = []
    for _, report in raw:
        for c in ok_cases(report):
            if c["kind"] == "ours" and not c["checkpoint_activations"]:
                gb_rows.append([global_batch(c), f"{c['shape']}, {seq_label(c['seq_len'])}, SP={c['sp']}",
                                num(c["tokens_per_sec_per_gpu"]), pct(c["mfu"]), f"{c['peak_mem_gb']:.1f} GB"])  # fmt: skip
    if gb_rows:
        out += ["\nWithout recomputation, global batch 1 (one optimizer step per sequence, as above) against 4 "
                "(gradient accumulation, as in pretraining), ours, `sdpa`:\n",
                table(["global batch", "setting", "tokens/s/GPU", "MFU", "peak memory"], sorted(gb_rows), 2)]  # fmt: skip
    out.append("\n" + versions_line(reports[0][1]["versions"]) + " " + source(folder))
    return "\n".join(out)


def _cases_of(folder: Path) -> list:
    """Every successful case of a folder's throughput JSON once (merged tables repeat their sources' cases),
    without peer runs at the unpadded vocabulary (``--pad-vocab=1``)."""
    seen, out = set(), []
    for path, report in throughput_reports(folder):
        for c in ok_cases(report):
            key = (c["name"], round(c["tokens_per_sec_per_gpu"], 3))
            if key not in seen and "--pad-vocab=1" not in " ".join(c.get("command") or []):
                seen.add(key)
                out.append({**c, "file": path.stem})
    return out


def _tps(cases: list) -> list:
    return [c["tokens_per_sec_per_gpu"] for c in cases]


def settings_32k(facts: dict) -> str:
    rows = []
    chunk = _cases_of(latest("loss_chunk"))
    keep = _cases_of(latest("keep_attention"))

    def pick(cases, kind, ckpt, keep_attention=False, shape="gpt-1.3b", seq=32768, sp=2):
        return [c for c in cases if c["kind"] == kind and c["checkpoint_activations"] == ckpt and c["shape"] == shape
                and c["seq_len"] == seq and c["sp"] == sp and bool(c.get("checkpoint_keep_attention")) == keep_attention]  # fmt: skip

    def row(label, ours, peer):
        r = statistics.median(_tps(ours)) / statistics.median(_tps(peer))
        rows.append([label, f"{span(_tps(ours))} (MFU {span([c['mfu'] for c in ours], pct)}, "
                     f"{span([c['peak_mem_gb'] for c in ours], lambda x: f'{x:.1f}')} GB)",
                     f"{span(_tps(peer))} ({span([c['peak_mem_gb'] for c in peer], lambda x: f'{x:.1f}')} GB)",
                     ratio(r)])  # fmt: skip
        return r

    row("full recomputation, both", pick(chunk, "ours", True), pick(chunk, "peer", True))
    facts["no_recompute"] = row("no recomputation, both", pick(chunk, "ours", False), pick(chunk, "peer", False))
    facts["keep_vs_peer"] = row("ours `--checkpoint-keep-attention`, peer full recomputation",
                                pick(keep, "ours", True, keep_attention=True), pick(keep, "peer", True))  # fmt: skip
    gain_rows = []
    for shape in sorted({c["shape"] for c in keep}):
        for s in sorted({c["seq_len"] for c in keep if c["shape"] == shape}):
            full, kept = pick(keep, "ours", True, False, shape, s), pick(keep, "ours", True, True, shape, s)
            if full and kept:
                gain = statistics.median(_tps(kept)) / statistics.median(_tps(full)) - 1
                gain_rows.append([shape_name(shape), seq_label(s), span(_tps(full)), span(_tps(kept)), f"+{100 * gain:.0f}%",
                                  f"{max(c['peak_mem_gb'] for c in full):.1f} / {max(c['peak_mem_gb'] for c in kept):.1f}",
                                  span([c["mfu"] for c in kept], pct)])  # fmt: skip
    return "\n".join([
        "## Recomputation choices at 32k\n\nGPT-1.3B at 32k on two H200s, SP=2, ZeRO-3, ours (`sdpa`) against the "
        "peer, runs of the same invocation (ranges over repeats), tokens/s per GPU:\n",
        table(["setting", "ours", "peer", "ours / peer"], rows),
        "\n`--checkpoint-keep-attention` against full recomputation (ours, two H200s, SP=2, tokens/s per GPU): the "
        "attention and its all-to-alls run once, the rest of each layer is recomputed.\n",
        table(["model", "sequence", "full recomputation", "keep-attention", "gain", "peak memory, full / keep (GB)",
               "MFU, keep"], gain_rows, right_from=2),  # fmt: skip
        "\n" + source(latest("loss_chunk"), latest("keep_attention")),
    ])  # fmt: skip


RUNG_ORDER = ("baseline", "+tiled_loss", "+ulysses", "+tiled_mlp", "+offload")
ENDED_BY = {"too_slow": "time (next attempt predicted over the limit)", "timeout": "time (attempt timed out)",
            "oom (device)": "GPU memory", "oom (device, next step)": "GPU memory (second step)",
            "oom (host)": "host memory", "host_killed": "host memory (killed)", None: "search not finished"}  # fmt: skip


def max_seqlen(facts: dict) -> str:
    folder = latest("max_seqlen")
    searches, checks = {}, []
    for path in sorted(folder.glob("max_seqlen_*.json")):
        r = load(path)
        (checks if "--max-seq" in r["command"] else searches.setdefault((r["shape"], r["nproc"]), [])).append(r)
    out = [
        "## Longest trainable sequence\n\n`bench/max_seqlen.py`: the longest sequence that trains, climbing the "
        "ladder baseline -> +tiled loss -> +Ulysses (SP=N) -> +tiled MLP -> +offload (each rung adds to the one "
        "before; ZeRO-3, bf16, full recomputation in every rung). An attempt whose peak plus the Adam moments its "
        "first step creates exceeds the GPU counts as out of memory on the second step. \"GPU memory lasts to\" is "
        "extrapolated from the two longest successes: a projection, not a trained run."
    ]
    facts["max_seqlen"] = {}
    for (shape, nproc), reports in sorted(searches.items()):
        rungs = {g["rung"]: (g, r) for r in reports for g in r["rungs"]}
        rows = []
        for name in [n for n in RUNG_ORDER if n in rungs]:
            g, r = rungs[name]
            at = g.get("at_max") or {}
            proj = g.get("memory_projection_with_first_step_growth") or g.get("memory_projection") or {}
            rows.append([f"`{name}`", ENDED_BY.get(g["limited_by"], g["limited_by"]), num(g["max_seq"]) if g["max_seq"] else "-",
                         f"{at['peak_gb']:.1f} / {at['reserved_gb']:.1f}" if at else "-",
                         f"{at['step_time_s']:.1f} s" if at else "-", f"{at['host_rss_gb']:.1f}" if at else "-",
                         f"~{num(proj['seq'])}" if proj.get("seq") else "-", f"{r['attempt_timeout_s']} s"])  # fmt: skip
        best = max((rungs[n][0] for n in rungs if rungs[n][0]["max_seq"]), key=lambda g: g["max_seq"])
        top = rungs[[n for n in RUNG_ORDER if n in rungs and n != "+offload"][-1]][0]
        proj = top.get("memory_projection_with_first_step_growth") or top.get("memory_projection") or {}
        facts["max_seqlen"][shape] = dict(nproc=nproc, longest=best["max_seq"], rung=best["rung"], projected=proj.get("seq"),
                                          projected_rung=top["rung"], title=f"{shape_name(shape)}, {nproc} x {gpu(reports[0]['device'])}")  # fmt: skip
        out += [f"\n### {facts['max_seqlen'][shape]['title']}\n",
                table(["rung", "ended by", "longest trained", "peak / reserved GB per GPU", "step", "host RSS GB",
                       "GPU memory lasts to", "time limit per attempt"], rows, right_from=2)]  # fmt: skip
    if checks:
        lines = []
        for r in checks:
            for g in r["rungs"]:
                for a in g["attempts"]:
                    state = f"trained, peak {a['peak_gb']:.1f} GB" if a.get("ok") else f"{a.get('outcome')}"
                    lines.append(f"{shape_name(r['shape'])} `{g['rung']}` at {num(a['seq'])}, {r['steps_per_attempt']} step(s): {state}")
        out.append("\nSingle-length checks: " + "; ".join(lines) + ".")
    copies = sorted(folder.glob("offload_copies_*.json"))
    if copies:
        rows = []
        for path in copies:
            r = load(path)
            for x in r["results"]:
                v = x["variants"]
                g = v["gpu_checkpoint"]["ms"]
                rows.append([f"{shape_name(r['shape'])} x {r['layers']} layers", num(x["tokens"]), f"{g:.1f}",
                             f"{v['offload_compute_stream']['ms']:.1f} (+{100 * (v['offload_compute_stream']['ms'] / g - 1):.1f}%)",
                             f"{v['offload_side_stream']['ms']:.1f} (+{100 * (v['offload_side_stream']['ms'] / g - 1):.1f}%)"])  # fmt: skip
        out += ["\n`--checkpoint-in-cpu` copies (`bench/offload_copies.py`, one H200, forward + backward of a layer "
                "stack, median ms): checkpoints on the GPU, offloaded with copies on the compute stream, and offloaded "
                "on a side stream with a one-layer prefetch (what the flag does):\n",
                table(["layers", "tokens per GPU", "GPU checkpoints", "offload, compute stream", "offload, side stream"],
                      rows)]  # fmt: skip
    out.append("\n" + source(folder))
    return "\n".join(out)


def _variant_cell(v: dict) -> str:
    return f"{v['ms']:.1f} ({v['peak_above_inputs_gb']:.2f} GB)"


def tiled_loss(facts: dict) -> str:
    folder = latest("tiled_loss")
    names = {"untiled": "untiled (fp32 logits)", "tiled_eager": "tiled, eager fp32", "tiled_fused": "tiled, Triton (default)",
             "tiled_fused_add": "tiled, Triton, dW by product + add", "liger": "liger-kernel"}  # fmt: skip
    rows = []
    for path in sorted(folder.glob("tiled_loss_*.json")):
        for x in load(path)["results"]:
            v = x["variants"]
            rows.append([num(x["vocab"]), num(x["tokens"]), *[_variant_cell(v[k]) if k in v else "-" for k in names]])
    chunks = {}
    for path in sorted(folder.glob("chunk_*.json")):
        for x in load(path)["results"]:
            chunks.setdefault((x["vocab"], x["chunk_logits"]), {})[x["tokens"]] = x["variants"]["tiled_fused"]
    chunk_rows = [[num(vocab), f"2^{c.bit_length() - 1}", *[f"{t[k]['ms']:.1f}" for k in sorted(t)],
                   f"{t[min(t)]['peak_above_inputs_gb']:.2f} GB"] for (vocab, c), t in sorted(chunks.items())]  # fmt: skip
    token_cols = sorted({k for t in chunks.values() for k in t})
    e2e = {}
    for c in _cases_of(folder):
        e2e.setdefault(re.sub(r"_r\d+$", "", c["file"]), []).append(c)
    labels = {"eager_loss": "eager fp32 chunks (the code before the kernels)", "fused_loss": "Triton kernels (default)",
              "nocontig": "Triton kernels, ZeRO-3 `contiguous_gradients: false`"}  # fmt: skip
    e2e_rows = [[labels.get(k, k), "; ".join(num(t) for t in _tps(v)), f"{max(c['peak_mem_gb'] for c in v):.2f} GB"]
                for k, v in sorted(e2e.items())]  # fmt: skip
    return "\n".join([
        "## Tiled loss\n\n`bench/tiled_loss.py`, one H200: output layer + cross-entropy, forward + backward of the mean "
        "loss, hidden 2048, median ms (memory above the inputs):\n",
        table(["vocabulary", "tokens", *names.values()], rows),
        "\nA vocabulary that is not a multiple of 128 (50,257, GPT-2's, unpadded) misaligns every output-layer GEMM: "
        "the trainer pads to a multiple of `--make-vocab-size-divisible-by` (128).",
        "\nLogits per chunk on the Triton path (ms at " + " / ".join(num(t) for t in token_cols) + " tokens, extra "
        "memory at the fewer): the default is 2^28 bf16 logits, the 512 MiB the eager path's 2^26 fp32 logits take.\n",
        table(["vocabulary", "logits per chunk", *[f"{num(t)} tokens" for t in token_cols], "extra memory"], chunk_rows),
        "\nEnd to end, GPT-1.3B at 32k, two H200s, SP=2, ZeRO-3, no recomputation, tokens/s per GPU of each run:\n",
        table(["loss", "tokens/s/GPU", "peak memory"], e2e_rows),
        "\n" + source(folder),
    ])  # fmt: skip


def _runs_table(folder: Path, label, title: str) -> str:
    """Ours (and the peer) per row label, sequence and recomputation; each cell every run's tokens/s per GPU."""
    cells, cols = {}, set()
    for c in _cases_of(folder):
        row = label(c)
        if row is None:
            continue
        col = (c["seq_len"], c["checkpoint_activations"])
        cols.add(col)
        cells.setdefault((row, c["kind"]), {}).setdefault(col, []).append(c["tokens_per_sec_per_gpu"])
    cols = sorted(cols, key=lambda sc: (sc[0], not sc[1]))
    rows = []
    for row, kind in sorted(cells, key=lambda rk: list(cells).index(rk)):
        r = cells[(row, kind)]
        rows.append([row if kind == "ours" else f"{row}: peer"] + ["; ".join(num(t) for t in r.get(c, [])) or "-" for c in cols])
    head = [f"{seq_label(s)}, {'full recomputation' if ck else 'no recomputation'}" for s, ck in cols]
    return "\n".join([title, table(["", *head], rows), "\n" + source(folder)])


def switches(facts: dict) -> str:
    """Single measurements behind today's defaults."""
    parts = ["## Measurements behind the defaults\n\nGPT-1.3B on two H200s, SP=2, ZeRO-3, `sdpa`, tokens/s per GPU of "
             "every run (runs in one cell come from the same invocation or alternate with the other rows')."]
    parts.append(_runs_table(
        latest("zero3_leaf_layers"),
        lambda c: "leaf layers (`--zero3-leaf-layers`, the default)" if c.get("zero3_leaf_layers") or c["file"].startswith("leaf")
        else "one gather per linear or norm",
        "\n### ZeRO-3 leaf layers\n",
    ))  # fmt: skip
    parts.append(_runs_table(
        latest("ulysses_exchange_overlap"),
        lambda c: {"deepspeed": "DeepSpeed's `DistributedAttention` (default)", "fused": "`--ulysses-exchange fused`",
                   "overlap": "`--ulysses-exchange overlap`"}[c["ulysses_exchange"]]
        + (", 4 head chunks" if c["file"].startswith("overlap4") else ""),
        "\n### Ulysses exchanges\n",
    ))  # fmt: skip
    parts.append(_runs_table(
        latest("memory_efficient_linear"),
        lambda c: None if c["file"].startswith("peer") else
        "`memory_efficient_linear: false` (plain `F.linear`, the default)" if c["file"].startswith("mel_false")
        else "`memory_efficient_linear: true` (DeepSpeed's linear)",
        "\n### ZeRO-3 linear\n",
    ))  # fmt: skip
    parts.append(_runs_table(
        latest("zero3_settings"),
        lambda c: {"prefetch": "prefetch bucket 5e8, max live 3e9 (the default)",
                   "persist": "every parameter resident (persistence threshold 1e9)",
                   "zero1": "ZeRO-1 (reference)"}[c["file"].split("_sp2_")[1].split("_")[0]],
        "\n### ZeRO-3 prefetch (before leaf layers existed)\n",
    ))  # fmt: skip
    return "\n".join(parts)


def profile(facts: dict) -> str:
    folder = latest("keep_attention")
    path = next(folder.glob("profile_*.json"))
    p = load(path)
    cats = p["categories_ms_per_step"]
    rows = [[k, f"{v:.0f}"] for k, v in sorted(cats.items(), key=lambda kv: -kv[1])]
    rows += [["compute kernels busy", f"{p['compute_busy_ms_per_step']:.0f}"],
             ["communication not hidden by compute", f"{p['exposed_communication_ms_per_step']:.0f}"],
             ["step, profiled (slower than unprofiled)", f"{p['step_wall_ms']:.0f}"]]  # fmt: skip
    return "\n".join([
        "## Where a step goes\n\n`bench/profile_step.py`, GPT-1.3B at 32k, two H200s, SP=2, ZeRO-3, no recomputation, "
        "rank 0, ms per step by kernel category (communication kernels include their time waiting for the other rank):\n",
        table(["", "ms"], rows), f"\n{link(path)} (top kernels with the op that launched each). " + source(folder),
    ])  # fmt: skip


def gpt30b(facts: dict) -> str:
    folder = latest("gpt30b_8layers")
    path = next(folder.glob("*.json"))
    r = load(path)
    it = r["iterations"][2:]
    s = r["settings"]
    row = [f"{s['num_layers']} x {s['hidden']}, {s['heads']} heads, seq {num(s['seq_len'])}, SP={s['sp']}",
           span([i["step_time_s"] * 1e3 for i in it]), span([i["tokens_per_sec"] for i in it]),
           span([i["tflops"] for i in it]), span([i["mfu"] for i in it], pct), f"{max(i['mem_gb'] for i in it):.1f} GB"]  # fmt: skip
    facts["gpt30b"] = dict(tflops=r["summary"]["median_tflops_per_gpu_steps_3_6"])
    return "\n".join([
        "## The GPT-30B script\n\n`examples_deepspeed/sequence_parallel/ds_pretrain_gpt_30B_seq_parallel.sh` on two "
        f"H200s with {s['num_layers']} of its 64 layers (the per-layer shapes of the 30B model; 64 layers need about "
        "480 GB of ZeRO-3 model states), ZeRO-3, bf16, the embedded corpus, steps 3 onwards. Megatron-DeepSpeed's "
        "published GPT-30B table gives 132-142 TFLOPS per A100 by the same formula.\n",
        table(["shape", "step (ms)", "tokens/s (job)", "TFLOPS/GPU (Megatron-DeepSpeed formula)", "MFU", "peak memory"], [row]),
        "\n" + source(folder),
    ])  # fmt: skip


def checks(facts: dict) -> str:
    folder = latest("gpu_core")
    rows = []
    for path in sorted(folder.glob("*.jsonl")):
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        cmd = path.with_suffix(".cmd").read_text()
        sp = re.search(r"--ds-sequence-parallel-size (\d+)", cmd).group(1)
        gpus = path.name.split("_")[0].replace("x2", "")
        n = re.search(r"--nproc_per_node (\d+)", cmd).group(1)
        rows.append([f"{n} x {gpus.upper()}, SP={sp}", f"{recs[0]['lm_loss']:.4f} -> {recs[-1]['lm_loss']:.4f}",
                     num(statistics.median(r["tokens_per_sec_per_gpu"] for r in recs[3:])),
                     f"{max(r['mem_gb'] for r in recs):.1f} GB"])  # fmt: skip
    parity = latest("refactor_parity")
    summary = load(parity / "summary.json")
    prow = [[re.sub(r"^(before|after)_(.*)_r(\d+)$", r"\1, `\2`, run \3", name), f"{r['lm_loss'][0]:.6f}", f"{r['lm_loss'][-1]:.6f}", num(r["tokens_per_sec_median_from_step3"]),
             pct(r["mfu_median_from_step3"]), f"{r['peak_mem_gb']:.2f} GB"] for name, r in summary["runs"].items()]  # fmt: skip
    return "\n".join([
        "## Checks on GPUs\n\nGPT-1.3B at 8k, bf16, ZeRO-3, mock data, 10 steps (`bench/gpu_core_run.sh`): SP=1 and SP=2 "
        "see the same data and give the same per-step loss.\n",
        table(["run", "loss, step 1 -> 10", "tokens/s per GPU (median, steps 4-10)", "peak memory"], rows),
        "\n" + source(folder),
        "\nGPT-1.3B at 32k, one H200, SP=1, ZeRO-3, full recomputation: the code before and after the restructuring "
        "into config sections, `megatron/kernels/` and `megatron/parallelize.py`, alternated.\n",
        table(["run", "first loss", "loss at step 8", "tokens/s (median from step 3)", "MFU", "peak memory"], prow),
        "\n" + source(parity),
    ])  # fmt: skip


def pointwise(facts: dict) -> str:
    folder = latest("pointwise_fusion")
    rows = []
    for path in sorted(folder.glob("h200.json")) or sorted(folder.glob("*.json"))[-1:]:
        for x in load(path)["results"]:
            e, c = x["variants"]["eager"], x["variants"]["compiled"]
            rows.append([x["norm"], num(x["tokens"]), f"{e['ms']:.3f} / {e['device_ms']:.3f}", f"{c['ms']:.3f} / {c['device_ms']:.3f}",
                         f"{x['kernel_saving_ms_per_call']:.3f}"])  # fmt: skip
    return "\n".join([
        "## `torch.compile` of residual add + norm\n\n`bench/pointwise_fusion.py`, one H200, bf16, hidden 2048, "
        "forward + backward, ms per call (wall / kernels). Not adopted: the kernels saved are under 1% of a step, "
        "and each compiled call costs the host more.\n",
        table(["norm", "rows", "eager", "compiled", "kernel ms saved"], rows), "\n" + source(folder),
    ])  # fmt: skip


def data_pipeline(facts: dict) -> str:
    folder = latest("data_pipeline")
    pre = load(folder / "preprocess_data.json")
    rows = [[x["tokenizer"], x["workers"], f"{x['mb_per_s']:.1f}", num(x["tokens_per_s"]), f"{x['mb_per_cpu_second']:.1f}"]
            for x in pre["results"]]  # fmt: skip
    idx = load(folder / "build_indices.json")
    irows = [[num(x["seq_length"]), num(x["num_samples"]), f"{x['build_and_save_s']:.2f} s", f"{x['load_cached_s'] * 1e3:.0f} ms",
              f"{x['getitem_ms_repeat']:.3f} ms"] for x in idx["results"]]  # fmt: skip
    return "\n".join([
        f"## Data pipeline (CPU)\n\n`tools/preprocess_data.py` on {pre['input']['size_mb'] if 'size_mb' in pre['input'] else 100} MB "
        "of JSON Lines (`bench/preprocess_data.py`; measured on 2 CPU cores shared with other jobs, so the 2-worker "
        "figures are lower bounds):\n",
        table(["tokenizer", "workers", "MB/s", "tokens/s", "MB per CPU-second"], rows, right_from=1),
        f"\nSample indices for {num(idx['results'][0]['tokens'])} tokens (`bench/build_indices.py`, vectorized numpy):\n",
        table(["sequence", "samples", "build + save", "load cached", "read one sample"], irows),
        "\n" + source(folder),
    ])  # fmt: skip


def _folder_cases(folder: Path) -> list:
    """Every case of every JSON in ``folder`` (and one level below), each with the name of its file."""
    cases = []
    for path in sorted(folder.glob("*.json")) + sorted(folder.glob("*/*.json")):
        for c in load(path).get("cases", []):
            cases.append(dict(c, file=path.relative_to(folder).as_posix()))
    return cases


def _tokens_cell(c: dict) -> str:
    if c.get("outcome") != "ok":
        return "failed"
    return f"{num(c['tokens_per_sec_per_gpu'])} ({pct(c['mfu'])}, {c['peak_mem_gb']:.1f} GB)"


def _step_ms_cell(c: dict) -> str:
    return f"{1e3 * c['step_time_s']:.1f}" if c.get("step_time_s") else "-"


def _loss_cell(c: dict) -> str:
    return f"{c['final_loss']:.3f}" if c.get("final_loss") else "-"


def _peer_setting(c: dict) -> str:
    """How a peer case ran: its activation-checkpoint mode (torchtitan, ArcticTraining), hf_alst's recomputation."""
    meta = c.get("peer") or {}
    if c.get("peer_name") in ("torchtitan", "arctic"):
        mode = meta.get("ac_mode") or (meta.get("settings") or {}).get("ac_mode")
        return f"AC {mode or '?'}"
    return "full recomputation" if c.get("checkpoint_activations") else "no recomputation"


PEER_TITLES = {"hf_alst": "HF + DeepSpeed ALST", "arctic": "ArcticTraining", "torchtitan": "torchtitan"}


def planner_vs_peers(facts: dict) -> str:
    """Ours with its defaults (the recomputation planner) against each peer at the peer's fastest setting."""
    folder = latest("all_peers")
    cases = _folder_cases(folder)
    ok = [c for c in cases if c.get("outcome") == "ok"]
    peers = sorted({c["peer_name"] for c in cases if c["kind"] == "peer"})
    rows, facts["planner_peers"] = [], []
    for shape, seq in sorted({(c["shape"], c["seq_len"]) for c in ok}):
        here = [c for c in ok if (c["shape"], c["seq_len"]) == (shape, seq)]
        ours = max((c for c in here if c["kind"] == "ours"), key=lambda c: c["tokens_per_sec_per_gpu"], default=None)
        if ours is None:
            continue
        row = [shape_name(shape), seq_label(seq), _tokens_cell(ours)]
        for name in peers:
            runs = [c for c in here if c["kind"] == "peer" and c["peer_name"] == name]
            best = max(runs, key=lambda c: c["tokens_per_sec_per_gpu"], default=None)
            if best is None:
                oom = [c for c in cases if (c["shape"], c["seq_len"], c.get("peer_name")) == (shape, seq, name)
                       and c.get("outcome") == "oom"]  # fmt: skip
                row.append(f"out of memory ({_peer_setting(oom[0])})" if oom else "not run")
                continue
            r = ours["tokens_per_sec_per_gpu"] / best["tokens_per_sec_per_gpu"]
            row.append(f"{_tokens_cell(best)}, {_peer_setting(best)}; ours {ratio(r)}")
            facts["planner_peers"].append(dict(shape=shape, seq=seq, peer=name, ratio=r))
        rows.append(row)
    return "\n".join([
        "## Ours with its defaults against torchtitan, ArcticTraining and HF + DeepSpeed ALST, 1 x H200\n\n"
        "`bench/throughput.py`, one H200, SP=1, bf16, micro batch 1, each case a fresh process, ours and the peers of "
        "a length back to back. Ours with its defaults: `--recompute auto` (each length's plan is in the folder's "
        "README), ZeRO-3, tiled loss, our kernels; tiled MLP at 128k (every system). Each peer at its "
        "fastest setting that fits: torchtitan tries activation checkpointing none, op, full (FSDP2 off on one GPU, "
        "`torch.compile` on); ArcticTraining (its own trainer and ALST recipe) none, full, CPU-offloaded; at 128k "
        "both start from the mode that fit there before (full; offload). HF + DeepSpeed ALST with full "
        "recomputation and, at 8k, also without (the faster is shown). Tokens/s per GPU (MFU, peak memory):\n",
        table(["shape", "length", "ours", *(PEER_TITLES.get(p, p) for p in peers)], rows, right_from=9),
        "\n" + source(folder),
    ])  # fmt: skip


def recompute_planner(facts: dict) -> str:
    """``--recompute auto`` against full recomputation, per length."""
    folder = latest("recompute_planner")
    cases = _folder_cases(folder)
    rows, gains = [], {}
    for seq in sorted({c["seq_len"] for c in cases}):
        auto = next(c for c in cases if c["seq_len"] == seq and c["file"].startswith("auto"))
        full = next(c for c in cases if c["seq_len"] == seq and c["file"].startswith("full"))
        gains[seq] = auto["tokens_per_sec_per_gpu"] / full["tokens_per_sec_per_gpu"]
        rows.append([seq_label(seq), _tokens_cell(full), _tokens_cell(auto), ratio(gains[seq]),
                     f"{full['final_loss']:.4f} / {auto['final_loss']:.4f}"])  # fmt: skip
    facts["planner"] = gains
    return "\n".join([
        "## Recomputation planner\n\nGPT-1.3B, one H200, SP=1, ZeRO-3, bf16, our kernels, tiled MLP and loss: "
        "`--recompute auto` (each layer's policy planned from the free memory; the plans are in the folder's README) "
        "against `--checkpoint-activations` (full recomputation). Tokens/s (MFU, peak memory):\n",
        table(["length", "full recomputation", "auto", "auto / full", "last loss, full / auto"], rows),
        "\n" + source(folder),
    ])  # fmt: skip


def short_sequence_zero(facts: dict) -> str:
    """ZeRO stages and DeepCompile at 8k on one GPU."""
    folder = latest("short_sequence_zero")
    rows = []
    for c in sorted(_folder_cases(folder), key=lambda c: (c["file"].split("/")[-1], c["file"])):
        setting = c["file"].split("/")[-1].rsplit("_r", 1)[0].replace("zero", "ZeRO-").replace("_deepcompile", " + DeepCompile")
        rows.append([setting, c["file"].split("/")[0], _tokens_cell(c)])
    return "\n".join([
        "## Short sequences: ZeRO stage and DeepCompile\n\nGPT-1.3B at 8k, one H200, SP=1, bf16, no "
        "recomputation, our kernels. Tokens/s (MFU, peak memory) of each run; why DeepCompile fails with this model: "
        "the folder's README.\n",
        table(["setting", "run", "tokens/s"], rows),
        "\n" + source(folder),
    ])  # fmt: skip


def fused_swiglu(facts: dict) -> str:
    """SwiGLU's gate: eager against the fused kernels, alone and end to end."""
    folder = latest("fused_swiglu")
    micro = load(folder / "swiglu.json")
    rows = [[x["impl"], num(x["rows"]), f"{x['fwd_ms']:.3f}", f"{x['fwd_bwd_ms']:.3f}", f"{x['saved_bytes'] / 2**20:.0f} MiB",
             f"{x['dy_rel_err']:.4f}"] for x in micro["results"]]  # fmt: skip
    e2e = []
    for c in sorted(_folder_cases(folder), key=lambda c: (c["seq_len"], c["file"])):  # run1/, run2/: the two recipes
        name = c["file"].rsplit("_", 1)[-1].removesuffix(".json")
        e2e.append([seq_label(c["seq_len"]), f"`{c['file'].split('/')[0]}.sh`", name, _tokens_cell(c),
                    _loss_cell(c)])  # fmt: skip
    return "\n".join([
        "## Fused SwiGLU\n\n`bench/swiglu.py`, one H200, bf16, y [rows, 2 x 8,192] -> silu(gate) * up, median ms, the "
        "memory autograd keeps for the backward, and dy's error against fp64 (norm-relative):\n",
        table(["gate", "rows", "forward", "forward + backward", "kept", "dy error"], rows),
        "\nLlama-1B, one H200, SP=1, ours with its defaults (`--recompute auto`; `fused`/`defaults`: the fused gate, "
        "`eager`: `--no-fused-swiglu`) and torchtitan at its fastest setting, one JSON per case (the recipe that "
        "ran it, each run on its own machine), tokens/s (MFU, peak memory):\n",
        table(["length", "recipe", "case", "tokens/s", "last loss"], e2e),
        "\n" + source(folder),
    ])  # fmt: skip


def _attention_tflops(path: Path, impl: str = "triton") -> dict:
    """seq -> forward + backward TFLOP/s of one impl in a bench/attention.py JSON."""
    return {r["seq"]: r["fwd_bwd_tflops"] for r in load(path)["results"] if r["impl"] == impl and "fwd_bwd_tflops" in r}


def attention_launch_order(facts: dict) -> str:
    """The kernels' launch order and the head-dim-64 backward's query block: kernels alone, in a step, end to end."""
    folder = latest("attention_launch_order")
    run = folder / "run2"
    variants = {  # table -> rows of (label, JSON file stem, impl)
        "gqa": [("the kernels before (64, one head after another)", "hd64_gqa_old", "triton"),
                ("64, one head after another", "hd64_gqa_bm64_perhead", "triton"),
                ("64, every head first", "hd64_gqa_bm64_interleaved", "triton"),
                ("128, one head after another", "hd64_gqa_bm128_perhead", "triton"),
                ("128, every head first", "hd64_gqa_bm128_interleaved", "triton"),
                ("SDPA cuDNN (K/V repeated)", "hd64_gqa_bm128_interleaved", "sdpa_cudnn")],
        "mha": [("64, one head after another", "hd64_mha_bm64_perhead", "triton"),
                ("128, one head after another", "hd64_mha_bm128_perhead", "triton"),
                ("128, every head first", "hd64_mha_bm128_interleaved", "triton"),
                ("SDPA cuDNN", "hd64_mha_bm128_interleaved", "sdpa_cudnn")],
        "hd128": [("Triton kernels, one head after another (kept)", "hd128_old", "triton_plain"),
                  ("Triton kernels, every head first", "hd128_new", "triton_plain"),
                  ("default (Gluon forward, fused backward, one head after another)", "hd128_old", "triton"),
                  ("SDPA cuDNN", "hd128_new", "sdpa_cudnn")]}
    tables = {}
    for key, rows_spec in variants.items():
        rows, seqs = [], None
        for label, stem, impl in rows_spec:
            tf = _attention_tflops(run / f"attention_{stem}.json", impl)
            seqs = seqs or sorted(tf)
            rows.append([label, *(f"{tf[q]:.0f}" for q in seqs)])
        tables[key] = table(["", *(seq_label(q) for q in seqs)], rows)
    prof = {name: load(folder / "run3" / f"profile_8k_{name}.json") for name in ("old", "new")}
    prof_rows = []
    for kernel in ("_attn_bwd_kernel", "_fwd_kernel"):
        ms = {n: next(k["ms"] for k in p["top_kernels_ms_per_step"] if k["kernel"] == kernel) for n, p in prof.items()}
        prof_rows.append([f"`{kernel}`", f"{ms['old']:.1f}", f"{ms['new']:.1f}"])
    prof_rows.append(["all kernels", *(f"{prof[n]['kernel_ms_per_step']:.1f}" for n in ("old", "new"))])
    prof_rows.append(["step, profiled", *(f"{prof[n]['step_wall_ms']:.1f}" for n in ("old", "new"))])
    e2e = []
    for c in sorted(_folder_cases(folder), key=lambda c: (c["seq_len"], c["file"])):
        if c["file"].startswith("run1/"):  # a first version of the kernels (the folder's README)
            continue
        name = c["file"].split("/")[-1].removesuffix(".json").rsplit("_", 1)[-1]
        e2e.append([seq_label(c["seq_len"]), f"`{c['file'].split('/')[0]}.sh`", name, _tokens_cell(c),
                    _loss_cell(c)])  # fmt: skip
    return "\n".join([
        "## Attention launch order and the head-dim-64 backward\n\n`bench/attention.py`, one H200, causal, bf16, "
        "forward + backward TFLOP/s, batch 2 at 4k and 1 above, all from one run of `run2.sh`. The fused Gluon "
        "backward's queries per step (64 or 128) and launch order (every head's heaviest key block first, or one "
        "head's blocks after another's). The default at head dim 64 is 128 queries, every head first where that "
        "balances the SMs at least 3% better by the per-program work (here 4k and 8k) and one head after another "
        "elsewhere (`interleaved_order`); at head dim 128, 64 queries one head after another. Llama-1B's attention, "
        "32 heads of 64, 8 KV heads:\n",
        tables["gqa"],
        "\nHead dim 64, 16 heads (GPT-2's shape of head):\n",
        tables["mha"],
        "\nHead dim 128, 16 heads: the Triton forward and split backward (the kernels off Hopper and with a sliding "
        "window) in either launch order, and the default kernels:\n",
        tables["hd128"],
        "\nIn the model (`bench/profile_step.py`, Llama-1B at 8k, one profiled step, `run3.sh`), ms per step, the "
        "kernels before and now:\n",
        table(["", "before", "now"], prof_rows),
        "\nEnd to end, Llama-1B, one H200, SP=1, ours (`new`: 128 queries, every head first at both lengths; `old`: the "
        "kernels before; `perhead`: 128 queries one head after another) and torchtitan at its fastest setting, "
        "tokens/s (MFU, peak memory):\n",
        table(["length", "recipe", "case", "tokens/s", "last loss"], e2e),
        "\n" + source(folder),
    ])  # fmt: skip


def lean_optimizer_step(facts: dict) -> str:
    """The lean ZeRO step (per-tensor fp32 norms, unscale/clip in the fused AdamW) against DeepSpeed's own."""
    folder = latest("lean_optimizer_step")
    run = folder / "run3"  # the final version; run1/ and run2/ measured a first one (the folder's README)
    prof = {(z, n): load(run / f"profile_8k_zero{z}_{n}.json") for z in (3, 1) for n in ("deepspeed", "lean")}
    cols = [(z, n) for z in (3, 1) for n in ("deepspeed", "lean")]
    prof_rows = [[cat, *(f"{prof[c]['categories_ms_per_step'].get(cat, 0.0):.1f}" for c in cols)]
                 for cat in ("matmul", "attention", "elementwise/norm/other", "copies")]  # fmt: skip
    prof_rows.append(["all kernels", *(f"{prof[c]['kernel_ms_per_step']:.1f}" for c in cols)])
    e2e = []
    for c in sorted(_folder_cases(folder), key=lambda c: c["file"]):
        if not c["file"].startswith("run3/"):
            continue
        case = c["file"].split("/")[-1].removesuffix(".json").split("_", 3)[-1]  # e.g. zero3_lean_a
        e2e.append([shape_name(c["shape"]), seq_label(c["seq_len"]), case.replace("_", " ").replace("zero", "ZeRO-"),
                    _tokens_cell(c), _step_ms_cell(c), _loss_cell(c)])  # fmt: skip
    return "\n".join([
        "## Optimizer step\n\nDeepSpeed's ZeRO step (`deepspeed`, `--no-lean-optimizer-step`) against the default "
        "(`lean`: DeepSpeed's norm gets per-tensor norms accumulated in fp32 instead of an fp64 copy of the "
        "gradients, and the unscale/clip runs inside torch's fused AdamW instead of a separate multiply). Llama-1B at "
        "8k, one H200, SP=1, ours with its defaults, all from one run of `run3.sh`. Profiled steps "
        "(`bench/profile_step.py`, two after three), GPU ms per step by kernel category:\n",
        table(["", "ZeRO-3, deepspeed", "ZeRO-3, lean", "ZeRO-1, deepspeed", "ZeRO-1, lean"], prof_rows),
        "\nEnd to end (the cases alternating), tokens/s (MFU, peak memory), the median step:\n",
        table(["shape", "length", "case", "tokens/s", "step ms", "last loss"], e2e),
        "\n" + source(folder),
    ])  # fmt: skip


def host_idle(facts: dict) -> str:
    """GPU idle time of a short-sequence step by host phase, before and after the host-side changes; end to end."""
    folder = latest("host_idle")
    prof = {(z, r): load(folder / r / f"profile_8k_zero{z}.json") for z in (1, 3) for r in ("run1", "run2")}
    cols = [(z, r) for z in (1, 3) for r in ("run1", "run2")]
    phases = {"batches.of_step": "the next batches (`batches.of_step`)", "step.count_tokens": "their token count",
              "norm": "DeepSpeed's gradient norm", "engine.forward": "forward", "engine.optimizer.step": "the rest of "
              "DeepSpeed's step", "(none)": "Python outside any phase"}  # fmt: skip

    def phase_ms(p: dict, key: str) -> float:
        idle = p["idle_by_phase_ms_per_step"]
        if key == "norm":
            return idle.get("engine.optimizer.scaled_global_norm", 0.0) + idle.get("engine.optimizer._get_norm_groups", 0.0)
        if key == "step.count_tokens":  # its name in run1's tree
            return idle.get(key, 0.0) + idle.get("step._global_token_count", 0.0)
        return idle.get(key, 0.0)

    rows = [["step, profiled", *(f"{prof[c]['step_wall_ms']:.1f}" for c in cols)],
            ["all kernels", *(f"{prof[c]['kernel_ms_per_step']:.1f}" for c in cols)],
            ["GPU idle between kernels", *(f"{sum(prof[c]['idle_by_phase_ms_per_step'].values()):.1f}" for c in cols)]]
    rows += [[f"... host in {label}", *(f"{phase_ms(prof[c], key):.1f}" for c in cols)] for key, label in phases.items()]
    e2e = []
    for c in sorted(_folder_cases(folder), key=lambda c: (c["seq_len"], c["file"])):
        if c["file"].startswith("run1/"):  # run1's own end-to-end cases did not start (the folder's README)
            if c.get("peer_name") != "torchtitan":
                continue
        stem = c["file"].split("/")[-1].removesuffix(".json")
        case = "torchtitan 0.2.2, " + _peer_setting(c) if c.get("peer_name") else stem.split("_", 3)[-1]
        e2e.append([seq_label(c["seq_len"]), f"`{c['file'].split('/')[0]}.sh`",
                    case.replace("_", " ").replace("zero", "ZeRO-") if not c.get("peer_name") else case,
                    _tokens_cell(c), _step_ms_cell(c), _loss_cell(c)])  # fmt: skip
    return "\n".join([
        "## Host idle at short sequences\n\nWhere the GPU waits on the host, Llama-1B at 8k on one H200, SP=1, ours "
        "with its defaults: `bench/profile_step.py` (two steps after three) splits each gap between GPU kernels by the "
        "trainer phase the host was in meanwhile (`idle_by_phase_ms_per_step`; the profiler slows the host, so the "
        "profiled steps are longer than real ones). `run1` before, `run2` after the next step's batches are prepared "
        "(and their tokens counted) while the device runs the step and DeepSpeed's norm is given one tensor; ms per "
        "step:\n",
        table(["", "ZeRO-1, run1", "ZeRO-1, run2", "ZeRO-3, run1", "ZeRO-3, run2"], rows),
        "\nEnd to end, tokens/s (MFU, peak memory), the median step: `new` is this tree, `a6cc256` the tree before "
        "these changes and before the lean step dropped DeepSpeed's NaN/inf scan under ZeRO-1/2, the cases "
        "alternating in one call:\n",
        table(["length", "recipe", "case", "tokens/s", "step ms", "last loss"], e2e),
        "\n" + source(folder),
    ])  # fmt: skip


def defaults_vs_torchtitan(facts: dict) -> str:
    """Ours with its defaults (ZeRO-1) against torchtitan at its fastest setting, one invocation per shape and length."""
    folder = latest("defaults_vs_torchtitan")
    rows = []
    for path in sorted(folder.glob("throughput_*.json"), key=lambda p: (p.name.split("_")[1], int(p.stem.rsplit("_", 1)[-1]))):
        cases = load(path)["cases"]
        ours = next(c for c in cases if c.get("kind") == "ours")
        peer = next(c for c in cases if c.get("peer_name") == "torchtitan")
        ratio = ours["tokens_per_sec_per_gpu"] / peer["tokens_per_sec_per_gpu"]
        facts.setdefault("torchtitan_now", []).append(dict(shape=ours["shape"], seq=ours["seq_len"], ratio=ratio))
        rows.append([shape_name(ours["shape"]), seq_label(ours["seq_len"]), _tokens_cell(ours),
                     f"{_tokens_cell(peer)}, {_peer_setting(peer)}", f"{ratio:.2f}x"])  # fmt: skip
    return "\n".join([
        "## Ours with its defaults against torchtitan, 1 x H200, 2026-12-04\n\n`bench/throughput.py`, one H200, "
        "SP=1, bf16, micro batch 1, ten steps (median after three), ours and torchtitan 0.2.2 of a shape and length "
        "back to back in one invocation. Ours with its defaults: ZeRO-1, `--recompute auto`, our kernels, tiled loss, fused SwiGLU, the lean optimizer step. torchtitan at its fastest "
        "setting that fits (activation checkpointing none here, `torch.compile` on). Tokens/s per GPU (MFU, peak "
        "memory):\n",
        table(["shape", "length", "ours", "torchtitan", "ours / torchtitan"], rows),
        "\n" + source(folder),
    ])  # fmt: skip


SECTIONS = (attention_kernels, packed_documents, sliding_window, throughput_vs_peer, defaults_vs_torchtitan,
            planner_vs_peers,
            recompute_planner, fused_swiglu, attention_launch_order, lean_optimizer_step, host_idle,
            short_sequence_zero, settings_32k, max_seqlen, tiled_loss, switches, profile, gpt30b, checks, pointwise,
            data_pipeline)  # fmt: skip


# ---------------------------------------------------------------------------------------------- the two outputs


def anchor(title: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def build() -> tuple:
    """(docs/results.md, the README's headline block)."""
    facts: dict = {}
    body = [s(facts) for s in SECTIONS]
    toc = [f"- [{b.splitlines()[0][3:]}](#{anchor(b.splitlines()[0][3:])})" for b in body]
    page = "\n\n".join([
        "# Results\n\nGenerated by `python bench/results.py` from the newest folder of each measurement under "
        "[`benchmarks/results/`](../benchmarks/results/) (`<date>_<topic>_<gpu>/`: the JSON, the command that wrote "
        "it, logs). Do not edit by hand; `tests/bench/test_results.py` checks that this page is what the JSON gives. "
        "How each benchmark runs and what its fields mean: [benchmarks.md](benchmarks.md).",
        "\n".join(toc), *body,
    ]) + "\n"  # fmt: skip
    a, docs, mx = facts["attention"], facts["documents"], facts["max_seqlen"]
    gpt_sp2 = next(p for p in facts["peer"] if p["shape"] == "gpt-1.3b" and p["sp"] > 1)
    rows = [
        ["Attention kernel, forward + backward (causal bf16, head dim 128, 1 H200)",
         f"{span(a['vs_cudnn'], lambda x: f'{100 * x:.0f}')}% of cuDNN, {span(a['vs_fa2'], ratio)} SDPA FlashAttention-2, "
         f"{seq_label(a['seqs'][0])}-{seq_label(a['seqs'][-1])}", "[kernels](docs/results.md#attention-kernels)"],
        [f"Packed documents: {num(docs['doc_len'])}-token documents at {seq_label(docs['seq'])}, 1 H200",
         f"{docs['speedup']:.0f}x SDPA with a dense mask", "[documents](docs/results.md#packed-documents)"],
    ]  # fmt: skip
    for p in facts["peer"]:
        cells = ", ".join(f"{ratio(r)} at {seq_label(s)}" for s, r in sorted(p["ratios"].items()))
        rows.append([f"Tokens/s against HF + DeepSpeed ALST: {p['title']}", cells,
                     f"[against the peer](docs/results.md#{anchor(p['title'])})"])  # fmt: skip
    rows.append([f"Best MFU, {gpt_sp2['title']}, full recomputation", pct(gpt_sp2["best_mfu"]),
                 f"[against the peer](docs/results.md#{anchor(gpt_sp2['title'])})"])  # fmt: skip
    rows.append(["Recomputation planner (`--recompute auto`) against full recomputation: GPT-1.3B, 1 x H200",
                 ", ".join(f"{ratio(g)} at {seq_label(q)}" for q, g in sorted(facts["planner"].items())),
                 "[planner](docs/results.md#recomputation-planner)"])  # fmt: skip
    planner_title = "Ours with its defaults against torchtitan, ArcticTraining and HF + DeepSpeed ALST, 1 x H200"
    for name in sorted({p["peer"] for p in facts["planner_peers"]}):
        cells = ", ".join(f"{ratio(p['ratio'])} ({shape_name(p['shape'])}, {seq_label(p['seq'])})"
                          for p in facts["planner_peers"] if p["peer"] == name)
        title = PEER_TITLES.get(name, name)
        rows.append([f"Tokens/s against {title} at its fastest setting, 1 x H200, SP=1 (ours with its defaults, 2026-12-02)",
                     cells, f"[against the peers](docs/results.md#{anchor(planner_title)})"])  # fmt: skip
    now_title = "Ours with its defaults against torchtitan, 1 x H200, 2026-12-04"
    rows.append(["Tokens/s against torchtitan at its fastest setting, 1 x H200, SP=1 (ours with its defaults, 2026-12-04)",
                 ", ".join(f"{ratio(p['ratio'])} ({shape_name(p['shape'])}, {seq_label(p['seq'])})"
                           for p in facts["torchtitan_now"]),
                 f"[against torchtitan](docs/results.md#{anchor(now_title)})"])  # fmt: skip
    for _, m in sorted(mx.items()):
        proj = f"; GPU memory projected to last to ~{num(m['projected'])} with `{m['projected_rung']}`" if m["projected"] else ""
        rows.append([f"Longest trained sequence: {m['title']}", f"{num(m['longest'])} tokens (`{m['rung']}`){proj}",
                     f"[longest sequence](docs/results.md#{anchor(m['title'])})"])  # fmt: skip
    block = "\n".join([BEGIN, table(["result", "figure", "details"], rows, right_from=9), END])
    return page, block


def readme_with(block: str, readme: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    head, rest = readme.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 when docs/results.md or the README block is stale")
    args = p.parse_args(argv)
    page, block = build()
    readme = README.read_text()
    new_readme = readme_with(block, readme)
    if args.check:
        stale = [str(f.relative_to(ROOT)) for f, old, new in ((PAGE, PAGE.read_text() if PAGE.exists() else "", page),
                                                               (README, readme, new_readme)) if old != new]  # fmt: skip
        if stale:
            print(f"stale: {', '.join(stale)}; run python bench/results.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    if new_readme != readme:
        README.write_text(new_readme)
    print(f"wrote {PAGE.relative_to(ROOT)} and the README's results block")
    return 0


if __name__ == "__main__":
    sys.exit(main())
