"""Web input: the URL blocklist (pipeline.urls), PII redaction (pipeline.pii) against datatrove's PIIFormatter,
Common Crawl WET files (pipeline.wet, written here with warcio's own WARCWriter) through the read and parse
stages, and the UrlFilter and RedactPII stages on Beam's local runner.

    python -m pytest tests/test_web_input.py -q
"""
from __future__ import annotations

import gzip
import io
import ipaddress
import json
import random

import pytest

from pipeline import pii, urls, wet
from pipeline.pii import EMAIL_PLACEHOLDER, IP_PLACEHOLDER, redact
from pipeline.urls import parse_blocklist, read_blocklist, url_blocked, url_host

# ------------------------------------------------------------------------------------------------------
# URL blocklist

BLOCKLIST = parse_blocklist([
    "# a comment line",
    "example.com",
    "",
    "   Bad-Site.ORG.   # trailing comment, case and a final dot",
    "bücher.de",
    "xn--80akhbyknj4f.xn--p1ai",  # испытание.рф, written in its ASCII form
    "203.0.113.7",
    "2001:db8::1",
], "list.txt")


@pytest.mark.parametrize("url", [
    "http://example.com/",
    "https://example.com",
    "https://www.example.com/a?b=c#d",
    "http://a.b.c.example.com/deep/path",
    "HTTP://WWW.EXAMPLE.COM/",  # case
    "http://example.com:8080/x",  # port
    "http://user:secret@example.com/",  # user info
    "http://example.com./",  # the root's trailing dot
    "www.example.com/no/scheme",  # a url field without scheme
    "//example.com/protocol-relative",
    "http://ex%61mple.com/",  # a percent-escaped host, as browsers decode it
    "http://bad-site.org/",
    "http://shop.bad-site.org/",
    "http://BÜCHER.de/",  # Unicode host, Unicode entry
    "http://www.xn--bcher-kva.de/",  # punycode host, Unicode entry
    "http://испытание.рф/",  # Unicode host, punycode entry
    "http://203.0.113.7/",
    "http://203.0.113.7:8000/x",
    "http://[2001:db8::1]/",
    "http://[2001:0db8:0:0:0:0:0:1]:443/",  # the same IPv6 address, written out
    "http://evil.com@example.com/",  # the host is example.com; evil.com is user info
])
def test_blocked_urls(url):
    assert url_blocked(url, BLOCKLIST)


@pytest.mark.parametrize("url", [
    "http://notexample.com/",  # a look-alike: the list's name is a suffix of the host but not at a dot
    "http://myexample.com/example.com",  # the name in the path, not the host
    "http://example.com.evil.net/",  # the list's name as a subdomain of another domain
    "http://example.co/",
    "http://example.com@evil.net/",  # user info that looks like the host
    "http://evil.net/?u=http://example.com/",
    "http://bad-site.org.uk/",
    "http://buecher.de/",
    "http://203.0.113.70/",
    "http://13.0.113.7/",  # no parent-domain matching for IP addresses
    "http://[2001:db8::2]/",
    "http://[::1/",  # unparsable: no host, not blocked, never raises
    "",  # a document without a URL
    "not a url at all",
])
def test_urls_that_are_not_blocked(url):
    assert not url_blocked(url, BLOCKLIST)


def test_blocklist_entries_are_normalized():
    assert BLOCKLIST == {"example.com", "bad-site.org", "xn--bcher-kva.de", "xn--80akhbyknj4f.xn--p1ai",
                         "203.0.113.7", "2001:db8::1"}
    assert url_host("https://User@WWW.Bücher.DE.:80/x") == "www.xn--bcher-kva.de"
    assert url_host("http://[2001:DB8:0::1]:80/") == "2001:db8::1"


def test_a_top_level_domain_entry_blocks_every_host_under_it():
    block = parse_blocklist(["xxx"], "tld.txt")
    assert url_blocked("http://a.b.xxx/", block) and not url_blocked("http://xxx.com/", block)


