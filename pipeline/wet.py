"""Common Crawl WET files -> (record number, page URL, extracted text bytes), one per ``conversion`` record.

A WET file is a WARC file (ISO 28500) of the plain text Common Crawl extracted from each page it fetched: a
``warcinfo`` record, then one ``conversion`` record per page, its block the page's text in UTF-8 and its
``WARC-Target-URI`` the page's URL; each record is its own gzip member (``*.warc.wet.gz``). warcio parses the
records; this module adds what a corpus run needs from it: every record read completely or the file reported.

warcio is lenient where a corpus run must not be: it ends the file quietly at a truncated gzip member (the records
in it are lost without a word), returns a short block when the file ends inside a record, and skips data it cannot
decompress after printing the zlib error. So gzip is decompressed here, with zlib, one member at a time: a member's
bytes reach warcio only once its CRC and length have been checked (members of at most MAX_MEMBER_BYTES; a larger
one, as in a file gzipped whole, is passed on as it is decompressed), and a file that ends inside a member or
holds one that does not decompress raises. Each block is also checked against its Content-Length (an uncompressed
file cut short). Any of these raises WetError naming the record, after every complete record before it has been
yielded: the read stage turns it into one unreadable_file rejection (pipeline.read) and keeps those records.
Reading stops there: the records after a damaged one are not searched for.

WARC files of responses (``*.warc.gz``, raw HTML) are not read: turning HTML into text is a quality decision of its
own (trafilatura for FineWeb, resiliparse for DCLM, each a large dependency and the slowest step of those
pipelines), and Common Crawl's WET files already hold its extraction for every page. A file with response
records and no conversion record is reported (WetError) rather than read as zero documents.

Try it (with a WET file from https://data.commoncrawl.org/):

    python -c "import sys; from pipeline.wet import conversion_records; [print(n, u) for n, u, _ in conversion_records(open(sys.argv[1], 'rb'))]" CC-MAIN-...warc.wet.gz
"""
from __future__ import annotations

import zlib
from typing import BinaryIO, Iterator

from warcio.archiveiterator import ArchiveIterator

WET_SUFFIXES = (".warc.wet.gz", ".wet.gz", ".wet")  # read as WET when --format is auto
WARC_SUFFIXES = (".warc.gz", ".warc")  # also read as WET, so that a WARC of responses is reported, not misread
MAX_MEMBER_BYTES = 64 << 20  # decompressed bytes of one gzip member held until its check (Common Crawl: one record)
_READ_CHUNK = 1 << 16  # compressed bytes fed to zlib at a time
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_MESSAGE = 500  # characters of a library's error message kept (warcio quotes the bad bytes it met)


class WetError(Exception):
    """A WET file that cannot be read to its end. ``record`` is the 1-based number of the WARC record (warcinfo
    included) at which reading stopped, every record before it complete; 0 when the whole file is refused."""

    def __init__(self, record: int, message: str):
        super().__init__(f"WARC record {record}: {message}" if record else message)
        self.record = record


class _Gunzip:
    """The decompressed bytes of a gzip stream of one or more members (the stream's first bytes were already read:
    ``start``), released a whole member at a time once zlib has checked its CRC and length; raises zlib.error for
    a damaged member and OSError for a stream that ends inside one."""

    def __init__(self, raw: BinaryIO, start: bytes, max_member_bytes: int = MAX_MEMBER_BYTES):
        self._raw, self._unused, self._max = raw, start, max_member_bytes
        self._member = None  # the zlib decompressor of the member being read, None between members
        self._held: list[bytes] = []  # its bytes so far
        self._held_bytes = 0
        self._ready = bytearray()  # checked bytes not yet read
        self._end = False

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all with -1): fewer when a member's bytes run out, as a raw stream returns short
        reads, so that a caller gets the records of a member before the next one is decompressed."""
        while not self._end and (size < 0 or not self._ready):
            self._fill()
        size = len(self._ready) if size < 0 else min(size, len(self._ready))
        out = bytes(self._ready[:size])
        del self._ready[:size]
        return out

    def _fill(self) -> None:
        data, self._unused = self._unused or self._raw.read(_READ_CHUNK), b""
        if not data:
            if self._member is not None:
                raise OSError("the file ends inside a gzip member (truncated)")
            self._end = True
            return
        if self._member is None:
            data = data.lstrip(b"\x00")  # zero padding between members, which gzip tolerates too
            if not data:
                return
            self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip header and trailer, checked by zlib
        out = self._member.decompress(data)
        self._held.append(out)
        self._held_bytes += len(out)
        if self._member.eof:
            self._unused, self._member = self._member.unused_data, None
        if self._member is None or self._held_bytes > self._max:
            self._ready += b"".join(self._held)
            self._held, self._held_bytes = [], 0


class _Prefixed:
    """An uncompressed stream whose first bytes (``start``) were already read."""

    def __init__(self, raw: BinaryIO, start: bytes):
        self._raw, self._start = raw, start

    def read(self, size: int = -1) -> bytes:
        if not self._start:
            return self._raw.read(size)
        if size < 0:
            out, self._start = self._start + self._raw.read(), b""
            return out
        out, self._start = self._start[:size], self._start[size:]
        return out


def _message(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:_MAX_MESSAGE]}"


def conversion_records(raw: BinaryIO) -> Iterator[tuple[int, str, bytes]]:
    """(record number, WARC-Target-URI, block bytes) for each conversion record of the WET stream ``raw``.

    ``raw``: the file's bytes as stored, gzip (one member per record as Common Crawl writes them, or one for the
    whole file: told by its first bytes) or not. Record numbers count every WARC record from 1, warcinfo included.
    The URI is "" when a record has none. Blocks are not decoded here: invalid UTF-8 becomes a counted rejection
    downstream. Raises WetError (see the module docstring).
    """
    head = raw.read(len(_GZIP_MAGIC))
    records = iter(ArchiveIterator(_Gunzip(raw, head) if head == _GZIP_MAGIC else _Prefixed(raw, head)))
    number = conversions = responses = 0  # records read; conversion and response records among them
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except Exception as e:  # noqa: BLE001 -- warcio raises ArchiveLoadFailed, zlib.error, OSError, ValueError...
            raise WetError(number + 1, f"cannot be read: {_message(e)}") from None
        number += 1
        if record.rec_type == "response":
            responses += 1
        if record.rec_type != "conversion":
            continue
        try:
            block = record.raw_stream.read()
        except Exception as e:  # noqa: BLE001 -- as above, for a record whose block spans gzip members
            raise WetError(number, f"cannot be read: {_message(e)}") from None
        declared = (record.rec_headers.get_header("Content-Length") or "").strip()
        if declared.isdigit() and len(block) < int(declared):
            raise WetError(number, f"the file ends inside the record: {len(block)} of its {declared} bytes are there")
        conversions += 1
        yield number, record.rec_headers.get_header("WARC-Target-URI") or "", block
    if responses and not conversions:
        raise WetError(0, f"a WARC file of {responses} response records (HTML) and no conversion record: only WET "
                          "files (*.warc.wet.gz, Common Crawl's extracted text) are read")
