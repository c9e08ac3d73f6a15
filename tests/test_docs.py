"""The README and docs/ stay true to the code: short README, links that resolve, commands the code accepts.

What is checked, over README.md and docs/*.md:

* README.md has at most README_MAX_LINES lines (the rest belongs in docs/);
* every relative link resolves to an existing file, and its ``#anchor``, when given, to a heading of that
  file (GitHub's slugs: lowercase, punctuation dropped, spaces to hyphens, ``-1``, ``-2``... for repeats);
* every ``python -m MODULE ...`` command in a fenced code block (also ``torchrun ... -m MODULE`` and
  ``deepspeed ... --module MODULE``; backslash-continued lines joined) names a module that exists, and every
  ``--flag`` after the module is one that module accepts. Placeholders that are skipped: a ``...`` token
  (elided arguments), and the brackets of ``[--flag VALUE]`` (an optional flag; the flag itself is checked).
  Values (``RUN_DIR``, ``'raw/*.jsonl.gz'``) are never checked. The accepted flags come from the parser, built
  in-process where the module has a side-effect-free function for it (``pipeline.prepare.build_parser``,
  ``launch.train.parse_args``, ``launch.quickstart.parse_args``), else from the text of
  ``python -m MODULE --help`` (run once per module, in-process with ``runpy``, which is what ``python -m``
  does). ``pipeline.prepare`` passes flags it does not know to Beam, so those must be Beam pipeline options;
* every ``bash scripts/X``, ``bash launch/X``, ``. scripts/X`` and ``sbatch ... launch/X`` path exists (a path
  ending in ``...`` is a placeholder and skipped);
* no page narrates history (HISTORY_PHRASES): docs describe the code as it is; git holds the rest.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import os
import re
import runpy
import shlex
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_MAX_LINES = 300
HISTORY_PHRASES = ("previous commit", "two versions ago", "until this version", "the version before",
                   "earlier run", "earlier session", "previous code")


def doc_files() -> list[str]:
    docs = os.path.join(ROOT, "docs")
    pages = sorted(os.path.join(docs, f) for f in os.listdir(docs) if f.endswith(".md")) if os.path.isdir(docs) else []
    return [os.path.join(ROOT, "README.md")] + pages


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


# ------------------------------------------------------------------------------------------------ markdown

_FENCE = re.compile(r"^(\s*)(```|~~~)")


def split_blocks(text: str) -> tuple[str, list[str]]:
    """(the text outside fenced code blocks, the fenced blocks' contents)."""
    prose, blocks, current, fence = [], [], None, None
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if current is None:
            if m:
                current, fence = [], m.group(2)
            else:
                prose.append(line)
        elif m and m.group(2) == fence and line.strip() == fence:
            blocks.append("\n".join(current))
            current = None
        else:
            current.append(line)
    return "\n".join(prose), blocks


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup and punctuation dropped, lowercase, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters, digits, underscores in any script
    return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
    prose, _ = split_blocks(read(path))
    seen: dict[str, int] = {}
    out = set()
    for line in prose.split("\n"):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(path: str) -> list[str]:
    prose, _ = split_blocks(read(path))
    prose = re.sub(r"`[^`\n]*`", "", prose)  # code spans are not links
    return [t for t in _LINK.findall(prose) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def link_problem(doc: str, target: str) -> str | None:
    file_part, _, anchor = target.partition("#")
    dest = doc if not file_part else os.path.normpath(os.path.join(os.path.dirname(doc), file_part))
    if not os.path.exists(dest):
        return f"{rel(doc)}: link {target!r}: {rel(dest)} does not exist"
    if anchor and dest.endswith(".md") and anchor not in anchors(dest):
        return f"{rel(doc)}: link {target!r}: no heading with anchor #{anchor} in {rel(dest)}"
    return None


# ------------------------------------------------------------------------------------------------ commands

def shell_commands(block: str) -> list[str]:
    """The block's commands: backslash continuations joined, comments dropped, one command per line."""
    joined = re.sub(r"\\\n", " ", block)
    return [line for line in joined.split("\n") if line.strip()]


_MODULE_OPT = {"-m", "--module"}
_LAUNCHER = re.compile(r"^(python[\d.]*|torchrun|deepspeed)$")
_SHELL_STOP = {"|", "||", "&&", ";", ">", ">>", "<", "2>&1", "&"}


def module_invocations(line: str) -> list[tuple[str, list[str]]]:
    """[(module, the arguments after it)] for `python -m M`, `torchrun ... -m M`, `deepspeed ... --module M`."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return []
    out = []
    for i, tok in enumerate(tokens):
        if tok in _MODULE_OPT and i + 1 < len(tokens):
            if not any(_LAUNCHER.match(os.path.basename(t)) for t in tokens[:i]):
                continue
            args = []
            for t in tokens[i + 2:]:
                if t in _SHELL_STOP:
                    break
                args.append(t)
            out.append((tokens[i + 1], args))
    return out


def flags_of(args: list[str]) -> list[str]:
    """The --flags among a command's arguments; `...` and the brackets of `[--flag X]` are placeholders."""
    flags = []
    for a in args:
        a = a.strip("[]")
        if a == "..." or not a.startswith("--") or a == "--":
            continue
        flags.append(a.split("=", 1)[0])
    return flags


def _help_via_runpy(module: str) -> str:
    """What `python -m MODULE --help` prints, run in-process the way `python -m` runs it."""
    argv, buf = sys.argv, io.StringIO()
    sys.argv = [module, "--help"]
    try:
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit), warnings.catch_warnings():
            # runpy warns that the package already imported this module; the copy run as __main__ only parses.
            warnings.simplefilter("ignore", RuntimeWarning)
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    finally:
        sys.argv = argv
    return buf.getvalue()


def _help_via_parse_args(parse_args) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        parse_args(["--help"])
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def help_text(module: str) -> str:
    if module == "pipeline.prepare":
        return importlib.import_module(module).build_parser().format_help()
    if module in ("launch.train", "launch.quickstart"):
        return _help_via_parse_args(importlib.import_module(module).parse_args)
    return _help_via_runpy(module)


@functools.lru_cache(maxsize=None)
def beam_options() -> frozenset[str]:
    from apache_beam.options.pipeline_options import PipelineOptions

    return frozenset(PipelineOptions([]).get_all_options(drop_default=False))


def accepts(module: str, flag: str) -> bool:
    if re.search(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])", help_text(module)):
        return True
    return module == "pipeline.prepare" and flag[2:].replace("-", "_") in beam_options()