@pytest.mark.parametrize("line,message", [
    ("http://example.com/page", "is a URL, not a domain"),
    ("example.com/page", "is a URL, not a domain"),
    ("*.example.com", "without '\\*.': subdomains of every entry are always blocked"),
    (".example.com", "without '.'"),
    ("0.0.0.0 example.com", "hosts-file lines"),
    ("example.com:443", "without port or user"),
    ("a..example.com", "is not a domain name"),
    ("-example.com", "is not a domain name"),
    ("exa mple.com", "holds spaces"),
    ("1.2.3", "last label is a number"),
    ("x" * 64 + ".com", "1 to 63"),
])
def test_bad_blocklist_lines_name_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "block.txt"
    path.write_text(f"# header\nexample.org\n\n{line}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"--url-blocklist {path}:4: .*{message}"):
        read_blocklist(str(path))


def test_blocklist_files_that_cannot_be_used(tmp_path):
    with pytest.raises(FileNotFoundError, match="--url-blocklist .*missing.txt: no such file"):
        read_blocklist(str(tmp_path / "missing.txt"))
    (tmp_path / "comments.txt").write_text("# nothing here\n\n   # still nothing\n")
    with pytest.raises(ValueError, match="has no domains"):
        read_blocklist(str(tmp_path / "comments.txt"))
    (tmp_path / "latin1.txt").write_bytes("bücher.de\n".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_blocklist(str(tmp_path / "latin1.txt"))
    (tmp_path / "ok.txt").write_text("\ufeffexample.com\r\nexample.net\r\n", encoding="utf-8")
    # A Windows file with a byte-order mark: neither the mark nor "\r" is part of a domain.
    assert read_blocklist(str(tmp_path / "ok.txt")) == {"example.com", "example.net"}


def test_reasons():
    assert urls.REASONS == ("url_blocked",)
    assert pii.EDITS == ("pii_email", "pii_ip")


# ------------------------------------------------------------------------------------------------------
# PII redaction

def _datatrove_formatter():
    from references import require

    pii_module = require("datatrove.pipeline.formatters.pii")
    # One placeholder each, ours: datatrove cycles through a list, with a counter kept across documents.
    return pii_module.PIIFormatter(email_replacement=EMAIL_PLACEHOLDER, ip_replacement=IP_PLACEHOLDER)


_NAMES = ["anna", "j.smith", "Bob_Jones", "x", "first.middle.last", "info", "o'brien", "user+tag", "A1", "z-z"]
_DOMAINS = ["example.org", "mail.uni-bonn.de", "GMAIL.COM", "a.b.c.d.co.uk", "x1.io", "web-mail.net"]
_WORDS = ("the report was sent to the office and then shared with the team before the meeting on "
          "friday when everyone agreed that the server logs should be kept for a month").split()
_PRIVATE_IPS = ["10.0.0.1", "10.255.255.254", "172.16.5.4", "172.31.0.1", "192.168.1.1", "127.0.0.1",
                "169.254.10.20", "100.64.0.1", "0.0.0.0", "255.255.255.255", "192.0.2.55", "198.51.100.7",
                "203.0.113.9", "198.18.0.1", "240.0.0.1"]


def _public_ip(rng: random.Random) -> str:
    while True:
        ip = ".".join(str(rng.randrange(256)) for _ in range(4))
        address = ipaddress.ip_address(ip)
        if address.is_global and not address.is_multicast:  # multicast: see test_multicast_groups_are_kept
            return ip


def _pii_fixture(n_docs: int = 300, seed: int = 0) -> list[tuple[str, int, int]]:
    """(text, e-mails planted, public IPv4 addresses planted): sentences with addresses in the places they
    take in web text (after a colon, in angle brackets, in mailto: links and URLs, before punctuation)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        parts, emails, ips = [], 0, 0
        for _ in range(rng.randint(2, 8)):
            sentence = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12)))
            kind = rng.randrange(6)
            if kind == 0:
                address = f"{rng.choice(_NAMES)}@{rng.choice(_DOMAINS)}"
                template = rng.choice(["Contact: {}.", "<{}>", "mailto:{}", "({}),", "write to {} today"])
                sentence += " " + template.format(address)
                emails += 1
            elif kind == 1:
                template = rng.choice(["from {}.", "http://{}/index.html", "{}:8080", "[{}]", "host={};"])
                sentence += " " + template.format(_public_ip(rng))
                ips += 1
            elif kind == 2:
                sentence += f" on the internal host {rng.choice(_PRIVATE_IPS)}, behind the router"
            elif kind == 3:
                sentence += f" version {rng.randint(1, 9)}.{rng.randint(0, 20)}, build {rng.randint(100, 999)}"
            parts.append(sentence.capitalize())
        docs.append(("\n".join(parts), emails, ips))
    return docs


def test_redaction_matches_datatrove_pii_formatter():
    formatter = _datatrove_formatter()
    fixture = _pii_fixture()
    assert sum(e for _, e, _ in fixture) > 100 and sum(i for _, _, i in fixture) > 100  # the fixture plants enough
    for text, emails, ips in fixture:
        ours, counts = redact(text)
        assert ours == formatter.format(text), text
        assert counts == {"pii_email": emails, "pii_ip": ips}, text


def test_email_matching_equals_datatrove_on_random_strings():
    """Addresses are found from each "@" by hand (one pass) rather than by a regex search (quadratic on long runs
    of local-part characters): the same matches as datatrove's pattern on strings built to hit its corners (word
    boundaries, dots, empty atoms, Unicode letters, several "@" in a row). No digits, so no IP address forms."""
    formatter = _datatrove_formatter()
    rng = random.Random(1)
    pieces = ["a", "Bc", "_", ".", "..", "@", "@", "-", "+", "'", " ", "\n", "é", "ß", "x.co", "mail.example.org",
              "(", "<", ">", EMAIL_PLACEHOLDER]
    changed = 0
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 14)))
        ours = redact(text)[0]
        assert ours == formatter.format(text), text
        changed += ours != text
    assert changed > 500  # the strings do hold addresses


def test_non_public_ips_are_left_as_they_are():
    """Private, loopback, link-local, shared, documentation, benchmarking, reserved, multicast and broadcast
    addresses name no one on the internet: kept, as datatrove keeps them (ipaddress.is_global)."""
    formatter = _datatrove_formatter()
    text = "hosts: " + ", ".join(_PRIVATE_IPS) + "."
    assert redact(text) == (text, {"pii_email": 0, "pii_ip": 0})
    assert formatter.format(text) == text


def test_multicast_groups_are_kept():
    """A deliberate difference from datatrove, which replaces them (ipaddress calls multicast global): a group
    address names a protocol, not a host. Checked on datatrove too, so that the docs' note stays true."""
    text = "mDNS answers on 224.0.0.251, SSDP on 239.255.255.250."
    assert redact(text) == (text, {"pii_email": 0, "pii_ip": 0})
    assert _datatrove_formatter().format(text) != text


def test_public_ips_and_emails_become_the_placeholders():
    text = ("Mail Jane.Doe+news@Mail.Example.NET or jo@[8.8.8.8]; servers 8.8.8.8 and 1.1.1.1:53, "
            "see http://93.184.216.34/.")
    assert redact(text) == (
        f"Mail {EMAIL_PLACEHOLDER} or {EMAIL_PLACEHOLDER}; servers {IP_PLACEHOLDER} and {IP_PLACEHOLDER}:53, "
        f"see http://{IP_PLACEHOLDER}/.", {"pii_email": 2, "pii_ip": 3})


def test_redaction_is_idempotent_and_placeholders_are_not_counted():
    text, counts = redact("a@b.co 8.8.4.4")
    assert counts == {"pii_email": 1, "pii_ip": 1}
    assert redact(text) == (text, {"pii_email": 0, "pii_ip": 0})
    assert not pii.is_public_ip(IP_PLACEHOLDER)  # TEST-NET-1: a redacted text is never redacted again


@pytest.mark.parametrize("text", [
    "the OID 1.3.6.1.4.1.311.21.8 names a certificate template",
    "upgrade from 8.2.3.4.5 to 8.2.3.4.6",
    "a serial 123.45.67.89.10",
    "the value 11.22.33.44.55",
])
def test_dotted_numbers_longer_than_an_address_are_not_cut(text):
    """A deliberate difference from datatrove, whose pattern finds the first four numbers of a longer dotted
    number and replaces them (an OID or a version loses its head). This test also checks that datatrove still
    does, so that the docs' note stays true."""
    assert redact(text) == (text, {"pii_email": 0, "pii_ip": 0})
    assert _datatrove_formatter().format(text) != text


@pytest.mark.parametrize("text,redacted", [
    ("dns 2001:4860:4860::8888 is public", f"dns {IP_PLACEHOLDER} is public"),
    ("at [2606:4700:4700::1111]:443.", f"at [{IP_PLACEHOLDER}]:443."),
    ("full 2a00:1450:4001:0813:0000:0000:0000:200e form", f"full {IP_PLACEHOLDER} form"),
    ("upper 2A03:2880:F10C:83:FACE:B00C::25DE", f"upper {IP_PLACEHOLDER}"),
])
def test_public_ipv6_addresses_are_redacted(text, redacted):
    assert redact(text) == (redacted, {"pii_email": 0, "pii_ip": 1})


@pytest.mark.parametrize("text", [
    "documentation 2001:db8::1 and 2001:0db8:85a3:0000:0000:8a2e:0370:7334",
    "loopback ::1, unspecified ::, link-local fe80::1%eth0, unique local fd12:3456:789a::1",
    "a clock 12:30:45, a MAC 00:1a:2b:3c:4d:5e, a ratio 3:2:1",
    "words dead::beef, cafe:: and c++ std::vector<int>",
    "Teredo 2001:0:4136:e378:8000:63bf:3fff:fdd2 and ORCHID 2001:10::1",
    "too many groups 2001:4860:4860:0:0:0:0:8888:1",
])
def test_ipv6_lookalikes_and_non_public_ipv6_are_kept(text):
    assert redact(text) == (text, {"pii_email": 0, "pii_ip": 0})


# ------------------------------------------------------------------------------------------------------
# WET input

def wet_bytes(pages, compress: bool = True, extra_records=()) -> bytes:
    """A WET file as Common Crawl writes one, through warcio's WARCWriter: a warcinfo record, then one conversion
    record per (uri, text) page, each record its own gzip member when ``compress``."""
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=compress)
    writer.write_record(writer.create_warcinfo_record("CC-MAIN-test.warc.wet.gz", {"software": "tests"}))
    for uri, text in pages:
        payload = text.encode("utf-8") if isinstance(text, str) else text
        writer.write_record(writer.create_warc_record(
            uri, "conversion", payload=io.BytesIO(payload), length=len(payload),
            warc_headers_dict={"Content-Type": "text/plain", "WARC-Identified-Content-Language": "eng"}))
    for record in extra_records:
        writer.write_record(record(writer))
    return buf.getvalue()


