"""Tests of pipeline.documents: records -> Document or Rejection, with every reason, bounds and keys.

    python -m pytest tests/test_documents.py -q
"""
from __future__ import annotations

import json
import random

import pytest

from pipeline import documents
from pipeline.documents import (MAX_REJECTED_CHARS, Document, Rejection, dedup_key, document_key, parse_json_line,
                                parse_text_file, parse_value, rejection_for, to_rejection_record)


def test_json_line_with_id_and_text():
    out = parse_json_line(b'{"id": "doc-7", "text": "The river ran.", "url": "https://a.example/x"}\n', "a.jsonl:3")
    assert out == Document(id="doc-7", text="The river ran.", source="a.jsonl:3", url="https://a.example/x")
    assert document_key(out) == "id:doc-7"


def test_url_field_is_named_and_only_strings_count():
    raw = b'{"text": "Words.", "link": "https://b.example/", "url": 7}'
    assert parse_json_line(raw, "a.jsonl:1").url == ""  # a number is no URL
    assert parse_json_line(raw, "a.jsonl:1", url_field="link").url == "https://b.example/"
    assert parse_value("Words.", "r", "t.parquet:1", url=None).url == ""
    assert parse_value("Words.", "r", "t.parquet:1", url="https://c.example/").url == "https://c.example/"


def test_custom_text_and_id_fields_and_integer_ids():
    out = parse_json_line(b'{"key": 42, "content": "Some text here."}', "b.jsonl:1", text_field="content",
                          id_field="key")
    assert isinstance(out, Document) and out.id == "42" and out.text == "Some text here."


def test_missing_id_derives_it_from_source_and_keys_by_content():
    a = parse_json_line(b'{"text": "Same words."}', "dir1/a.jsonl:1")
    b = parse_json_line(b'{"text": "Same words."}', "elsewhere/b.jsonl:9")
    assert a.id == "dir1/a.jsonl:1" and b.id == "elsewhere/b.jsonl:9"
    # The shard key must not depend on where a file lives: content hash for derived ids.
    assert document_key(a) == document_key(b) and document_key(a).startswith("sha256:")
    assert document_key(parse_json_line(b'{"text": "Other words."}', "dir1/a.jsonl:1")) != document_key(a)


@pytest.mark.parametrize("raw, reason", [
    (b'{"text": "caf\xe9"}', "invalid_utf8"),                  # Latin-1 byte, not UTF-8
    (b'\xff\xfe\x00{', "invalid_utf8"),
    (b'{"text": "lone \\ud800 surrogate"}', "invalid_utf8"),    # valid JSON escape, not encodable as UTF-8
    (b'{"text": "unterminated', "malformed_record"),
    (b'["a list", "not an object"]', "malformed_record"),
    (b'"just a string"', "malformed_record"),
    (b'{"body": "no text field"}', "malformed_record"),
    (b'{"text": 17}', "malformed_record"),
    (b'{"text": null}', "malformed_record"),
    (b'{"text": ["a", "b"]}', "malformed_record"),
    (b"[" * 100_000, "malformed_record"),                       # nesting deep enough to recurse
    (b"", "empty"),
    (b"   \n", "empty"),
    (b'{"text": ""}', "empty"),
    (b'{"text": " \\n\\t "}', "empty"),
    (b'{"text": "binary\\u0000junk"}', "nul_bytes"),
])
def test_each_reason_for_json_lines(raw, reason):
    out = parse_json_line(raw, "in.jsonl:5")
    assert isinstance(out, Rejection), out
    assert out.reason == reason and reason in documents.REASONS
    assert out.source == "in.jsonl:5"
    json.dumps(to_rejection_record(out)).encode("utf-8")  # always writable to rejected/*.jsonl.gz
    out.text.encode("utf-8")


@pytest.mark.parametrize("raw", [
    b'{"id": 123456789012345678901234567890, "text": "A huge integer id."}',  # orjson: a float; json: an int
    b'{"id": 7, "text": "An int id."}',
    b'{"id": 7.5, "text": "A float id: derived from the source."}',
    b'\xef\xbb\xbf{"id": "bom", "text": "After a byte-order mark."}',
    b'{"id": "nan", "score": NaN, "text": "NaN elsewhere in the record."}',
    b'{"id": "inf", "score": 1e400, "text": "Infinity elsewhere."}',
    b'{"id": "first", "id": "last", "text": "Duplicate keys: the last one wins."}',
    b'{"id": "crlf", "text": "Line\\r\\nbreaks."}\r',
    b'{"id": "emoji", "text": "Pair \\ud83d\\ude00 of surrogates."}',
    b'{"id": "deep", "x": ' + b"[" * 900 + b"]" * 900 + b', "text": "Nested 900 deep."}',
])
def test_json_lines_read_as_the_json_module_reads_them(raw):
    """The fast JSON reader (orjson) and the json module give every record the same outcome, including where
    orjson is stricter or reads numbers differently (the record then takes the json module's path)."""
    line = raw.decode("utf-8").lstrip("\ufeff").rstrip("\r")
    record = json.loads(line)
    out = parse_json_line(raw, "in.jsonl:3")
    assert out == documents.parse_value(record["text"], record.get("id"), "in.jsonl:3", record.get("url"))
    assert isinstance(out, Document)


