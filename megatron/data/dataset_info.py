"""``{prefix}.meta``: which tokenizer made a ``.bin/.idx`` pair, checked when a run reads it.

Token ids mean nothing without the tokenizer that made them, and a larger tokenizer than the
data's reads every id without complaint. So preprocessing writes, beside the pair, the
tokenizer's type, vocabulary size, end-of-document id, files and a fingerprint (its pieces for
a sample of ids and its ids for a fixed text), and training refuses a tokenizer whose size or
fingerprint differs. Megatron-LM's readers open only ``.bin`` and ``.idx`` and ignore the file;
a pair without it (older or foreign data) is read as before.
"""

from __future__ import annotations

import hashlib
import json
import os

from megatron.data.errors import DataError

SUFFIX = ".meta"  # not .json: input globs such as "*.json*" must not match it
_PROBE = "The quick brown fox jumps over the lazy dog. 0123456789\n\tdef f(x): return x ** 2  # Ünïcödé — 日本語 🙂"
_SAMPLED_IDS = 512


def info_path(prefix: str) -> str:
    return prefix + SUFFIX


def tokenizer_identity(tok) -> dict:
    """What identifies a tokenizer's ids: type, vocabulary size, eod, files and a fingerprint."""
    h = hashlib.sha256(f"{tok.vocab_size}|{tok.eod}".encode())
    for i in range(0, tok.vocab_size, max(1, tok.vocab_size // _SAMPLED_IDS)):
        try:
            piece = tok.detokenize([i])
        except (ValueError, KeyError, IndexError):
            piece = "\ufffd"
        h.update(f"|{i}:{piece}".encode("utf-8", "surrogatepass"))
    try:
        h.update(("|" + ",".join(map(str, tok.tokenize(_PROBE)))).encode())
    except ValueError:  # NullTokenizer reads only integers: the sampled ids identify it
        pass
    files = {k: v for k, v in tok.spec().items() if k != "tokenizer_type" and isinstance(v, str)}
    return {"type": tok.name, "vocab_size": tok.vocab_size, "eod": tok.eod, "files": files,
            "fingerprint": h.hexdigest()}  # fmt: skip


def write_info(prefix: str, tok, **facts) -> str:
    """Write ``{prefix}.meta`` (atomically) with the tokenizer's identity and ``facts``."""
    return write_raw_info(prefix, {"tokenizer": tokenizer_identity(tok), **facts})


def read_info(prefix: str) -> dict | None:
    """The pair's recorded info, or None when it has none."""
    path = info_path(prefix)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}); delete it (the data is read without the check) or rewrite it") from e


def _describe(t: dict) -> str:
    files = ", ".join(t.get("files", {}).values())
    return f"{t['type']} (vocabulary {t['vocab_size']}{', ' + files if files else ''})"


def check_tokenizer(prefixes, tok) -> None:
    """Raise DataError if a prefix was tokenized by another tokenizer than ``tok``."""
    ours = None
    for prefix in prefixes:
        info = read_info(prefix)
        if info is None or "tokenizer" not in info:
            continue
        ours = ours or tokenizer_identity(tok)
        theirs = info["tokenizer"]
        if theirs.get("vocab_size") == ours["vocab_size"] and theirs.get("fingerprint") == ours["fingerprint"]:
            continue
        how = "another tokenizer of the same size" if theirs.get("vocab_size") == ours["vocab_size"] else "a tokenizer"
        raise DataError(
            f"{prefix} was tokenized by {how}: {_describe(theirs)}, but this run's tokenizer is {_describe(ours)}; "
            "pass the tokenizer that made the data (--tokenizer-type/--tokenizer-model), or preprocess the data again "
            "with this one"
        )


def merged_info(prefixes) -> dict | None:
    """The info of a merge of ``prefixes``: theirs when all record the same tokenizer, None when any
    records none; DataError when two were made by different tokenizers."""
    infos = [(p, read_info(p)) for p in prefixes]
    if not infos or any(i is None or "tokenizer" not in i for _, i in infos):
        return None
    (first, info), key = infos[0], infos[0][1]["tokenizer"].get("fingerprint")
    for p, other in infos[1:]:
        if other["tokenizer"].get("fingerprint") != key:
            raise DataError(
                f"{first} and {p} were tokenized by different tokenizers ({_describe(info['tokenizer'])} and "
                f"{_describe(other['tokenizer'])}); merge data of one tokenizer"
            )
    return info


def write_raw_info(prefix: str, info: dict) -> str:
    """Write an info dict as it is (a merge's)."""
    path = info_path(prefix)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, path)
    return path