PAGES = [(f"https://site{i}.example.com/page/{i}", f"Page {i} ü.\r\nSecond line of page {i}.") for i in range(6)]


def _read(data: bytes):
    out = []
    try:
        for number, uri, block in wet.conversion_records(io.BytesIO(data)):
            out.append((number, uri, block.decode("utf-8")))
    except wet.WetError as e:
        out.append(("error", e.record, str(e)))
    return out


@pytest.mark.parametrize("compress", [True, False])
def test_wet_conversion_records(compress):
    data = wet_bytes(PAGES, compress)
    # Record 1 is the warcinfo record; the pages are records 2..7.
    assert _read(data) == [(i + 2, uri, text) for i, (uri, text) in enumerate(PAGES)]
    if compress:
        assert data.count(b"\x1f\x8b\x08") >= len(PAGES) + 1  # one gzip member per record, as Common Crawl
        assert _read(gzip.compress(wet_bytes(PAGES, False))) == _read(data)  # a file gzipped whole reads the same


def _member_starts(data: bytes) -> list[int]:
    """Offsets of the gzip members of a WET file written by wet_bytes (each member is one WARC record)."""
    starts, offset = [], 0
    import zlib
    while offset < len(data):
        starts.append(offset)
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        d.decompress(data[offset:])
        offset = len(data) - len(d.unused_data)
    return starts


