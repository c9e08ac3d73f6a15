"""Shared pytest fixtures: tiny text corpora that pass the default Gopher filters, JSONL writing, and a
Beam TestPipeline pinned to the local FnApiRunner (Beam's DirectRunner would try to download Prism)."""
from __future__ import annotations

import gzip
import json
import os
import random

import numpy as np
import pytest

from pipeline.manifest import write_manifest
from pipeline.shards import write_shard

# Common English words; the stop words (the, be, to, of, and, that, have, with) appear often enough that
# every generated document has several, and the pool is large enough that no n-gram dominates.
_WORDS = (
    "the the the of of of and and and to to to that that have have with with be be "
    "river mountain village people morning evening garden window kitchen table letter story music "
    "teacher student market bridge forest winter summer autumn spring harbor station library museum "
    "painter farmer doctor engineer sailor writer neighbor children family friend stranger traveler "
    "walked carried opened noticed followed remembered explained returned gathered wondered finished "
    "quietly slowly early later often never always together outside inside across around beneath "
    "bright quiet narrow ancient gentle heavy careful curious patient golden distant familiar simple "
    "bread water stone paper candle lantern basket blanket wooden silver copper orange yellow purple "
    "afternoon journey question answer reason moment season weather silence thunder shadow light "
    "was were would could should might many several every another because while before after under "
    "their these those there where which about between through during without within against"
).split()


def gopher_text(seed: int, words: int = 120) -> str:
    """A deterministic English-like document of about ``words`` words that passes the default filters."""
    rng = random.Random(seed)
    sentences, count = [], 0
    while count < words:
        n = rng.randint(8, 16)
        picked = [rng.choice(_WORDS) for _ in range(n)]
        sentences.append(" ".join(picked).capitalize() + ".")
        count += n
    # Paragraphs of three sentences, so line and paragraph rules see several distinct units.
    paragraphs = [" ".join(sentences[i:i + 3]) for i in range(0, len(sentences), 3)]
    return "\n\n".join(paragraphs)


@pytest.fixture
def make_text():
    """make_text(seed, words=120) -> a document that the default Gopher filters keep."""
    return gopher_text


