"""The command line and ``--config FILE.yaml``, derived from the config dataclasses, in one place.

Only entry points call ``parse_args``. Every flag, its aliases, its ``--help`` text (the
field's docstring), the YAML keys and the flag reference (``docs/flags.md``) come from
``megatron.config``. Precedence: defaults < YAML < a loaded checkpoint's ``model_args.json``
< command line; a shape flag (YAML or command line) that disagrees with ``model_args.json``
is refused, since the weights fix it. YAML keys are flag names with underscores
(``num_layers: 24``, ``attention_backend: sdpa``), optionally under a section
(``model:``, ``attention:``, ...) where the field's own name also works (``attention: {backend: sdpa}``),
plus ArcticTraining/ALST names (``sequence_parallel_size``). Megatron-DeepSpeed spellings that
mean the same (``--use-flash-attn``, ``--recompute-granularity full``) or nothing here are
accepted; tensor/pipeline parallelism and unknown flags are rejected.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import re
import sys
import typing
from collections.abc import Sequence
from functools import cache

from megatron import config as config_module
from megatron.config import SECTIONS, Config, ConfigError


@dataclasses.dataclass(frozen=True)
class Option:
    """One config field as the command line sees it."""

    section: str
    name: str
    flag: str
    aliases: tuple
    yaml: tuple
    help: str
    default: object
    kind: type  # bool, int, float, str or list
    choices: tuple | None
    shape: bool
    override: object  # False, True or "rotary": see megatron.config.opt
    negate: str | None
    parse: typing.Callable | None

    @property
    def dest(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def key(self) -> str:
        """The YAML key (and historical dest): the flag name with underscores."""
        return self.flag.lstrip("-").replace("-", "_")


@cache
def _docstrings(cls) -> dict:
    """{field: its docstring} from the class source (the string right after each field)."""
    tree = ast.parse(inspect.getsource(cls))
    out, body = {}, tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            out[node.target.id] = " ".join(str(nxt.value.value).split())
    return out


def _kind(cls, f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(cls, vars(config_module))[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


@cache
def options() -> tuple:
    """Every config field as an Option, section by section, in declaration order."""
    out = []
    for section, cls in SECTIONS.items():
        docs = _docstrings(cls)
        for f in dataclasses.fields(cls):
            meta = f.metadata
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            flag = meta.get("flag") or "--" + f.name.replace("_", "-")
            out.append(Option(
                section, f.name, flag, meta.get("aliases", ()), meta.get("yaml", ()), docs.get(f.name, ""), default,
                _kind(cls, f), meta.get("choices"), meta.get("shape", False), meta.get("override", False),
                meta.get("negate"), meta.get("parse"),
            ))  # fmt: skip
    return tuple(out)


def shape_options() -> tuple:
    """The model fields that fix the weights (what model_args.json holds)."""
    return tuple(o for o in options() if o.shape)


def _full_recompute(value: str) -> bool:
    if value != "full":
        raise argparse.ArgumentTypeError(
            f"only 'full' is supported (got {value!r}): Megatron's 'selective' recomputes the core attention, "
            "which FlashAttention-style kernels never store; use --recompute-granularity full, and add "
            "--checkpoint-keep-attention to keep the attention instead of recomputing it"
        )
    return True


# Megatron-DeepSpeed spellings that set a config field: (flags, dest, argparse keywords).
_LEGACY = (
    (("--use-flash-attn", "--use-flash-attn-v2"), "attention.backend",
     dict(action="store_const", const="flash", help="= --attention-backend flash")),
    (("--use-flash-attn-triton",), "attention.backend",
     dict(action="store_const", const="flash_triton", help="= --attention-backend flash_triton")),
    (("--recompute-granularity",), "memory.checkpoint_activations",
     dict(type=_full_recompute, help="'full' = --checkpoint-activations ('selective' is refused with the alternative)")),
)  # fmt: skip
# Megatron-DeepSpeed flags that mean nothing here (DeepSpeed is always used, fusions are the kernels').
_NO_EFFECT_SWITCHES = (
    "--deepspeed", "--no-pipeline-parallel", "--no-masked-softmax-fusion", "--no-bias-gelu-fusion",
    "--no-bias-dropout-fusion", "--no-gradient-accumulation-fusion", "--no-query-key-layer-scaling",
    "--no-async-tensor-model-parallel-allreduce", "--deepspeed-activation-checkpointing", "--use-mcore-models",
    "--no-load-optim", "--no-load-rng",
)  # fmt: skip
_NO_EFFECT_VALUES = ("--data-impl", "--checkpoint-num-layers")
_GROUP_TITLES = {
    "model": "model (the fields marked [shape] fix the weights: model_args.json)",
    "attention": "attention",
    "memory": "memory: recomputation, tiling and offload (ALST)",
    "parallel": "parallelism",
    "data": "data",
    "train": "training",
    "checkpoint": "checkpoints and exit policy",
    "logging": "logging",
}


def _shape_tag(o: Option) -> str:
    if not o.shape:
        return ""
    return " [shape; a flag may change it on --load]" if o.override else " [shape]"


def _help(o: Option) -> str:
    text = o.help + _shape_tag(o)
    if o.kind is bool and o.negate is None:
        return text + f" ({o.flag.replace('--', '--no-', 1)} turns it off)"
    if o.default not in (None, [], False) and o.negate is None:
        return text + f" (default: {o.default})"
    return text


def _add_option(g, o: Option) -> None:
    if o.negate:
        g.add_argument(o.negate, dest=o.dest, action="store_false", default=None, help=_help(o))
    elif o.kind is bool:
        g.add_argument(o.flag, *o.aliases, dest=o.dest, action="store_true", default=None, help=_help(o))
        g.add_argument(o.flag.replace("--", "--no-", 1), dest=o.dest, action="store_false", default=None,
                       help=argparse.SUPPRESS)  # fmt: skip
    elif o.kind is list and o.choices:
        g.add_argument(o.flag, *o.aliases, dest=o.dest, nargs="+", choices=list(o.choices), metavar="TYPE",
                       help=_help(o))  # fmt: skip
    elif o.kind is list and o.parse is not None:  # numbers (longrope's factor lists)
        g.add_argument(o.flag, *o.aliases, dest=o.dest, nargs="+", type=o.parse, metavar=o.parse.__name__.upper(),
                       help=_help(o))  # fmt: skip
    elif o.kind is list:
        g.add_argument(o.flag, *o.aliases, dest=o.dest, nargs="+", metavar="PATH", help=_help(o))
    else:
        kw = dict(choices=list(o.choices)) if o.choices else dict(metavar=o.kind.__name__.upper())
        g.add_argument(o.flag, *o.aliases, dest=o.dest, type=o.parse or o.kind, help=_help(o), **kw)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (a ConfigError) instead of the usage text and exit."""

    def error(self, message: str):
        raise ConfigError(f"{message}; see `pretrain_gpt.py --help`")


