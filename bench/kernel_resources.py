"""Registers, spills and shared memory of our Triton attention kernels, compiled offline for a GPU
architecture: no GPU is needed, so kernel variants can be screened before they run on one.

    python bench/kernel_resources.py                                  # fwd, dkdv, dq at today's configs, sm_90
    python bench/kernel_resources.py --kernels dkdv --config 32,128,8,3 --docs
    python bench/kernel_resources.py --window 4096                    # the sliding-window variants
    python bench/kernel_resources.py --arch 100 --out /tmp/r.json

It compiles exactly what a launch would: 16-byte aligned pointers and integer arguments divisible
by 16 (as Triton specializes real launches on [b, s, h, d] tensors), GQA group 1. Numbers come from
the bundled `ptxas -v` (registers, spill bytes) and Triton's metadata (shared memory), and
depend on the installed Triton version, which the report names. On an H200 with Triton 3.6 the
shared memory and wgmma counts of all three kernels matched what `bench/attention.py` read from
the launched kernels (2026-11-30).
"""

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile

KERNELS = {"fwd": "_fwd_kernel", "dkdv": "_bwd_dkdv_kernel", "dq": "_bwd_dq_kernel"}
INT_ARGS = ("S", "H", "KV_H", "GROUP")
INT_POINTERS = ("SEG", "RUN_START", "RUN_END")
FP32_POINTERS = ("LSE", "DELTA")
FP32_SCALARS = ("qk_scale", "sm_scale")


def _arg_type(name: str) -> str:
    if name in FP32_SCALARS:
        return "fp32"
    if name in INT_ARGS or name.startswith("stride_"):
        return "i32"
    if name in INT_POINTERS:
        return "*i32"
    return "*fp32" if name in FP32_POINTERS else "*bf16"


def mma_counts(ptx: str) -> dict:
    """Tensor-core instructions in a kernel's PTX: Hopper's wgmma, and the older mma.sync fallback."""
    return {
        "wgmma_in_ptx": len(re.findall(r"wgmma\.mma_async", ptx)),
        "mma_sync_in_ptx": len(re.findall(r"\bmma\.sync", ptx)),
    }