@pytest.mark.parametrize("cut_into_record", [2, 4, 7])
def test_a_truncated_gzip_wet_file_keeps_its_complete_records(cut_into_record):
    """warcio alone drops a truncated last member without a word; here the records before it are read and the
    truncation is reported with the record it cut."""
    data = wet_bytes(PAGES)
    starts = _member_starts(data)
    assert len(starts) == len(PAGES) + 1
    start = starts[cut_into_record - 1]
    end = starts[cut_into_record] if cut_into_record < len(starts) else len(data)
    for cut in (start + 5, (start + end) // 2, end - 3):  # in the header, the deflate data, the trailer
        out = _read(data[:cut])
        complete = [(i + 2, uri, text) for i, (uri, text) in enumerate(PAGES) if i + 2 < cut_into_record]
        assert out[:-1] == complete, cut
        assert out[-1][:2] == ("error", cut_into_record) and "truncated" in out[-1][2], out[-1]


def test_a_damaged_gzip_member_is_reported_after_the_records_before_it():
    data = bytearray(wet_bytes(PAGES))
    starts = _member_starts(bytes(data))
    data[starts[4] + 40] ^= 0xFF  # record 5 (the 4th page): its deflate data
    out = _read(bytes(data))
    assert out[:-1] == [(i + 2, uri, text) for i, (uri, text) in enumerate(PAGES[:3])]
    assert out[-1][:2] == ("error", 5)
    data = bytearray(wet_bytes(PAGES))
    data[starts[3] - 6] ^= 0x01  # the trailer of record 3's member: the bytes inflate, the check catches them
    out = _read(bytes(data))
    assert out == [(2, *PAGES[0]), ("error", 3, out[-1][2])] and "check" in out[-1][2]


def test_an_uncompressed_wet_file_cut_inside_a_record():
    data = wet_bytes(PAGES, compress=False)
    cut = data.index(PAGES[2][1].encode()) + 5  # inside record 4's block
    out = _read(data[:cut])
    assert out[:-1] == [(2, *PAGES[0]), (3, *PAGES[1])]
    assert out[-1][:2] == ("error", 4) and "ends inside the record" in out[-1][2]


def test_a_warc_of_html_responses_is_refused_not_read_as_nothing():
    from warcio.statusandheaders import StatusAndHeaders

    def response(writer):
        html = b"<html><body><p>Hello</p></body></html>"
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        return writer.create_warc_record("https://example.com/", "response", payload=io.BytesIO(html),
                                         length=len(html), http_headers=headers)

    out = _read(wet_bytes([], extra_records=[response, response]))
    assert out == [("error", 0, out[0][2])] and "2 response records (HTML)" in out[0][2]
    assert _read(b"just some text\nthat is not a WARC file\n")[0][:2] == ("error", 1)
    assert _read(b"") == []


# ------------------------------------------------------------------------------------------------------
# Read, parse and the web stages on Beam's local runner

@pytest.mark.parametrize("name,expected", [
    ("CC-MAIN-2024-10-segment-00000.warc.wet.gz", "wet"), ("a.wet.gz", "wet"), ("a.WET", "wet"),
    ("a.wet.zst", "wet"), ("a.warc.gz", "wet"), ("a.warc", "wet"), ("a.wetland.txt", "text"),
    ("a.jsonl.gz", "jsonl"),
])
def test_input_format_of_wet_files(name, expected):
    from pipeline.read import input_format

    assert input_format(name) == expected


def test_wet_jsonl_and_parquet_urls_reach_the_documents(tmp_path, write_jsonl, beam_pipeline):
    from references import require

    beam = require("apache_beam")
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.filter_stage import ParseRecords
    from pipeline.read import ReadFiles

    good = PAGES[:4] + [("https://empty.example.com/", "  \n ")]
    (tmp_path / "a.warc.wet.gz").write_bytes(wet_bytes(good))
    data = wet_bytes(PAGES[4:])
    (tmp_path / "b.wet.gz").write_bytes(data[:_member_starts(data)[2] + 30])  # page 5 whole, page 6 truncated
    (tmp_path / "c.wet").write_bytes(wet_bytes([("http://plain.example.org/", b"\xff not utf-8")], False))
    write_jsonl(tmp_path / "d.jsonl", [{"id": "j1", "text": "jsonl text", "link": "http://j.example.com/"},
                                       {"id": "j2", "text": "no url here", "link": 7}])
    pq.write_table(pa.table({"text": ["parquet text"], "url": ["http://p.example.com/x"]}), tmp_path / "e.parquet")
    paths = sorted(str(p) for p in tmp_path.iterdir())

    with beam_pipeline() as p:
        docs, rejected, _ = (p | ReadFiles(paths, url_field="link") | ParseRecords(url_field="link"))
        assert_that(docs | beam.Map(lambda d: (d.id, d.source, d.url, d.text)), equal_to(
            [(uri, f"{tmp_path}/{name}", uri, text.replace("\r\n", "\n")) for (uri, text), name in zip(PAGES[:5], (
                "a.warc.wet.gz:2", "a.warc.wet.gz:3", "a.warc.wet.gz:4", "a.warc.wet.gz:5", "b.wet.gz:2"))]
            + [("j1", f"{tmp_path}/d.jsonl:1", "http://j.example.com/", "jsonl text"),
               ("j2", f"{tmp_path}/d.jsonl:2", "", "no url here"),
               (f"{tmp_path}/e.parquet:0", f"{tmp_path}/e.parquet:0", "", "parquet text")]), label="docs")
        assert_that(rejected | beam.Map(lambda r: (r.source, r.reason)), equal_to([
            (f"{tmp_path}/a.warc.wet.gz:6", "empty"),
            (f"{tmp_path}/b.wet.gz:3", "unreadable_file"),
            (f"{tmp_path}/c.wet:2", "invalid_utf8"),
        ]), label="rejected")

    # The Parquet url column is read under its own name: with the default --url-field it reaches the document.
    with beam_pipeline() as p:
        docs, _, _ = p | ReadFiles([str(tmp_path / "e.parquet")]) | ParseRecords()
        assert_that(docs | beam.Map(lambda d: d.url), equal_to(["http://p.example.com/x"]))


def test_dataset_rows_carry_their_url_column(tmp_path):
    from references import require

    datasets = require("datasets")
    from pipeline.read import VALUE, _ReadHFRowsFn

    datasets.Dataset.from_dict({"text": ["x", "y"], "page": ["http://a.example/", None]}).save_to_disk(
        str(tmp_path / "ds"))
    fn = _ReadHFRowsFn(str(tmp_path / "ds"), "train", "text", "id", url_field="page")
    fn.setup()
    name = f"hf:{tmp_path / 'ds'}:train"
    assert list(fn.process((0, 2))) == [(VALUE, f"{name}:0", "x", None, "http://a.example/"),
                                        (VALUE, f"{name}:1", "y", None, None)]
    fn.teardown()


def test_url_filter_and_redact_pii_stages(beam_pipeline, tmp_path):
    from references import require

    beam = require("apache_beam")
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.documents import Document, to_rejection_record
    from pipeline.web_stages import RedactPII, UrlFilter

    docs = [
        Document("a", "kept text, mail a@b.org", "s:a", url="http://good.example.org/"),
        Document("b", "blocked", "s:b", url="https://www.example.com/x"),
        Document("c", "no url, host 8.8.8.8 and 10.0.0.1", "s:c"),
        Document("d", "look-alike", "s:d", url="http://notexample.com/"),
    ]
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("example.com\n", encoding="utf-8")
    with beam_pipeline() as p:
        kept, rejected = p | beam.Create(docs) | UrlFilter(str(blocklist))
        redacted, edits = kept | beam.Map(lambda d: (d.id, d)) | RedactPII()
        assert_that(rejected | beam.Map(lambda r: json.dumps(to_rejection_record(r), sort_keys=True)), equal_to([
            json.dumps({"id": "b", "source": "s:b", "reason": "url_blocked", "text": "blocked",
                        "url": "https://www.example.com/x"}, sort_keys=True)]), label="rejected")
        assert_that(redacted | beam.Map(lambda kv: (kv[0], kv[1].text, kv[1].url)), equal_to([
            ("a", f"kept text, mail {EMAIL_PLACEHOLDER}", "http://good.example.org/"),
            ("c", f"no url, host {IP_PLACEHOLDER} and 10.0.0.1", ""),
            ("d", "look-alike", "http://notexample.com/"),
        ]), label="redacted")
        assert_that(edits | beam.CombinePerKey(sum), equal_to([("pii_email", 1), ("pii_ip", 1)]), label="edits")
    blocklist.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has no domains"):
        UrlFilter(str(blocklist))
