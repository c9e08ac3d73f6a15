"""The built-in default corpus: real human-written English gathered at run time from the Python installation.

Nothing is downloaded and nothing is copied into the repository. Sources, in this order:

    stdlib   docstrings of the standard library's .py files (parsed with ``ast``, never imported): module,
             class, function and method docstrings, one document each; test suites are skipped
    dist     the long descriptions (METADATA bodies, usually the README) of installed distributions
    site     with --site-packages: docstrings of the installed packages' .py files (site-packages)

Each document is one JSON object per line, ``{"id": ..., "text": ...}``, with a stable id such as
``stdlib:json/decoder.py:JSONDecoder.decode``, ``dist:numpy`` or ``site:torch/nn/modules/linear.py:Linear``.
Output files are ``builtin-NNNNN.jsonl.gz`` of about 8 MB of text each (several files so Beam reads them in
parallel). Files, documents and bytes are the same on every run for a given Python installation (sorted
walks, gzip without timestamps); ``--max-mb`` stops after that many MB of text.

    python -m pipeline.builtin_corpus --out /tmp/corpus                         # stdlib + dist
    python -m pipeline.builtin_corpus --out /tmp/corpus --site-packages --max-mb 50
    python -m pipeline.builtin_corpus --out /tmp/dist --sources dist            # one source only

Sizes depend on what is installed (the Python version, the installed packages): stdlib + dist give a few MB,
enough for a smoke run; --site-packages adds every installed package's docstrings, many times more text,
for runs that need a larger corpus. Pass --max-mb to get the same amount on any installation.
"""
from __future__ import annotations

import argparse
import ast
import gzip
import importlib.metadata
import json
import os
import re
import site
import sys
import sysconfig
from typing import Iterator

# Directories skipped in the stdlib walk: other installs, test suites (mostly one-line docstrings of test
# cases, and files that do not parse on purpose), and bundled third-party code.
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
                        "_vendor", "vendor", "node_modules"})
FILE_TEXT_BYTES = 8 * 1024 * 1024


def _py_files(root: str) -> Iterator[tuple[str, str]]:
    """(absolute path, path relative to root with "/") of every .py file under root, in sorted order."""
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                yield path, os.path.relpath(path, root).replace(os.sep, "/")


def docstrings(source: bytes) -> Iterator[tuple[str, str]]:
    """(qualified name, cleaned docstring) of a module's own docstring ("" name) and its classes/functions,
    in source order. Source that does not parse yields nothing."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # bad syntax, NUL bytes, absurd nesting
        return

    def walk(node, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                doc = ast.get_docstring(child, clean=True)
                if doc:
                    yield name, doc
                yield from walk(child, name + ".")
            elif not isinstance(child, ast.expr):  # if/try blocks at any level may hold definitions
                yield from walk(child, prefix)

    doc = ast.get_docstring(tree, clean=True)
    if doc:
        yield "", doc
    yield from walk(tree, "")


def _file_documents(root: str, id_prefix: str) -> Iterator[tuple[str, str]]:
    for path, rel in _py_files(root):
        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError:
            continue  # unreadable file (permissions, broken link): not part of the corpus
        for name, doc in docstrings(source):
            yield (f"{id_prefix}:{rel}:{name}" if name else f"{id_prefix}:{rel}"), doc


def stdlib_documents() -> Iterator[tuple[str, str]]:
    """(id, text) for the standard library's docstrings."""
    yield from _file_documents(sysconfig.get_paths()["stdlib"], "stdlib")


def _site_dirs() -> list[str]:
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    try:
        dirs.update(site.getsitepackages())
    except AttributeError:  # some embedded interpreters lack it
        pass
    return sorted(d for d in dirs if os.path.isdir(d))


def distribution_documents() -> Iterator[tuple[str, str]]:
    """(id, text) for the long descriptions of installed distributions, sorted by normalized name."""
    seen = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name") if dist.metadata else None
        if not name:
            continue
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue  # the same distribution on two paths: the first one found wins
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        seen[key] = body if isinstance(body, str) else ""
    for key in sorted(seen):
        text = seen[key].strip()
        if text:
            yield f"dist:{key}", text


