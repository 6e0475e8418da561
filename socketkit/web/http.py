"""ASGI over HTTP/1.1: wires `proto.http1.ServerConnection` to a Stream and runs the app per request.

One connection is one Stream handler (so the socket layer's inline driving applies: a request that
arrives while the handler waits is handled inside `data_received`, without a Task per request as
uvicorn makes). Requests on a connection are answered strictly one after another; pipelined requests
wait, parsed, in the connection until the response before them is complete.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from socketkit.dashboard.metrics import HISTOGRAMS
from socketkit.errors import ClosedError, DeadlineError, PeerResetError
from socketkit.net.stream import _SENT, Stream
from socketkit.proto.http1 import (
    ConnectionClosed,
    Error,
    LocalProtocolError,
    Request,
    ServerConnection,
    error_response,
)
from socketkit.proto.http1_events import END
from socketkit.web.config import WebConfig
from socketkit.web.http_cycle import Cycle, _clock, _time, access_line, corkable, send_file

log = logging.getLogger("socketkit.web")
access_log = logging.getLogger("socketkit.web.access")

_ASGI = {"version": "3.0", "spec_version": "2.4"}
_EXTENSIONS = {"http.response.zerocopysend": {}}
_MAX_BLANK_READS = 4
_new = object.__new__
# The methods http1_fast accepts, decoded once (a dict lookup instead of a decode per request).
_METHODS = {m: m.decode("ascii") for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS")}


_observe = HISTOGRAMS["http_request"].observe  # the request-duration histogram of /metrics


def _addr(addr: Any) -> tuple[str, int] | None:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (addr[0], addr[1])
    return None


_CLOSE: Any = object()  # quick() answered, and the connection must end after that answer
_TCP, _CORK = socket.IPPROTO_TCP, getattr(socket, "TCP_CORK", 3)  # (corkable() is None where it has none)


class _FileRest:
    """quick() sent a file's head and its first `sent` bytes: the loop sends the rest."""

    __slots__ = ("body", "sent", "size")

    def __init__(self, body: Any, sent: int, size: int) -> None:
        self.body, self.sent, self.size = body, sent, size


