"""pretrain_gpt.py with faults injected, for the fault tests. Takes pretrain_gpt.py's flags plus:

    --inject-nonfinite ITER:RANK[,ITER:RANK...]  that rank's loss of that iteration is NaN
    --inject-die-before-latest ITER:RANK         that rank exits (17) mid-save, before `latest` moves
    --inject-truncate-on-save ITER:RANK          that rank's RNG shard of that save is cut short

Iterations count from 1, as the log does.
"""

from __future__ import annotations

import sys


def _pairs(spec: str) -> list:
    return [tuple(int(x) for x in item.split(":")) for item in spec.split(",")]


def parse_faults(argv: list):
    """(FaultInjector, the remaining argv for pretrain_gpt.py)."""
    from megatron.training.faults import FaultInjector

    specs, rest = {}, []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--inject-"):
            specs[arg] = next(it)
        else:
            rest.append(arg)
    unknown = set(specs) - {"--inject-nonfinite", "--inject-die-before-latest", "--inject-truncate-on-save"}
    if unknown:
        raise SystemExit(f"unknown fault flag(s): {', '.join(sorted(unknown))}")
    pairs = {flag: _pairs(spec) for flag, spec in specs.items()}
    faults = FaultInjector(
        nonfinite_loss=frozenset(pairs.get("--inject-nonfinite", ())),
        die_before_latest=pairs.get("--inject-die-before-latest", [None])[0],
        truncate_on_save=pairs.get("--inject-truncate-on-save", [None])[0],
    )
    return faults, rest


def main(argv: list) -> int:
    import torch.distributed as dist

    import pretrain_gpt

    faults, rest = parse_faults(argv)
    code = pretrain_gpt.main(rest, faults=faults)
    # pretrain_gpt.py leaves the process itself only when it is the program; do the same here
    if dist.is_available() and dist.is_initialized():
        if code == 0:
            dist.barrier()
            dist.destroy_process_group()
        pretrain_gpt._leave(code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