def site_package_documents() -> Iterator[tuple[str, str]]:
    """(id, text) for the docstrings of installed packages (site-packages), skipping their test suites."""
    for root in _site_dirs():
        yield from _file_documents(root, "site")


SOURCES = {"stdlib": stdlib_documents, "dist": distribution_documents, "site": site_package_documents}
DEFAULT_SOURCES = ("stdlib", "dist")


def parse_sources(text: str) -> tuple[str, ...]:
    """``"stdlib,dist"`` -> ("stdlib", "dist"), in SOURCES order; ValueError naming the unknown ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SOURCES))
    if not names or unknown:
        raise ValueError(f"built-in corpus sources {text!r}: choose from {', '.join(SOURCES)} (comma-separated)")
    return tuple(n for n in SOURCES if n in names)


def write_builtin_corpus(out_dir: str, *, max_bytes: int | None = None, include_site_packages: bool = False,
                         sources: tuple[str, ...] | None = None) -> list[str]:
    """Write the corpus as JSONL.gz files in ``out_dir``; return their paths.

    ``sources`` (names of SOURCES, default stdlib + dist, plus site with ``include_site_packages``) picks what
    is gathered, so each can also be prepared as a data set of its own (the quickstart blends two).
    ``max_bytes`` bounds the UTF-8 bytes of text written (documents are whole: the last one may cross it).
    """
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes={max_bytes}: use a positive number of bytes, or None for everything")
    os.makedirs(out_dir, exist_ok=True)
    names = tuple(sources or DEFAULT_SOURCES) + (("site",) if include_site_packages else ())
    sources = [SOURCES[name]() for name in SOURCES if name in names]
    paths: list[str] = []
    out = None
    file_bytes = total = 0
    seen_ids: set[str] = set()
    try:
        for source in sources:
            for doc_id, text in source:
                if max_bytes is not None and total >= max_bytes:
                    return paths
                if doc_id in seen_ids:  # e.g. a function defined twice under an if/else
                    continue
                seen_ids.add(doc_id)
                if out is None or file_bytes >= FILE_TEXT_BYTES:
                    if out is not None:
                        out.close()
                    paths.append(os.path.join(out_dir, f"builtin-{len(paths):05d}.jsonl.gz"))
                    # mtime=0 and no file name in the gzip header: identical bytes on every run.
                    out = gzip.GzipFile(filename="", mode="wb", fileobj=open(paths[-1], "wb"), mtime=0)
                    file_bytes = 0
                size = len(text.encode("utf-8", "surrogatepass"))
                line = json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n"
                out.write(line.encode("utf-8", "backslashreplace"))
                file_bytes += size
                total += size
        return paths
    finally:
        if out is not None:
            fileobj = out.fileobj
            out.close()
            fileobj.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for builtin-NNNNN.jsonl.gz")
    parser.add_argument("--max-mb", type=float, default=None, help="stop after this many MB (1e6 bytes) of text")
    parser.add_argument("--site-packages", action="store_true",
                        help="also take docstrings of installed packages, to reach a larger --max-mb")
    parser.add_argument("--sources", default=",".join(DEFAULT_SOURCES),
                        help=f"comma-separated sources to gather, of {', '.join(SOURCES)}")
    args = parser.parse_args(argv)
    try:
        sources = parse_sources(args.sources)
    except ValueError as e:
        parser.error(str(e))
    if args.max_mb is not None and args.max_mb <= 0:
        parser.error(f"--max-mb {args.max_mb}: use a positive number of MB")  # "error: ..." and exit 2
    max_bytes = None if args.max_mb is None else int(args.max_mb * 1e6)
    paths = write_builtin_corpus(args.out, max_bytes=max_bytes, include_site_packages=args.site_packages,
                                 sources=sources)
    documents = text_bytes = 0
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                documents += 1
                text_bytes += len(json.loads(line)["text"].encode("utf-8", "surrogatepass"))
    print(f"wrote {len(paths)} files, {documents} documents, {text_bytes / 1e6:.1f} MB of text to {args.out}")
    if max_bytes is not None and text_bytes < max_bytes:
        print(f"note: only {text_bytes / 1e6:.1f} MB available of the {args.max_mb} MB asked"
              + ("" if args.site_packages else "; add --site-packages for more"), file=sys.stderr)


if __name__ == "__main__":
    main()