def test_invalid_utf8_keeps_the_escaped_bytes():
    out = parse_json_line(b'{"text": "caf\xe9 au lait"}', "x.jsonl:1")
    assert out.reason == "invalid_utf8"
    assert out.text == '{"text": "caf\\xe9 au lait"}'


def test_rejected_text_is_bounded_for_huge_records():
    huge_bad = b'{"text": "' + b"\xff" * 5_000_000 + b'"}'
    out = parse_json_line(huge_bad, "big.jsonl:1")
    assert out.reason == "invalid_utf8"
    assert len(out.text) < MAX_REJECTED_CHARS + 100
    assert "[truncated: 5000012 bytes in the original]" in out.text

    huge_nul = "\x00" * 3_000_000
    out = parse_value(huge_nul, "n1", "big.parquet:row0")
    assert out.reason == "nul_bytes" and len(out.text) < MAX_REJECTED_CHARS + 100
    assert "[truncated: 3000000 characters in the original]" in out.text

    out = parse_json_line(b'{"text": 1, "pad": "' + b"x" * 1_000_000 + b'"}', "big.jsonl:2")
    assert out.reason == "malformed_record" and len(out.text) < MAX_REJECTED_CHARS + 100


def test_text_file_is_one_document_with_bom_and_crlf_normalized():
    out = parse_text_file("\ufeffFirst line.\r\nSecond line.\r\n".encode("utf-8"), "notes/a.txt")
    assert out == Document(id="notes/a.txt", text="First line.\nSecond line.\n", source="notes/a.txt",
                           derived_id=True)
    assert parse_text_file(b"\x89PNG\r\n\x1a\n\x00\x00", "img.txt").reason == "invalid_utf8"
    assert parse_text_file(b"ELF\x00\x01\x02 binary", "prog.txt").reason == "nul_bytes"
    assert parse_text_file(b"\n\n  \n", "blank.txt").reason == "empty"


def test_parse_value_for_column_values():
    assert parse_value("A row of text.", 12, "t.parquet:12") == Document("12", "A row of text.", "t.parquet:12")
    assert parse_value(b"bytes column", None, "t.parquet:3").text == "bytes column"
    assert parse_value(b"\xc3\x28", "r", "t.parquet:4").reason == "invalid_utf8"
    assert parse_value(None, "r", "t.parquet:5").reason == "malformed_record"
    assert parse_value(3.5, "r", "t.parquet:6").reason == "malformed_record"
    # A boolean or "" id is no id: derived from the source.
    assert parse_value("x y", True, "t.parquet:7").id == "t.parquet:7"
    assert parse_value("x y", "", "t.parquet:8").derived_id


def test_rejection_for_and_record():
    doc = Document("d1", "word " * 30_000, "s.jsonl:1")
    r = rejection_for(doc, "too_few_words")
    assert to_rejection_record(r) == {"id": "d1", "source": "s.jsonl:1", "reason": "too_few_words",
                                      "text": r.text}
    assert r.text.startswith("word word") and len(r.text) < MAX_REJECTED_CHARS + 100


def test_rejection_details_and_url_become_record_keys():
    doc = Document("d2", "Some text.", "s.jsonl:2", url="https://a.example/p")
    r = rejection_for(doc, "near_duplicate", duplicate_of="id:d1")
    assert to_rejection_record(r) == {"id": "d2", "source": "s.jsonl:2", "reason": "near_duplicate",
                                      "text": "Some text.", "duplicate_of": "id:d1", "url": "https://a.example/p"}
    with pytest.raises(ValueError, match="'text'"):
        to_rejection_record(rejection_for(doc, "language", text="x"))


def test_dedup_key_collapses_whitespace_only():
    base = dedup_key("The river ran past the mill.")
    assert dedup_key("  The river\tran\n\npast the   mill.\n") == base
    assert dedup_key("the river ran past the mill.") != base  # case counts
    assert dedup_key("The river ran past the mill") != base   # punctuation counts
    assert len(base) == 64 and int(base, 16) >= 0


def test_never_raises_on_random_bytes():
    rng = random.Random(1234)
    alphabet = b'{}[]":,\\ \n\x00\xff\xc3\xa9abctextid0123456789u'
    reasons = set()
    for i in range(3000):
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        if i % 3 == 0:
            raw = b'{"text": "' + raw + b'"}'
        out = parse_json_line(raw, f"fuzz:{i}")
        assert isinstance(out, (Document, Rejection))
        if isinstance(out, Rejection):
            reasons.add(out.reason)
            json.dumps(to_rejection_record(out)).encode("utf-8")
        else:
            assert out.text.strip() and "\x00" not in out.text
            out.text.encode("utf-8")
    assert reasons <= set(documents.REASONS) and {"invalid_utf8", "malformed_record"} <= reasons
