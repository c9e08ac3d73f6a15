"""``manifest.json``: what a prepared data directory holds, written by data preparation, read by training.

Numpy-free and Beam-free (stdlib only) so the trainer can read it. The keys below are the contract; more
keys may be added freely::

    {"documents": {"read": N, "kept": K, "rejected": {"<reason>": n, ...}},   # read == kept + sum(rejected)
     "edits": {"<edit>": n, ...},              # kept documents' text changed: lines removed per rule, redactions
     "languages": {"en": {"documents": d, "tokens": t}, ...},   # kept, by identified language ({} when off)
     "tokens": {"train": T, "val": V},
     "tokenizer": {"path": "tokenizer.model", "vocab_size": int, "eos_id": int, "sha256": str,
                   "kind": "sentencepiece" | "huggingface"},   # kind absent: sentencepiece (pipeline.tokenizer_file)
     "shards": [{"split": "train", "path": "train/shard-00000-of-00008", "documents": d, "tokens": t,
                 "sha256_bin": str, "sha256_idx": str}, ...],
     "config": {... every option the run used ...}}

Shard paths are relative to the data directory and have no extension (``.bin``/``.idx`` are added).
"""
from __future__ import annotations

import json
import os

from pipeline.files import write_atomic

MANIFEST_NAME = "manifest.json"

_REQUIRED = {
    "documents": ("read", "kept", "rejected"),
    "tokens": ("train", "val"),
    "tokenizer": ("path", "vocab_size", "eos_id", "sha256"),
}
_SHARD_KEYS = ("split", "path", "documents", "tokens", "sha256_bin", "sha256_idx")


def _check(manifest: dict, path: str) -> None:
    fix = "re-run `python -m pipeline.prepare` into a fresh output directory"
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: the manifest must be a JSON object; {fix}")
    for section, keys in _REQUIRED.items():
        if not isinstance(manifest.get(section), dict):
            raise ValueError(f"{path}: missing section {section!r}; {fix}")
        missing = [k for k in keys if k not in manifest[section]]
        if missing:
            raise ValueError(f"{path}: section {section!r} lacks {missing}; {fix}")
    docs = manifest["documents"]
    rejected = sum(docs["rejected"].values())
    if docs["read"] != docs["kept"] + rejected:
        raise ValueError(
            f"{path}: documents read ({docs['read']}) != kept ({docs['kept']}) + rejected ({rejected}); "
            f"the manifest is inconsistent; {fix}"
        )
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise ValueError(f"{path}: 'shards' must be a list; {fix}")
    for i, shard in enumerate(shards):
        missing = [k for k in _SHARD_KEYS if k not in shard]
        if missing:
            raise ValueError(f"{path}: shard entry {i} lacks {missing}; {fix}")


def load_manifest(data_dir: str, verify: bool = False) -> dict:
    """Read and check ``DATA_DIR/manifest.json``; with ``verify``, also check every shard's sha256."""
    path = os.path.join(data_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: {data_dir!r} is not a prepared data directory. "
            "Create one with `python -m pipeline.prepare --input ... --output DIR`."
        )
    with open(path, encoding="utf-8") as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); the preparation run may have been interrupted") from e
    _check(manifest, path)
    if verify:
        from pipeline.shards import validate_shard  # numpy only; deferred so reading the manifest stays light

        for shard in manifest["shards"]:
            validate_shard(os.path.join(data_dir, shard["path"]), shard["sha256_bin"], shard["sha256_idx"])
    return manifest


def shard_prefixes(manifest: dict, data_dir: str, split: str) -> list[str]:
    """Absolute shard prefixes of one split, in manifest order."""
    prefixes = [os.path.abspath(os.path.join(data_dir, s["path"])) for s in manifest["shards"] if s["split"] == split]
    if not prefixes:
        splits = sorted({s["split"] for s in manifest["shards"]})
        raise ValueError(f"{data_dir}: the manifest lists no {split!r} shards (it has {splits})")
    return prefixes


def data_identity(manifest: dict) -> str:
    """What makes two data directories the same training data: the tokenizer's sha256 and every shard's path and
    checksums, in manifest order (the order the trainer concatenates them), as one sha256.

    Nothing else counts: how the data was prepared (worker count, runner, Beam flags, timings) may differ between
    two preparations of byte-identical shards, and a training run resumes on either.
    """
    import hashlib

    parts = [manifest["tokenizer"]["sha256"]]
    parts += [f"{s['split']}:{s['path']}:{s['sha256_bin']}:{s['sha256_idx']}" for s in manifest["shards"]]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def manifest_json(manifest: dict, where: str = MANIFEST_NAME) -> str:
    """The checked, canonical text of a manifest (for writers that go through Beam's FileSystems)."""
    _check(manifest, where)
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def write_manifest(data_dir: str, manifest: dict) -> None:
    """Write the manifest atomically on a local disk: a reader sees the old file or the new one, never half."""
    path = os.path.join(data_dir, MANIFEST_NAME)
    write_atomic(path, manifest_json(manifest, path))
