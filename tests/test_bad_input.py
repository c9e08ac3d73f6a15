"""Bad input never crashes prepare: every bad record is counted and written to rejected/ with its reason;
user mistakes are refused up front, before any pipeline starts, with a message naming the flag and the fix.

    python -m pytest tests/test_bad_input.py -q
"""
from __future__ import annotations

import gzip
import json
import os

import pytest

from references import require  # noqa: E402
require("apache_beam")

from conftest import gopher_text, write_jsonl_file  # noqa: E402
from pipeline.documents import MAX_REJECTED_CHARS  # noqa: E402
from pipeline.manifest import load_manifest  # noqa: E402
from pipeline.prepare import main, run  # noqa: E402

HUGE_BYTES = 50 * 1024 * 1024  # the 50 MB single-line document


def _rejected(out: str) -> list[dict]:
    rows = []
    for name in sorted(os.listdir(os.path.join(out, "rejected"))):
        with gzip.open(os.path.join(out, "rejected", name), "rt", encoding="utf-8") as f:
            rows += [json.loads(line) for line in f]
    return rows


def test_bad_records_become_counted_rejections(tmp_path):
    inp = tmp_path / "in"
    good = [{"id": f"g{i}", "text": gopher_text(500 + i)} for i in range(12)]
    bad = [
        {"id": "nul", "text": gopher_text(1) + "\x00\x01"},  # NUL inside otherwise fine text
        {"id": "empty", "text": ""},
        {"id": "spaces", "text": " \n\t \n"},
        {"id": "notext", "body": gopher_text(2)},  # no "text" field
        {"id": "number", "text": 42},  # text that is not a string
    ]
    raw = [
        b'{"id": "badutf8", "text": "caf\xe9 \xff\xfe"}',  # invalid UTF-8 bytes
        b'{"id": "cut", "text": "unterminated',  # malformed JSON
        b"[1, 2, 3]",  # JSON, but not an object
        b"",  # blank line
    ]
    write_jsonl_file(inp / "mixed.jsonl", good + bad, raw_lines=raw)
    # One 50 MB line: far over max_words, dropped as too_many_words in linear time and bounded memory.
    sentence = b"The farmer walked to the river with the basket of bread and the lantern. "
    with open(inp / "huge.jsonl", "wb") as f:
        f.write(b'{"id": "huge", "text": "')
        f.write(sentence * (HUGE_BYTES // len(sentence)))
        f.write(b'"}\n')
    (inp / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64)  # binary file among inputs
    (inp / "latin1.txt").write_bytes("naïve café".encode("latin-1"))  # a .txt that is not UTF-8
    (inp / "broken.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated gzip")  # undecompressable

    out = str(tmp_path / "out")
    m = run(["--input", str(inp / "*"), "--output", out, "--vocab-size", "400", "--train-shards", "2",
             "--val-fraction", "0", "--rejected-files", "1"])

    docs = m["documents"]
    expected = {"nul_bytes": 1, "empty": 3, "malformed_record": 4, "invalid_utf8": 3, "too_many_words": 1,
                "unreadable_file": 1}
    assert {r: n for r, n in docs["rejected"].items() if n} == expected
    assert docs["kept"] == len(good)
    assert docs["read"] == docs["kept"] + sum(docs["rejected"].values()) == len(good) + sum(expected.values())
    load_manifest(out, verify=True)

    rows = _rejected(out)
    by_id = {r["id"]: r for r in rows if not r["id"].startswith(str(inp))}
    assert by_id["nul"]["reason"] == "nul_bytes"
    assert by_id["empty"]["reason"] == by_id["spaces"]["reason"] == "empty"
    assert by_id["huge"]["reason"] == "too_many_words"
    assert len(by_id["huge"]["text"]) < MAX_REJECTED_CHARS + 200  # 50 MB record, bounded copy in rejected/
    by_source = {os.path.basename(r["source"]): r["reason"] for r in rows}
    assert by_source["image.png"] == "invalid_utf8"  # binary: not UTF-8 (with NUL bytes it would be nul_bytes)
    assert by_source["latin1.txt"] == "invalid_utf8"
    assert by_source["broken.jsonl.gz"] == "unreadable_file"
    assert by_source["mixed.jsonl:16"] == "malformed_record" == by_source["mixed.jsonl:17"]  # notext, number
    assert by_source["mixed.jsonl:19"] == "malformed_record" == by_source["mixed.jsonl:20"]  # cut, array
    assert by_source["mixed.jsonl:18"] == "invalid_utf8"
    assert by_source["mixed.jsonl:21"] == "empty"  # the blank line
    assert "\\xff" in next(r["text"] for r in rows if r["source"].endswith("mixed.jsonl:18"))  # escaped bytes


# ------------------------------------------------------------------------------------------------------
# Up-front errors: raised before any pipeline starts (the output directory is never touched)


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl_file(tmp_path / "in" / "a.jsonl", [{"text": gopher_text(1)}])


@pytest.mark.parametrize("flags,error,match", [
    (["--vocab-size", "10"], ValueError, "--vocab-size 10"),
    (["--val-fraction", "1.5"], ValueError, "--val-fraction"),
    (["--train-shards", "0"], ValueError, "--train-shards"),
    (["--rejected-files", "-1"], ValueError, "--rejected-files"),
    (["--max-group-mb", "0"], ValueError, "--max-group-mb 0"),
    (["--min-groups", "-1"], ValueError, "--min-groups -1"),
    (["--rules", "gopher,c5"], ValueError, "--rules 'gopher,c5'"),
    (["--tokenizer-sample-mb", "0"], ValueError, "--tokenizer-sample-mb"),
    (["--text-field", ""], ValueError, "--text-field"),
    (["--min-words", "-5"], ValueError, "min_words"),
    (["--tokenizer", "/nonexistent/tok.model"], FileNotFoundError, "--tokenizer /nonexistent/tok.model"),
])
def test_invalid_options(tmp_path, corpus, flags, error, match):
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        run(["--input", corpus, "--output", str(out), *flags])
    assert not out.exists()


def test_missing_input_glob_names_it(tmp_path, corpus):
    missing = str(tmp_path / "nowhere" / "*.jsonl")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run(["--input", corpus, "--input", missing, "--output", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="is a directory"):
        run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="no input"):
        run(["--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    assert main(["--input", missing, "--output", str(tmp_path / "out")]) == 2


def test_unwritable_or_occupied_output(tmp_path, corpus):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        run(["--input", corpus, "--output", str(blocker)])
    with pytest.raises(ValueError, match="not writable"):
        run(["--input", corpus, "--output", str(blocker / "sub")])
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty.*--overwrite"):
        run(["--input", corpus, "--output", str(occupied)])
    with pytest.raises(ValueError, match="did not write.*notes.txt"):
        run(["--input", corpus, "--output", str(occupied), "--overwrite"])
    assert os.listdir(occupied) == ["notes.txt"]


def test_not_a_tokenizer_model(tmp_path, corpus):
    fake = tmp_path / "tok.model"
    fake.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="tok.model"):
        run(["--input", corpus, "--output", str(tmp_path / "out"), "--tokenizer", str(fake)])
    assert not (tmp_path / "out").exists()
