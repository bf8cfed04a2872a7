"""JSON Lines -> Megatron ``.bin/.idx``: the library behind ``tools/preprocess_data.py``.

Lines are read in the main process in chunks (so every error can name its file and line),
tokenized in a ``multiprocessing`` pool (``workers`` processes, results kept in input order
so the output is deterministic) and streamed to one ``IndexWriter`` per JSON key. Outputs
are published atomically: on any error nothing that looks like a finished pair is left, nor
a folder the run created. Each pair gets ``{prefix}.meta``, the tokenizer that made it
(``megatron.data.dataset_info``, checked by training).

Bad input policy: a malformed line, a missing key or a non-string value stops the run with
``file:line: problem`` unless ``skip_malformed`` is set, in which case the line is skipped
and counted. Blank lines are ignored; documents that tokenize to nothing are skipped and counted;
input without a single document is an error.
"""

from __future__ import annotations

import collections
import glob
import gzip
import itertools
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from megatron.data.dataset_info import write_info
from megatron.data.errors import DataError
from megatron.data.indexed_dataset import IndexWriter, best_fitting_dtype, check_vocab_fits
from megatron.tokenizer import create_tokenizer


class PreprocessError(DataError):
    """Input that cannot be preprocessed; the message names the file, line and fix."""


@dataclass
class PreprocessStats:
    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped_malformed: int = 0
    skipped_empty: int = 0
    outputs: dict = field(default_factory=dict)

    def summary(self) -> str:
        s = max(self.seconds, 1e-9)
        return (
            f"{self.documents} documents, {self.tokens} tokens, {self.bytes / 1e6:.1f} MB in {self.seconds:.1f}s "
            f"({self.documents / s:.0f} docs/s, {self.bytes / 1e6 / s:.2f} MB/s, {self.tokens / s:.0f} tokens/s); "
            f"skipped {self.skipped_malformed} malformed, {self.skipped_empty} empty"
        )


def expand_inputs(pattern: str) -> list:
    """Files matching ``pattern`` (a path, a glob, or a comma-separated list), sorted."""
    files: list = []
    for part in pattern.split(","):
        matched = sorted(glob.glob(part)) if any(c in part for c in "*?[") else ([part] if os.path.exists(part) else [])
        if not matched:
            raise PreprocessError(f"--input {part} matches no file; check the path or the glob")
        files.extend(matched)
    return files


