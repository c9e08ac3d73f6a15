"""Local files replaced all at once (a reader sees the old content or the new, never half of a file), and listed
without following links (what a clean-up may delete).

Every local file this project writes for others to read (manifest, tokenizer, shards, run configs,
checkpoint markers, metrics) goes through here: write under a temporary name in the same directory,
flush it to disk, rename it over the target (atomic on POSIX within one filesystem), then sync the
directory so that the rename itself survives a crash. Files on ``gs://`` go through Beam's FileSystems
instead (``pipeline.write``), which has no rename that is atomic in this sense.

Standard library only: the trainer, the checkpoint code and the data pipeline all import it.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import IO, Iterator

TEMP_MARKER = ".tmp-"  # every temporary name holds this; clean-up code recognizes its own leftovers by it


def is_remote(path: str) -> bool:
    """Whether ``path`` names an object store (``gs://...``) rather than a local file: Beam's FileSystems write
    there, and nothing in this module applies."""
    return "://" in path


def temporary_name(path: str) -> str:
    """A fresh name beside ``path`` for writing it: unique per process and call, recognizably temporary."""
    return f"{path}{TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_path(path: str) -> None:
    """Flush a file's data, or a directory's entries (a rename is durable only once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(tmp: str, path: str) -> None:
    """Rename the finished ``tmp`` over ``path`` and make the rename durable."""
    os.replace(tmp, path)
    fsync_path(os.path.dirname(os.path.abspath(path)))


@contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_open(path, "w") as f: ...`` writes ``path`` all at once when the block ends without an
    error; on an error the temporary file is removed and ``path`` is left as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def list_tree(root: str) -> tuple[list[str], list[str]]:
    """(files, folders) below ``root``, as sorted relative paths with "/" separators. A symbolic link counts as a
    file even when it points at a folder: a clean-up removes the link and never what it points at."""
    files, folders = [], []
    for directory, subdirs, names in os.walk(root):
        rel = os.path.relpath(directory, root).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        links = [d for d in subdirs if os.path.islink(os.path.join(directory, d))]
        subdirs[:] = [d for d in subdirs if d not in links]
        files += [prefix + n for n in names + links]
        folders += [prefix + d for d in subdirs]
    return sorted(files), sorted(folders)


def remove_listed(root: str, files: list[str], folders: list[str]) -> None:
    """Remove ``files`` in the order given, then ``folders`` deepest first (each is empty by its turn, so a folder
    that still holds anything unlisted stops the clean-up with an error instead of being emptied). Paths are
    relative to ``root`` with "/" separators, as list_tree gives them; a link is removed, never followed."""
    for rel in files:
        os.remove(os.path.join(root, *rel.split("/")))
    for rel in sorted(folders, key=lambda d: -d.count("/")):
        os.rmdir(os.path.join(root, *rel.split("/")))


def write_atomic(path: str, data: bytes | str) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` all at once."""
    with atomic_open(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)
