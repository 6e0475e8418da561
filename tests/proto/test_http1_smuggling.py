"""Every request-smuggling and limit rule of socketkit.proto.http1, one row each: raw request -> status.

Each row is fed whole and one byte at a time: the verdict must not depend on how the bytes arrive.
`None` rows are the accepted neighbours of a rejected case (so a rule is not just "reject everything").
"""

from __future__ import annotations

import pytest

from socketkit.proto.http1 import EndOfMessage, Error, ServerConnection

LIMITS = dict(max_header_size=1024, max_headers=10, max_body=100, max_target_size=256)

H = b"Host: a\r\n"
POST = b"POST / HTTP/1.1\r\n" + H
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"

CASES = [
    # --- Content-Length / Transfer-Encoding conflicts (RFC 9112 6.1, 6.3) ---
    ("cl-and-te", POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-and-cl", POST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    # Duplicate Content-Length is refused even when the values are equal (RFC allows merging them;
    # refusing is the safer reading, and no real client sends it).
    ("cl-duplicate-equal", POST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("cl-duplicate-differ", POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("cl-list", POST + b"Content-Length: 3, 3\r\n\r\nabc", 400),
    ("cl-negative", POST + b"Content-Length: -3\r\n\r\nabc", 400),
    ("cl-plus", POST + b"Content-Length: +3\r\n\r\nabc", 400),
    ("cl-hex", POST + b"Content-Length: 0x3\r\n\r\nabc", 400),
    ("cl-letters", POST + b"Content-Length: 3a\r\n\r\nabc", 400),
    ("cl-empty", POST + b"Content-Length: \r\n\r\nabc", 400),
    ("cl-overflow", POST + b"Content-Length: 99999999999999999999999999\r\n\r\n", 400),
    ("cl-ok", POST + b"Content-Length: 3\r\n\r\nabc", None),
    ("cl-ok-trailing-ows", POST + b"Content-Length: 3 \r\n\r\nabc", None),
    ("te-chunked-identity", POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    ("te-xchunked", POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("te-identity", POST + b"Transfer-Encoding: identity\r\n\r\n", 400),
    ("te-chunked-twice-list", POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-chunked-twice-lines", POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-in-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-unknown-coding-then-chunked", POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-ok", CHUNKED + b"0\r\n\r\n", None),
    ("te-ok-case", POST + b"Transfer-Encoding: Chunked\r\n\r\n0\r\n\r\n", None),
    # --- line endings and folding (RFC 9112 2.2, 5.2) ---
    ("obs-fold-space", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n b\r\n\r\n", 400),
    ("obs-fold-tab", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n\tb\r\n\r\n", 400),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
    ("bare-lf-header", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
    ("bare-lf-end-of-head", b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
    ("bare-cr-request-line", b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
    ("bare-cr-header", b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400),
    ("bare-cr-end-of-head", b"GET / HTTP/1.1\r\nHost: a\r\n\rX", 400),
    ("leading-whitespace-first-field", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    # --- field syntax (RFC 9110 5.1, 5.5; RFC 9112 5.1) ---
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("tab-before-colon", b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400),
    ("name-paren", b"GET / HTTP/1.1\r\n" + H + b"X(y): b\r\n\r\n", 400),
    ("name-at", b"GET / HTTP/1.1\r\n" + H + b"X@y: b\r\n\r\n", 400),
    ("name-empty", b"GET / HTTP/1.1\r\n" + H + b": b\r\n\r\n", 400),
    ("name-nul", b"GET / HTTP/1.1\r\n" + H + b"X\x00: b\r\n\r\n", 400),
    ("value-nul", b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
    ("value-ctl", b"GET / HTTP/1.1\r\n" + H + b"X: a\x01b\r\n\r\n", 400),
    ("value-del", b"GET / HTTP/1.1\r\n" + H + b"X: a\x7fb\r\n\r\n", 400),
    ("value-obs-text-ok", b"GET / HTTP/1.1\r\n" + H + b"X: a\xffb\r\n\r\n", None),
    ("value-empty-ok", b"GET / HTTP/1.1\r\n" + H + b"X:\r\n\r\n", None),
    # --- chunked framing (RFC 9112 7.1) ---
    ("chunk-size-overflow", CHUNKED + b"fffffffffffffffff1\r\nx\r\n0\r\n\r\n", 400),
    ("chunk-size-negative", CHUNKED + b"-1\r\nx\r\n0\r\n\r\n", 400),
    ("chunk-size-0x", CHUNKED + b"0x1\r\nx\r\n0\r\n\r\n", 400),
    ("chunk-size-space", CHUNKED + b"1 \r\nx\r\n0\r\n\r\n", 400),
    ("chunk-size-empty", CHUNKED + b"\r\nx\r\n0\r\n\r\n", 400),
    ("chunk-size-bare-lf", CHUNKED + b"1\nx\r\n0\r\n\r\n", 400),
    ("chunk-ext-nul", CHUNKED + b"1;a\x00b\r\nx\r\n0\r\n\r\n", 400),
    ("chunk-ext-bare-lf", CHUNKED + b"1;a\nb\r\nx\r\n0\r\n\r\n", 400),
    ("chunk-ext-ok", CHUNKED + b"1;a=b\r\nx\r\n0\r\n\r\n", None),
    ("chunk-data-no-crlf", CHUNKED + b"1\r\nxy0\r\n\r\n", 400),
    ("chunk-data-bare-lf", CHUNKED + b"1\r\nx\n0\r\n\r\n", 400),
    ("chunk-trailer-ok", CHUNKED + b"1\r\nx\r\n0\r\nX: y\r\n\r\n", None),
    ("chunk-trailer-bad-name", CHUNKED + b"1\r\nx\r\n0\r\nX y: z\r\n\r\n", 400),
    # --- request line and target (RFC 9112 3) ---
    ("target-space", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-ctl", b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-tab", b"GET /a\tb HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-del", b"GET /a\x7fb HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-high-byte", b"GET /a\xffb HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-fragment", b"GET /a#b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-relative", b"GET a/b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-star-not-options", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-star-options-ok", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", None),
    ("target-absolute-ok", b"GET http://a/b?c HTTP/1.1\r\n" + H + b"\r\n", None),
    ("method-bad-char", b"G@T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("method-lowercase", b"get / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("method-tab-separator", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("version-lowercase", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("version-garbage", b"GET / HTTP/x.1\r\n" + H + b"\r\n", 400),
    ("version-no-minor", b"GET / HTTP/1\r\n" + H + b"\r\n", 400),
    ("version-trailing-space", b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400),
    ("version-1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    ("version-2.0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("version-3.0", b"GET / HTTP/3.0\r\n" + H + b"\r\n", 505),
    ("version-0.9", b"GET /\r\n\r\n", 400),  # no version at all: malformed, not a version declined
    ("no-version-query", b"GET /a?b=c\r\n\r\n", 400),
    # --- Host (RFC 9112 3.2) ---
    ("host-missing-11", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("host-twice", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("host-invalid", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("host-slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    ("host-missing-10-ok", b"GET / HTTP/1.0\r\n\r\n", None),
    ("host-ipv6-port-ok", b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", None),
    # --- Expect (RFC 9110 10.1.1) ---
    ("expect-unknown", b"GET / HTTP/1.1\r\n" + H + b"Expect: fancy\r\n\r\n", 417),
    ("expect-continue-ok", POST + b"Expect: 100-Continue\r\nContent-Length: 1\r\n\r\nx", None),
    # --- limits ---
    ("header-section-too-large", b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 1100 + b"\r\n\r\n", 431),
    ("header-section-many-medium", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X%d: %s\r\n" % (i, b"a" * 200) for i in range(6)) + b"\r\n", 431),
    ("too-many-headers", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n" * 10 + b"\r\n", 431),
    ("headers-at-limit-ok", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n" * 9 + b"\r\n", None),
    ("target-too-long", b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("body-cl-too-large", POST + b"Content-Length: 101\r\n\r\n", 413),
    ("body-cl-at-limit-ok", POST + b"Content-Length: 100\r\n\r\n" + b"x" * 100, None),
    ("body-chunked-too-large", CHUNKED + b"40\r\n" + b"x" * 64 + b"\r\n40\r\n" + b"x" * 64 + b"\r\n0\r\n\r\n", 413),
    ("trailers-too-large", CHUNKED + b"0\r\nX: " + b"a" * 1100 + b"\r\n\r\n", 431),
    # --- upgrade requests we cannot frame ---
    ("upgrade-with-chunked-body", CHUNKED[:-2] + b"Connection: upgrade\r\nUpgrade: h2c\r\n\r\n0\r\n\r\n", 400),
]


def verdict(chunks: list[bytes]) -> int | None:
    """The status of the first Error, None when the request parsed to its end."""
    conn = ServerConnection(**LIMITS)
    for chunk in chunks:
        for event in conn.receive(chunk):
            if type(event) is Error:
                return event.status
            if type(event) is EndOfMessage:
                return None
    return -1  # neither: the request is incomplete


@pytest.mark.parametrize("raw, status", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_whole(raw: bytes, status: int | None) -> None:
    assert verdict([raw]) == status


@pytest.mark.parametrize("raw, status", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_byte_at_a_time(raw: bytes, status: int | None) -> None:
    assert verdict([raw[i : i + 1] for i in range(len(raw))]) == status


def test_rows_have_unique_names() -> None:
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names))


def test_error_is_final() -> None:
    conn = ServerConnection()
    events = conn.receive(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert events == [Error(400, "missing Host header")]
    assert conn.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") == []
    assert conn.receive(b"") == []


def test_header_section_spanning_reads_is_bounded() -> None:
    # A head that never ends, sent in small pieces: refused once it passes the limit, not buffered.
    conn = ServerConnection(max_header_size=1000)
    events = conn.receive(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
    sent = 0
    while not events:
        events = conn.receive(b"a" * 100)
        sent += 100
        assert sent < 2000
    assert events == [Error(431, "header section larger than 1000 bytes")]
