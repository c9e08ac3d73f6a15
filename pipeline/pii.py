"""PII redaction: e-mail addresses and public IP addresses in a text -> fixed placeholders, counted.

Pure functions (standard library only, no Beam). What FineWeb ran (datatrove's PIIFormatter, its defaults: e-mails
and public IPs only), with four deliberate differences:

- One fixed placeholder each, EMAIL_PLACEHOLDER and IP_PLACEHOLDER, where datatrove cycles through lists of them
  with a counter that carries from one document to the next: then a document's redacted text would depend on which
  documents its worker saw before it, and shards on the number of workers. The placeholders are names reserved
  for documentation, so they never point at a real person or host: example.com (RFC 2606) and 192.0.2.1
  (TEST-NET-1, RFC 5737; not public, so redacting a redacted text changes nothing and counts nothing).
- An IPv4 address must stand alone: datatrove's pattern also matches inside longer dotted numbers, so the OID
  "1.3.6.1.4.1.311" or the version "10.2.3.4.5" lose their first four parts; here a digit or ".digit" right
  before, or a digit or ".digit" after, the four numbers means they are part of something else.
- Public IPv6 addresses are redacted too (datatrove leaves them): a run of hex groups and colons that Python's
  ipaddress reads as an IPv6 address in the global unicast range 2000::/3 (every public IPv6 address allocated
  so far, RFC 4291 and IANA) that ipaddress.is_global accepts. Requiring 2000::/3 keeps clock times, MAC
  addresses and words such as "dead::beef" or "cafe::" as they are.
- Multicast group addresses (224.0.0.0/4) are kept: ipaddress calls them global, so datatrove replaces them, but
  they name a protocol's group ("mDNS on 224.0.0.251"), never a host or a person.

"Public" is otherwise ipaddress.is_global: private (10/8, 172.16/12, 192.168/16), loopback, link-local, shared (100.64/10),
documentation, benchmarking and other reserved ranges (the IANA special-purpose registries) are left as they are,
as datatrove leaves them: they name no one outside a private network.

Try it:

    python -c "from pipeline.pii import redact; print(redact('mail me at jo@mail.example.net from 8.8.8.8'))"
"""
from __future__ import annotations

import ipaddress
import re

PII_EMAIL, PII_IP = "pii_email", "pii_ip"
EDITS: tuple[str, ...] = (PII_EMAIL, PII_IP)  # counted per address replaced

EMAIL_PLACEHOLDER = "email@example.com"
IP_PLACEHOLDER = "192.0.2.1"

# An e-mail address is what datatrove's pattern finds (less its malformed "[1.2.3.tag:]" literal):
#   \b ATEXT+ (\. ATEXT+)* @ DOMAIN
# an RFC 5322 dot-atom local part starting at a word boundary, then a host name (labels of letters, digits and
# inner "-") or an IPv4 literal in brackets. The local part is found by hand from each "@" (_email_spans), not by
# the regex engine: searching with that pattern tries every word boundary of a long run of local-part characters
# and scans it to its end each time, which is quadratic (a 60 kB run of "ab+" with one "@" after it takes tens of
# seconds); from the "@" it is one pass.
_ATEXT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+/=?^_`{|}~-")
_LOCAL = _ATEXT | {"."}
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)"
_IPV4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
_EMAIL_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    rf"|\[{_IPV4}\]"
)
# Four octets not inside a longer dotted number: no digit or "digit." before, no digit or ".digit" after. The
# alternatives of _OCTET are tried longest first, so "255" is never read as "25" followed by "5".
_IPV4_ALONE = re.compile(rf"(?<![0-9])(?<![0-9]\.){_IPV4}(?![0-9]|\.[0-9])")
# A candidate IPv6 address: hex groups and colons with at least two colons, optionally ending in an IPv4 address,
# not touching other letters, digits, "_", ":" or "." (so words and longer runs are never cut into an address).
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|" + _IPV4 + r")?(?![\w:]|\.\w)")
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def is_public_ip(text: str) -> bool:
    """True when ``text`` is an IPv4 address, or an IPv6 address in 2000::/3, that ipaddress calls global and
    that is not a multicast group."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    if ip.version == 6 and ip not in _GLOBAL_UNICAST:
        return False
    return ip.is_global and not ip.is_multicast


def _is_word(c: str) -> bool:
    """Whether ``c`` is a character of the regex class \\w (Unicode), which decides where \\b falls."""
    return c.isalnum() or c == "_"


def _email_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) of each e-mail address in ``text``, left to right, not overlapping: the matches a regex
    search for ``\\b ATEXT+ (\\. ATEXT+)* @ DOMAIN`` would give, in one pass over the text."""
    spans, floor, at = [], 0, text.find("@")
    while at >= 0:
        domain = _EMAIL_DOMAIN.match(text, at + 1)
        if domain is not None and at > floor and text[at - 1] in _ATEXT:
            start = at  # the run of local-part characters before the "@", not reaching into the last match
            while start > floor and text[start - 1] in _LOCAL:
                start -= 1
            dots = text.rfind("..", start, at)  # a dot-atom has no empty atom: start after the last ".."
            p = start if dots < 0 else dots + 2
            # The leftmost start the regex would take: an atom's first character, at a word boundary.
            while p < at and (text[p] == "." or (p > 0 and _is_word(text[p - 1])) == _is_word(text[p])):
                p += 1
            if p < at:
                spans.append((p, domain.end()))
                floor = domain.end()
                at = text.find("@", floor)
                continue
        at = text.find("@", at + 1)
    return spans


def redact(text: str) -> tuple[str, dict[str, int]]:
    """(``text`` with e-mail and public IP addresses replaced, {edit name: addresses replaced}).

    E-mails first (an address such as "jo@[8.8.8.8]" is one e-mail), then IPv6, then IPv4. An address already
    equal to its placeholder is not counted. Linear in the text (one pass per kind of address, each only when the
    text holds an "@", "::" or a ".").
    """
    counts = {PII_EMAIL: 0, PII_IP: 0}

    def ip(m: re.Match) -> str:
        if not is_public_ip(m.group(0)):
            return m.group(0)
        counts[PII_IP] += 1
        return IP_PLACEHOLDER

    if "@" in text:
        spans = _email_spans(text)
        if spans:
            pieces, end = [], 0
            for start, stop in spans:
                pieces += [text[end:start], EMAIL_PLACEHOLDER]
                counts[PII_EMAIL] += text[start:stop] != EMAIL_PLACEHOLDER
                end = stop
            pieces.append(text[end:])
            text = "".join(pieces)
    if "::" in text or text.count(":") >= 7:  # an IPv6 address has "::" or seven colons
        text = _IPV6.sub(ip, text)
    if "." in text:
        text = _IPV4_ALONE.sub(ip, text)
    return text, counts
