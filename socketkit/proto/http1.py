"""Sans-I/O HTTP/1.1 server connection (RFC 9110, RFC 9112): bytes in -> events out, responses -> bytes.

    conn = ServerConnection()
    for event in conn.receive(data):        # data=b"" means the peer sent EOF
        ...                                 # Request, Data*, EndOfMessage | Error | ConnectionClosed
    out = conn.response_head(200, headers) + conn.body(b"hi") + conn.end()
    if conn.keep_alive: events = conn.start_next()   # the next (maybe pipelined) request
    else: close

llhttp (through httptools) does the byte-level parsing in C; this module adds what llhttp leaves to its
user or does leniently: limits that bound memory, Host / Expect / Transfer-Encoding rules, the
request-target forms, a status code for every rejection, pipelining in order, and response framing.

Pipelining: a request's events are returned up to its EndOfMessage; whatever follows waits (parsed
events in `_held`, unparsed bytes in `_backlog`) until the response is finished and `start_next()`
is called, so responses go out strictly in order and a client cannot make us buffer more than one read
ahead: while `paused` is true the caller should stop reading the socket.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import httptools

from socketkit.proto.http1_events import (
    CLOSED,
    END,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Error,
    Event,
    LocalProtocolError,
    Request,
)
from socketkit.proto.http1_fast import _HOST, try_simple
from socketkit.proto.http1_writer import _DONE, _IDLE, ResponseWriter, error_response

__all__ = [
    "ConnectionClosed", "Data", "EndOfMessage", "Error", "Event", "LocalProtocolError", "Request",
    "ServerConnection", "error_response",
]

_HTTPParserError = httptools.HttpParserError
_HTTPParserUpgrade = httptools.HttpParserUpgrade

# Header names that need a rule; everything else is stored without a second look.
_SPECIAL = frozenset((b"content-length", b"transfer-encoding", b"host", b"expect", b"upgrade"))
_ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*(/[^?#]*)?(?:\?([^#]*))?").fullmatch
_AUTHORITY = re.compile(rb"[A-Za-z0-9._~!$&'()*+,;=%-]+:[0-9]+|\[[0-9A-Za-z:.]+\]:[0-9]+").fullmatch
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+").fullmatch


class _Reject(Exception):
    """Raised inside a parser callback: stops llhttp and becomes Error(status, reason)."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


