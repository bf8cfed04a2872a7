"""Plots and a markdown table from a ``bench/throughput.py`` JSON.

    python bench/plot_throughput.py benchmarks/results/2026-11-30_throughput_vs_peer_h200/gpt_sp2_recompute_32768.json
    python bench/plot_throughput.py A.json B.json C.json --name combined    # several runs, one table

Several JSONs are first merged into ``<name>.json`` (cases in the order given, a later case replacing
an earlier one with the same system and setting; comparisons recomputed; ``merged_from`` lists the
sources). Writes, next to the (first) JSON: ``<name>.md`` (every case, then ours vs the peer) and, when matplotlib
is importable, ``<name>_tokens_per_sec.png`` and ``<name>_mfu.png`` (one line per system and
attention backend, sequence length on a log2 axis). Without matplotlib it says so and writes
only the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from report import write_json  # bench/, this script's directory

CASES_HEADER = (
    "| shape | seq len | GPUs | SP | system | tiled MLP | tokens/s/GPU | TFLOPS/GPU (MD) | model TFLOPS/GPU | MFU "
    "| peak mem (GB) | final loss | outcome |\n"
    "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
)
RATIOS_HEADER = (
    "| shape | seq len | GPUs | SP | recompute | ours (backend) tokens/s/GPU | peer | peer tokens/s/GPU | ours / peer "
    "| ours MFU | peer MFU |\n"
    "| --- | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |"
)
OUTCOME_TEXT = {"oom": "OOM", "timeout": "timeout", "failed": "failed", "skipped": "skipped (OOM earlier)"}


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def system_label(case: dict) -> str:
    what = case["backend"] + ("" if case.get("checkpoint_activations", True) else ", no recompute")
    what += ", attention kept" if case.get("checkpoint_keep_attention") else ""
    what += f", {case['ulysses_exchange']} exchange" if case.get("ulysses_exchange") not in (None, "deepspeed") else ""
    what += ", leaf layers" if case.get("zero3_leaf_layers") and case["backend"] not in ("torchtitan-sdpa", "arctic-sdpa") else ""
    meta = case.get("peer") or {}  # torchtitan, ArcticTraining: the activation-checkpoint mode it ran
    ac_mode = meta.get("ac_mode") or (meta.get("settings") or {}).get("ac_mode")
    what = f"{case['backend']}, AC {ac_mode}" if ac_mode else what
    return f"peer ({what})" if case["kind"] == "peer" else f"ours ({what})"


def _group(case: dict) -> tuple:
    return (case["shape"], case["nproc"], case["sp"])


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown_table(report: dict) -> str:
    """Every case (ok ones with numbers, others with their outcome), then the ours/peer ratios."""
    devices = report.get("devices") or ["?"]
    versions = report.get("versions") or {}
    settings = report.get("settings") or {}
    warmup, iters = settings.get("warmup"), settings.get("iters")
    measured = (
        f"iterations {warmup + 1}-{iters}" if isinstance(warmup, int) and isinstance(iters, int) else "iterations"
    )
    lines = [
        f"# Training throughput ({', '.join(sorted(set(devices)))})",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ".",
        (
            f"Median of {measured} of each run; ZeRO-3, micro batch 1, full-layer activation checkpointing (unless marked "
            f"'no recompute'), tiled logits loss "
            f"{'on' if settings.get('tiled_loss', True) else 'off'}. TFLOPS (MD) = Megatron-DeepSpeed's formula; "
            "model TFLOPS and MFU count model FLOPs only (no recomputation, causal attention) against the dense "
            "bf16 peak."
        ),
        "",
        CASES_HEADER,
    ]
    cases = sorted(report.get("cases", []), key=lambda c: (_group(c), c["seq_len"], c["kind"] != "ours", c["backend"]))
    for c in cases:
        tiled = {True: "yes", False: "no"}.get(c.get("tiled_mlp"), "-")
        head = [c["shape"], f"{c['seq_len']:,}", str(c["nproc"]), str(c["sp"]), system_label(c), tiled]
        if c["outcome"] == "ok":
            numbers = [
                _fmt(c.get("tokens_per_sec_per_gpu"), ",.0f"), _fmt(c.get("tflops_per_gpu"), ".1f"),
                _fmt(c.get("model_tflops_per_gpu"), ".1f"), _percent(c.get("mfu")), _fmt(c.get("peak_mem_gb"), ".1f"),
                _fmt(c.get("final_loss"), ".3f"), "ok",
            ]  # fmt: skip
        else:
            numbers = ["-"] * 6 + [OUTCOME_TEXT.get(c["outcome"], c["outcome"])]
        lines.append("| " + " | ".join(head + numbers) + " |")
    comps = report.get("comparisons") or []
    if comps:
        lines += [
            "",
            (
                "Ours (fastest backend) against each peer (hf_alst: Hugging Face Llama + DeepSpeed ALST, same "
                "recomputation as ours; torchtitan and arctic, ArcticTraining's own trainer: their fastest "
                "activation-checkpoint mode that fits), same length, "
                "GPUs and SP:"
            ),
            "",
            RATIOS_HEADER,
        ]
        for r in sorted(comps, key=lambda r: (r["shape"], r["nproc"], r["sp"], r["seq_len"])):
            recompute = ("full" if r.get("checkpoint_activations", True) else "none") + (
                ", leaf layers" if r.get("zero3_leaf_layers") else ""
            )
            lines.append(
                f"| {r['shape']} | {r['seq_len']:,} | {r['nproc']} | {r['sp']} | {recompute} | "
                f"{r['ours_tokens_per_sec_per_gpu']:,.0f} ({r['best_backend']}"
                f"{'' if r.get('best_exchange') in (None, 'deepspeed') else ', ' + r['best_exchange']}) | "
                f"{r.get('peer', 'hf_alst')} | {r['peer_tokens_per_sec_per_gpu']:,.0f} | "
                f"{r['ratio_tokens_per_sec']:.2f}x | {_percent(r.get('ours_mfu'))} | {_percent(r.get('peer_mfu'))} |"
            )
    return "\n".join(lines) + "\n"


def series(report: dict, metric: str) -> dict:
    """{(shape, nproc, sp, system label): [(seq_len, value), ...]} of the successful cases."""
    out: dict = {}
    for c in report.get("cases", []):
        if c["outcome"] != "ok" or c.get(metric) is None:
            continue
        out.setdefault((*_group(c), system_label(c)), []).append((c["seq_len"], c[metric]))
    return {k: sorted(v) for k, v in sorted(out.items())}


def plot(report: dict, metric: str, ylabel: str, path: Path, scale: float = 1.0) -> bool:
    """One PNG: ``metric`` against sequence length (log2), a line per system; False when there is nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = series(report, metric)
    if not data:
        return False
    groups = {k[:3] for k in data}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (shape, nproc, sp, label), points in data.items():
        xs, ys = zip(*points)
        name = label if len(groups) == 1 else f"{shape} {nproc} GPU SP{sp}: {label}"
        ax.plot(
            xs, [y * scale for y in ys], marker="o", linestyle="--" if label.startswith("peer") else "-", label=name
        )
    ax.set_xscale("log", base=2)
    seqs = sorted({x for pts in data.values() for x, _ in pts})
    ax.set_xticks(seqs)
    ax.set_xticklabels([f"{s // 1024}K" if s >= 1024 else str(s) for s in seqs])
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(ylabel)
    devices = report.get("devices") or ["?"]
    title = ", ".join(sorted(set(devices)))
    if len(groups) == 1:
        shape, nproc, sp = next(iter(groups))
        title = f"{shape}, {nproc} GPU{'s' if nproc > 1 else ''}, SP {sp} ({title})"
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def merge(paths: list) -> dict:
    """One report from several bench/throughput.py JSONs (see the module docstring)."""
    import throughput

    reports = [json.loads(Path(p).read_text()) for p in paths]
    merged = {k: v for k, v in reports[0].items() if k not in ("cases", "comparisons")}
    merged["merged_from"] = [str(p) for p in paths]
    for key in ("versions", "settings"):  # where the sources differ, each source's own is kept
        if any(r.get(key) != reports[0].get(key) for r in reports):
            merged[f"{key}_per_source"] = {str(p): r.get(key) for p, r in zip(paths, reports)}
    if "settings_per_source" in merged:  # the table must not claim one warm-up/iteration count for all
        merged["settings"] = {k: v for k, v in (merged.get("settings") or {}).items() if k not in ("iters", "warmup")}
    cases: list = []
    for r in reports:
        for c in r.get("cases", []):
            cases = [old for old in cases if throughput.case_key(old) != throughput.case_key(c)] + [c]
    merged["cases"] = cases
    merged["comparisons"] = throughput.comparisons(cases)
    return merged


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", nargs="+", help="bench/throughput.py output(s)")
    p.add_argument("--name", help="file stem of the merged JSON, table and plots (needed with several JSONs)")
    p.add_argument("--out-dir", help="where to write (default: next to the (first) JSON)")
    args = p.parse_args(argv)
    src = Path(args.json[0])
    out_dir = Path(args.out_dir) if args.out_dir else src.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(args.json) > 1:
        if not args.name:
            p.error("several JSONs are merged into one: name it with --name")
        report = merge(args.json)
        src = out_dir / f"{args.name}.json"
        write_json(src, report)
        print(f"wrote {src} (merged from {len(args.json)} files)")
    else:
        report = json.loads(src.read_text())
    table = out_dir / f"{src.stem}.md"
    table.write_text(markdown_table(report))
    print(f"wrote {table}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no PNGs written (pip install matplotlib); the table is complete")
        return 0
    for metric, ylabel, scale, suffix in (
        ("tokens_per_sec_per_gpu", "tokens/s per GPU", 1.0, "tokens_per_sec"),
        ("mfu", "MFU (%)", 100.0, "mfu"),
    ):
        png = out_dir / f"{src.stem}_{suffix}.png"
        if plot(report, metric, ylabel, png, scale):
            print(f"wrote {png}")
        else:
            print(f"no successful case has {metric} (e.g. MFU on CPU): {png.name} not written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
