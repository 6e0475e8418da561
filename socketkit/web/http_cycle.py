"""One HTTP request and its response on an ASGI connection: the `receive` and `send` callables the app
gets (`Cycle`), and the Date/Server header lines shared by every response (`_Clock`).

The connection loop that makes a Cycle per request is web/http.py's HTTPHandler; this module holds what
runs while the app does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from socketkit.errors import ClosedError, DeadlineError, PeerResetError, SocketkitError
from socketkit.net.stream import _SENT, Stream
from socketkit.proto.http1 import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    Error,
    LocalProtocolError,
    Request,
    ServerConnection,
    error_response,
)

if TYPE_CHECKING:
    from socketkit.web.http import HTTPHandler

log = logging.getLogger("socketkit.web")
access_log = logging.getLogger("socketkit.web.access")

_DISCONNECT = {"type": "http.disconnect"}
_REASONS = {400: "Bad Request", 404: "Not Found", 413: "Content Too Large", 500: "Internal Server Error",
            501: "Not Implemented"}


def describe_request(scope: dict[str, Any]) -> str:
    """The request an error is about, for the log: `"GET /path?query HTTP/1.1" from 127.0.0.1:50000`."""
    client = scope.get("client")
    who = f" from {client[0]}:{client[1]}" if client else ""
    return f'"{_request_line(scope)}"{who}'


def _request_line(scope: dict[str, Any]) -> str:
    query = scope.get("query_string") or b""
    target = scope.get("path", "") + ("?" + query.decode("latin-1") if query else "")
    return _printable(f'{scope.get("method", "?")} {target[:2000]} HTTP/{scope.get("http_version", "1.1")}')


def _printable(text: str) -> str:
    """Control characters and quotes escaped (\\xHH), as Apache writes its logs: a log line stays one line."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c not in '"\\' else f"\\x{ord(c):02x}" for c in text)


def error_page(scope: dict[str, Any]) -> bytes:
    """The 500 page: which request failed, never why (the traceback is in the server's log)."""
    return (f"Internal Server Error\n\n{_request_line(scope)} failed in the application; "
            "the server's log has the details.\n").encode("utf-8", "replace")


def access_line(client: Any, method: str, target: bytes, http_version: str, status: int, size: int,
                headers: Any) -> str:
    """One request in Apache's combined log format (nginx's default too):
    `127.0.0.1 - - [06/Dec/2026:16:58:39 +0000] "GET /a?b HTTP/1.1" 200 13 "referer" "user agent"`."""
    referer = agent = "-"
    for name, value in headers:
        if name == b"referer":
            referer = _printable(value.decode("latin-1"))
        elif name == b"user-agent":
            agent = _printable(value.decode("latin-1"))
    when = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
    version = "2.0" if http_version == "2" else http_version
    line = _printable(f"{method} {target.decode('latin-1')} HTTP/{version}")
    return (f'{client[0] if client else "-"} - - [{when}] "{line}" {status} {size or "-"} '
            f'"{referer}" "{agent}"')


class _Clock:
    """The header lines the server adds (Date, Server), formatted once a second, not once a response."""

    def __init__(self) -> None:
        self.second = -1
        self.since = self.until = 0.0  # `lines` hold for since <= time.time() < until
        self.lines = self.lines_no_server = b""

    def extra(self, server_header: bool) -> bytes:
        if not self.since <= _time() < self.until:  # (the clock may also step back)
            self.tick()
        return self.lines if server_header else self.lines_no_server

    def tick(self) -> None:
        now = _time()
        second = int(now)
        self.since = float(second)
        self.until = second + 1.0
        if second != self.second:
            self.second = second
            date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(second)).encode()
            self.lines_no_server = b"date: " + date + b"\r\n"
            self.lines = self.lines_no_server + b"server: socketkit\r\n"


_time = time.time
_clock = _Clock()


async def send_file(stream: Stream, conn: ServerConnection, head: bytes, file: Any, offset: int, count: int,
                    *, chunked: bool = False, sock: Any = None) -> None:
    """`head` (may be b""), then `count` bytes of `file` from `offset` by sendfile, the socket corked in
    between as nginx's tcp_nopush does: the head and the file's first bytes leave in full-sized packets,
    not the head alone in a small one. Keeps `conn`'s length accounting (unless the caller frames a chunk)."""
    if sock is None:  # (a caller sending many files on one connection looks it up once: corkable())
        sock = corkable(stream) if count else None
    elif not count:
        sock = None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    try:
        if head:
            await stream.send(head)
        if not count:
            return
        sent = await stream.sendfile(file, offset, count)
        if sent != count:
            # The file shrank under us: the framing already promised `count` bytes, so the only honest
            # ending is to cut the connection (a keep-alive would read our next response as body).
            stream.abort()
            raise LocalProtocolError(f"file shrank during sendfile: {sent} of {count} bytes sent")
        if not chunked:
            conn.body_sent_externally(count)
    finally:
        if sock is not None and not stream.closed:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
            except OSError:
                pass