class ServerConnection(ResponseWriter):
    """One client connection, server side. Not thread-safe; one instance per connection."""

    __slots__ = (
        "max_header_size", "max_headers", "max_body", "max_target_size", "fast", "request_pending",
        "_parser", "_sink", "_holding", "_held", "_backlog", "_eof", "_eof_pending", "_dead", "_stop",
        "_blocked", "_draining", "_upgrade_wait", "_manual", "_in_fields", "_idle", "_fresh", "_fields_size",
        "_in_body", "_keep", "_feed_size",
        # per message, set by on_message_begin
        "_url", "_headers", "_cl", "_chunked", "_hosts", "_expect", "_upgrade", "_body_size",
    )

    def __init__(
        self,
        *,
        max_header_size: int = 65536,
        max_headers: int = 100,
        max_body: int = 16 * 2**20,
        max_target_size: int = 8192,
    ) -> None:
        super().__init__()
        self.max_header_size = max_header_size
        self.max_headers = max_headers
        self.max_body = max_body
        self.max_target_size = max_target_size
        self._parser = httptools.HttpRequestParser(self)
        self._sink: list[Event] = []  # where callbacks put events: the caller's list, or _held
        self._holding = False  # current request complete, response not: later input waits
        self._held: list[Event] = []
        self._backlog = b""
        self._eof = False  # the peer sent EOF
        self._eof_pending = False  # ... and it has not been reported yet (we were holding)
        self._dead = False  # after Error / EOF: nothing more is parsed
        self._stop = False  # the last request was not keep-alive: bytes after it are ignored
        self._blocked = False  # any of _dead, _eof, _upgrade_wait, _stop, _manual: see _block()
        self._draining = False  # the response ended before the request body: drop the rest of it
        self._upgrade_wait = False  # an upgrade request was parsed: raw bytes wait for the response
        self._manual = 0  # body bytes of an upgrade request still to be cut out of the raw stream
        self._in_fields = False
        # True while part of a request head has arrived but not all of it (a slow client's deadline):
        # a plain attribute, read once per request, kept equal to `_in_fields and not _in_body`.
        self.request_pending = False
        self._idle = True  # llhttp is between messages: http1_fast may take the next one
        self.fast = True  # tests turn it off to compare both paths
        self._fresh = False
        self._fields_size = 0
        self._in_body = False
        self._keep = True
        self._feed_size = 0

    # ---- input ------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """True while the current request is complete but its response is not: stop reading."""
        return self._holding


    @property
    def eof(self) -> bool:
        """True once the peer has sent EOF (`receive(b"")`)."""
        return self._eof

    @property
    def refused(self) -> bool:
        """True after an `Error` while the peer has not sent EOF: it may still be sending the request we
        refused (a body too large, say), so close lingering rather than at once (RFC 9112 9.6)."""
        return self._dead and not self._eof

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer (b"" = EOF); returns the events of the current request."""
        if self._holding or self._blocked:
            if self._dead or self._eof:
                return []
            if self._holding or (self._upgrade_wait and not self._manual):
                if not data:
                    self._eof = self._eof_pending = True
                elif not self._stop:
                    self._backlog += data
                return []
        self._sink = out = []
        if data and self._idle and self.fast and not self._manual:
            # (not while an upgrade request's body is still being cut out of the stream: see _feed)
            # _feed's fast path, written out here: the common request is one read, one call deep.
            used = try_simple(self, data)
            if used:
                if used != len(data) and not self._stop:
                    self._backlog += data[used:]
                return out
        self._feed(data)
        return out

    def _block(self) -> None:
        self._blocked = self._dead or self._eof or self._upgrade_wait or self._stop or bool(self._manual)

    def start_next(self) -> list[Event]:
        """After a finished keep-alive response: the events of the next request that are already here.

        If the request body was not read to its end, the rest of it is discarded as it arrives.
        """
        self._next_cycle()
        self._upgrade_wait = False
        self._blocked = self._dead or self._eof or self._stop or bool(self._manual)  # _block()
        if not self._req_done:
            self._draining = True
            return []
        self._sink = out = []
        held = self._held
        if not held and not self._backlog and not self._eof_pending:
            self._holding = False  # nothing is waiting: the common keep-alive case
            return out
        self._held = []
        self._holding = False
        for i, event in enumerate(held):
            if type(event) is Request:
                self._set_current(event)
            elif event is END:
                self._req_done = True
                out.extend(held[: i + 1])
                self._sink = self._held = held[i + 1 :]
                self._holding = True
                return out
        out.extend(held)
        if self._dead:
            return out
        if self._backlog:
            backlog, self._backlog = self._backlog, b""
            self._feed(backlog)
        if self._eof_pending and not self._holding and not self._dead:
            self._eof_pending = False
            self._feed(b"")
        return out

    def next_request(self) -> list[Event] | None:
        """`start_next()` if the connection may serve another request, None if it must close."""
        if not self._keep_alive:
            return None
        if self._state == _DONE and self._req_done and not self._held and not self._backlog \
                and not self._eof_pending:
            # start_next() for its common case, nothing waiting (no pipelined request), written out
            self._req = None
            self._state = _IDLE
            self._upgrade_wait = False
            self._blocked = self._dead or self._eof or self._stop or self._manual != 0
            self._holding = False
            self._sink = out = []
            return out
        return self.start_next()

    @property
    def trailing_data(self) -> bytes:
        """Bytes that followed an upgrade request, once the response switched protocols (101)."""
        data, self._backlog = self._backlog, b""
        return data

    def _feed(self, data: bytes) -> None:
        if not data:
            self._eof = self._dead = self._blocked = True
            self._sink.append(CLOSED)
            return
        if self._manual:
            data = self._manual_body(data)
            if not data:
                return
        if self._holding or self._upgrade_wait:
            self._backlog += data
            return
        if self._idle and self.fast:
            used = try_simple(self, data)
            if used:
                if used == len(data) or self._stop:
                    return  # after `Connection: close` the rest is ignored, as below
                self._backlog += data[used:]  # the next request waits, as pipelined events do
                return
        self._feed_size = len(data)
        try:
            self._parser.feed_data(data)
        except _HTTPParserUpgrade as exc:
            rest = data[exc.args[0] :]
            self._upgrade_wait = True
            if self._manual and rest:
                rest = self._manual_body(rest)
            self._backlog = rest + self._backlog
            self._block()
            return
        except _HTTPParserError as exc:
            if self._stop:
                return  # llhttp refuses bytes after `Connection: close`; we just ignore them
            self._fail_from(exc)
            return
        if self._in_fields:
            self._fields_spanning(data)

    def _fields_spanning(self, data: bytes) -> None:
        # A header (or trailer) section is still incomplete at the end of a read. llhttp keeps no limit
        # on it, so count it: the part in the read where it began from what callbacks reported, every
        # later read in full. (A section that starts and ends in one read is checked when it ends.)
        if self._fresh:
            self._fresh = False
            if not self._in_body:
                self._fields_size = sum([len(n) + len(v) + 3 for n, v in self._headers])
        else:
            self._fields_size += len(data)
        if self._fields_size > self.max_header_size:
            self._fail(431, f"header section larger than {self.max_header_size} bytes")
        elif len(self._headers) > self.max_headers:
            self._fail(431, f"more than {self.max_headers} header fields")

    def _fail(self, status: int, reason: str) -> None:
        self._dead = self._blocked = True
        self._sink.append(Error(status, reason))

    def _fail_from(self, exc: Exception) -> None:
        cause = exc.__context__
        if isinstance(cause, _Reject):
            return self._fail(cause.status, cause.reason)
        if isinstance(exc, httptools.HttpParserCallbackError) and cause is not None:
            raise cause  # a bug in a callback of ours: loud, not a 400
        if isinstance(exc, httptools.HttpParserInvalidMethodError):
            return self._fail(400, "invalid method")
        if isinstance(exc, httptools.HttpParserInvalidURLError):
            return self._fail(400, "invalid request target")
        reason = str(exc)
        if reason == "Invalid HTTP version":
            return self._fail(505, "HTTP version not supported")
        if reason.startswith("Expected HTTP/"):
            reason = "invalid request line (space in the target?)"
        return self._fail(400, reason)

    def _manual_body(self, data: bytes) -> bytes:
        # llhttp skips the body of an upgrade request; when the upgrade is declined it still has to be
        # read, so its Content-Length is cut out of the raw bytes here.
        n = self._manual
        chunk = data[:n] if len(data) > n else data
        self._manual = n - len(chunk)
        if chunk and not self._draining:
            self._sink.append(Data(chunk))
        if not self._manual:
            self._block()
            self._message_done()
        return data[len(chunk) :]

    # ---- llhttp callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._idle = False
        self._url = b""
        self._headers = []
        self._cl = -1
        self._chunked = False
        self._hosts = 0
        self._expect = False
        self._upgrade = None
        self._in_body = False
        self._in_fields = True
        self.request_pending = True
        self._fresh = True
        self._fields_size = 0
        self._body_size = 0

    def on_url(self, fragment: bytes) -> None:
        url = self._url = self._url + fragment
        if len(url) > self.max_target_size:
            raise _Reject(414, f"request target longer than {self.max_target_size} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body:
            # A trailer field of a chunked body: bounded like the head, then dropped.
            if self._fresh:
                self._fields_size += len(name) + len(value) + 3
                if self._fields_size > self.max_header_size:
                    raise _Reject(431, f"trailer section larger than {self.max_header_size} bytes")
            return
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp strips leading OWS, not trailing
        if name in _SPECIAL:
            self._special(name, value)
        self._headers.append((name, value))

    def _special(self, name: bytes, value: bytes) -> None:
        if name == b"content-length":
            # llhttp already refused non-digits, overflow, and a second Content-Length even when equal
            # (RFC 9112 6.3 allows merging equal ones; refusing is the safer reading).
            self._cl = int(value)
            if self._cl > self.max_body:
                raise _Reject(413, f"Content-Length {self._cl} larger than {self.max_body} bytes")
        elif name == b"transfer-encoding":
            if self._chunked:
                raise _Reject(400, "Transfer-Encoding repeated")
            if value.lower() != b"chunked":
                codings = [c.strip() for c in value.lower().split(b",")]
                if codings[-1] == b"chunked" and all(_TOKEN(c) for c in codings):
                    raise _Reject(501, "only the chunked transfer coding is supported")
                raise _Reject(400, "Transfer-Encoding must end with chunked")
            self._chunked = True
        elif name == b"host":
            self._hosts += 1
            if self._hosts > 1:
                raise _Reject(400, "more than one Host header")
            if not _HOST(value):
                raise _Reject(400, "invalid Host header")
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise _Reject(417, "only Expect: 100-continue is supported")
            self._expect = True
        else:  # upgrade
            self._upgrade = value.lower()

    def on_headers_complete(self) -> None:
        self._in_fields = False
        self._in_body = True
        self.request_pending = False
        headers = self._headers
        if self._fresh and self._feed_size > self.max_header_size:
            if sum([len(n) + len(v) + 3 for n, v in headers]) > self.max_header_size:
                raise _Reject(431, f"header section larger than {self.max_header_size} bytes")
        if len(headers) > self.max_headers:
            raise _Reject(431, f"more than {self.max_headers} header fields")
        parser = self._parser
        version = parser.get_http_version()
        if version == "1.1":
            if not self._hosts:
                raise _Reject(400, "missing Host header")
        elif version == "1.0":
            if self._chunked:
                raise _Reject(400, "Transfer-Encoding in an HTTP/1.0 request")
        elif version == "0.9":
            # llhttp reads a request line without a version (`GET /`) as HTTP/0.9; RFC 9112 has no such
            # request: it is malformed (400), not a version we decline (505).
            raise _Reject(400, "request line without an HTTP version")
        else:
            raise _Reject(505, f"HTTP/{version} not supported")
        method = parser.get_method()
        url = self._url
        if url[:1] == b"/":
            if b"#" in url:
                raise _Reject(400, "fragment in request target")
            raw_path, _, query = url.partition(b"?")
        elif method == b"CONNECT":
            if not _AUTHORITY(url):
                raise _Reject(400, "CONNECT needs host:port")
            raw_path = query = b""
        elif url == b"*" and method == b"OPTIONS":
            raw_path, query = b"*", b""
        else:
            match = _ABSOLUTE(url)
            if match is None:
                raise _Reject(400, "invalid request target")
            raw_path = match[1] or b"/"
            query = match[2] or b""
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        upgrade = None
        if (self._upgrade is not None or method == b"CONNECT") and parser.should_upgrade():
            upgrade = self._upgrade
            if self._chunked:
                raise _Reject(400, "chunked body on an upgrade request is not supported")
            if self._cl > 0:
                self._manual = self._cl
                self._blocked = True
        request = Request(
            method, url, path, raw_path, query, version, headers, parser.should_keep_alive(),
            self._expect and version == "1.1", upgrade,
        )
        self._keep = request.keep_alive
        self._sink.append(request)
        if not self._holding:
            self._set_current(request)

    def on_body(self, chunk: bytes) -> None:
        self._in_fields = False
        if self._chunked:
            size = self._body_size = self._body_size + len(chunk)
            if size > self.max_body:
                raise _Reject(413, f"chunked body larger than {self.max_body} bytes")
        if not self._draining:
            self._sink.append(Data(chunk))

    def on_chunk_header(self) -> None:
        # After a chunk-size line comes data, or (last chunk) the trailer section: count it as fields
        # until data shows up.
        self._in_fields = True
        self._fresh = True
        self._fields_size = 0

    def on_chunk_complete(self) -> None:
        self._in_fields = False

    def on_message_complete(self) -> None:
        self._idle = True
        self._in_fields = False
        self._in_body = False
        self.request_pending = False
        if not self._keep:
            self._stop = self._blocked = True  # llhttp's own answer is reset by now
        if not self._manual:
            self._message_done()

    def _message_done(self) -> None:
        if self._draining:
            self._draining = False  # the discarded body is over; the next request starts fresh
            return
        self._sink.append(END)
        if not self._holding:
            self._req_done = True
            self._holding = True
            self._sink = self._held
