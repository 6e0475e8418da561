"""The HTTP rules StaticFiles follows for one file: validators, conditional requests, byte ranges.

Pure functions over header strings and numbers (no I/O), so each RFC 9110 rule is a small tested case:

- validators (section 8.8): a strong ETag hashed from inode, size and mtime_ns (opaque: the inode number
  is not shown), and Last-Modified at second resolution, never later than now;
- preconditions (section 13.2.2 order): If-Match, If-Unmodified-Since -> 412; If-None-Match,
  If-Modified-Since -> 304 (If-Modified-Since is ignored when If-None-Match is present);
- If-Range (13.1.5): a strong ETag compared strongly, or a date that must equal Last-Modified exactly
  and only while Last-Modified is a strong validator (file unchanged for at least a second);
- Range (14.1, 14.2): see parse_range for the exact rule, including the anti-abuse policy.
"""

from __future__ import annotations

import calendar
import email.utils
import hashlib
import mimetypes
import re
import time

# More range-specs than this and the Range header is ignored (full 200): RFC 9110 section 14.2 lets a
# server ignore a Range that looks like a denial-of-service attempt, and no real client needs more.
MAX_RANGES = 16

# Digit strings longer than this cannot name a position in any real file; they are clamped rather
# than parsed so a Range of ten thousand digits costs nothing (int() would even refuse it).
_MAX_DIGITS = 19
_HUGE = 10**_MAX_DIGITS

_SPEC = re.compile(r"([0-9]*)-([0-9]*)")
_ETAG = re.compile(r'(?:W/)?"([\x21\x23-\x7e\x80-\xff]*)"')

# Compressed files are served as the bytes they are (no Content-Encoding), so a `.tar.gz` downloads as
# a gzip file instead of being unpacked by the browser, and byte ranges stay ranges of the file on disk.
_ENCODING_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
    "br": "application/x-brotli",
}
_TEXTUAL = frozenset({"application/javascript", "application/xml", "application/xhtml+xml"})


def content_type(name: str) -> str:
    """Content-Type for a file name: mimetypes' guess, utf-8 charset on text, octet-stream if unknown."""
    ctype, encoding = mimetypes.guess_type(name, strict=False)
    if encoding is not None:
        return _ENCODING_TYPES.get(encoding, "application/octet-stream")
    if ctype is None:
        return "application/octet-stream"
    if ctype.startswith("text/") or ctype in _TEXTUAL:
        return ctype + "; charset=utf-8"
    return ctype


def http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def parse_http_date(value: str) -> int | None:
    """Seconds since the epoch for any of the three HTTP-date forms, or None when it is not a date."""
    try:
        parsed = email.utils.parsedate_tz(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None or parsed[0] < 1000:
        return None
    try:
        # HTTP dates are always GMT; a missing zone means GMT too, never the server's local time.
        return calendar.timegm(parsed[:9]) - (parsed[9] or 0)
    except (OverflowError, ValueError):
        return None


class Validators:
    """ETag and Last-Modified of one file version, from its stat result."""

    __slots__ = ("etag", "last_modified", "mtime", "strong_date")

    def __init__(self, st, now: float | None = None) -> None:
        now = time.time() if now is None else now
        key = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()
        self.etag = '"' + hashlib.blake2b(key, digest_size=12).hexdigest() + '"'
        self.mtime = min(st.st_mtime_ns // 1_000_000_000, int(now))
        self.last_modified = http_date(self.mtime)
        # A date validator is strong only if the file could not change again within the same second.
        self.strong_date = now - st.st_mtime_ns / 1e9 >= 1.0


def entity_tags(value: str) -> list[str]:
    """The opaque parts of a list of entity-tags (W/ prefixes dropped); junk between them is skipped."""
    return _ETAG.findall(value)


def precondition(headers: dict[str, list[str]], v: Validators) -> int | None:
    """412 or 304 when a precondition says so (for GET/HEAD of an existing file), else None."""
    opaque = v.etag[1:-1]
    if_match = headers.get("if-match")
    if if_match is not None:
        joined = ",".join(if_match)
        # Strong comparison: a weak tag never matches, and ours are strong.
        tags = [m.group(0) for m in _ETAG.finditer(joined)]
        if joined.strip() != "*" and v.etag not in tags:
            return 412
    else:
        since = _single_date(headers, "if-unmodified-since")
        if since is not None and v.mtime > since:
            return 412
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        joined = ",".join(if_none_match)
        if joined.strip() == "*" or opaque in entity_tags(joined):
            return 304
        return None
    since = _single_date(headers, "if-modified-since")
    if since is not None and v.mtime <= since:
        return 304
    return None


def if_range_holds(value: str, v: Validators) -> bool:
    """True when the If-Range validator still describes the file, so the Range may be honoured."""
    value = value.strip()
    if value.startswith('"'):
        return value == v.etag
    if value.startswith("W/"):
        return False
    date = parse_http_date(value)
    return date is not None and v.strong_date and date == v.mtime


def _single_date(headers: dict[str, list[str]], name: str) -> int | None:
    values = headers.get(name)
    if values is None or len(values) != 1:
        return None
    return parse_http_date(values[0])


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else _HUGE


def parse_range(value: str, size: int) -> list[tuple[int, int]] | None:
    """The byte ranges to send, as sorted, merged (start, stop) pairs; [] = unsatisfiable; None = ignore.

    None (serve the whole file with 200) when: the unit is not `bytes`; any range-spec is malformed
    (including last < first, RFC 9110 14.1.1); there are more than MAX_RANGES specs; the file is empty
    (no Content-Range can describe a part of zero bytes).
    [] (416) when the syntax is fine but no spec overlaps the file.
    Overlapping or adjacent ranges are coalesced (section 14.6 allows it), so no request can make the
    server send more bytes than the file holds, whatever the number and order of its ranges.
    """
    unit, equals, specs = value.partition("=")
    if not equals or unit.strip().lower() != "bytes" or size <= 0:
        return None
    items = [item.strip(" \t") for item in specs.split(",")]
    items = [item for item in items if item]
    if not items or len(items) > MAX_RANGES:
        return None
    ranges: list[tuple[int, int]] = []
    for item in items:
        match = _SPEC.fullmatch(item)
        if match is None:
            return None
        first, last = match.groups()
        if not first:
            if not last:
                return None
            suffix = _number(last)
            if suffix:
                ranges.append((max(0, size - suffix), size))
            continue
        start = _number(first)
        if last:
            end = _number(last)
            if end < start:
                return None
            stop = min(end + 1, size)
        else:
            stop = size
        if start < size:
            ranges.append((start, stop))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for start, stop in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


def multipart_plan(
    ranges: list[tuple[int, int]], size: int, ctype: str, boundary: str
) -> tuple[list[bytes | tuple[int, int]], int]:
    """The multipart/byteranges body as a list of literal bytes and (offset, count) file slices.

    Returns the plan and its exact total length, for Content-Length.
    """
    plan: list[bytes | tuple[int, int]] = []
    total = 0
    for start, stop in ranges:
        head = (
            f"\r\n--{boundary}\r\nContent-Type: {ctype}\r\n"
            f"Content-Range: bytes {start}-{stop - 1}/{size}\r\n\r\n"
        ).encode("latin-1")
        plan += [head, (start, stop - start)]
        total += len(head) + stop - start
    tail = f"\r\n--{boundary}--\r\n".encode("latin-1")
    plan.append(tail)
    return plan, total + len(tail)
