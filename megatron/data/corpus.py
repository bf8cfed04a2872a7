"""The default corpus: real text present on every machine, gathered from Python's own stdlib.

No download, no committed data: the documents are (1) the docstrings of every stdlib module
(module, class and function docstrings of one file form one document) plus the stdlib's
``.txt``/``.rst`` files, about 2 MB of English prose, and (2) the stdlib's ``.py`` sources,
about 12 MB of code (tests excluded). Both are under the PSF licence of the interpreter
that runs us. A SentencePiece unigram tokenizer (8192 pieces, byte fallback) is trained on
the prose plus a fixed sample of the code, then everything is preprocessed into
``{cache}/stdlib-<key>/corpus_text_document.{bin,idx}``.

``prepare_default_corpus`` does this once (about 15 s on 2 cores), under a file lock, in a
temporary folder renamed when complete; later calls return the cached paths at once. The
result is deterministic for a given Python version, which is part of the cache key.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import time

CORPUS_VERSION = 1
VOCAB_SIZE = 8192
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "idlelib/idle_test"}
_TOKENIZER_CODE_BYTES = 4_000_000


def _log(msg: str) -> None:
    print(f"[corpus] {msg}", file=sys.stderr, flush=True)


def _stdlib_files(root: str) -> list:
    """Relative paths of the stdlib's .py/.txt/.rst files, sorted, tests and site-packages excluded."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for f in sorted(filenames):
            if f.endswith((".py", ".txt", ".rst")):
                out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return out


def _docstrings(source: str) -> str:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return "\n\n".join(d for n in ast.walk(tree) if isinstance(n, kinds) and (d := ast.get_docstring(n)))


def gather_stdlib_documents(root: str | None = None) -> tuple:
    """(prose documents, code documents) as lists of strings, in a fixed order."""
    root = root or sysconfig.get_paths()["stdlib"]
    prose, code = [], []
    for rel in _stdlib_files(root):
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
            text = f.read()
        if rel.endswith(".py"):
            doc = _docstrings(text)
            if len(doc) >= 64:
                prose.append(doc)
            if text.strip():
                code.append(text)
        elif len(text) >= 64:
            prose.append(text)
    return prose, code


def _train_tokenizer(texts: list, prefix: str) -> str:
    import sentencepiece as spm

    lines = f"{prefix}.train.txt"
    with open(lines, "w", encoding="utf-8") as f:
        for t in texts:
            for line in t.split("\n"):
                if line.strip():
                    f.write(line + "\n")
    spm.SentencePieceTrainer.train(
        input=lines,
        model_prefix=prefix,
        vocab_size=VOCAB_SIZE,
        model_type="unigram",
        byte_fallback=True,
        character_coverage=0.9999,
        split_digits=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        max_sentence_length=1 << 16,
        num_threads=1,  # one thread: the trained model is identical run to run
        minloglevel=2,
    )
    os.remove(lines)
    return prefix + ".model"


def _cache_key() -> str:
    stdlib = sysconfig.get_paths()["stdlib"]
    desc = {"v": CORPUS_VERSION, "python": sys.version, "stdlib": stdlib, "vocab": VOCAB_SIZE}
    return hashlib.md5(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:12]


def prepare_default_corpus(cache_dir: str, workers: int | None = None) -> dict:
    """Build (once) the stdlib corpus and its tokenizer; returns paths and counts.

    Keys: ``data_prefix`` (for ``--data-path``), ``tokenizer_model`` (a SentencePiece model,
    use ``--tokenizer-type GPTSentencePieceTokenizer``), ``tokenizer_type``, ``documents``,
    ``tokens``.
    """
    from megatron.data.preprocess import preprocess

    os.makedirs(cache_dir, exist_ok=True)
    final = os.path.join(cache_dir, f"stdlib-{_cache_key()}")
    manifest = os.path.join(final, "manifest.json")
    with open(os.path.join(cache_dir, ".stdlib-corpus.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent callers wait for the first build
        if not os.path.exists(manifest):
            t0 = time.time()
            work = f"{final}.tmp-{os.getpid()}"
            shutil.rmtree(work, ignore_errors=True)
            os.makedirs(work)
            try:
                _log(f"gathering stdlib text from {sysconfig.get_paths()['stdlib']}")
                prose, code = gather_stdlib_documents()
                sample, n = [], 0
                for c in code[::5]:  # every fifth source file, up to ~4 MB
                    if n >= _TOKENIZER_CODE_BYTES:
                        break
                    sample.append(c)
                    n += len(c)
                _log(f"{len(prose)} prose + {len(code)} code documents; training a {VOCAB_SIZE}-piece tokenizer")
                model = _train_tokenizer(prose + sample, os.path.join(work, "tokenizer"))
                jsonl = os.path.join(work, "corpus.jsonl")
                with open(jsonl, "w", encoding="utf-8") as f:
                    for doc in prose + code:
                        f.write(json.dumps({"text": doc}) + "\n")
                _log("tokenizing")
                spec = {"tokenizer_type": "GPTSentencePieceTokenizer", "tokenizer_model": model}
                stats = preprocess(
                    jsonl,
                    os.path.join(work, "corpus"),
                    spec,
                    append_eod=True,
                    workers=workers or min(4, os.cpu_count() or 1),
                    log_interval=0,
                )
                os.remove(jsonl)
                info = {
                    "documents": stats.documents,
                    "tokens": stats.tokens,
                    "prose_documents": len(prose),
                    "code_documents": len(code),
                    "python": sys.version,
                    "licence": "Python Software Foundation License (text of the Python standard library)",
                }
                with open(os.path.join(work, "manifest.json"), "w") as f:
                    json.dump(info, f, indent=2)
                shutil.rmtree(final, ignore_errors=True)
                os.replace(work, final)
                _log(f"{stats.documents} documents, {stats.tokens} tokens in {time.time() - t0:.1f}s -> {final}")
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
        with open(manifest) as f:
            info = json.load(f)
    return {
        "data_prefix": os.path.join(final, "corpus_text_document"),
        "tokenizer_model": os.path.join(final, "tokenizer.model"),
        "tokenizer_type": "GPTSentencePieceTokenizer",
        **info,
    }