def _open(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def iter_chunks(files: list, chunk_lines: int = 512, chunk_bytes: int = 1 << 18) -> Iterator[tuple]:
    """Yield ``(file, first_line_number, [raw lines])`` of at most ``chunk_lines`` lines or ~``chunk_bytes``."""
    for path in files:
        try:
            with _open(path) as f:
                buf, first, size = [], 1, 0
                for lineno, line in enumerate(f, 1):
                    buf.append(line)
                    size += len(line)
                    if len(buf) == chunk_lines or size >= chunk_bytes:
                        yield path, first, buf
                        buf, first, size = [], lineno + 1, 0
                if buf:
                    yield path, first, buf
        except (OSError, EOFError) as e:  # truncated gzip and friends
            raise PreprocessError(f"{path}: cannot be read ({e}); the file is truncated or not JSON Lines") from None


_W: dict = {}


def _init_worker(spec: dict, json_keys: tuple, append_eod: bool, in_pool: bool = False) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # HF tokenizers: one thread per worker
    if in_pool:  # signals are the parent's business: it stops at a chunk boundary and kills workers itself
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    spec = dict(spec)
    _W["tok"] = create_tokenizer(spec.pop("tokenizer_type"), **spec)
    _W["keys"] = json_keys
    _W["eod"] = append_eod


def _encode_chunk(chunk: tuple) -> tuple:
    """Tokenize one chunk: returns (per-key (flat, lengths), errors, n_empty, n_bytes)."""
    path, first, lines = chunk
    tok, keys, eod = _W["tok"], _W["keys"], _W["eod"]
    per_key = {k: ([], []) for k in keys}
    errors, empty, nbytes = [], 0, 0
    for i, raw in enumerate(lines):
        nbytes += len(raw)
        if not raw.strip():
            continue
        where = f"{path}:{first + i}"
        try:
            obj = json.loads(raw)
        except ValueError as e:
            errors.append(f"{where}: malformed JSON ({e})")
            continue
        if not isinstance(obj, dict):
            errors.append(f"{where}: line is not a JSON object")
            continue
        missing = [k for k in keys if k not in obj]
        bad = [k for k in keys if k in obj and not isinstance(obj[k], str)]
        if missing or bad:
            what = f"missing key {missing[0]!r}" if missing else f"key {bad[0]!r} is not a string"
            errors.append(f"{where}: {what}")
            continue
        try:
            encoded = [(k, tok.tokenize(obj[k]) if obj[k] else []) for k in keys]
        except ValueError as e:
            errors.append(f"{where}: cannot tokenize ({e})")
            continue
        for k, ids in encoded:
            if not ids:
                empty += 1
                continue
            if eod:
                ids.append(tok.eod)
            per_key[k][0].append(ids)
            per_key[k][1].append(len(ids))
    out = {}
    for k, (docs, lens) in per_key.items():
        flat = np.fromiter(itertools.chain.from_iterable(docs), dtype=np.int32, count=sum(lens))
        out[k] = (flat, np.asarray(lens, dtype=np.int64))
    return out, errors, empty, nbytes


def _ordered_map(executor, fn, items, depth: int):
    """``map(fn, items)`` in order on the executor, with at most ``depth`` items in flight (bounded memory)."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _Progress:
    """One line of documents/s and MB/s, redrawn on a terminal and printed every interval otherwise."""

    def __init__(self, log_interval: int, stream=sys.stderr):
        self.every, self.stream, self.t0, self.next = log_interval, stream, time.time(), log_interval
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def update(self, docs: int, nbytes: int, final: bool = False) -> None:
        if self.every <= 0 or (docs < self.next and not final):
            return
        self.next = (docs // self.every + 1) * self.every
        dt = max(time.time() - self.t0, 1e-9)
        msg = f"processed {docs} documents ({docs / dt:.0f} docs/s, {nbytes / 1e6 / dt:.2f} MB/s)"
        self.stream.write(("\r" + msg + ("\n" if final else "")) if self.tty else msg + "\n")
        self.stream.flush()


def _missing_dirs(folder: str) -> list:
    """``folder`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    while folder and not os.path.exists(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing[::-1]


def _write_chunks(results, writers: dict, stats, progress, should_stop, skip_malformed: bool) -> None:
    """Append each tokenized chunk to its key's writer, in input order, counting into ``stats``."""
    for out, errors, empty, nbytes in results:
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt
        if errors and not skip_malformed:
            raise PreprocessError(f"{errors[0]}; fix the input or pass --skip-malformed")
        stats.skipped_malformed += len(errors)
        stats.skipped_empty += empty
        stats.bytes += nbytes
        for k, (flat, lens) in out.items():
            writers[k].add_documents(flat, lens)
            stats.tokens += int(flat.size)
        stats.documents += len(next(iter(out.values()))[1])
        progress.update(stats.documents, stats.bytes)


def _abort(writers: dict, new_dirs: list, executor, interrupted: bool) -> None:
    """A failed or interrupted run leaves nothing: partial outputs and the folders it created go."""
    for w in writers.values():
        w.abort()
    for d in reversed(new_dirs):  # only the folders this run created, and only if empty
        try:
            os.rmdir(d)
        except OSError:
            break
    if executor is not None:  # queued chunks are dropped; workers finish at most their current one
        if interrupted:  # do not wait for them
            for proc in list(getattr(executor, "_processes", {}).values()):
                proc.kill()
        executor.shutdown(wait=False, cancel_futures=True)


def preprocess(
    input: str,
    output_prefix: str,
    tokenizer_spec: dict,
    *,
    json_keys=("text",),
    append_eod: bool = False,
    workers: int = 1,
    log_interval: int = 1000,
    skip_malformed: bool = False,
    dtype: str | None = None,
    chunk_lines: int = 512,
    progress_stream=sys.stderr,
    should_stop: Callable[[], bool] | None = None,
) -> PreprocessStats:
    """Tokenize JSON Lines ``input`` into ``{output_prefix}_{key}_document.{bin,idx}``.

    ``tokenizer_spec`` holds ``create_tokenizer`` arguments (``tokenizer_type`` and files).
    ``dtype`` None picks uint16 when the vocabulary fits, else int32. ``should_stop`` is polled
    after every chunk; when it returns True the run stops as on Ctrl-C (KeyboardInterrupt, no
    output). Entry points set a flag from their signal handlers, so the interruption lands at a
    safe point instead of inside the process pool's machinery.
    """
    files = expand_inputs(input)
    spec = dict(tokenizer_spec)
    tok = create_tokenizer(spec.pop("tokenizer_type"), **spec)  # fail fast on a bad tokenizer
    np_dtype = np.dtype(dtype) if dtype else np.dtype(best_fitting_dtype(tok.vocab_size))
    check_vocab_fits(tok.vocab_size, np_dtype)
    json_keys = tuple(json_keys)
    stats = PreprocessStats()
    new_dirs = _missing_dirs(os.path.dirname(os.path.abspath(output_prefix)))  # removed again if the run fails
    writers: dict = {}
    progress = _Progress(log_interval, progress_stream)
    t0 = time.time()
    executor = None
    try:
        writers = {k: IndexWriter(f"{output_prefix}_{k}_document", np_dtype) for k in json_keys}
        initargs = (tokenizer_spec, json_keys, append_eod)
        chunks = iter_chunks(files, chunk_lines)
        if workers > 1:
            ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
            executor = ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_init_worker, initargs=(*initargs, True)
            )
            results = _ordered_map(executor, _encode_chunk, chunks, depth=4 * workers)
        else:
            _init_worker(*initargs)
            results = map(_encode_chunk, chunks)
        _write_chunks(results, writers, stats, progress, should_stop, skip_malformed)
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt
        if stats.documents == 0:
            raise PreprocessError(
                f"--input {input} holds no documents ({stats.skipped_empty} empty, {stats.skipped_malformed} skipped "
                f"as malformed, the rest blank lines); check the file and --json-keys {' '.join(json_keys)}"
            )
        for k, w in writers.items():
            w.finalize()
            write_info(w.prefix, tok, json_key=k, append_eod=append_eod, dtype=np_dtype.name)
    except BaseException as e:
        _abort(writers, new_dirs, executor, interrupted=isinstance(e, (KeyboardInterrupt, SystemExit)))
        raise
    if executor is not None:
        executor.shutdown()
    stats.seconds = time.time() - t0
    progress.update(stats.documents, stats.bytes, final=True)
    stats.outputs = {k: w.prefix for k, w in writers.items()}
    return stats
