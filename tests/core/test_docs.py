"""The README's and the guide's commands and paths exist.

Every ``--flag`` written in README.md, CONTRIBUTING.md, CHANGELOG.md and docs/*.md (the guide; not
the generated flags.md and results.md) is accepted by ``pretrain_gpt.py``'s parser or by the script
its command line names, and every repository path, link and link anchor named there exists.
"""

import re
import shlex
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = {"flags.md", "results.md"}
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md",
         *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in GENERATED)]  # fmt: skip
TOP = ("megatron/", "bench/", "tools/", "tests/", "docs/", "examples_deepspeed/", "benchmarks/", ".ci/")
TOP_FILES = {"pretrain_gpt.py", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "CONTRIBUTING.md"}
FORWARDS_TO_PRETRAIN = {"bench/profile_step.py", "megatron/launch.py"}  # and every examples_deepspeed/ script
FLAG = re.compile(r"--[a-z][a-z0-9_-]*")
FENCE = re.compile(r"^```([a-z]*)\n(.*?)^```", re.S | re.M)


@cache
def pretrain_flags() -> frozenset:
    from megatron.arguments import build_parser

    return frozenset(build_parser()._option_string_actions) | {"--print-deepspeed-config"}


@cache
def script_flags(rel: str) -> frozenset:
    """The flags a script's argparse accepts: the literals in its source and in the bench/ helpers it imports
    (``--x`` of a BooleanOptionalAction also gives ``--no-x``)."""
    if rel == "pretrain_gpt.py":
        return pretrain_flags()
    path = ROOT / rel
    sources = [path.read_text()]
    for mod in re.findall(r"^\s*(?:from|import) (\w+)", sources[0], flags=re.M):
        if (ROOT / "bench" / f"{mod}.py").exists() and path.parent.name == "bench":
            sources.append((ROOT / "bench" / f"{mod}.py").read_text())
    flags = {m for s in sources for m in re.findall(r"[\"'](--[a-z][a-z0-9_-]*)", s)}
    flags |= {"--no-" + f[2:] for f in flags}
    if rel in FORWARDS_TO_PRETRAIN or rel.startswith("examples_deepspeed/"):
        flags |= pretrain_flags()
    return frozenset(flags)


@cache
def any_script_flags() -> frozenset:
    rels = [str(p.relative_to(ROOT)) for d in ("bench", "tools") for p in (ROOT / d).glob("*.py")]
    rels += ["megatron/launch.py", "megatron/arguments.py"]
    return frozenset().union(pretrain_flags(), *(script_flags(r) for r in rels))


def _script(token: str, cwd: Path) -> str | None:
    for base in (cwd, ROOT):
        p = (base / token).resolve()
        if p.is_file() and p.suffix in (".py", ".sh") and p.is_relative_to(ROOT):
            return str(p.relative_to(ROOT))
    return None


def command_flags(block: str):
    """(script, flag) for every flag of every command line of a shell block; script is None where the flag
    goes to a program of another project (pip, pytest, torchrun's own flags, ...)."""
    cwd = ROOT
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#(?!SBATCH).*$", "", line).strip()
        if not line or line.startswith("#"):
            continue
        try:
            tokens = shlex.split(line)
        except ValueError:
            tokens = line.split()
        if tokens[:1] == ["cd"] and len(tokens) > 1:
            cwd = (cwd / tokens[1]).resolve()
            continue
        yield from _tokens_flags(tokens, cwd)


def _tokens_flags(tokens: list, cwd: Path):
    segments, seg = [], []
    for t in tokens:
        if t in ("&&", "||", "|", ";"):
            segments.append(seg)
            seg = []
        else:
            seg.append(t)
    segments.append(seg)
    for seg in segments:
        words = [t for t in seg if " " in t or not re.match(r"^[A-Z_][A-Z0-9_]*=", t)]  # not the VAR=value prefixes
        target = "pretrain_gpt.py" if words and words[0].startswith("--") else None  # a fragment of flags
        i = 0
        while i < len(words):
            t = words[i]
            if " " in t:  # a quoted command: bash -c '...', "$(python ...)"
                yield from _tokens_flags(shlex.split(t.strip("$()")), cwd)
            elif t == "--":
                target = "pretrain_gpt.py"
            elif t == "-m" and i + 1 < len(words):
                mod = ROOT / (words[i + 1].replace(".", "/") + ".py")
                target = str(mod.relative_to(ROOT)) if mod.exists() else None
                i += 1
            elif t.startswith("--"):
                for flag in t.split("="):  # --peer-arg=--pad-vocab=1
                    if FLAG.fullmatch(flag):
                        yield target, flag
            elif _script(t, cwd):
                target = _script(t, cwd)
            i += 1


def inline_code(text: str) -> list:
    return re.findall(r"`([^`\n]+)`", FENCE.sub("", text))


def test_every_flag_in_the_docs_is_accepted_by_the_script_it_is_passed_to():
    wrong = []
    for page in PAGES:
        text = page.read_text()
        for lang, block in FENCE.findall(text):
            if lang in ("", "bash", "sh"):
                for script, flag in command_flags(block):
                    if script is not None and flag not in script_flags(script):
                        wrong.append(f"{page.name}: {script} does not accept {flag}")
        for code in inline_code(text):
            for flag in FLAG.findall(code):
                if flag not in any_script_flags():
                    wrong.append(f"{page.name}: `{code}`: no parser accepts {flag}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def _repo_path(token: str) -> str | None:
    token = token.strip().strip("'\"").rstrip(".,;:)")
    token = re.split(r"::|\[|#", token)[0]
    if not token or re.search(r"[<>*{}$]|\.\.\.", token):
        return None
    if token.startswith(TOP) or token in TOP_FILES:
        return token
    return None


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set:
    text = FENCE.sub("", page.read_text())
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_every_repository_path_and_link_in_the_docs_exists():
    missing = []
    for page in PAGES:
        text = page.read_text()
        names = [w for code in inline_code(text) for w in code.split()]
        names += [w for lang, block in FENCE.findall(text) if lang in ("", "bash", "sh") for w in block.split()]
        for name in names:
            rel = _repo_path(name)
            if rel and not (ROOT / rel).exists():
                missing.append(f"{page.name}: {rel}")
        for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", text)):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                missing.append(f"{page.name}: link {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                missing.append(f"{page.name}: link {target} (no such heading)")
    assert not missing, "\n".join(missing)


def test_the_checks_catch_a_wrong_flag_and_a_missing_path():
    block = "python tools/preprocess_data.py --input x --no-such-flag\ntorchrun --nproc_per_node 2 pretrain_gpt.py --lr 1"
    found = list(command_flags(block))
    assert ("tools/preprocess_data.py", "--no-such-flag") in found and ("pretrain_gpt.py", "--lr") in found
    assert "--no-such-flag" not in script_flags("tools/preprocess_data.py")
    assert (None, "--nproc_per_node") in found  # torchrun's own flag: not ours to check
    assert _repo_path("`megatron/no_such.py`".strip("`")) == "megatron/no_such.py"
    assert slug("`torch.compile` of residual add + norm") == "torchcompile-of-residual-add--norm"
