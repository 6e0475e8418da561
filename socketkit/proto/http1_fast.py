"""A fast path for the common request: a whole, body-less head in one read, in the strictest form.

One regular expression (run in C) checks the request line and every header line at once; whatever it
does not match exactly -- a body, Expect, Upgrade, an odd target or version, a stray byte -- goes to the
full parser (llhttp plus our rules), so this path can only ever accept a subset of what that one
accepts, and gives the same events for it (tests/proto/test_http1_fast.py checks both, side by side).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

from socketkit.proto.http1_events import END, Request
from socketkit.proto.http1_writer import _IDLE

if TYPE_CHECKING:
    from socketkit.proto.http1 import ServerConnection

_SIMPLE = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS) "
    # origin-form only: RFC 3986 pchar and '/' in the path, '?' too in the query; no '#'
    rb"((/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*)(?:\?([A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*))?) "
    rb"HTTP/1\.([01])\r\n"
    # the header lines, without the last CRLF (so one split gives exactly the lines); no obs-fold, CR,
    # LF, NUL
    rb"(?:([!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*"
    rb"(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*)*)\r\n)?"
    rb"\r\n"
).match
# Plain greedy repeats, never possessive ones (`*+`, `++`) or atomic groups: CPython 3.11 before 3.11.5
# mis-matches those (gh-106052 and kin: Debian 12's 3.11.2 captured b'a' for 'Host: a.example'). No
# class above can match the character that follows it, so backtracking stays linear all the same.
# Headers that change framing or the connection's fate: left to the full parser, except Connection's
# two plain values.
_NEEDS_FULL = frozenset((b"content-length", b"transfer-encoding", b"expect", b"upgrade"))
_VERSIONS = {b"0": "1.0", b"1": "1.1"}
# RFC 3986 host [":" port]: reg-name / IPv4 / IP-literal. Anything else in Host is a 400 (RFC 9112 3.2).
_HOST = re.compile(rb"(?:\[[0-9A-Za-z:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?").fullmatch
# Host values already found valid: a server sees the same few again and again (a set lookup is a tenth
# of a regular expression call).
_GOOD_HOSTS: set[bytes] = set()
_new = object.__new__


def try_simple(conn: ServerConnection, data: bytes) -> int:
    """Parse one simple request at the start of `data` into `conn`; return the bytes used (0: not simple)."""
    m = _SIMPLE(data)
    if m is None:
        return 0
    end = m.end()
    if end > conn.max_header_size:
        return 0
    method, target, raw_path, query, minor, block = m.groups()
    if len(target) > conn.max_target_size:
        return 0
    version = _VERSIONS[minor]
    headers = []
    host = 0
    keep_alive = version == "1.1"
    closing = False
    special = _NEEDS_FULL
    if block is not None:
        for line in block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.lower()
            value = value.strip(b" \t")
            if name in special:
                return 0
            if name == b"host":
                host += 1
                if host > 1:
                    return 0
                if value not in _GOOD_HOSTS:
                    if _HOST(value) is None:
                        return 0
                    if len(_GOOD_HOSTS) >= 256:  # bounded: a client cannot grow it past this
                        _GOOD_HOSTS.clear()
                    _GOOD_HOSTS.add(value)
            elif name == b"connection":
                token = value.lower()
                if token == b"close":
                    keep_alive = False
                    closing = True
                elif token == b"keep-alive":
                    keep_alive = not closing  # close anywhere wins, as llhttp decides
                else:
                    return 0
            headers.append((name, value))
        if len(headers) > conn.max_headers:
            return 0
    if not host and version == "1.1":
        return 0
    if query is None:  # no "?" at all (an empty query after "?" is b"" already)
        query = b""
    path = raw_path.decode("latin-1")
    if "%" in path:
        path = unquote(path)
    # Request(...) written out: the dataclass __init__ behind a type call costs three times what
    # setting its ten slots on a bare instance does, and this runs once per request.
    request = _new(Request)
    request.method = method
    request.target = target
    request.path = path
    request.raw_path = raw_path
    request.query = query
    request.http_version = version
    request.headers = headers
    request.keep_alive = keep_alive
    request.expect_continue = False
    request.upgrade = None
    # The state changes the llhttp callbacks make for a whole body-less request (_set_current() and
    # _message_done()), written out here for the same reason (no method call per request).
    conn._keep = keep_alive
    sink = conn._sink
    sink.append(request)
    if conn._holding:  # a pipelined request: the current one's response is not finished
        if not keep_alive:
            conn._stop = conn._blocked = True
        if conn._draining:
            conn._draining = False
        else:
            sink.append(END)
        return end
    conn._req = request
    conn._req_done = False
    conn._keep_alive = keep_alive
    conn._state = _IDLE
    conn._continue_sent = False
    if not keep_alive:
        conn._stop = conn._blocked = True
    if conn._draining:
        conn._draining = False
        return end
    sink.append(END)
    conn._req_done = True
    conn._holding = True
    conn._sink = conn._held
    return end


__all__ = ["END", "try_simple"]