def all_invocations() -> list[tuple[str, str, list[str]]]:
    found = []
    for doc in doc_files():
        _, blocks = split_blocks(read(doc))
        for block in blocks:
            for line in shell_commands(block):
                for module, args in module_invocations(line):
                    found.append((rel(doc), module, args))
    return found


# ------------------------------------------------------------------------------------------------ tests

def test_readme_is_short():
    n = len(read(os.path.join(ROOT, "README.md")).splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_relative_links_resolve():
    problems = [p for doc in doc_files() for t in relative_links(doc) if (p := link_problem(doc, t))]
    assert not problems, "\n".join(problems)


def test_documented_commands_name_real_modules_and_flags():
    invocations = all_invocations()
    assert len(invocations) >= 10, f"too few `python -m` commands found ({len(invocations)}): is the parser broken?"
    problems = []
    for doc, module, args in invocations:
        if importlib.util.find_spec(module) is None:
            problems.append(f"{doc}: `python -m {module}`: no such module")
            continue
        for flag in flags_of(args):
            if not accepts(module, flag):
                problems.append(f"{doc}: `python -m {module}` does not accept {flag}")
    assert not problems, "\n".join(problems)


_SCRIPT = re.compile(r"(?:\bbash|(?:^|[\s`;(])\.)\s+((?:scripts|launch)/[\w./-]+)")
_SBATCH = re.compile(r"\bsbatch\b[^`]{0,200}?\s((?:launch|scripts)/[\w./-]+)")


def test_named_scripts_exist():
    problems = []
    for doc in doc_files():
        text = re.sub(r"\\\n", " ", read(doc))
        for path in _SCRIPT.findall(text) + _SBATCH.findall(text):
            if path.endswith("..."):  # a placeholder ("scripts/..."), not a path
                continue
            if not os.path.isfile(os.path.join(ROOT, path)):
                problems.append(f"{rel(doc)}: {path} does not exist")
    assert not problems, "\n".join(problems)


def test_no_history_phrases():
    pages = doc_files() + [os.path.join(ROOT, "benchmarks", "RESULTS.md")]
    problems = [f"{rel(doc)}: {phrase!r}" for doc in pages if os.path.exists(doc)
                for phrase in HISTORY_PHRASES if phrase in read(doc).lower()]
    assert not problems, "describe the code as it is (git holds the history):\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------------------ the checker

def test_checker_finds_what_it_should(tmp_path):
    """The helpers themselves: slugs, links, command extraction (so a broken checker cannot pass silently)."""
    assert github_slug("`RUN_DIR/metrics.jsonl`") == "run_dirmetricsjsonl"
    assert github_slug("Launch: the demo, SLURM, one GPU, Docker") == "launch-the-demo-slurm-one-gpu-docker"
    page = tmp_path / "p.md"
    page.write_text("# Title\n\n## Title\n\n```\n# not a heading\n```\n[a](#title-1) [b](#nope) [c](missing.md)\n")
    assert anchors(str(page)) == {"title", "title-1"}
    assert [link_problem(str(page), t) is None for t in relative_links(str(page))] == [True, False, False]
    line = shell_commands("DS_ACCELERATOR=cpu python -m launch.train --data d/ \\\n    --out r [--tag x] ... | tee log")[0]
    assert module_invocations(line) == [("launch.train", ["--data", "d/", "--out", "r", "[--tag", "x]", "..."])]
    assert flags_of(module_invocations(line)[0][1]) == ["--data", "--out", "--tag"]
    assert module_invocations("torchrun --nproc_per_node 2 -m launch.train --set a=1")[0] == ("launch.train",
                                                                                                ["--set", "a=1"])
    assert module_invocations("deepspeed --num_gpus 8 --module launch.train --out x")[0][0] == "launch.train"
    assert accepts("pipeline.prepare", "--direct_num_workers") and not accepts("pipeline.prepare", "--no-such-flag")
