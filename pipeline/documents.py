"""Input records -> :class:`Document` or :class:`Rejection`: parsing of JSONL lines, text files and column values.

Pure functions over bytes and strings (the standard library and orjson, no Beam), so every rule is testable without a
runner. Bad input never raises: it becomes a :class:`Rejection` with a stable reason name, which the Beam
glue counts and writes to ``DIR/rejected/``. Reasons decided here, in the order they are checked:

    invalid_utf8       bytes that are not UTF-8, or text holding lone surrogates (from JSON "\\ud800" escapes)
    malformed_record   a JSONL line that is not JSON, JSON that is not an object, a missing or non-string text
    empty              nothing but whitespace (blank JSONL lines included)
    nul_bytes          text containing U+0000: a binary file among the inputs, never natural text

Texts are kept as given except that a leading byte-order mark is dropped and "\\r\\n" becomes "\\n".

Try it:

    python -c "from pipeline.documents import parse_json_line; print(parse_json_line(b'{\\"text\\": \\"hi\\"}', 'a.jsonl:1'))"
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import orjson

INVALID_UTF8 = "invalid_utf8"
MALFORMED_RECORD = "malformed_record"
EMPTY = "empty"
NUL_BYTES = "nul_bytes"
REASONS: tuple[str, ...] = (INVALID_UTF8, MALFORMED_RECORD, EMPTY, NUL_BYTES)

# A rejected record keeps at most this many characters of its text (or escaped bytes) in rejected/*.jsonl.gz,
# so one 50 MB bad record costs 64 KiB there, not 50 MB (or 200 MB once escaped).
MAX_REJECTED_CHARS = 64 * 1024


@dataclass(frozen=True)
class Document:
    """One accepted document. ``source`` is where it came from ("path:lineno" for JSONL, the path for .txt).

    Stages that change a document (line edits, language ID, redaction) make a new one with
    ``dataclasses.replace``; a Document is never mutated.
    """

    id: str
    text: str
    source: str
    # True when the record carried no id and ``id`` was derived from ``source``; then document_key() uses
    # the content hash, so a document's shard does not depend on where its file happens to live.
    derived_id: bool = False
    url: str = ""  # the page's URL when the input carries one (a WET record, the --url-field of a row), else ""
    language: str = ""  # lid.176's label ("en", "de", ...) once language ID ran, else ""


@dataclass(frozen=True)
class Rejection:
    """One dropped record. ``text`` is bounded (see :data:`MAX_REJECTED_CHARS`) and always valid UTF-8.

    ``details`` are (key, JSON scalar) pairs that say more about the decision (``duplicate_of``, ``language``,
    ``language_score``, ``url``); they become extra keys of the rejected record.
    """

    id: str
    source: str
    reason: str
    text: str
    details: tuple[tuple[str, object], ...] = ()


def _bounded(text: str) -> str:
    """At most MAX_REJECTED_CHARS characters, a note of the original length when cut, encodable as UTF-8."""
    if len(text) > MAX_REJECTED_CHARS:
        text = f"{text[:MAX_REJECTED_CHARS]}\n[truncated: {len(text)} characters in the original]"
    # Lone surrogates cannot be written as UTF-8: show them as "\ud800" escapes instead.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _escaped_bytes(raw: bytes) -> str:
    """Undecodable input shown as text with "\\xNN" escapes, bounded like any rejected text."""
    # Each bad byte becomes 4 characters ("\xff"): bound the escaped text, not just the bytes read.
    text = raw[:MAX_REJECTED_CHARS].decode("utf-8", "backslashreplace")
    if len(raw) > MAX_REJECTED_CHARS or len(text) > MAX_REJECTED_CHARS:
        text = f"{text[:MAX_REJECTED_CHARS]}\n[truncated: {len(raw)} bytes in the original]"
    return text


def rejection_for(doc: Document, reason: str, **details) -> Rejection:
    """The Rejection recording that ``doc`` was dropped for ``reason`` (e.g. by a quality filter), with the
    document's url (when it has one) and ``details`` (JSON scalars) as extra keys of its rejected record."""
    if doc.url:
        details.setdefault("url", doc.url)
    return Rejection(id=doc.id, source=doc.source, reason=reason, text=_bounded(doc.text),
                     details=tuple(sorted(details.items())))


RECORD_KEYS = ("id", "source", "reason", "text")  # a rejected record's own keys; details never replace them


def to_rejection_record(r: Rejection) -> dict:
    """The JSON object written to rejected/*.jsonl.gz for one dropped record: id, source, reason, text, then the
    details."""
    record = {"id": r.id, "source": r.source, "reason": r.reason, "text": r.text}
    for key, value in r.details:
        if key in RECORD_KEYS:
            raise ValueError(f"rejection detail {key!r} would replace the record's own key; rename it")
        record[key] = value
    return record