_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _attach_negative_values(argv: list) -> list:
    """``--lr -1e-3`` as ``--lr=-1e-3``: argparse takes a negative number in exponent form for a
    flag and stops with "expected one argument"; attached, it reaches validation, which names it."""
    out = []
    for arg in argv:
        if _NEGATIVE_NUMBER.match(arg) and out and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pretrain_gpt.py",
        description="GPT pretraining with DeepSpeed-Ulysses sequence parallelism.",
        allow_abbrev=False,
        argument_default=None,
    )
    p.add_argument("--config", metavar="YAML", help="YAML file with the same fields (flags on the command line win)")
    groups = {s: p.add_argument_group(t) for s, t in _GROUP_TITLES.items()}
    for o in options():
        _add_option(groups[o.section], o)
    g = p.add_argument_group("Megatron-DeepSpeed spellings")
    for flags, dest, kw in _LEGACY:
        g.add_argument(*flags, dest=dest, **kw)
    g.add_argument("--tensor-model-parallel-size", type=int, default=1, help="must be 1 (use SP and ZeRO instead)")
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="must be 1 (use SP and ZeRO instead)")
    g.add_argument("--local_rank", "--local-rank", type=int, help="set by the DeepSpeed launcher (unused)")
    for flag in _NO_EFFECT_SWITCHES:
        g.add_argument(flag, action="store_true", dest="_ignored." + flag, help="accepted, no effect")
    for flag in _NO_EFFECT_VALUES:
        g.add_argument(flag, dest="_ignored." + flag, help="accepted, no effect")
    return p


@cache
def _yaml_keys() -> dict:
    """{YAML key: Option}: flag names with underscores, ALST names, section.field and unique field names."""
    keys, names = {}, {}
    for o in options():
        keys[o.key] = o
        keys[o.dest] = o
        for alias in o.yaml:
            keys[alias] = o
        names.setdefault(o.name, []).append(o)
    for name, opts in names.items():
        if len(opts) == 1:
            keys.setdefault(name, opts[0])
    return keys


