"""ASGI over HTTP/2: `proto.http2.ServerConnection` (h2 + flood limits) on a Stream, one Task per request.

The connection's own handler reads: it feeds the bytes to the machine, hands request events to their
streams, and writes what the machine has to say (it waits while the peer reads slower than we write, so a
peer that floods us with frames that need an answer is slowed down, then cut off by the buckets). Each
request runs the app in its own Task (requests on one connection run side by side: that is the point of
HTTP/2) and writes its response itself, DATA frames only as far as both flow-control windows allow.

Bounded buffers, both ways: a request body is held at most one stream window deep (we widen the window
only by what the app has taken with `receive()`), and a response is never queued past the peer's window
plus the socket layer's write buffer. A stream that waits on a closed window longer than the request
timeout, or an app that reads no body for that long, is reset.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any
from urllib.parse import unquote

import h2.events
import h2.exceptions
from h2.errors import ErrorCodes

from socketkit.errors import DeadlineError, PeerResetError, SocketkitError
from socketkit.net.stream import Stream
from socketkit.proto.http2 import H2Limits, LocalProtocolError, ServerConnection, response_head
from socketkit.web.http2_stream import Request

log = logging.getLogger("socketkit.web")

_LINGER_SECONDS = 1.0  # after a GOAWAY for a broken limit: how long, and how much, the peer may still send
_LINGER_BYTES = 1 << 20

_METHODS = {m: m.decode("ascii") for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS")}


class H2Connection:
    """The I/O side of one HTTP/2 connection (see the module docstring)."""

    def __init__(self, handler: Any, stream: Stream, base: dict[str, Any]) -> None:
        self.handler = handler
        self.stream = stream
        self.base = base
        self.loop = asyncio.get_running_loop()
        config = handler.config
        limits = config.limits
        self.request_timeout = limits.request_timeout
        self.idle_timeout = limits.idle_timeout
        self.max_body = limits.max_body
        self.machine = ServerConnection(config.h2_limits or H2Limits(
            max_header_list_size=limits.max_header_size), self.loop.time())
        self.h2 = self.machine  # h2's sending methods, through the machine (see proto/http2.py)
        self.requests: dict[int, Request] = {}
        self.flush_pending = False
        self.heads: dict[tuple[Any, ...], Any] = {}  # request head -> its scope's parts (see _scope)
        self.heads_out: dict[tuple[Any, ...], Any] = {}  # response head -> its checked fields
        self.ready = self.loop.create_future()  # what `send` returns when nothing needs waiting for
        self.ready.set_result(None)

    async def run(self, initial: bytes) -> None:
        stream = self.stream
        machine = self.machine
        try:
            await stream.send(machine.start())
            data = initial
            while True:
                if data:
                    events = machine.receive(data, self.loop.time())
                    for event in events:
                        self._event(event)
                    await self.flush()
                    if machine.refused is not None:
                        refused = machine.refused
                        log.info("HTTP/2 connection from %s closed: %s", stream.peer, refused.reason)
                        await self._linger()
                        return
                data = await self._read()
                if not data:
                    return  # EOF, idle, or a header block too slow
        except (PeerResetError, ConnectionError, SocketkitError):
            return
        finally:
            for request in self.requests.values():
                request.reset = True
                request.poke()
                if request.task is not None:
                    request.task.cancel()
            tasks = [r.task for r in self.requests.values() if r.task is not None]
            if tasks:
                await asyncio.wait(tasks, timeout=1.0)
            self._write()  # a GOAWAY, say
            stream.close()

    async def _linger(self) -> None:
        """After our GOAWAY: read and drop what the peer still sends, a little while, so that the peer does
        not lose the GOAWAY that says why to a reset (see Stream.close_lingering)."""
        self._write()
        await self.stream.close_lingering(_LINGER_SECONDS, _LINGER_BYTES)

    async def _read(self) -> bytes | None:
        """The next bytes; b"" at EOF; None when the connection should close (idle, or a head too slow)."""
        machine = self.machine
        idle = False
        if machine.header_block_pending:
            timeout = self.request_timeout  # a header block split into CONTINUATIONs that never ends
        elif not self.requests:
            timeout = self.idle_timeout  # nothing asked: idle (a GOAWAY, then close)
            if self.stream.stopping:
                self._goaway()
                return None  # the server stops: an idle connection ends here
            idle = True
            self.stream.when_stopping = self._stop_idle
        else:
            timeout = None  # requests run: the server's idle sweep watches the connection
        try:
            return await self.stream.receive(timeout=timeout)
        except DeadlineError:
            try:
                self.h2.close_connection(ErrorCodes.NO_ERROR)
                await self.flush()
            except (h2.exceptions.ProtocolError, SocketkitError, ConnectionError):
                pass
            return None
        finally:
            if idle:
                self.stream.when_stopping = None

    def _goaway(self) -> None:
        """A GOAWAY that says no error, written now."""
        try:
            self.h2.close_connection(ErrorCodes.NO_ERROR)
        except h2.exceptions.ProtocolError:
            return
        self._write()

    def _stop_idle(self) -> None:
        """The server stops while nothing is asked on this connection: say GOAWAY and close it now,
        unless bytes have come in that the loop has yet to read (it ends once their requests are done)."""
        stream = self.stream
        if not stream.unread:
            self._goaway()
            stream.close()

    def _event(self, event: Any) -> None:
        kind = type(event)
        if kind is h2.events.RequestReceived:
            self._request(event)
        elif kind is h2.events.DataReceived:
            request = self.requests.get(event.stream_id)
            if request is None or request.reset:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            request.received += len(event.data)
            if request.received > self.max_body:
                self._too_large(request)
                return
            if event.data or event.flow_controlled_length:
                request.body.append((event.data, event.flow_controlled_length))
            request.poke()
        elif kind is h2.events.StreamEnded:
            request = self.requests.get(event.stream_id)
            if request is not None:
                request.ended = True
                request.poke()
        elif kind is h2.events.StreamReset:
            request = self.requests.get(event.stream_id)
            if request is not None:
                request.reset = True
                request.poke()
                if request.task is not None and not request.started:
                    request.task.cancel()  # nobody waits for its answer: do not run the app for nothing
        elif kind is h2.events.WindowUpdated or kind is h2.events.RemoteSettingsChanged:
            sid = getattr(event, "stream_id", 0)
            if sid:
                request = self.requests.get(sid)
                if request is not None:
                    request.poke()
            else:
                for request in self.requests.values():
                    request.poke()
        elif kind is h2.events.ConnectionTerminated:
            for request in self.requests.values():
                request.reset = True
                request.poke()

    def _request(self, event: Any) -> None:
        sid = event.stream_id
        scope = self._scope(event.headers, event.stream_ended is not None)
        if isinstance(scope, int):
            self._answer(sid, scope)
            return
        request = Request(self, sid, scope)
        if event.stream_ended is not None:
            request.ended = True
        self.requests[sid] = request
        # The app's first step runs right here, as a Task's first step would (in a copy of the context):
        # most requests are answered without ever waiting, and then need no Task at all. One that waits
        # goes on in a Task from where it stopped.
        coro = self._run(request)
        context = contextvars.copy_context()
        try:
            first = context.run(coro.send, None)
        except StopIteration:
            return
        request.task = self.loop.create_task(_resume(coro, first), context=context)

    def _scope(self, headers: list[tuple[bytes, bytes]], ended: bool) -> dict[str, Any] | int:
        key = tuple(headers)
        parts = self.heads.get(key)
        if parts is None:
            parts = self._head(headers)
            if len(self.heads) >= 64:
                self.heads.clear()
            self.heads[key] = parts
        if isinstance(parts, int):
            return parts
        method, scheme, path, raw_path, query, fields, promised = parts
        if ended and promised:
            return 400  # a length promised and no body sent: malformed (RFC 9113 8.1.1)
        scope = self.base.copy()
        scope["method"] = method
        scope["scheme"] = scheme
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = query
        scope["headers"] = list(fields)
        state = self.handler.state
        if state is not None:
            scope["state"] = state.copy()
        if self.handler.proxy_headers:
            from socketkit.web.http import apply_proxy_headers

            apply_proxy_headers(scope, self.handler.config)
        return scope

    def _head(self, headers: list[tuple[bytes, bytes]]) -> tuple[Any, ...] | int:
        """What a request head means for its scope (the same head again means the same), or a status."""
        method = scheme = path = authority = None
        fields = []
        cookies = []
        for name, value in headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":scheme":
                    scheme = value
                elif name == b":authority":
                    authority = value
                continue
            if name == b"cookie":
                cookies.append(value)  # HTTP/2 may split cookies; ASGI apps expect one header
                continue
            fields.append((name, value))
        if cookies:
            fields.append((b"cookie", b"; ".join(cookies)))
        if authority is not None and not any(name == b"host" for name, _ in fields):
            fields.insert(0, (b"host", authority))
        if method == b"CONNECT" or path is None:
            return 501
        if not path.startswith(b"/") and not (path == b"*" and method == b"OPTIONS"):
            return 400
        promised = False
        for name, value in fields:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_body:
                    return 413 if value.isdigit() else 400
                promised = promised or value != b"0" and int(value) > 0
        raw_path, _, query = path.partition(b"?")
        if b"#" in raw_path:
            return 400
        text = raw_path.decode("latin-1")
        root = self.handler.root_path
        decoded = unquote(text) if "%" in text else text
        return (_METHODS.get(method) or method.decode("ascii"),
                scheme.decode("ascii") if scheme in (b"http", b"https") else self.base["scheme"],
                root + decoded if root else decoded,
                self.handler.root_path_bytes + raw_path if root else raw_path,
                query, tuple(fields), promised)

    async def _run(self, request: Request) -> None:
        handler = self.handler
        handler.requests += 1
        try:
            await handler.app(request.scope, request.receive, request.send)
        except asyncio.CancelledError:
            if not request.reset:
                raise
            return
        except Exception as exc:  # noqa: BLE001 - the app's failure: logged with its request, never sent
            if not isinstance(exc, (PeerResetError, ConnectionError)):
                from socketkit.web.http_cycle import describe_request

                log.error("ASGI app raised an exception for %s", describe_request(request.scope), exc_info=exc)
            self._failed(request, "the application raised an exception")
        else:
            if not request.complete and not request.reset:
                from socketkit.web.http_cycle import describe_request

                log.error("ASGI app returned without a complete response for %s", describe_request(request.scope))
                self._failed(request, "the application sent no complete response")
        finally:
            self.requests.pop(request.sid, None)
            self.machine.ended(request.sid)
            if not self.loop.is_closed():  # (a Task left behind at the very end is closed by the GC)
                self.schedule()

    def _failed(self, request: Request, why: str) -> None:
        if request.reset or request.complete:
            return
        if not request.head_sent:
            from socketkit.web.http_cycle import error_page

            request.head_sent = True
            request.sent = 0
            self._answer(request.sid, 500, b"" if request.head else error_page(request.scope))
            request.complete = True
            self.machine.ended(request.sid)
            if self.handler.access_log:
                self.log_access(request, 500)
        else:
            self.reset(request, ErrorCodes.INTERNAL_ERROR)

    def log_access(self, request: Request, status: int) -> None:
        from socketkit.web.http_cycle import access_line, access_log

        scope = request.scope
        query = scope["query_string"]
        target = scope["raw_path"] + (b"?" + query if query else b"")
        access_log.info(access_line(scope.get("client"), scope["method"], target, "2", status,
                                    0 if request.head else request.sent, scope["headers"]))

    def _answer(self, sid: int, status: int, body: bytes | None = None) -> None:
        """A small plain-text error response of our own (the app never saw the request, or failed)."""
        from socketkit.web.http_cycle import _REASONS

        if body is None:
            body = f"{status} {_REASONS.get(status, '')}\n".encode()
        try:
            self.h2.send_headers(sid, [(b":status", b"%d" % status), (b"content-type", b"text/plain; charset=utf-8"),
                                       (b"x-content-type-options", b"nosniff"),
                                       (b"content-length", b"%d" % len(body))], end_stream=not body)
            if body:
                self.h2.send_data(sid, body, end_stream=True)
        except (h2.exceptions.ProtocolError, h2.exceptions.FlowControlError):
            self._reset_id(sid, ErrorCodes.INTERNAL_ERROR)

    def _too_large(self, request: Request) -> None:
        if not request.started and not request.head_sent:
            request.head_sent = request.complete = True
            self._answer(request.sid, 413)
        self.reset(request, ErrorCodes.CANCEL)

    def reset(self, request: Request, code: int) -> None:
        if request.reset:
            return
        request.reset = True
        self._reset_id(request.sid, code)
        self.machine.ended(request.sid)
        request.poke()

    def _reset_id(self, sid: int, code: int) -> None:
        try:
            self.h2.reset_stream(sid, code)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            pass

    def consumed(self, request: Request, flow: int) -> None:
        """The app took `flow` bytes of the body: the peer may send that much more (WINDOW_UPDATE)."""
        if flow and not request.reset:
            try:
                self.h2.acknowledge_received_data(flow, request.sid)
            except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                pass
            self.schedule()

    def send_head(self, request: Request, status: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        from socketkit.web.http_cycle import _clock, _time

        clock = _clock  # the Date (and Server) lines, once a second
        if not clock.since <= _time() < clock.until:
            clock.tick()
        lines = clock.lines if self.handler.server_header else clock.lines_no_server
        try:
            key: Any = (status, lines, *headers)
            fields = self.heads_out.get(key)
        except TypeError:  # unhashable pairs (lists): no memory of it
            key = fields = None
        if fields is None:
            try:
                fields = response_head(status, headers) + _server_fields(lines)
            except LocalProtocolError as e:
                request.head_sent = False  # (so that the failure still gets its 500)
                raise RuntimeError(f"ASGI: the response head cannot be sent: {e}") from None
            if key is not None:
                if len(self.heads_out) >= 64:
                    self.heads_out.clear()
                self.heads_out[key] = fields
        try:
            self.h2.send_headers(request.sid, fields, end_stream=end)
        except h2.exceptions.ProtocolError as e:
            raise RuntimeError(f"ASGI: the response head cannot be sent over HTTP/2: {e}") from None
        if end:
            request.finish()

    async def send_body(self, request: Request, data: bytes, end: bool) -> None:
        view = memoryview(data)
        h2conn = self.h2
        sid = request.sid
        while True:
            if request.reset:
                return
            size = len(view)
            if not size:
                if end:
                    h2conn.send_data(sid, b"", end_stream=True)
                return
            try:
                window = h2conn.local_flow_control_window(sid)
            except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                request.reset = True
                return
            if window <= 0:
                await self.flush()
                try:
                    await request._wait("the peer's flow-control window stayed closed")
                except DeadlineError:
                    self.reset(request, ErrorCodes.CANCEL)
                    return
                continue
            n = min(size, window, h2conn.max_outbound_frame_size)
            last = n == size
            h2conn.send_data(sid, view[:n].tobytes() if n < size else bytes(view), end_stream=end and last)
            view = view[n:]
            if last:
                return
            # A body of many frames: out now, and wait while the peer reads slower than we write (never
            # more than the socket layer's write buffer queued, whatever the peer's window).
            self._write()
            await self.stream.send(b"")

    def send_trailers(self, request: Request, headers: list[tuple[bytes, bytes]]) -> None:
        try:
            fields = response_head(200, headers)[1:]
        except LocalProtocolError as e:
            raise RuntimeError(f"ASGI: trailers cannot be sent: {e}") from None
        try:
            self.h2.send_headers(request.sid, fields, end_stream=True)
        except h2.exceptions.ProtocolError as e:
            raise RuntimeError(f"ASGI: trailers cannot be sent over HTTP/2: {e}") from None

    def flush(self) -> Any:
        """Have what the machine has to send written at the end of this turn of the loop (all the streams
        that answer in it share one write), and return an awaitable that waits while the peer reads slower
        than we write."""
        self.schedule()
        if self.stream.writing_paused:
            return self.stream.send(b"")
        return self.ready

    def schedule(self) -> None:
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self._write)

    def _write(self) -> None:
        self.flush_pending = False
        out = self.h2.data_to_send()
        if out and not self.stream.closed:
            try:
                self.stream.send_nowait(out)
            except (SocketkitError, ConnectionError):
                pass


def _server_fields(lines: bytes) -> list[tuple[bytes, bytes]]:
    """Date (and Server) as header fields, from the same once-a-second lines as HTTP/1.1's."""
    return [tuple(line.split(b": ", 1)) for line in lines.split(b"\r\n") if line]  # type: ignore[misc]


class _Resume:
    """Awaitable that goes on driving a coroutine whose first step ran outside any Task and stopped on
    `first` (what it waits for): the Task running this waits on `first`, then steps the coroutine on."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Any, first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Any:
        coro = self.coro
        waiting = self.first
        while True:
            try:
                value = yield waiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - cancellation and the like, handed on as they came
                try:
                    waiting = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting = coro.send(value)
                except StopIteration as stop:
                    return stop.value


async def _resume(coro: Any, first: Any) -> Any:
    return await _Resume(coro, first)


async def serve_h2(handler: Any, stream: Stream, initial: bytes, base: dict[str, Any]) -> None:
    """Serve an HTTP/2 connection: `initial` is what was read of it already (h2c: the preface onwards)."""
    await H2Connection(handler, stream, base).run(initial)
