"""URL blocklist: a file of domains, and whether a document's URL is on it (reason ``url_blocked``).

Pure functions (standard library only, no Beam). The file holds one domain a line; "#" starts a comment (a whole
line or the end of one) and blank lines are skipped:

    # adult sites, from the UT1 list
    example.com          # blocks example.com, www.example.com, a.b.example.com
    bücher.de            # internationalized names may be written in Unicode or as xn--bcher-kva.de
    203.0.113.7          # an IP address blocks that host exactly

A URL is blocked when its host, or any parent domain of it, is on the list: "example.com" blocks
"http://www.example.com/x" but not "http://notexample.com/" nor "http://example.com.evil.net/". Hosts are
compared as DNS compares them: lowercased, without port, user info or a trailing dot, internationalized labels in
their ASCII (punycode) form, so a list and a URL that spell the same name differently still match.

Try it:

    python -c "from pipeline.urls import url_blocked; print(url_blocked('https://www.Example.com:8080/a', frozenset({'example.com'})))"
"""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote, urlsplit

URL_BLOCKED = "url_blocked"
REASONS: tuple[str, ...] = (URL_BLOCKED,)

# One DNS label in ASCII form: letters, digits, "-" (not first or last) and "_" (found in real host names, though
# not in the hostname grammar), at most 63 characters (RFC 1035).
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_MAX_NAME = 253  # characters of a whole name in ASCII form, without the trailing dot (RFC 1035)


def ascii_host(host: str) -> str:
    """``host`` as DNS compares it: lowercased, no trailing dot, each Unicode label in its punycode ("xn--") form.

    Raises ValueError (from the codec) when a Unicode name cannot be encoded (an empty or over-long label, a
    character IDNA does not allow). Uses the standard library's IDNA 2003 codec, which also maps the Unicode
    full stops ("。", "．") to "." and folds case and compatibility forms (nameprep), as browsers did before IDNA
    2008; the same function reads the list and the URLs, so both sides always agree.
    """
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    return host.rstrip(".").lower()


def _ip(host: str) -> str | None:
    """The canonical text of ``host`` when it is an IP address, else None."""
    if not host or not (host[-1].isdigit() or ":" in host):  # a name (ends in a letter label): skip the parse
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def parse_domain(entry: str) -> str:
    """One blocklist entry -> the name it blocks (ascii_host form, or an IP address). Raises ValueError saying why."""
    if "://" in entry or "/" in entry:
        raise ValueError(f"{entry!r} is a URL, not a domain: write its host only (e.g. 'example.com')")
    if entry.startswith(("*.", ".")):
        raise ValueError(f"{entry!r}: write the domain without {entry[:2 if entry[0] == '*' else 1]!r}: "
                         "subdomains of every entry are always blocked")
    if any(c.isspace() for c in entry):
        raise ValueError(f"{entry!r} holds spaces: write one domain a line (hosts-file lines such as "
                         "'0.0.0.0 example.com' need the domain only)")
    ip = _ip(entry.strip("[]"))
    if ip is not None:
        return ip
    if ":" in entry or "@" in entry:
        raise ValueError(f"{entry!r} is not a domain: write the host alone, without port or user")
    try:
        name = ascii_host(entry)
    except UnicodeError as e:
        raise ValueError(f"{entry!r} is not a valid internationalized domain name ({e})") from None
    labels = name.split(".")
    bad = next((label for label in labels if not _LABEL.fullmatch(label)), None)
    if bad is not None or len(name) > _MAX_NAME:
        raise ValueError(f"{entry!r} is not a domain name: labels of letters, digits, '-' and '_', 1 to 63 "
                         f"characters each, {_MAX_NAME} in all, separated by '.'")
    if labels[-1].isdigit():
        raise ValueError(f"{entry!r} is not a domain name (its last label is a number) nor an IP address")
    return name


def parse_blocklist(lines, where: str) -> frozenset[str]:
    """The names blocked by the lines of a blocklist (str lines, with or without "\\n"); ``where`` names the
    file in errors. Raises ValueError naming "where:lineno" for an entry that is not a domain or IP address."""
    names = set()
    for lineno, line in enumerate(lines, start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            names.add(parse_domain(entry))
        except ValueError as e:
            raise ValueError(f"--url-blocklist {where}:{lineno}: {e}") from None
    if not names:
        raise ValueError(f"--url-blocklist {where} has no domains (only comments or blank lines): give a file "
                         "with one domain a line, or leave out --url-blocklist")
    return frozenset(names)


def read_blocklist(path: str) -> frozenset[str]:
    """The names blocked by the blocklist file at ``path`` (UTF-8, a byte-order mark allowed; any line ending).
    Raises FileNotFoundError or ValueError naming it."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return parse_blocklist(f, path)
    except FileNotFoundError:
        raise FileNotFoundError(f"--url-blocklist {path}: no such file; give a text file with one domain a line") \
            from None
    except UnicodeDecodeError as e:
        raise ValueError(f"--url-blocklist {path} is not UTF-8 text ({e}); save it as UTF-8") from None


def url_host(url: str) -> str:
    """The host of ``url`` as ascii_host gives it (an IP address in canonical form), or "" when it has none.

    A URL without a scheme ("www.example.com/a") is read as if it had one. Never raises: a URL that cannot be
    parsed has no host.
    """
    url = url.strip()
    if "://" not in url[:64] and not url.startswith("//"):
        url = "//" + url
    try:
        host = urlsplit(url).hostname  # lowercased, without user info, port and IPv6 brackets
    except ValueError:  # "http://[::1" and other unbalanced brackets
        return ""
    if not host:
        return ""
    if "%" in host:
        host = unquote(host)  # browsers decode percent escapes in a host before resolving it
    ip = _ip(host)
    if ip is not None:
        return ip
    try:
        return ascii_host(host)
    except UnicodeError:  # not encodable as IDNA: compare its lowercased Unicode form (it cannot be on the list)
        return host.rstrip(".").lower()


def url_blocked(url: str, blocklist: frozenset[str]) -> bool:
    """True when the host of ``url`` or one of its parent domains is in ``blocklist`` (from read_blocklist).

    An IP-address host matches only itself. "" (a document without a URL) is never blocked. Costs one set lookup
    per label of the host.
    """
    host = url_host(url) if url else ""
    if not host:
        return False
    if host in blocklist:
        return True
    if _ip(host) is not None:
        return False
    start = host.find(".")
    while start >= 0:
        if host[start + 1:] in blocklist:
            return True
        start = host.find(".", start + 1)
    return False
