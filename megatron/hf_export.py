"""The files beside exported Hugging Face weights that make the directory load as is.

``tools/convert_checkpoint.py megatron-to-hf`` writes ``config.json`` and the safetensors; then
``finish_hf_dir`` adds the tokenizer the run trained with (the run's config records
``--tokenizer-type`` / ``--tokenizer-model``; a converted directory keeps its source's
``tokenizer/``), a ``tokenizer_config.json`` where those files carry none, the bos/eos ids in
``config.json`` when the generated config has none, and ``generation_config.json`` with them.
``transformers`` (AutoTokenizer, AutoModelForCausalLM, GenerationConfig) and
``tools/generate.py`` then load the directory without further flags. A SentencePiece
``tokenizer.model`` is read by transformers through its converter (which needs protobuf).
"""

from __future__ import annotations

import json
import os
import shutil

HF_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
    "vocab.json", "merges.txt", "chat_template.jinja", "generation_config.json",
)  # fmt: skip


def _files_in(folder: str) -> dict:
    return {n: os.path.join(folder, n) for n in HF_TOKENIZER_FILES if os.path.isfile(os.path.join(folder, n))}


def _recorded_files(data: dict) -> tuple:
    """({exported name: source path}, missing paths) of the tokenizer a run's data config names."""
    kind, model = data.get("tokenizer_type"), data.get("tokenizer_model")
    if kind == "HFTokenizer" and model:
        if os.path.isdir(model):
            return _files_in(model), []
        if not os.path.isfile(model):
            return {}, [model]
        files = _files_in(os.path.dirname(model))
        files["tokenizer.json"] = model  # the file the run read, whatever its name
        return files, []
    if kind in ("GPTSentencePieceTokenizer", "SentencePieceTokenizer") and model:
        return ({"tokenizer.model": model}, []) if os.path.isfile(model) else ({}, [model])
    if kind == "GPT2BPETokenizer":
        pairs = {"vocab.json": data.get("vocab_file"), "merges.txt": data.get("merge_file")}
        missing = [p or name for name, p in pairs.items() if not (p and os.path.isfile(p))]
        return ({} if missing else pairs), missing
    return {}, []


def _tokenizer_config(kind: str, tok) -> dict | None:
    """A tokenizer_config.json for files that come without one."""
    piece = getattr(tok, "detokenize", None)
    if kind == "GPTSentencePieceTokenizer":
        sp = tok.sp
        name = lambda i: sp.IdToPiece(i) if i is not None and i >= 0 else None
        bos = tok.bos if getattr(tok, "bos", None) is not None else sp.bos_id()
        return {"tokenizer_class": "LlamaTokenizer", "add_bos_token": getattr(tok, "bos", None) is not None,
                "add_eos_token": False, "legacy": True, "bos_token": name(bos), "eos_token": name(tok.eod),
                "unk_token": name(sp.unk_id()), "pad_token": None}  # fmt: skip
    if kind == "GPT2BPETokenizer":
        eot = "<|endoftext|>"
        return {"tokenizer_class": "GPT2Tokenizer", "bos_token": eot, "eos_token": eot, "unk_token": eot,
                "add_prefix_space": False}  # fmt: skip
    if kind == "HFTokenizer" and piece is not None:
        bos = getattr(tok, "bos", None)
        return {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": piece([tok.eod]),
                "bos_token": piece([bos]) if bos is not None else None, "add_bos_token": bos is not None}  # fmt: skip
    return None


def _exported_tokenizer(output_dir: str, kind: str | None):
    """Our tokenizer read back from the exported files (for its bos/eos ids), or None."""
    from megatron.tokenizer import TokenizerError, create_tokenizer

    join = lambda n: os.path.join(output_dir, n)
    try:
        if os.path.isfile(join("tokenizer.json")):
            return "HFTokenizer", create_tokenizer("HFTokenizer", tokenizer_model=output_dir)
        if os.path.isfile(join("tokenizer.model")):
            if kind not in ("GPTSentencePieceTokenizer", "SentencePieceTokenizer"):
                kind = "GPTSentencePieceTokenizer"
            return kind, create_tokenizer(kind, tokenizer_model=join("tokenizer.model"))
        if os.path.isfile(join("vocab.json")) and os.path.isfile(join("merges.txt")):
            return "GPT2BPETokenizer", create_tokenizer("GPT2BPETokenizer", vocab_file=join("vocab.json"),
                                                        merge_file=join("merges.txt"))  # fmt: skip
    except (TokenizerError, ImportError, ValueError):
        return kind, None
    return kind, None


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def finish_hf_dir(output_dir: str, beside: str | None, run_data: dict | None) -> str:
    """Add the tokenizer, its config, bos/eos ids and generation_config.json to an exported
    directory that holds config.json. ``beside``: a folder of tokenizer files that came with the
    weights (a converted directory's ``tokenizer/``); ``run_data``: the data section of the run's
    config. Returns one line saying what was written (or what is missing)."""
    kind = (run_data or {}).get("tokenizer_type")
    files, missing = _recorded_files(run_data or {})
    if not files and beside and os.path.isdir(beside):
        files = _files_in(beside)
    for name, src in files.items():
        shutil.copyfile(src, os.path.join(output_dir, name))
    kind, tok = _exported_tokenizer(output_dir, kind)
    written = sorted(files)
    if tok is not None and "tokenizer_config.json" not in files:
        config = _tokenizer_config(kind, tok)
        if config is not None:
            _write_json(os.path.join(output_dir, "tokenizer_config.json"), config)
            written.append("tokenizer_config.json")
    config_path = os.path.join(output_dir, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    ids = {"bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id")}
    if tok is not None:
        bos = getattr(tok, "bos", None)
        if bos is None and kind == "GPTSentencePieceTokenizer" and tok.sp.bos_id() >= 0:
            bos = tok.sp.bos_id()
        if ids["eos_token_id"] is None:
            ids["eos_token_id"] = tok.eod
        if ids["bos_token_id"] is None:
            ids["bos_token_id"] = bos if bos is not None else tok.eod  # GPT-2 style: one end-of-text token
    if any(config.get(k) is None and v is not None for k, v in ids.items()):
        config.update({k: v for k, v in ids.items() if v is not None})
        _write_json(config_path, config)
    generation = os.path.join(output_dir, "generation_config.json")
    if not os.path.isfile(generation) and ids["eos_token_id"] is not None:
        _write_json(generation, {k: v for k, v in ids.items() if v is not None})
        written.append("generation_config.json")
    if tok is None:
        where = f" (the run's tokenizer {', '.join(missing)} is gone)" if missing else ""
        return f"no tokenizer files written{where}: copy the tokenizer into {output_dir} before loading it"
    return f"tokenizer: {', '.join(sorted(written))} (bos {ids['bos_token_id']}, eos {ids['eos_token_id']})"
