"""Tests of pipeline.builtin_corpus: docstrings parsed with ast, distribution descriptions, deterministic files.

    python -m pytest tests/test_builtin_corpus.py -q
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import inspect
import json
import json.decoder
import os
import textwrap

import pytest

from pipeline import builtin_corpus
from pipeline.builtin_corpus import distribution_documents, docstrings, main, stdlib_documents, write_builtin_corpus


def read_corpus(paths) -> list[dict]:
    records = []
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f)
    return records


def test_docstrings_of_a_module_by_hand():
    source = textwrap.dedent('''
        """Module doc."""
        import sys

        def top():
            """Top-level function.

                Indented detail.
                    More indented.
            """

        class Outer:
            """Outer class."""
            def method(self):
                """A method."""
                def inner():
                    """Nested function."""
            def undocumented(self):
                pass

        if sys.platform == "win32":
            def platform_only():
                """Defined under an if."""
        x = "not a docstring"
    ''').encode()
    assert list(docstrings(source)) == [
        ("", "Module doc."),
        ("top", "Top-level function.\n\nIndented detail.\n    More indented."),  # as inspect.cleandoc
        ("Outer", "Outer class."),
        ("Outer.method", "A method."),
        ("Outer.method.inner", "Nested function."),
        ("platform_only", "Defined under an if."),
    ]
    assert list(docstrings(b"def broken(:\n")) == []
    assert list(docstrings(b"x = 1\x00\n")) == []


def test_stdlib_docstrings_match_inspect():
    """The text for a stdlib method is exactly what inspect.getdoc gives for the imported object."""
    wanted = {"stdlib:json/decoder.py:JSONDecoder.decode", "stdlib:json/decoder.py", "stdlib:textwrap.py:dedent"}
    found = {}
    for doc_id, text in stdlib_documents():
        if doc_id in wanted:
            found[doc_id] = text
        if len(found) == len(wanted):
            break
    assert found["stdlib:json/decoder.py:JSONDecoder.decode"] == inspect.getdoc(json.decoder.JSONDecoder.decode)
    assert found["stdlib:json/decoder.py"] == inspect.getdoc(json.decoder)
    assert found["stdlib:textwrap.py:dedent"] == inspect.getdoc(textwrap.dedent)


def test_distribution_descriptions_match_importlib_metadata():
    docs = dict(distribution_documents())
    assert list(docs) == sorted(docs)
    body = importlib.metadata.metadata("numpy").get_payload().strip()
    assert docs["dist:numpy"] == body and len(body) > 200


def test_corpus_files_are_bounded_deterministic_and_valid(tmp_path):
    a = write_builtin_corpus(str(tmp_path / "a"), max_bytes=300_000)
    b = write_builtin_corpus(str(tmp_path / "b"), max_bytes=300_000)
    assert [os.path.basename(p) for p in a] == ["builtin-00000.jsonl.gz"]
    # Byte-identical files on every run (sorted walks, no gzip timestamp or name).
    assert [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in a] == \
        [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in b]
    records = read_corpus(a)
    assert all(set(r) == {"id", "text"} and r["text"].strip() for r in records)
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids) and all(i.startswith("stdlib:") for i in ids)
    sizes = [len(r["text"].encode("utf-8")) for r in records]
    # Whole documents: stops at the first document that reaches the bound.
    assert sum(sizes[:-1]) < 300_000 <= sum(sizes)


def test_file_rollover_and_sources(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin_corpus, "FILE_TEXT_BYTES", 200_000)
    paths = write_builtin_corpus(str(tmp_path), max_bytes=None)
    assert len(paths) > 5 and [os.path.basename(p) for p in paths] == \
        [f"builtin-{i:05d}.jsonl.gz" for i in range(len(paths))]
    records = read_corpus(paths)
    kinds = [r["id"].split(":")[0] for r in records]
    assert kinds == sorted(kinds, key=["stdlib", "dist"].index)  # stdlib first, then distributions
    assert kinds.count("dist") > 5 and kinds.count("stdlib") > 1000
    assert sum(len(r["text"].encode("utf-8")) for r in records) > 1_000_000


def test_main_reports_and_rejects_bad_sizes(tmp_path, capsys):
    main(["--out", str(tmp_path), "--max-mb", "0.05"])
    assert "documents" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "builtin-00000.jsonl.gz")
    with pytest.raises(ValueError, match="max_bytes"):
        write_builtin_corpus(str(tmp_path), max_bytes=0)


def test_each_source_can_be_gathered_alone(tmp_path):
    """--builtin-sources: the quickstart prepares stdlib and dist as two data sets of their own."""
    from pipeline.builtin_corpus import parse_sources

    ids = {}
    for name in ("stdlib", "dist"):
        paths = write_builtin_corpus(str(tmp_path / name), max_bytes=200_000, sources=(name,))
        ids[name] = [json.loads(line)["id"] for p in paths for line in gzip.open(p, "rt", encoding="utf-8")]
        assert ids[name] and all(i.startswith(name + ":") for i in ids[name])
    both = write_builtin_corpus(str(tmp_path / "both"), max_bytes=200_000)
    assert [json.loads(line)["id"] for p in both for line in gzip.open(p, "rt", encoding="utf-8")] == ids["stdlib"]
    assert parse_sources("dist, stdlib") == ("stdlib", "dist")
    for bad in ("", "web", "stdlib,web"):
        with pytest.raises(ValueError, match="choose from stdlib, dist, site"):
            parse_sources(bad)