def parse_value(text, doc_id, source: str, url=None) -> Document | Rejection:
    """One text value (a Parquet cell, a dataset row, a decoded JSON field) -> Document or Rejection.

    ``text`` may be str or bytes (decoded as UTF-8); anything else (None, numbers) is a malformed record.
    ``doc_id`` may be a str or int; None or "" derives the id from ``source``. ``url``: the record's URL; a
    string becomes Document.url, anything else (None, a number) is ignored, as a missing URL is.
    """
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or doc_id == "":
        doc_id, derived = source, True
    else:
        doc_id, derived = str(doc_id), False
    if isinstance(text, (bytes, bytearray, memoryview)):
        raw = bytes(text)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Rejection(id=_bounded(doc_id), source=source, reason=INVALID_UTF8, text=_escaped_bytes(raw))
    if not isinstance(text, str):
        return Rejection(id=_bounded(doc_id), source=source, reason=MALFORMED_RECORD,
                         text=_bounded(f"text is {type(text).__name__}, not a string: {text!r}"))
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    reason = None
    if not text or text.isspace():
        reason = EMPTY
    else:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: Python allows them in str, UTF-8 does not
            reason = INVALID_UTF8
        else:
            if "\x00" in text:
                reason = NUL_BYTES
    if reason is not None:
        return Rejection(id=_bounded(doc_id), source=source, reason=reason, text=_bounded(text))
    url = url if isinstance(url, str) else ""
    return Document(id=doc_id, text=text, source=source, derived_id=derived, url=url)


def _fast_record(raw: bytes, id_field: str):
    """The JSON value of ``raw`` by orjson, or None to take the json module's path.

    orjson reads JSON several times faster, and where it succeeds the json module gives the same value: it
    refuses invalid UTF-8, a byte-order mark, blank input, lone surrogate escapes, NaN and nesting past 1024.
    One difference is left, and handled: an integer beyond 64 bits becomes a float in orjson, an int in json, so
    an id that reads as a float goes the json module's way (a float id and a huge int id are treated apart)."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(record, dict) and isinstance(record.get(id_field), float):
        return None
    return record


def parse_json_line(raw: bytes, source: str, text_field: str = "text", id_field: str = "id",
                    url_field: str = "url") -> Document | Rejection:
    """One JSONL line (bytes, with or without its newline) -> Document or Rejection. Never raises. The
    ``url_field`` value, when it is a string, becomes Document.url."""
    record = _fast_record(raw, id_field)
    if record is None:
        try:
            line = _line(raw)
        except UnicodeDecodeError:
            return Rejection(id=source, source=source, reason=INVALID_UTF8, text=_escaped_bytes(raw))
        if not line or line.isspace():
            return Rejection(id=source, source=source, reason=EMPTY, text="")
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; "[[[[..." recurses
            return Rejection(id=source, source=source, reason=MALFORMED_RECORD,
                             text=_bounded(f"{type(e).__name__}: {e}\n{line}"))
    if not isinstance(record, dict):
        return Rejection(id=source, source=source, reason=MALFORMED_RECORD,
                         text=_bounded(f"a JSON {type(record).__name__}, not an object: {_line(raw)}"))
    if text_field not in record:
        return Rejection(id=source, source=source, reason=MALFORMED_RECORD,
                         text=_bounded(f"no {text_field!r} field (set --text-field): {_line(raw)}"))
    value = record[text_field]
    if not isinstance(value, str):  # JSON has no bytes: a non-string text is a malformed record
        value = f"{text_field!r} is a JSON {type(value).__name__}, not a string: {_line(raw)}"
        return Rejection(id=source, source=source, reason=MALFORMED_RECORD, text=_bounded(value))
    return parse_value(value, record.get(id_field), source, record.get(url_field))


def _line(raw: bytes) -> str:
    """A JSONL line as text, without a leading byte-order mark (UnicodeDecodeError when it is not UTF-8)."""
    line = raw.decode("utf-8")
    return line[1:] if line.startswith("\ufeff") else line


def parse_text_file(raw: bytes, source: str) -> Document | Rejection:
    """A whole plain-text file -> one Document (id = its source, i.e. its path) or Rejection."""
    return parse_value(raw, None, source)


def dedup_key(text: str) -> str:
    """Key for exact-duplicate removal: sha256 hex of the text with whitespace runs collapsed to one space.

    Two documents that differ only in spacing, line breaks or indentation are duplicates; case and
    punctuation still count. Linear in len(text).
    """
    # str.split() breaks at exactly the characters re's \s matches (str.isspace): re.sub(r"\s+", " ", text)
    # without the regex engine, in one pass in C.
    normalized = " ".join(text.split())
    return hashlib.sha256(normalized.encode("utf-8", "surrogatepass")).hexdigest()


def content_hash(text: str) -> str:
    """sha256 hex of the exact text (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def document_key(doc: Document) -> str:
    """Stable key for shard assignment and ordering within a shard.

    "id:<id>" when the record carried an id, else "sha256:<content hash>" (independent of file paths).
    """
    if doc.derived_id:
        return "sha256:" + content_hash(doc.text)
    return "id:" + doc.id
