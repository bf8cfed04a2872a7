"""How a config field is declared (``opt``) and validated; the names ``megatron.config`` builds on.

``opt`` attaches to a dataclass field what the command line and YAML need (flag, aliases, YAML
names, choices, whether the weights depend on it); ``megatron.arguments`` reads it back.
"""

from __future__ import annotations

from dataclasses import field


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


ATTENTION_BACKENDS = ("classic", "sdpa", "flash", "flash_triton")
ROPE_SCALING_TYPES = ("linear", "llama3", "yarn", "dynamic", "longrope")
LAYER_TYPES = ("full_attention", "sliding_attention")
NORMALIZATIONS = ("LayerNorm", "RMSNorm", "GemmaRMSNorm")
ULYSSES_EXCHANGES = ("deepspeed", "fused", "overlap")


def opt(default=None, *, flag=None, aliases=(), yaml=(), choices=None, shape=False, override=False, negate=None,
        parse=None, factory=None):  # fmt: skip
    """A config field and how the command line and YAML spell it.

    flag: the command-line name (default ``--`` + field name with dashes); aliases: other
    spellings of the same flag; yaml: other YAML key names (ArcticTraining/ALST/Oumi's);
    choices: allowed values; shape: the field is saved with the weights (model_args.json);
    override: a shape field that a flag may change on ``--load`` (it changes the numerics, not
    the weights' shapes: RoPE); ``"rotary"``: only for a checkpoint with rotary embeddings;
    negate: a flag that sets a boolean to False (``--disable-bias-linear``); parse: a function
    from the command-line string to the value (default: from the field's type).
    """
    meta = dict(flag=flag, aliases=tuple(aliases), yaml=tuple(yaml), choices=choices, shape=shape, override=override,
                negate=negate, parse=parse)  # fmt: skip
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _fill(obj, name: str, value) -> None:
    """Set a derived default on a frozen dataclass while it is being built."""
    object.__setattr__(obj, name, value)


def _choice(value, choices, flag: str) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} {value!r} is unknown; use one of {', '.join(map(str, choices))}")