def _ptxas_report(ptxas: str, ptx: str, arch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        err = subprocess.run([ptxas, "-v", "--gpu-name", gpu, path, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True).stderr  # fmt: skip
    regs = re.search(r"Used (\d+) registers", err)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", err)
    return {
        "registers": int(regs[1]) if regs else None,
        "spill_store_bytes": int(spills[1]) if spills else None,
        "spill_load_bytes": int(spills[2]) if spills else None,
    }


@contextlib.contextmanager
def compile_only_sm90():
    """Inside, every Triton / Gluon JIT launch compiles for sm_90 and does not run: a stub driver stands in for the
    GPU. Yields a list that collects (kernel function name, grid, compiled kernel) for each launch. Catches argument,
    specialization and option mistakes of a launch path without a GPU."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    class _StubDriver:
        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    previous = driver._active  # reset_active() would build the real driver, which needs a GPU
    run = JITFunction.run
    launched = []

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        launched.append((self.fn.__name__, grid, kernel))
        return kernel

    driver.set_active(_StubDriver())
    JITFunction.run = compile_only
    try:
        yield launched
    finally:
        JITFunction.run = run
        driver._active = previous


def disassemble(cubin, ptxas_path):
    """SASS text of a cubin, from the nvdisasm next to Triton's ptxas; None without either."""
    nvdisasm = os.path.join(os.path.dirname(ptxas_path), "nvdisasm")
    if not cubin or not os.path.exists(nvdisasm):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([nvdisasm, "-c", f.name], check=True, capture_output=True, text=True).stdout


def sass_report(cubin, ptxas_path):
    """Local-memory (spill) instructions and wgmma/barrier counts in the SASS."""
    sass = disassemble(cubin, ptxas_path)
    if sass is None:
        return {}
    return {
        "sass_local_memory_instructions": len(re.findall(r"\b(?:LDL|STL)\b", sass)),
        "sass_hgmma": len(re.findall(r"\bHGMMA\b", sass)),
        "sass_warpgroup_wait": len(re.findall(r"\bWARPGROUP\.DEPBAR", sass)),
        "sass_bar_sync": len(re.findall(r"\bBAR\.SYNC", sass)),
        "sass_mufu_ex2": len(re.findall(r"MUFU\.EX2", sass)),
        # highest general register named anywhere: what the busiest partition needs (+1), under its setmaxnreg
        "sass_max_register_index": max((int(r) for r in re.findall(r"\bR(\d+)\b", sass)), default=None),
    }


def compile_report(
    kernel: str, config: tuple, head_dim: int, causal: bool, docs: bool, arch: int, window: int = 0
) -> dict:
    """Compile one kernel for sm_<arch> and report its resources (raises if Triton cannot); window 0: none."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from megatron.kernels import attention_triton as fat

    fn = getattr(fat, KERNELS[kernel])
    block_m, block_n, warps, stages = config
    constexprs = {"BLOCK_M": block_m, "BLOCK_N": block_n, "HEAD_DIM": head_dim, "CAUSAL": causal, "HAS_DOC": docs,
                  "WINDOW": window}  # fmt: skip
    if "INTERLEAVED" in fn.arg_names:  # the forward's launch order, as the launcher chooses it
        constexprs["INTERLEAVED"] = head_dim in fat.FWD_INTERLEAVED_HEAD_DIMS
    if "GROUP" in fn.arg_names:
        constexprs["GROUP"] = 1  # Triton turns an int argument equal to 1 into a constant
    signature = {n: "constexpr" if n in constexprs else _arg_type(n) for n in fn.arg_names}
    aligned = {
        (i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if signature[n] not in ("constexpr", "fp32")
    }
    src = ASTSource(
        fn, signature, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()}, attrs=aligned
    )
    compiled = triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages}
    )
    ptx = compiled.asm["ptx"]
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path  # the ptxas Triton itself uses for this architecture
    return {
        "kernel": kernel,
        "config": list(config),
        **_ptxas_report(ptxas, ptx, arch),
        "shared_bytes": compiled.metadata.shared,
        **mma_counts(ptx),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", default="fwd,dkdv,dq", help="comma list of fwd, dkdv, dq")
    p.add_argument("--config", default=None, help="BLOCK_M,BLOCK_N,warps,stages (default: the kernel's GPU config)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--non-causal", action="store_true")
    p.add_argument("--docs", action="store_true", help="compile the document-mask variant")
    p.add_argument("--window", type=int, default=0, help="compile the sliding-window variant (causal; 0: none)")
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = Hopper)")
    p.add_argument("--out", default=None, help="also write the report as JSON here")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("error: TRITON_INTERPRET=1 is set; unset it, this tool compiles for a real GPU target")
    try:
        import triton
    except ImportError:
        sys.exit("error: triton is not installed; pip install triton")
    from megatron.kernels import attention_triton as fat

    kernels = args.kernels.split(",")
    bad = [k for k in kernels if k not in KERNELS]
    if bad:
        sys.exit(f"error: unknown kernel(s) {bad}; choose from {list(KERNELS)}")
    if args.window < 0 or (args.window and args.non_causal):
        sys.exit(f"error: --window {args.window} needs causal attention and a window >= 0 (0: none)")
    config = None
    if args.config:
        try:
            config = tuple(int(x) for x in args.config.split(","))
            assert len(config) == 4
        except (ValueError, AssertionError):
            sys.exit(f"error: --config {args.config!r} is not BLOCK_M,BLOCK_N,warps,stages (four integers)")
    # bench/, this script's directory; imported here, so that the compile helpers import as bench.kernel_resources
    # without bench/ on the path
    from report import report_head, write_json

    report = {**report_head(__file__, argv), "arch": args.arch, "head_dim": args.head_dim,
              "causal": not args.non_causal, "docs": args.docs, "window": args.window, "kernels": []}  # fmt: skip
    for k in kernels:
        cfg = config or fat.GPU_CONFIGS[k][args.head_dim if args.head_dim in (64, 128) else 128]
        row = compile_report(k, cfg, args.head_dim, not args.non_causal, args.docs, args.arch, args.window)
        report["kernels"].append(row)
        if args.out:
            write_json(args.out, report)  # after every kernel: a run cut short keeps what compiled
        print(
            f"{k:5s} {tuple(cfg)}: {row['registers']} registers, spills {row['spill_store_bytes']}/"
            f"{row['spill_load_bytes']} B store/load, shared {row['shared_bytes']} B, wgmma {row['wgmma_in_ptx']}, "
            f"mma.sync {row['mma_sync_in_ptx']}",
            flush=True,
        )
    print(f"(Triton {triton.__version__}, sm_{args.arch})")
    return report


if __name__ == "__main__":
    main()