def _flatten_yaml(data, path: str) -> dict:
    """{dest: value} of a YAML mapping (top level, or nested under section names)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        items = [(f"{key}.{k}", k, v) for k, v in value.items()] if key in SECTIONS and isinstance(value, dict) else [(None, key, value)]
        for dotted, k, v in items:
            k = str(k).replace("-", "_")
            o = _yaml_keys().get(dotted) if dotted else None
            o = o or _yaml_keys().get(k)
            if o is None:
                raise ConfigError(f"{path}: unknown key '{k}'; see `pretrain_gpt.py --help` for the accepted names")
            out[o.dest] = v
    return out


def _read_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path} does not exist; give the path of a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"--config {path} is not valid YAML ({where}{problem}); fix the file") from None
    return _flatten_yaml(data, path)


def _shape_fragment(o: Option, value) -> str:
    """``value`` as command-line words ("" when it is the default a missing flag gives)."""
    if o.negate:
        return "" if value else o.negate
    if o.kind is bool:
        if bool(value) == bool(o.default):
            return ""
        return o.flag if value else o.flag.replace("--", "--no-", 1)
    if value is None or (o.kind is list and not value):
        return ""
    if o.kind is list:
        return f"{o.flag} {' '.join(map(str, value))}"
    return f"{o.flag} {value}"


def _overridable(o: Option, saved: dict) -> bool:
    """A saved shape field a flag may change (RoPE: numerics, not weight shapes)."""
    if o.override == "rotary":
        return bool(saved.get("use_rotary_position_embeddings"))
    return o.override is True


def _apply_model_args(values: dict, given: dict) -> dict:
    """Fold ``--load DIR``'s model_args.json into values; a given shape field that disagrees is an error,
    except the RoPE fields (``override`` in megatron.config), whose change is printed in one line."""
    from megatron.training.weights import MODEL_ARGS_JSON, read_model_args

    load = values.get("checkpoint.load")
    saved = read_model_args(load) if load else None
    if not saved:
        return values
    by_key = {o.key: o for o in shape_options()}
    changed = []
    tokenizer_sets_vocab = values.get("data.tokenizer_type") not in (None, "NullTokenizer")
    for key, value in saved.items():
        o = by_key.get(key)
        if o is None:
            continue
        if key == "vocab_size" and tokenizer_sets_vocab:
            continue  # the tokenizer gives it (Config.resolve), as in the run that saved; --vocab-size is not read
        if o.dest in given and given[o.dest] != value and _overridable(o, saved):
            changed.append(f"{key} {value} -> {given[o.dest]}")
            continue
        if o.dest in given and given[o.dest] != value:
            flag = _shape_fragment(o, given[o.dest]) or f"{o.flag} {given[o.dest]}"
            raise ConfigError(
                f"{flag} disagrees with {key}={value} in {os.path.join(load, MODEL_ARGS_JSON)}; "
                "drop the flag (the checkpoint sets the model shape)"
            )
        values[o.dest] = value
    if changed and os.environ.get("RANK", "0") == "0":
        print(f"> --load {load}: RoPE changed for continued pretraining: {', '.join(changed)}", flush=True)
    return values


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Flags (and the optional YAML) into a validated Config; raises ConfigError."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(_attach_negative_values(argv))
    if unknown:
        raise ConfigError(f"unrecognized arguments: {' '.join(unknown)}; see `pretrain_gpt.py --help`")
    for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
        if getattr(args, name) != 1:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} {getattr(args, name)} is not supported: DeepSpeed-Ulysses does not combine with tensor or "
                "pipeline parallelism; use --ds-sequence-parallel-size and ZeRO (--zero-stage 3) instead"
            )
    yaml_values = _read_yaml(args.config) if args.config else {}
    cli = {o.dest: getattr(args, o.dest) for o in options() if getattr(args, o.dest, None) is not None}
    values = {**yaml_values, **cli}
    values = _apply_model_args(values, given=values.copy())
    return config_from_values(values)


def config_from_values(values: dict) -> Config:
    """The Config of a {section.field: value} mapping; dataclass validation runs here."""
    sections = {name: {} for name in SECTIONS}
    for dest, value in values.items():
        section, name = dest.split(".", 1)
        sections[section][name] = value
    return Config(**{name: cls(**sections[name]) for name, cls in SECTIONS.items()})


def flag_reference() -> str:
    """The Markdown flag reference (docs/flags.md), generated from the config."""
    lines = ["# Flags", "", "Generated from `megatron/config.py` by `python -m megatron.arguments --markdown`; "
             "YAML keys are the flag names with underscores, or `section: {field: value}`.", ""]  # fmt: skip
    for section, title in _GROUP_TITLES.items():
        lines += [f"## {title}", "", "| flag | YAML `section.field` | default | meaning |", "| --- | --- | --- | --- |"]
        for o in options():
            if o.section != section:
                continue
            flags = " ".join(f"`{f}`" for f in ((o.negate,) if o.negate else (o.flag, *o.aliases)))
            choices = f" One of {', '.join(f'`{c}`' for c in o.choices)}." if o.choices else ""
            default = "" if o.default in (None, []) else f"`{o.default}`"
            lines.append(f"| {flags} | `{o.dest}` | {default} | {o.help}{choices}{_shape_tag(o)} |")
        lines.append("")
    lines += ["## Megatron-DeepSpeed spellings", "", "| flag | meaning |", "| --- | --- |"]
    for flags, _, kw in _LEGACY:
        lines.append(f"| {' '.join(f'`{f}`' for f in flags)} | {kw['help']} |")
    lines.append("| `--tensor-model-parallel-size` `--pipeline-model-parallel-size` | must be 1 (use SP and ZeRO instead) |")
    lines.append(f"| {' '.join(f'`{f}`' for f in _NO_EFFECT_SWITCHES + _NO_EFFECT_VALUES)} | accepted, no effect |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(flag_reference())
    else:
        sys.exit("usage: python -m megatron.arguments --markdown  (prints the flag reference)")
