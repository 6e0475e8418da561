"""The response half of the HTTP/1.1 server connection: framing, keep-alive, no-body rules.

Rules (RFC 9112 6, 9.3; RFC 9110 15):
- a response to HEAD, and 1xx/204/304 responses, carry no body: `body()` returns b"";
- Content-Length given by the application frames the body, and the application must send exactly that
  much (more raises LocalProtocolError, less makes the connection close);
- otherwise HTTP/1.1 responses are chunked, HTTP/1.0 responses are delimited by closing the connection;
- the connection stays open only if the client asked for it, the application did not send
  `Connection: close`, and the body length is known; `Connection` is always written by us;
- a response sent while an HTTP/1.1 client still waits for `100 Continue` closes the connection (we
  cannot know whether the body will follow);
- header names must be tokens and values free of CR, LF, NUL and other controls (response splitting).
"""

from __future__ import annotations

import re
from http import HTTPStatus

from socketkit.proto.http1_events import LocalProtocolError, Request

_IDLE, _SENDING, _DONE = 0, 1, 2
_NONE, _LENGTH, _CHUNKED, _CLOSE = 0, 1, 2, 3

_STATUS = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+").fullmatch
# Raw name -> lowercased name for names already found valid: most responses reuse a handful of names.
_NAMES: dict[bytes, bytes] = {}
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _status_line(status: int) -> bytes:
    line = _STATUS.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise LocalProtocolError(f"invalid status code {status!r}")
        line = b"HTTP/1.1 %d \r\n" % status  # the reason phrase may be empty (RFC 9112 4)
    return line


def _name(name: bytes) -> bytes:
    lname = _NAMES.get(name)
    if lname is None:
        if not _TOKEN(name):
            raise LocalProtocolError(f"invalid header name {name!r}")
        lname = name.lower()
        if len(_NAMES) < 1024:
            _NAMES[name] = lname
    return lname


def error_response(status: int, reason: str, headers: list[tuple[bytes, bytes]] = ()) -> bytes:  # type: ignore[assignment]
    """A complete plain-text response that closes the connection, for an `Error` event."""
    body = (reason + "\n").encode()
    parts = [_status_line(status)]
    for name, value in headers:
        _name(name)
        if _BAD_VALUE(value):
            raise LocalProtocolError(f"invalid value for header {name!r}")
        parts.append(b"%s: %s\r\n" % (name, value))
    parts.append(
        b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % len(body)
    )
    parts.append(body)
    return b"".join(parts)


_Fields = tuple[bytes, bytes | None, bytes | None, bool, bytes | None, int]
_FIELDS: dict[tuple[int, tuple[object, ...]], _Fields] = {}


class PreparedHeaders(tuple):
    """A header list checked and formatted once, for responses that repeat (a cached file's head).

    It is the ASGI header list it was made from (a tuple of (name, value) pairs: middleware and other
    servers see nothing else), and `response()` given it with the same status takes its formatted fields
    as they are instead of looking them up."""

    status: int
    fields: _Fields

    def __new__(cls, status: int, headers) -> PreparedHeaders:
        self = super().__new__(cls, [(bytes(n), bytes(v)) for n, v in headers])
        self.status = status
        self.fields = _fields(status, self)
        return self


def _fields(status: int, headers) -> _Fields:
    """Status line + the app's header lines, checked; framing headers taken out for `response` to decide.

    Returns (status line + lines, Content-Length value, Transfer-Encoding value, Connection: close
    asked, the Content-Length line, its number)."""
    parts = [_status_line(status)]
    append = parts.append
    cl = te = None
    close = False
    names = _NAMES
    for name, value in headers:
        lname = names.get(name) or _name(name)
        if _BAD_VALUE(value):
            raise LocalProtocolError(f"invalid value for header {name!r}")
        if lname in _FRAMING:
            if lname == b"content-length":
                if cl is not None or not value.isdigit():
                    raise LocalProtocolError(f"invalid or repeated Content-Length {value!r}")
                cl = value
            elif lname == b"transfer-encoding":
                te = value
            elif b"close" in value.lower():
                close = True
            continue
        append(b"%s: %s\r\n" % (name, value))
    if cl is not None:  # its line and number, formatted and parsed once with the rest
        return b"".join(parts), cl, te, close, b"content-length: %s\r\n" % cl, int(cl)
    return b"".join(parts), cl, te, close, None, 0