def write_jsonl_file(path, records, raw_lines=()) -> str:
    """Write dicts as JSON lines (plus any raw byte lines) to path; .gz compresses with gzip, .zst with zstd."""
    data = b"".join(json.dumps(r).encode("utf-8") + b"\n" for r in records) + b"".join(
        line + b"\n" for line in raw_lines)
    path = str(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if path.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    elif path.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture
def write_jsonl():
    """write_jsonl(path, records, raw_lines=()) -> path; compression by extension (.gz, .zst)."""
    return write_jsonl_file


@pytest.fixture
def beam_pipeline():
    """beam_pipeline() -> a TestPipeline on Beam's in-process FnApiRunner (no Prism download)."""
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipeline.prepare import pipeline_options

    def factory():
        options, runner = pipeline_options([])
        return TestPipeline(runner=runner, options=options)

    return factory


# Options of the shared small prepare run: a tiny vocabulary and a few shards keep it to seconds.
PREPARE_OPTIONS = ["--vocab-size", "400", "--train-shards", "3", "--val-shards", "1", "--val-fraction", "0.15",
                   "--rejected-files", "2", "--tokenizer-sample-mb", "1"]


def small_corpus(make_docs: int = 60) -> tuple[list[dict], list[bytes], dict[str, str]]:
    """(records, raw bad lines, {document_key: text} of the records prepare must keep).

    Besides ``make_docs`` good documents: an exact duplicate with a larger id (dropped), a document that is
    too short, a malformed line and an undecodable one.
    """
    good = [{"id": f"doc-{i:03d}", "text": gopher_text(1000 + i)} for i in range(make_docs)]
    records = good + [{"id": "zz-copy-of-3", "text": gopher_text(1003)},
                      {"id": "short", "text": "This document is far too short to keep in the corpus."}]
    raw = [b'{"id": "broken", "text": ', b'{"id": "latin1", "text": "caf\xe9"}']
    return records, raw, {"id:" + r["id"]: kept_text(r["text"]) for r in good}


def kept_text(text: str) -> str:
    """The text the default rules keep of a document they do not drop: C4's line edits remove the blank lines
    between paragraphs (every line under 3 words goes)."""
    from pipeline.c4_rules import C4Config, c4_clean

    verdict = c4_clean(text, C4Config())
    assert verdict.reason is None, verdict.reason
    return verdict.text


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """One finished in-process prepare run shared by tests that only read its outputs.

    Returns a dict: out (the output dir), inputs (glob), manifest, kept ({document_key: text}), argv.
    """
    from pipeline.prepare import run

    root = tmp_path_factory.mktemp("prepared")
    records, raw, kept = small_corpus()
    write_jsonl_file(root / "in" / "part-0.jsonl.gz", records[::2], raw_lines=raw[:1])
    write_jsonl_file(root / "in" / "part-1.jsonl.gz", records[1::2], raw_lines=raw[1:])
    inputs = str(root / "in" / "*.jsonl.gz")
    argv = ["--input", inputs, "--output", str(root / "out"), *PREPARE_OPTIONS]
    manifest = run(argv)
    return {"out": str(root / "out"), "inputs": inputs, "manifest": manifest, "kept": kept, "argv": argv,
            "read": len(records) + len(raw)}


def random_data_dir(root, vocab: int = 256, seed: int = 0):
    """A prepared data directory of random documents (no Beam): 2 train shards, 1 val shard, a manifest.

    For tests of the launchers, which need real shards but not real text. ``root`` is a pathlib.Path.
    """
    rng = np.random.default_rng(seed)
    shards = []
    for split, count in (("train", 2), ("val", 1)):
        for i in range(count):
            rel = f"{split}/shard-{i:05d}-of-{count:05d}"
            docs = [np.append(rng.integers(3, vocab, size=rng.integers(20, 200)), 2) for _ in range(60)]
            (root / split).mkdir(parents=True, exist_ok=True)
            shards.append({"split": split, "path": rel, **write_shard(str(root / rel), docs, vocab)})
    tokens = {s: sum(x["tokens"] for x in shards if x["split"] == s) for s in ("train", "val")}
    docs = sum(x["documents"] for x in shards)
    write_manifest(str(root), {
        "documents": {"read": docs, "kept": docs, "rejected": {}}, "tokens": tokens,
        "tokenizer": {"path": "tokenizer.model", "vocab_size": vocab, "eos_id": 2, "sha256": "0" * 64},
        "shards": shards, "config": {"source": "random tokens, tests"}})
    return root


class CountingText(str):
    """A str that adds up the characters its own operations go over: ``touched`` counts what its slices copy
    and what its whole-text methods scan, so a cost check can count work instead of timing it (timings
    belong to benchmarks/, where a noisy machine cannot fail a test). Pieces it returns are plain str."""

    _SCANS = ("split", "splitlines", "count", "strip", "lower", "replace", "encode", "rsplit", "partition",
              "startswith", "endswith", "isspace", "translate", "casefold", "upper")

    def __new__(cls, text: str):
        self = super().__new__(cls, text)
        self.touched = 0
        return self

    def __getitem__(self, key):
        piece = str.__getitem__(self, key)
        self.touched += len(piece) if isinstance(key, slice) else 1
        return piece

    def find(self, sub, start=0, end=None):
        i = str.find(self, sub, start, len(self) if end is None else end)
        self.touched += (len(self) if i < 0 else i + len(sub)) - min(start, len(self))
        return i


def _counting_scan(name):
    def method(self, *args, **kwargs):
        self.touched += len(self)
        return getattr(str, name)(self, *args, **kwargs)
    method.__name__ = name
    return method


for _name in CountingText._SCANS:
    setattr(CountingText, _name, _counting_scan(_name))


@pytest.fixture
def single_process_env(monkeypatch):
    """Rank 0 of 1 in the environment, as launch.train reads it; monkeypatch restores the environment afterwards
    (main() would otherwise fill these in and leave them set for the next test)."""
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT="29999").items():
        monkeypatch.setenv(key, value)
    return monkeypatch
