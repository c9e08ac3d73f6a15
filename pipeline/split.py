"""Which split and shard a document goes to: a pure function of its document_key, the same on every machine.

sha256 (never Python's ``hash()``, which is salted per process) of a salt and the key, read as a number in
[0, 1). The split and the shard use independent salts, so the val split favours no train shard; the tokenizer
sample (pipeline.tokenizer_stage) and the write part (pipeline.write) have salts of their own. Changing
anything here moves documents between shards of every existing run: tests/test_transforms.py pins the values.
"""
from __future__ import annotations

import hashlib


def hash_unit(key: str, salt: str) -> float:
    """A stable number in [0, 1) from sha256(salt, key): the same on every worker, run and machine."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_shard(key: str, val_fraction: float, train_shards: int, val_shards: int) -> tuple[str, int]:
    """(split, shard index) of a document from its document_key alone.

    The split is a hash predicate (val iff a salted hash falls below ``val_fraction``); the shard is an
    independent salted hash modulo the split's shard count.
    """
    if val_fraction > 0 and hash_unit(key, "split") < val_fraction:
        return "val", int(hash_unit(key, "val-shard") * val_shards)
    return "train", int(hash_unit(key, "train-shard") * train_shards)


def assign_part(key: str, parts: int) -> int:
    """The write group of a document within its shard (pipeline.write): an independently salted hash of its
    document_key into ``parts`` parts. Parts change only how a shard is written, never its bytes."""
    return int(hash_unit(key, "write-part") * parts) if parts > 1 else 0