def corkable(stream: Stream, *, own: bool = False) -> Any:
    """The TCP socket under a plain (not TLS) stream, to cork around a file body; None otherwise.

    The loop's own answer makes a socket object (and a getsockname) at every call of each of its methods;
    `own=True` gives a socket of our own on a duplicate descriptor instead, for a connection that sends many
    files: two setsockopt calls per file and nothing else. The caller closes it (only the duplicate closes).
    """
    if not hasattr(socket, "TCP_CORK") or stream.extra("ssl_object") is not None:
        return None
    sock = stream.extra("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    if own:
        try:
            return socket.fromfd(sock.fileno(), sock.family, sock.type, sock.proto)
        except OSError:
            return None
    return sock


class Cycle:
    """One request and its response: the ASGI `receive` and `send` callables live here."""

    __slots__ = ("handler", "stream", "conn", "request", "scope", "events", "index", "body_done",
                 "started", "head_sent", "complete", "status", "headers", "disconnected", "response_done",
                 "ready", "sent", "reader")

    # No __init__: HTTPHandler.__call__ makes each one with object.__new__ and sets every slot itself,
    # once per request. What they hold:
    handler: HTTPHandler
    stream: Stream
    conn: ServerConnection
    request: Request
    scope: dict[str, Any]
    events: list[Any]  # the parsed events of this request, read by `receive` from `index` on
    index: int
    ready: Awaitable[None]  # a done future: what `send` returns when nothing needs waiting for
    body_done: bool  # the request body was read to its end
    started: bool  # http.response.start was sent
    head_sent: bool  # the response head went to the stream
    complete: bool  # the response is whole (or given up on)
    disconnected: bool  # `receive` has said http.disconnect
    status: int
    headers: Any
    response_done: asyncio.Future[None] | None  # set when something waits for the response to end
    reader: asyncio.Task[bytes] | None  # _wait_disconnect's read; only ever set there (unset before)
    sent: int  # body bytes sent (the access log's size)

    def failed(self, exc: Exception) -> None:
        if isinstance(exc, (PeerResetError, ClosedError, ConnectionError)):
            self.stream.abort()
            return
        log.error("ASGI app raised an exception for %s", describe_request(self.scope), exc_info=exc)
        self._fail("the application raised an exception")

    def incomplete(self) -> None:
        if not self.started:
            log.error("ASGI app returned without starting a response for %s", describe_request(self.scope))
        else:
            log.error("ASGI app returned before its response was complete for %s", describe_request(self.scope))
        self._fail("the application sent no complete response")

    def ended(self) -> None:
        """The app returned (the handler calls this only when something waited for the response)."""
        if self.response_done is not None and not self.response_done.done():
            self.response_done.set_result(None)
        # A disconnect watcher the app cancelled has not run since: its read is ended here, before the
        # handler reads the next request (two readers at once would be refused).
        if getattr(self, "reader", None) is not None:
            self._end_reader()

    def _end_reader(self) -> bytes | None:
        """End _wait_disconnect's read, once: None when it was still waiting (cancelled now, so the stream
        has no reader left), else what it read (b"" when the connection ended; a pipelined request's
        bytes go back to the stream)."""
        reader, self.reader = self.reader, None
        if reader is None:
            return None
        if not reader.done():
            reader.cancel()  # its future is cancelled at once: the stream sees no reader from now on
            return None
        if reader.cancelled():
            return None
        data = b"" if reader.exception() is not None else reader.result()
        if data:
            self.stream.unreceive(data)
        return data

    def _fail(self, why: str) -> None:
        if self.stream.closed:
            return
        if not self.head_sent:
            try:
                self.stream.send_nowait(self.conn.response(
                    500, [(b"content-type", b"text/plain; charset=utf-8"), (b"x-content-type-options", b"nosniff"),
                          (b"connection", b"close")],
                    b"" if self.request.method == b"HEAD" else error_page(self.scope),
                    _clock.extra(self.handler.server_header)))
                self.status = 500
                if self.handler.access_log:
                    self._log_access()
            except (SocketkitError, LocalProtocolError):
                pass
            self.stream.close()
        elif self.complete:
            # The response is whole (the app raised afterwards, e.g. in a background task): let what is
            # still buffered reach the client, then close. abort() would truncate it.
            self.stream.close()
        else:
            # Half a response is on the wire: the only honest ending is to cut the connection.
            self.stream.abort()
        self.complete = True

    # -- ASGI receive -------------------------------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        if self.disconnected or (self.complete and self.body_done):
            return _DISCONNECT
        if self.body_done:
            return await self._wait_disconnect()
        conn = self.conn
        if self.request.expect_continue and not self.head_sent:
            cont = conn.continue_response()
            if cont:
                await self.stream.send(cont)
        while True:
            events = self.events
            while self.index < len(events):
                event = events[self.index]
                self.index += 1
                kind = type(event)
                if kind is Data:
                    return {"type": "http.request", "body": event.chunk, "more_body": True}
                if kind is EndOfMessage:
                    self.body_done = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                if kind is ConnectionClosed or kind is Error:
                    self.disconnected = True
                    if kind is Error and not self.head_sent:
                        self.head_sent = self.complete = True
                        await self.stream.send(error_response(event.status, event.reason))
                        # The handler closes lingering once the app returns (the peer may still be sending
                        # the body, and closing now could reset the answer away): half-close meanwhile.
                        with contextlib.suppress(SocketkitError, OSError):  # (TLS cannot half-close)
                            await self.stream.send_eof()
                    return _DISCONNECT
            try:
                data = await self.stream.receive(timeout=self.handler.request_timeout)
            except DeadlineError:
                self.disconnected = True
                return _DISCONNECT
            except (PeerResetError, ConnectionError, SocketkitError):
                self.disconnected = True
                return _DISCONNECT
            self.events = conn.receive(data)
            self.index = 0

    async def _wait_disconnect(self) -> dict[str, Any]:
        """After the body: block until the client goes away or our response is complete."""
        loop = asyncio.get_running_loop()
        if self.response_done is None:
            self.response_done = loop.create_future()
        reader = self.reader = loop.create_task(self.stream.receive())
        try:
            await asyncio.wait({reader, self.response_done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            data = self._end_reader() if self.reader is reader else None  # (ended() may have ended it)
        if data:
            # The next pipelined request, not a goodbye: kept for later (_end_reader gave it back), and no
            # further reads (one read ahead at most) -- wait for our response to end or the connection to drop.
            lost = loop.create_task(self.stream.wait_lost())
            try:
                await asyncio.wait({lost, self.response_done}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
            if self.stream.closed:
                self.disconnected = True
        elif data is not None:
            self.disconnected = True
        return _DISCONNECT

    # -- ASGI send ----------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> Awaitable[None]:
        # A plain method returning an awaitable: the common messages cost no coroutine. Apps always
        # `await send(...)`, and errors are raised all the same, just one step earlier.
        kind = message["type"]
        if kind == "http.response.body":
            if not self.started or self.complete:
                raise RuntimeError(f"ASGI: {kind!r} " + ("before http.response.start" if not self.started
                                                        else "after the response was complete"))
            body = message.get("body", b"")
            more = message.get("more_body", False)
            conn = self.conn
            self.sent += len(body)
            if not self.head_sent:
                clock = _clock  # _clock.extra(), written out: once per response
                if not clock.since <= _time() < clock.until:
                    clock.tick()
                extra = clock.lines if self.handler.server_header else clock.lines_no_server
                if more:
                    data = conn.response_head(self.status, self.headers, extra) + conn.body(body)
                else:
                    data = conn.response(self.status, self.headers, body, extra)
                self.head_sent = True  # only now: a head refused above (bad header) still gets a 500
            elif more:
                data = conn.body(body)
            else:
                data = conn.body(body) + conn.end()
            if not more:
                self.complete = True  # _completed(), written out: once per response
                done = self.response_done
                if done is not None and not done.done():
                    done.set_result(None)
                if self.handler.access_log:
                    self._log_access()
            if data and not (self.disconnected and self.stream.closed):
                sent = self.stream.send(data)
                return self.ready if sent is _SENT else sent
            return self.ready
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("ASGI: http.response.start sent twice")
            self.started = True
            self.status = message["status"]
            self.headers = message.get("headers") or ()
            return self.ready
        if kind == "http.response.zerocopysend":
            return self._zerocopy(message)
        raise RuntimeError(f"ASGI: unexpected message type {kind!r} on an http connection")

    def _completed(self) -> None:
        self.complete = True
        if self.response_done is not None and not self.response_done.done():
            self.response_done.set_result(None)
        if self.handler.access_log:
            self._log_access()

    async def _zerocopy(self, message: dict[str, Any]) -> None:
        if not self.started or self.complete:
            raise RuntimeError("ASGI: zerocopysend outside a response")
        file = message["file"]
        offset = message.get("offset")
        count = message.get("count")
        more = message.get("more_body", False)
        conn = self.conn
        head = b""
        if not self.head_sent:
            head = conn.response_head(self.status, self.headers, _clock.extra(self.handler.server_header))
            self.head_sent = True
        if self.request.method != b"HEAD" and self.status not in (204, 304):
            if count is None:
                count = os.fstat(file.fileno()).st_size - (offset or 0)
        else:
            count = 0
        self.sent += count
        if conn.chunked and count:
            head += b"%x\r\n" % count  # the whole file as one chunk
            await send_file(self.stream, conn, head, file, offset or 0, count, chunked=True)
            await self.stream.send(b"\r\n")
        else:
            await send_file(self.stream, conn, head, file, offset or 0, count)
        if not more:
            tail = conn.end()
            self._completed()
            if tail:
                await self.stream.send(tail)

    def _log_access(self) -> None:
        request = self.request
        sent = 0 if request.method == b"HEAD" else self.sent
        access_log.info(access_line(self.scope.get("client"), self.scope["method"], request.target,
                                    request.http_version, self.status, sent, request.headers))