class HTTPHandler:
    """The Stream handler of the web server: `server = start_server(eps, HTTPHandler(config))`."""

    def __init__(self, config: WebConfig, state: dict[str, Any] | None = None) -> None:
        self.config = config
        self.app = config.app
        self.state = state
        self.root_path = config.root_path
        self.root_path_bytes = config.root_path.encode()
        limits = config.limits
        self.conn_options = dict(max_header_size=limits.max_header_size, max_headers=limits.max_headers,
                                 max_body=limits.max_body)
        self.request_timeout = limits.request_timeout
        self.server_header = config.server_header
        self.access_log = config.access_log
        self.proxy_headers = config.proxy_headers
        # StaticFiles served directly (`socketkit web --static DIR`): a small cached file is answered
        # before any ASGI scope is built (the same response its app would send; see StaticFiles).
        self.cached_response = getattr(self.app, "cached_response", None) if not self.root_path else None
        self.http2 = config.http2
        self.requests = 0  # answered requests, every protocol: a status page's requests/s

    async def _h2(self, stream: Stream, scheme: str, server: Any, client: Any) -> bool:
        """Serve the connection over HTTP/2 if it speaks it: ALPN said h2 (TLS), or the client opened with
        the HTTP/2 preface (h2c with prior knowledge). False: an HTTP/1.1 connection (what was read of it
        is put back)."""
        from socketkit.proto.http2 import PREFACE

        ssl_object = stream.extra("ssl_object")
        if ssl_object is not None:
            if ssl_object.selected_alpn_protocol() != "h2":
                return False
            data = b""
        else:
            data = await stream.receive()
            while data and len(data) < len(PREFACE) and PREFACE.startswith(data):
                more = await stream.receive(timeout=self.request_timeout)
                if not more:
                    break
                data += more
            if not data.startswith(PREFACE):
                stream.unreceive(data)
                return False
        from socketkit.web.http2 import serve_h2

        stream.info = {"protocol": "http/2"}  # what the dashboard's sockets view shows

        base = {"type": "http", "asgi": _ASGI, "http_version": "2", "scheme": scheme, "method": "GET",
                "path": "/", "raw_path": b"/", "query_string": b"", "root_path": self.root_path, "headers": [],
                "server": server, "client": client, "extensions": {"http.response.trailers": {}}}
        await serve_h2(self, stream, data, base)
        return True

    async def __call__(self, stream: Stream) -> None:
        conn = ServerConnection(**self.conn_options)
        # Per connection, not per request: what every scope on it shares.
        scheme = "https" if stream.extra("ssl_object") is not None else "http"
        server = _addr(stream.local)
        client = _addr(stream.peer)
        root = self.root_path
        root_bytes = self.root_path_bytes
        state = self.state
        proxy_headers = self.proxy_headers
        app = self.app
        # Every key of an http scope, in the order the literal used to have; the per-request ones are
        # placeholders, each overwritten for every request (see below).
        base = {"type": "http", "asgi": _ASGI, "http_version": "1.1", "scheme": scheme, "method": "GET",
                "path": "/", "raw_path": b"/", "query_string": b"", "root_path": root, "headers": [],
                "server": server, "client": client, "extensions": _EXTENSIONS}
        if state is not None:
            base["state"] = state  # a placeholder too: a copy of `state` per request, set below
        events: list[Any] = []
        i = 0
        head_deadline: float | None = None  # when the head being received must be complete
        blank = 0  # reads between requests that brought nothing but empty lines
        loop = asyncio.get_running_loop()
        # What `send` returns when nothing needs waiting for: awaiting a done future runs no Python code.
        ready = loop.create_future()
        ready.set_result(None)
        cached_response = self.cached_response
        cork: Any = None  # the socket to cork around files sent by the server itself (looked up once)
        if self.http2:
            try:
                if await self._h2(stream, scheme, server, client):
                    return
            except (PeerResetError, ConnectionError, DeadlineError):
                stream.close()
                return
        def close_idle() -> None:
            """The server stops while this connection waits between requests: close it now, unless a
            request has come in that the handler has yet to take (it is answered, then the connection
            ends: `stream.stopping`)."""
            if not stream.unread:
                stream.close()

        quick = None
        pre: Any = None  # what quick() parsed and left for the loop below: events, or what the parse raised
        if cached_response is not None and not self.access_log:
            server_header = self.server_header

            def quick(data: bytes) -> bool:
                """A request for a cached file, answered inside data_received while the handler waits
                between requests: the same response the loop below sends, without resuming the handler."""
                nonlocal pre
                if stream._writing_paused:
                    return False  # the client reads slower than we answer: the loop waits for it
                try:
                    evs = conn.receive(data)
                    if len(evs) == 2 and evs[1] is END and type(evs[0]) is Request:
                        req = evs[0]
                        if req.keep_alive and req.upgrade is None:
                            hit = cached_response(req.method, req.path, req.raw_path, req.headers)
                            if hit is not None:
                                extra = _clock.extra(server_header)
                                body = hit[1]
                                if type(body) is bytes:
                                    stream.send_nowait(conn.response(200, hit[0], body, extra))
                                elif not quick_file(evs, hit[0], body, extra):
                                    return False  # (`pre` says what the loop below is to do)
                                self.requests += 1
                                nxt = conn.next_request()
                                if nxt is None or nxt:  # the connection ends, or a pipelined request came
                                    pre = _CLOSE if nxt is None else nxt  # in the same read: the loop goes on
                                    return False
                                return True
                    pre = evs
                except Exception as e:  # the loop below raises it, where it would have come from
                    pre = e
                return False

            def quick_file(evs: list[Any], headers: Any, body: Any, extra: bytes) -> bool:
                """A larger cached file: its head, then as much of it as the socket takes now by sendfile;
                True when all of it went. Otherwise `pre` tells the loop below to send the rest (it can
                wait for the socket), or to answer the request itself."""
                nonlocal pre, cork
                transport = stream._transport
                if cork is None:
                    cork = corkable(stream, own=True) or False
                if not cork or transport.get_write_buffer_size():
                    pre = evs
                    return False
                size = body.st.st_size
                body.users += 1
                cork.setsockopt(_TCP, _CORK, 1)
                stream.send_nowait(conn.response_head(200, headers, extra))
                try:
                    sent = stream.sendfile_nowait(body.file, 0, size)
                except PeerResetError as e:
                    body.release()
                    pre = e
                    return False
                if sent:
                    conn.body_sent_externally(sent)
                if sent < size:
                    pre = _FileRest(body, sent, size)
                    return False
                body.release()
                cork.setsockopt(_TCP, _CORK, 0)
                conn.end()
                return True

        try:
            while True:
                if i >= len(events):
                    if conn.request_pending:
                        # One deadline for the whole head, not one per read: a slowloris client that
                        # trickles a byte per read would otherwise never hit it.
                        if head_deadline is None:
                            head_deadline = loop.time() + self.request_timeout
                        data = await self._read(stream, conn, head_deadline - loop.time())
                        if data is None:
                            return
                    else:
                        head_deadline = None
                        if stream.stopping:
                            return  # the server stops: a connection between requests ends here
                        stream._quick = quick
                        stream.when_stopping = close_idle
                        try:
                            data = await stream.receive()  # between requests: the idle timeout applies
                        finally:
                            stream._quick = stream.when_stopping = None
                    if pre is not None:
                        events, pre = pre, None
                        if events is _CLOSE:
                            return
                        if type(events) is _FileRest:  # a file quick() began: the rest, waiting on the socket
                            rest = events
                            try:
                                await send_file(stream, conn, b"", rest.body.file, rest.sent, rest.size - rest.sent,
                                                sock=cork or None)
                            except LocalProtocolError:
                                return  # the file shrank under sendfile: the connection is cut already
                            finally:
                                rest.body.release()
                            conn.end()
                            self.requests += 1
                            events = conn.next_request()
                            if events is None:
                                return
                            i = 0
                            continue
                        if isinstance(events, BaseException):
                            raise events
                    else:
                        events = conn.receive(data)
                    if not events:
                        if not data:
                            return  # end of stream and nothing more to serve (EOF inside a body, say)
                        if conn.request_pending:
                            blank = 0
                        else:
                            # Only empty lines between requests (RFC 9112 2.2 lets us skip a few): bytes
                            # that move without a request must not keep an idle connection alive forever.
                            blank += 1
                            if blank > _MAX_BLANK_READS:
                                return
                        continue  # (i >= len(events) still holds: read again)
                    blank = 0
                    i = 0
                event = events[i]
                i += 1
                kind = type(event)
                if kind is Request:
                    if event.upgrade is not None and event.upgrade == b"websocket":
                        from socketkit.web.websocket import serve_websocket

                        stream.info = {"protocol": "websocket", "path": event.path[:200]}

                        base = {"type": "http", "asgi": _ASGI, "scheme": scheme, "server": server,
                                "client": client, "root_path": root, "extensions": _EXTENSIONS}
                        await serve_websocket(self, stream, conn, event, base)
                        return
                    if cached_response is not None and i < len(events) and events[i] is END:
                        hit = cached_response(event.method, event.path, event.raw_path, event.headers)
                        if hit is not None:
                            clock = _clock
                            if not clock.since <= _time() < clock.until:
                                clock.tick()
                            extra = clock.lines if self.server_header else clock.lines_no_server
                            body = hit[1]
                            if type(body) is bytes:
                                sent = stream.send(conn.response(200, hit[0], body, extra))
                                if sent is not _SENT:
                                    await sent
                                size = len(body)
                            else:  # a larger cached file: its head, then sendfile
                                size = body.st.st_size
                                body.users += 1
                                try:
                                    if cork is None:
                                        cork = corkable(stream, own=True) or False
                                    await send_file(stream, conn, conn.response_head(200, hit[0], extra),
                                                    body.file, 0, size, sock=cork or None)
                                except LocalProtocolError:
                                    return  # the file shrank under sendfile: the connection is cut already
                                finally:
                                    body.release()
                                conn.end()
                            self.requests += 1
                            if self.access_log:
                                access_log.info(access_line(client, event.method.decode("ascii"), event.target,
                                                            event.http_version, 200, size, event.headers))
                            events = conn.next_request()
                            if events is None:
                                return
                            i = 0
                            continue
                    # A copy of the connection's base scope, every per-request key overwritten: copying
                    # a dict that already has all the keys clones its table (no hashing, no growing),
                    # about half the cost of building the same dict from a literal.
                    scope = base.copy()
                    scope["http_version"] = event.http_version
                    method = event.method
                    scope["method"] = _METHODS.get(method) or method.decode("ascii")
                    if root:
                        scope["path"] = root + event.path
                        scope["raw_path"] = root_bytes + event.raw_path
                    else:
                        scope["path"] = event.path
                        scope["raw_path"] = event.raw_path
                    scope["query_string"] = event.query
                    scope["headers"] = event.headers
                    if state is not None:
                        scope["state"] = state.copy()
                    if proxy_headers:
                        apply_proxy_headers(scope, self.config)
                    # Cycle(...) written out (see Cycle): a bare instance and its slots set here cost
                    # half of what a type call into an __init__ does.
                    cycle = _new(Cycle)
                    cycle.handler = self
                    cycle.stream = stream
                    cycle.conn = conn
                    cycle.request = event
                    cycle.scope = scope
                    cycle.events = events
                    cycle.index = i
                    cycle.ready = ready
                    cycle.body_done = cycle.started = cycle.head_sent = cycle.complete = False
                    cycle.disconnected = False
                    cycle.status = cycle.sent = 0
                    cycle.headers = ()
                    cycle.response_done = None
                    # The app runs right here, not in a coroutine of Cycle's: one frame less on the
                    # path every inline resumption walks.
                    started = _time()
                    try:
                        await app(scope, cycle.receive, cycle.send)
                    except Exception as exc:  # noqa: BLE001 - the app's failure, reported by the cycle
                        cycle.failed(exc)
                    else:
                        if not cycle.complete:
                            cycle.incomplete()
                    finally:
                        if cycle.response_done is not None:
                            cycle.ended()
                        self.requests += 1
                        _observe(_time() - started)
                    if stream.closed:
                        return
                    if conn.refused:  # the request's body broke a limit: the cycle answered it
                        await stream.close_lingering()
                        return
                    events = conn.next_request()
                    if events is None:
                        return
                    i = 0
                elif kind is Error:
                    await stream.send(error_response(event.status, event.reason))
                    await stream.close_lingering()
                    return
                elif kind is ConnectionClosed:
                    return
        except (PeerResetError, ConnectionError, ClosedError):  # (closed: by a stopping server, say)
            return
        finally:
            stream.close()
            if cork:
                cork.close()  # our duplicate of the socket's descriptor

    async def _read(self, stream: Stream, conn: ServerConnection, left: float | None) -> bytes | None:
        """Bytes for the parser; b"" at EOF; None when the connection should just close."""
        if left is None:
            return await stream.receive()  # between requests: the server's idle timeout applies
        # Part of a request head is here: it must complete within request_timeout (slowloris).
        if left > 0:
            try:
                return await stream.receive(timeout=left)
            except DeadlineError:
                pass
        await stream.send(error_response(408, "request head not received in time"))
        return None


def apply_proxy_headers(scope: dict[str, Any], config: WebConfig) -> None:
    """X-Forwarded-For / -Proto from a trusted proxy set the client and scheme (as uvicorn does)."""
    client = scope.get("client")
    if not config.trusts(client[0] if client else None):
        return
    forwarded_for = forwarded_proto = None
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded_for = value
        elif name == b"x-forwarded-proto":
            forwarded_proto = value
    if forwarded_proto:
        proto = forwarded_proto.decode("latin-1").split(",")[0].strip().lower()
        if proto in ("http", "https", "ws", "wss"):
            scope["scheme"] = {"ws": "http", "wss": "https"}.get(proto, proto)
    if forwarded_for:
        hops = [h.strip() for h in forwarded_for.decode("latin-1").split(",") if h.strip()]
        # The nearest hop that is not itself a trusted proxy is the client.
        for hop in reversed(hops):
            if not config.trusts(hop):
                scope["client"] = (hop, 0)
                break
        else:
            if hops:
                scope["client"] = (hops[0], 0)
