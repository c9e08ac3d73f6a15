"""manifest.json: the checks a trainer relies on before it touches any shard."""
import json
import os

import pytest

from pipeline.manifest import MANIFEST_NAME, load_manifest, manifest_json, shard_prefixes, write_manifest
from pipeline.shards import ShardError, write_shard


def _manifest(tmp_path):
    shards = []
    for split, docs in (("train", [[3, 4, 2], [5, 2]]), ("val", [[6, 2]])):
        rel = f"{split}/shard-00000-of-00001"
        stats = write_shard(str(tmp_path / rel), docs, vocab_size=16)
        shards.append({"split": split, "path": rel, **stats})
    return {
        "documents": {"read": 5, "kept": 3, "rejected": {"empty": 1, "stop_words": 1}},
        "tokens": {"train": 5, "val": 2},
        "tokenizer": {"path": "tokenizer.model", "vocab_size": 16, "eos_id": 2, "sha256": "0" * 64},
        "shards": shards,
        "config": {"vocab_size": 16},
    }


def test_write_load_and_prefixes(tmp_path):
    manifest = _manifest(tmp_path)
    write_manifest(str(tmp_path), manifest)
    loaded = load_manifest(str(tmp_path), verify=True)
    assert loaded == manifest
    assert shard_prefixes(loaded, str(tmp_path), "train") == [str(tmp_path / "train/shard-00000-of-00001")]
    assert manifest_json(manifest) == open(tmp_path / MANIFEST_NAME).read()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_missing_split_and_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="pipeline.prepare"):
        load_manifest(str(tmp_path))
    manifest = _manifest(tmp_path)
    with pytest.raises(ValueError, match=r"no 'test' shards \(it has \['train', 'val'\]\)"):
        shard_prefixes(manifest, str(tmp_path), "test")


def test_counts_must_add_up(tmp_path):
    manifest = _manifest(tmp_path)
    manifest["documents"]["read"] = 6
    with pytest.raises(ValueError, match=r"read \(6\) != kept \(3\) \+ rejected \(2\)"):
        write_manifest(str(tmp_path), manifest)


def test_missing_keys_and_bad_json(tmp_path):
    manifest = _manifest(tmp_path)
    del manifest["tokenizer"]["eos_id"]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"'tokenizer' lacks \['eos_id'\]"):
        load_manifest(str(tmp_path))
    (tmp_path / MANIFEST_NAME).write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_manifest(str(tmp_path))


def test_verify_catches_a_changed_shard(tmp_path):
    manifest = _manifest(tmp_path)
    write_manifest(str(tmp_path), manifest)
    write_shard(str(tmp_path / "val/shard-00000-of-00001"), [[7, 2]], vocab_size=16)  # same size, other tokens
    load_manifest(str(tmp_path))  # structure is fine
    with pytest.raises(ShardError, match=r"val/shard-00000-of-00001\.bin: sha256"):
        load_manifest(str(tmp_path), verify=True)
