"""One save/load pair: model, optimizer and scheduler (through DeepSpeed), iteration, data
position and RNG.

* ``latest`` is written by rank 0 only after every rank finished writing and the checkpoint was
  verified (every shard present and readable), atomically (temporary file + rename), so a run
  killed mid-save resumes from the previous complete checkpoint.
* ``manifest.json`` in each checkpoint lists every file with its size and the layout that wrote
  it (world size, SP, ZeRO stage). Loading checks it first and names a missing, truncated or
  unreadable file instead of failing deep inside ``torch.load``.
* A checkpoint written with another layout (more or fewer processes, another SP size or ZeRO
  stage) is converted once to DeepSpeed's universal format (``ds_to_universal``, kept in
  ``iter_*/universal``) and loaded from there, optimizer state included. Between ZeRO-3 and
  stages 1-2 the universal files are rewritten once more into the other loader's layout
  (``iter_*/universal_zero3`` / ``universal_zero12``, see ``_bridge_stages``).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist

from megatron.config import ConfigError
from megatron.training.faults import NO_FAULTS, FaultInjector
from megatron.training.weights import MODEL_ARGS_JSON

LATEST = "latest"
MANIFEST = "manifest.json"
UNIVERSAL = "universal"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written completely; ``latest`` still names the previous one."""


@dataclass(frozen=True)
class Layout:
    """How the processes that write (or read) a checkpoint are arranged."""

    world_size: int
    sequence_parallel_size: int
    zero_stage: int

    def __str__(self) -> str:
        dp = self.world_size // self.sequence_parallel_size
        procs = "1 process" if self.world_size == 1 else f"{self.world_size} processes"
        return f"{procs} (SP {self.sequence_parallel_size} x DP {dp}), ZeRO-{self.zero_stage}"


@dataclass(frozen=True)
class Resume:
    """What to load: a tag under the load directory, and whether it is in universal format."""

    tag: str
    universal: bool
    saved: Layout | None
    universal_subdir: str = UNIVERSAL