class ResponseWriter:
    """Writer state for the request being answered; `ServerConnection` supplies `_set_current`."""

    # Slots: a connection touches these a few dozen times per request, and with ServerConnection's own
    # they are more than CPython shares dict keys for (30), so without slots each one is a dict lookup.
    __slots__ = ("_req", "_req_done", "_keep_alive", "_state", "_mode", "_remaining", "_continue_sent",
                 "_switched")

    def __init__(self) -> None:
        self._req: Request | None = None
        self._req_done = False
        self._keep_alive = False
        self._state = _IDLE
        self._mode = _NONE
        self._remaining = 0
        self._continue_sent = False
        self._switched = False

    def _set_current(self, request: Request) -> None:
        self._req = request
        self._req_done = False
        self._keep_alive = request.keep_alive
        self._state = _IDLE
        self._continue_sent = False

    def _next_cycle(self) -> None:
        if self._state != _DONE:
            raise LocalProtocolError("start_next() before the response ended")
        if not self._keep_alive:
            raise LocalProtocolError("start_next() on a connection that must close")
        self._req = None
        self._state = _IDLE

    @property
    def request(self) -> Request | None:
        """The request being answered (None between requests)."""
        return self._req

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may serve another request after the current response."""
        return self._keep_alive

    @property
    def switched(self) -> bool:
        """True after a 101 response: the bytes on the connection are no longer HTTP/1.1."""
        return self._switched

    def continue_response(self) -> bytes:
        """`100 Continue` if the client waits for it and nothing has been sent yet; else b""."""
        req = self._req
        if req is None or not req.expect_continue or self._continue_sent or self._state != _IDLE:
            return b""
        self._continue_sent = True
        return _CONTINUE

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]], extra: bytes = b"") -> bytes:
        """The status line and header section; framing and Connection headers are added here.

        `extra` is header lines the server itself adds (Date, Server), already well-formed.
        """
        return self.response(status, headers, None, extra)

    def response(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes | None = b"",
                 extra: bytes = b"") -> bytes:
        """A whole response in one piece; Content-Length is added when the application gave none.

        (`body=None` gives the head alone: `response_head`. One method for both keeps the common case, a
        whole response with a body of known length, one call deep.)
        """
        req = self._req
        if req is None:
            raise LocalProtocolError("no request to respond to")
        if self._state != _IDLE:
            raise LocalProtocolError("the response head was already sent")
        if status < 200:
            head = self._informational(status, headers)
            return head if body is None else self._rest(head, body)
        body_length = None if body is None else len(body)
        # Most apps answer with the same few header lists again and again: check and format each list
        # once. Keys are compared by value, so a cached entry can never stand for other headers.
        if type(headers) is PreparedHeaders and headers.status == status:
            key = None
            fields = headers.fields
        else:
            try:
                key = (status, tuple(headers))
                fields = _FIELDS.get(key)
            except TypeError:  # unhashable items (lists): just do the work
                key = fields = None
        if fields is None:
            fields = _fields(status, headers)
            if key is not None:
                if len(_FIELDS) >= 512:
                    _FIELDS.clear()
                _FIELDS[key] = fields
        prefix, cl, te, close, cl_line, cl_int = fields
        frame = b""
        keep = self._keep_alive and not close
        self._remaining = 0
        if status == 204:
            mode = _NONE  # never framing headers on 204 (RFC 9110 8.6, 9112 6.1)
        elif status == 304 or req.method == b"HEAD":
            mode = _NONE  # framing headers describe the representation that was not sent
            if cl is not None:
                frame = cl_line
            elif te is not None:
                frame = b"transfer-encoding: %s\r\n" % te
        elif cl is not None:
            mode = _LENGTH
            self._remaining = cl_int
            frame = cl_line
        elif body_length is not None and te is None:
            mode = _LENGTH
            self._remaining = body_length
            frame = b"content-length: %d\r\n" % body_length
        elif te is not None:
            frame = b"transfer-encoding: %s\r\n" % te
            if te.lower().rsplit(b",", 1)[-1].strip() == b"chunked":
                mode = _CHUNKED
            else:
                mode, keep = _CLOSE, False
        elif req.http_version == "1.1":
            mode = _CHUNKED
            frame = b"transfer-encoding: chunked\r\n"
        else:
            mode, keep = _CLOSE, False
        if req.expect_continue and not self._continue_sent and not self._req_done:
            keep = False
        if not keep:
            end = b"connection: close\r\n\r\n"
        elif req.http_version == "1.0":
            end = b"connection: keep-alive\r\n\r\n"
        else:
            end = b"\r\n"
        self._keep_alive = keep
        self._mode = mode
        if body is None:
            self._state = _SENDING
            return b"".join((prefix, extra, frame, end))
        if mode == _LENGTH and body_length == self._remaining:
            # The common case: the whole body, exactly as long as its framing says. The response ends
            # here, in one join, without a copy of the head to append the body to.
            self._remaining = 0
            self._state = _DONE
            return b"".join((prefix, extra, frame, end, body))
        self._state = _SENDING
        return self._rest(b"".join((prefix, extra, frame, end)), body)

    def _rest(self, head: bytes, body: bytes) -> bytes:
        """`response()` after its head, when the body is not simply all of a Content-Length."""
        if self._mode != _LENGTH:
            return head + self.body(body) + self.end()
        remaining = self._remaining
        n = len(body)
        if n > remaining:
            raise LocalProtocolError(f"body longer than Content-Length (by {n - remaining})")
        self._state = _DONE
        if n < remaining:
            self._remaining = remaining - n
            self._keep_alive = False  # the client will wait for bytes that never come: close instead
        else:
            self._remaining = 0
        return head + body if body else head

    def _informational(self, status: int, headers) -> bytes:
        req = self._req
        if req.http_version == "1.0":
            raise LocalProtocolError("1xx responses cannot be sent to an HTTP/1.0 client")
        parts = [_status_line(status)]
        for name, value in headers:
            _name(name)
            if _BAD_VALUE(value):
                raise LocalProtocolError(f"invalid value for header {name!r}")
            parts.append(b"%s: %s\r\n" % (name, value))
        parts.append(b"\r\n")
        if status == 101:
            if req.upgrade is None:
                raise LocalProtocolError("101 Switching Protocols without an upgrade request")
            self._switched = True
            self._keep_alive = False
            self._state = _DONE
        elif status == 100:
            self._continue_sent = True
        return b"".join(parts)

    def body(self, data: bytes) -> bytes:
        """A piece of the response body, framed for the wire (b"" when the response has no body)."""
        mode = self._mode
        if self._state != _SENDING:
            raise LocalProtocolError("body() outside a response")
        if mode == _CHUNKED:
            return b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        if mode == _LENGTH:
            if len(data) > self._remaining:
                raise LocalProtocolError(f"body longer than Content-Length (by {len(data) - self._remaining})")
            self._remaining -= len(data)
            return data
        if mode == _CLOSE:
            return data
        return b""

    def body_sent_externally(self, count: int) -> None:
        """`count` body bytes went out without `body()` (sendfile); keeps the length accounting."""
        if self._state != _SENDING:
            raise LocalProtocolError("body outside a response")
        if self._mode == _LENGTH:
            if count > self._remaining:
                raise LocalProtocolError(f"body longer than Content-Length (by {count - self._remaining})")
            self._remaining -= count
        elif self._mode == _CHUNKED:
            raise LocalProtocolError("a chunked body must be framed by the caller")

    @property
    def chunked(self) -> bool:
        """The response being sent uses chunked framing."""
        return self._mode == _CHUNKED

    def end(self) -> bytes:
        """Ends the response; b"0\\r\\n\\r\\n" for a chunked one. Then: `start_next()` or close."""
        if self._state != _SENDING:
            raise LocalProtocolError("end() outside a response")
        self._state = _DONE
        if self._mode == _CHUNKED:
            return b"0\r\n\r\n"
        if self._mode == _LENGTH and self._remaining:
            self._keep_alive = False  # the client will wait for bytes that never come: close instead
        return b""