def _tag(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _prune(save_dir: str, keep_last_n: int, keep: str) -> None:
    import shutil

    tags = sorted(d for d in os.listdir(save_dir) if d.startswith("iter_") and os.path.isdir(os.path.join(save_dir, d)))
    for old in tags[:-keep_last_n]:
        if old != keep:
            shutil.rmtree(os.path.join(save_dir, old), ignore_errors=True)


def _file_problem(path: str, size: int | None = None, contents: bool = False) -> str | None:
    """Why a checkpoint file cannot be used (missing, wrong size, unreadable), or None.

    ``contents``: also read every member of a ``.pt`` archive against the CRC-32 that
    ``torch.save`` recorded, which finds bytes changed in place (same size, intact directory)."""
    if not os.path.isfile(path):
        return "is missing"
    got = os.path.getsize(path)
    if size is not None and got != size:
        return f"is truncated or was rewritten ({got} bytes, the manifest says {size})"
    if path.endswith(".pt"):
        try:  # torch.save writes a zip archive; a cut-off file has no central directory
            with zipfile.ZipFile(path) as z:
                for member in z.infolist() if contents else ():
                    if member.CRC == 0 and member.file_size:
                        continue  # written without checksums (torch.serialization's compute_crc32 off)
                    with z.open(member) as f:  # raises BadZipFile on a CRC mismatch at the end
                        while f.read(1 << 24):
                            pass
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            return f"is unreadable or damaged ({e})"
    return None


def _listing(ckpt_dir: str) -> dict:
    files = {}
    for root, _dirs, names in os.walk(ckpt_dir):
        if os.path.relpath(root, ckpt_dir).split(os.sep)[0].startswith(UNIVERSAL):
            continue  # derived from the checkpoint, not part of it
        for name in names:
            if name != MANIFEST and ".tmp." not in name:
                path = os.path.join(root, name)
                files[os.path.relpath(path, ckpt_dir)] = os.path.getsize(path)
    return files


def _verify_written(ckpt_dir: str, layout: Layout) -> tuple:
    """Rank 0, after every rank wrote: (problem or None, {file: size})."""
    files = _listing(ckpt_dir)
    for name in sorted(files):
        problem = _file_problem(os.path.join(ckpt_dir, name))
        if problem:
            return f"{name} {problem}", files
    want = {"RNG state": (lambda n: n.startswith("rng_state_rank"), layout.world_size)}
    if layout.zero_stage >= 1:
        want["ZeRO optimizer shard"] = (lambda n: n.endswith("optim_states.pt"), layout.world_size)
    for what, (match, count) in want.items():
        got = sum(1 for n in files if match(n))
        if got != count:
            return f"has {got} {what} files, expected {count} (one per rank)", files
    if not any(n.endswith("model_states.pt") for n in files):
        return "has no model_states.pt file", files
    return None, files


def _rank0_verdict(check) -> str | None:
    """Collective: rank 0 runs ``check`` (a problem as a string, or None) and every rank gets its answer."""
    verdict = [check() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(verdict, src=0)
    return verdict[0]


def save_checkpoint(
    engine, save_dir: str, iteration: int, client_state: dict, layout: Layout, keep_last_n: int = 0,
    faults: FaultInjector = NO_FAULTS, model_args: dict | None = None,
) -> str:  # fmt: skip
    """Collective: every rank writes its shards; rank 0 verifies them all, writes the manifest,
    points ``latest`` at them and, with ``keep_last_n`` > 0, deletes older ``iter_*``
    checkpoints beyond the newest N. Raises CheckpointError (``latest`` untouched) if a shard
    is missing or unreadable. ``faults`` may kill a rank or damage a shard before the check.

    ``model_args`` (the shape fields, ``megatron.training.weights.model_args_from_config``) is written
    to ``save_dir/model_args.json`` before ``latest`` moves, so ``--load save_dir`` resumes with the
    shape and RoPE the run trained with (a context-extended run needs no RoPE flags again)."""
    tag = _tag(iteration)
    rank = dist.get_rank()
    engine.save_checkpoint(save_dir, tag=tag, client_state=dict(client_state, iteration=iteration), save_latest=False)
    rng_path = os.path.join(save_dir, tag, f"rng_state_rank{rank:05d}.pt")
    torch.save(_rng_state(), rng_path + ".tmp")
    os.replace(rng_path + ".tmp", rng_path)
    faults.after_shards_written(iteration, rank, rng_path)
    dist.barrier()
    ckpt_dir = os.path.join(save_dir, tag)

    def verify_and_publish() -> str | None:
        problem, files = _verify_written(ckpt_dir, layout)
        if problem is None:
            manifest = {"iteration": iteration, "layout": asdict(layout), "files": files}
            _atomic_write_text(os.path.join(ckpt_dir, MANIFEST), json.dumps(manifest, indent=1))
            if model_args is not None:
                _atomic_write_text(os.path.join(save_dir, MODEL_ARGS_JSON), json.dumps(model_args, indent=2))
            _atomic_write_text(os.path.join(save_dir, LATEST), tag)
            if keep_last_n > 0:
                _prune(save_dir, keep_last_n, keep=tag)
        return problem

    problem = _rank0_verdict(verify_and_publish)
    if problem is not None:
        previous = os.path.join(save_dir, LATEST)
        prev = _read_text(previous) if os.path.isfile(previous) else None
        raise CheckpointError(
            f"checkpoint {ckpt_dir} failed verification: {problem}; 'latest' still points at "
            f"{prev or 'nothing'}. Check free disk space and the file system, then resume with --load"
        )
    return ckpt_dir


def _read_manifest(ckpt_dir: str) -> dict | None:
    path = os.path.join(ckpt_dir, MANIFEST)
    if not os.path.isfile(path):
        return None  # written before manifests existed, or by another tool
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, OSError) as e:
        raise ConfigError(f"{path} is unreadable ({e}); restore it, or point 'latest' at an earlier iter_* directory") from e


def _first_damaged(ckpt_dir: str, files: dict, latest: str) -> str | None:
    """Collective: every file of the manifest checked for presence, size and contents (each rank
    reads its share); the first problem by file name, the same on every rank, or None."""
    names = sorted(files)[dist.get_rank() :: dist.get_world_size()]
    mine = [(n, p) for n in names if (p := _file_problem(os.path.join(ckpt_dir, n), files[n], contents=True))]
    found = [None] * dist.get_world_size()
    dist.all_gather_object(found, mine)
    problems = sorted(p for rank in found for p in rank)
    if not problems:
        return None
    name, problem = problems[0]
    return (
        f"checkpoint {ckpt_dir} is damaged: {name} {problem}; restore it, or point {latest} at an earlier iter_* "
        "directory"
    )


def _convert_to_universal(ckpt_dir: str) -> str:
    """Rank 0: DeepSpeed's ds_to_universal into ckpt_dir/universal (once; atomic rename)."""
    out = os.path.join(ckpt_dir, UNIVERSAL)
    if os.path.isdir(out):
        return out
    tmp = f"{out}.tmp.{os.getpid()}"
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", ckpt_dir,
           "--output_folder", tmp, "--inject_missing_state", "--num_extract_workers", "2", "--num_merge_workers", "1"]  # fmt: skip
    print(f"> converting {ckpt_dir} to DeepSpeed's universal format for the new layout ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"converting {ckpt_dir} to a universal checkpoint failed: {last}")
    os.replace(tmp, out)
    return out


def prepare_resume(load_dir: str, layout: Layout) -> Resume | None:
    """Collective, before the DeepSpeed engine is built: find ``latest``, verify the checkpoint
    against its manifest (naming any damaged file), and if it was written with another layout
    convert it to the universal format (rank 0) so that any layout can load it."""
    if not os.path.isdir(load_dir):
        raise ConfigError(f"--load {load_dir} does not exist; give an existing checkpoint directory or drop --load")
    latest = os.path.join(load_dir, LATEST)
    if not os.path.isfile(latest):
        if dist.get_rank() == 0:
            print(f"> no '{LATEST}' file in {load_dir}: starting from scratch", flush=True)
        return None
    tag = _read_text(latest)
    ckpt_dir = os.path.join(load_dir, tag)
    if not os.path.isdir(ckpt_dir):
        raise ConfigError(f"{latest} points at {tag}, which is missing; restore it or point 'latest' at a saved tag")
    manifest = _read_manifest(ckpt_dir)
    if manifest is None:
        return Resume(tag, universal=False, saved=None)
    damaged = _first_damaged(ckpt_dir, manifest["files"], latest)
    if damaged:
        raise ConfigError(damaged)
    saved = Layout(**manifest["layout"])
    if saved == layout:
        return Resume(tag, universal=False, saved=saved)
    if saved.zero_stage == 0 and layout.zero_stage == 0:
        return Resume(tag, universal=False, saved=saved)  # full replicas: any world size reads them
    if layout.zero_stage != saved.zero_stage and 0 in (layout.zero_stage, saved.zero_stage):
        raise ConfigError(
            f"{ckpt_dir} was written with ZeRO-{saved.zero_stage} and this run uses ZeRO-{layout.zero_stage}; "
            "optimizer state moves between ZeRO stages 1-3 only: "
            + (f"pass --zero-stage {saved.zero_stage}" if saved.zero_stage else "resume it with --zero-stage 0")
        )
    same_family = _stage_family(saved.zero_stage) == _stage_family(layout.zero_stage)
    subdir = UNIVERSAL if same_family else f"{UNIVERSAL}_{_stage_family(layout.zero_stage)}"
    def convert() -> str | None:
        print(f"> {ckpt_dir} was written by {saved}; this run is {layout}", flush=True)
        try:
            universal = _convert_to_universal(ckpt_dir)
            if subdir != UNIVERSAL:
                _bridge_stages(ckpt_dir, universal, os.path.join(ckpt_dir, subdir), layout)
        except ConfigError as e:
            return str(e)
        return None

    error = _rank0_verdict(convert)
    if error:
        raise ConfigError(error)
    return Resume(tag, universal=True, saved=saved, universal_subdir=subdir)


def _link_or_copy(src: str, dst: str) -> None:
    import shutil

    if os.path.exists(dst):
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)


def _stage_family(stage: int) -> str:
    return "zero3" if stage == 3 else "zero12"


def _bridge_stages(ckpt_dir: str, universal: str, out: str, layout: Layout) -> None:
    """Rank 0: rewrite a universal checkpoint between DeepSpeed's two flavours. Converted from
    ZeRO-3, each parameter's fp32/exp_avg/exp_avg_sq is a flat tensor and the step lives in the
    optimizer state; the stage 1-2 loader wants shaped tensors, a step per parameter, a model
    states file and ``ds_version``. The other way round, stage 3 reads shaped tensors as they
    are but wants the step and hyperparameters under ``optimizer_state_dict``."""
    import shutil

    import deepspeed

    if os.path.isdir(out):
        return
    tmp = f"{out}.tmp.{os.getpid()}"
    shutil.copytree(universal, tmp)
    opt_path = os.path.join(tmp, "zero", "optimizer_state.pt")
    opt = torch.load(opt_path, weights_only=False)
    params = sorted(d for d in os.listdir(os.path.join(tmp, "zero")) if os.path.isdir(os.path.join(tmp, "zero", d)))
    model_states = sorted(n for n in os.listdir(ckpt_dir) if n.endswith("model_states.pt"))
    if layout.zero_stage == 3:
        step = torch.load(os.path.join(tmp, "zero", params[0], "step.pt"), weights_only=False)
        opt["optimizer_state_dict"] = {"state": {0: {"step": step}}, "param_groups": opt["param_groups"]}
        for rank in range(layout.world_size):  # stage 3 reads one model-states file per rank
            _link_or_copy(os.path.join(tmp, model_states[0]), os.path.join(tmp, f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt"))
    else:
        source = torch.load(os.path.join(ckpt_dir, model_states[0]), weights_only=False, mmap=True)
        shapes = {k: v for group in source["param_shapes"] for k, v in group.items()}
        step = opt["optimizer_state_dict"]["state"][0]["step"]
        for name in params:
            folder = os.path.join(tmp, "zero", name)
            for key in ("fp32", "exp_avg", "exp_avg_sq"):
                flat = torch.load(os.path.join(folder, f"{key}.pt"), weights_only=False)
                flat = flat["param"] if isinstance(flat, dict) else flat
                torch.save({"param": flat.detach().reshape(shapes[name]).clone(), "cat_dim": 0}, os.path.join(folder, f"{key}.pt"))
            torch.save(torch.as_tensor(step, dtype=torch.float32), os.path.join(folder, "step.pt"))
        # ZeRO-3 keeps one flat group; the stage 1-2 loader pairs saved groups with its own and
        # stops at the shorter list, so offer one per group (hyperparameters are reset after load)
        opt["param_groups"] = [dict(opt["optimizer_state_dict"]["param_groups"][0]) for _ in range(64)]
        # ZeRO-3's module entries are empty partitions; stages 1-2 load whole weights from here
        full = torch.load(os.path.join(ckpt_dir, model_states[0]), weights_only=False)
        for name in full["module"]:
            if name in shapes:
                full["module"][name] = torch.load(os.path.join(tmp, "zero", name, "fp32.pt"), weights_only=False)["param"]
        torch.save(full, os.path.join(tmp, "mp_rank_00_model_states.pt"))
    opt.setdefault("ds_version", deepspeed.__version__)
    opt["ds_version"] = opt["ds_version"] or deepspeed.__version__
    torch.save(opt, opt_path)
    os.replace(tmp, out)


def load_checkpoint(engine, load_dir: str, resume: Resume) -> dict:
    """Load what ``prepare_resume`` chose. Returns the client state."""
    ckpt_dir = os.path.join(load_dir, resume.tag)
    tag = f"{resume.tag}/{resume.universal_subdir}" if resume.universal else resume.tag
    # DeepSpeed's ZeRO-3 universal loader copies the first param group's hyperparameters into
    # every group (weight decay included); they come from our config, so put them back.
    hyper = [{k: g[k] for k in ("weight_decay", "betas", "eps") if k in g} for g in engine.optimizer.param_groups]
    try:
        path, client_state = engine.load_checkpoint(load_dir, tag=tag)
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"loading {ckpt_dir} failed ({first}); the checkpoint is incomplete or damaged") from None
    if path is None:
        raise ConfigError(f"DeepSpeed could not load {ckpt_dir}; the checkpoint is incomplete")
    for group, saved in zip(engine.optimizer.param_groups, hyper):
        group.update(saved)
    rng_path = os.path.join(ckpt_dir, f"rng_state_rank{dist.get_rank():05d}.pt")
    if not resume.universal and os.path.isfile(rng_path):
        _set_rng_state(torch.load(rng_path, weights_only=False))
    if dist.get_rank() == 0:
        how = f" (universal format, saved by {resume.saved}; RNG streams restart)" if resume.universal else ""
        print(f"> resumed from {ckpt_dir} at iteration {client_state['iteration']}{how}", flush=True)
    return client_state
