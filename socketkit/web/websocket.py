"""ASGI WebSocket (spec 2.4) over RFC 6455: our HTTP/1.1 connection does the handshake, wsproto the frames.

The application runs in the connection's own task (as HTTP requests do, so server shutdown cancels it the
same way). Before `websocket.accept` nobody reads the socket; after it, the reader and keepalive tasks of
`websocket_frames.FrameSide` own the receiving side, and `receive()` takes messages from their inbox.
The HTTP side of the handshake (checks, accept key, permessage-deflate) is in `websocket_handshake`.
"""

from __future__ import annotations

import asyncio
import logging
from email.utils import formatdate
from typing import Any

from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, TextMessage

from socketkit.errors import ClosedError, SocketkitError
from socketkit.net.stream import Stream
from socketkit.proto.http1 import Request, ServerConnection, error_response
from socketkit.web import websocket_handshake as handshake
from socketkit.web.http import apply_proxy_headers
from socketkit.web.websocket_frames import CLOSED as _CLOSED
from socketkit.web.websocket_frames import OPEN_STATE as _OPEN_STATE
from socketkit.web.websocket_frames import FrameSide

log = logging.getLogger("socketkit.web")

_EXTENSIONS = {"websocket.http.response": {}}
_CONNECT = {"type": "websocket.connect"}
_CONNECTING, _RESPONDING, _OPEN = range(3)  # and _CLOSED (3), shared with FrameSide
_SERVER = (b"server", b"socketkit")


class WebSocketClosedError(ClosedError, OSError):
    """`send` on a WebSocket that is closed (ASGI 2.4: a server-specific subclass of OSError)."""


async def serve_websocket(handler: Any, stream: Stream, conn: ServerConnection, request: Request,
                          base: dict[str, Any]) -> None:
    """Called by the HTTP handler for an upgrade request with `Upgrade: websocket`."""
    try:
        key = handshake.check(request)
    except handshake.HandshakeError as e:
        await stream.send(error_response(e.status, e.reason, e.headers))
        return
    await Session(handler, stream, conn, request, base, key).run()


class Session(FrameSide):
    """One WebSocket connection: the scope, the ASGI `receive` and `send` callables, the handshake."""

    def __init__(self, handler: Any, stream: Stream, conn: ServerConnection, request: Request,
                 base: dict[str, Any], key: bytes) -> None:
        super().__init__()
        config = handler.config
        self.handler = handler
        self.config = config
        self.stream = stream
        self.conn = conn
        self.request = request
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.state = _CONNECTING
        self.max_size = config.ws_max_size
        self._connect_sent = False
        self._response: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self._head_sent = False
        self.scope = self._scope(base)

    def _scope(self, base: dict[str, Any]) -> dict[str, Any]:
        handler, request = self.handler, self.request
        scope = dict(base)
        root = handler.root_path
        scope["type"] = "websocket"
        scope["http_version"] = request.http_version
        scope["path"] = root + request.path if root else request.path
        scope["raw_path"] = handler.root_path_bytes + request.raw_path if root else request.raw_path
        scope["query_string"] = request.query
        scope["headers"] = request.headers
        scope["subprotocols"] = handshake.subprotocols(request)
        scope["extensions"] = _EXTENSIONS
        if handler.state is not None:
            scope["state"] = dict(handler.state)
        if self.config.proxy_headers:
            apply_proxy_headers(scope, self.config)
        scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"
        return scope

    # -- the application ------------------------------------------------------------------------
    async def run(self) -> None:
        # A WebSocket lives as long as its peer likes: a stopping server says so (1001, going away) at once
        # instead of waiting out its drain; the app gets websocket.disconnect once the peer answers.
        self.stream.when_stopping = self._server_stopping
        try:
            await self.handler.app(self.scope, self.receive, self.send)
        except Exception as exc:
            self._app_failed(exc)
        else:
            if self.state == _CONNECTING:
                log.error("ASGI app returned without accepting or rejecting the WebSocket %s",
                          self.scope["path"])
                self._http_error(500, "Internal Server Error")
            elif self.state == _RESPONDING:
                log.error("ASGI app returned before its denial response was complete for %s",
                          self.scope["path"])
                self.stream.abort()
            elif self.ws is not None and self.ws.state is _OPEN_STATE:
                self._start_close(1000, "")
        finally:
            self.stream.when_stopping = None
            await self.stop_frames()

    def _server_stopping(self) -> None:
        if self.ws is not None and self.ws.state is _OPEN_STATE:
            self._start_close(1001, "server shutting down")

    def _app_failed(self, exc: Exception) -> None:
        if self.state == _CONNECTING:
            log.exception("ASGI app raised an exception before accepting the WebSocket %s",
                          self.scope["path"])
            self._http_error(500, "Internal Server Error")
        elif self.state == _RESPONDING:
            log.exception("ASGI app raised an exception in its denial response for %s", self.scope["path"])
            if self._head_sent:
                self.stream.abort()  # half a response is on the wire
            else:
                self._http_error(500, "Internal Server Error")
        elif isinstance(exc, OSError) and self._disconnect is not None:
            log.debug("WebSocket app ended by the disconnect of %s", self.scope.get("client"))
        else:
            log.exception("ASGI app raised an exception on the WebSocket %s", self.scope["path"])
            if self.ws is not None and self.ws.state is _OPEN_STATE:
                self._start_close(1011, "internal error")

    def _http_error(self, status: int, reason: str) -> None:
        self.state = _CLOSED
        self._set_disconnect(1006, "")
        try:
            self.stream.send_nowait(error_response(status, reason))
        except SocketkitError:
            pass
        self.stream.close()

    # -- ASGI receive -----------------------------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        if not self._connect_sent:
            self._connect_sent = True
            return _CONNECT
        return await self.next_message()

    # -- ASGI send ------------------------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            await self._send_message(message)
        elif kind == "websocket.accept":
            await self._accept(message)
        elif kind == "websocket.close":
            if self.state == _CONNECTING:
                # ASGI: a close before accept rejects the handshake with 403.
                self._http_error(403, "WebSocket connection rejected by the application")
            elif self.state == _OPEN:
                if self.ws is not None and self.ws.state is _OPEN_STATE:
                    self._start_close(message.get("code") or 1000, message.get("reason") or "")
            elif self.state == _RESPONDING:
                raise RuntimeError("ASGI: websocket.close during a denial response")
            # Closing what is already closed is a no-op: apps often close after a disconnect.
        elif kind == "websocket.http.response.start":
            if self.state != _CONNECTING:
                raise RuntimeError("ASGI: websocket.http.response.start is only valid before accept")
            self.state = _RESPONDING
            self._response = (message["status"], list(message.get("headers") or []))
        elif kind == "websocket.http.response.body":
            await self._deny_body(message)
        else:
            raise RuntimeError(f"ASGI: unexpected message type {kind!r} on a WebSocket")

    async def _send_message(self, message: dict[str, Any]) -> None:
        if self.state != _OPEN:
            if self.state == _CONNECTING:
                raise RuntimeError("ASGI: websocket.send before websocket.accept")
            raise WebSocketClosedError("WebSocket is closed", endpoint=self.stream.endpoint)
        ws = self.ws
        assert ws is not None
        if ws.state is not _OPEN_STATE or self.stream.closed:
            raise WebSocketClosedError("WebSocket is closed", endpoint=self.stream.endpoint)
        text = message.get("text")
        if text is not None:
            data = ws.send(TextMessage(data=text))
        else:
            payload = message.get("bytes")
            if payload is None:
                raise RuntimeError("ASGI: websocket.send needs 'bytes' or 'text'")
            data = ws.send(BytesMessage(data=payload))
        try:
            await self.stream.send(data)
        except SocketkitError as e:
            raise WebSocketClosedError(f"WebSocket is closed ({e})", endpoint=self.stream.endpoint) from e

    async def _accept(self, message: dict[str, Any]) -> None:
        if self.state != _CONNECTING:
            if self.state == _CLOSED and self._disconnect is not None:
                raise WebSocketClosedError("WebSocket is closed", endpoint=self.stream.endpoint)
            raise RuntimeError("ASGI: websocket.accept sent twice or after a denial response")
        headers = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
                   (b"sec-websocket-accept", handshake.accept_key(self.key))]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            headers.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
        extensions = []
        if self.config.ws_per_message_deflate:
            deflate = handshake.negotiate_deflate(self.request, self.max_size)
            if deflate is not None:
                extensions.append(deflate[0])
                headers.append((b"sec-websocket-extensions", deflate[1]))
        if self.config.server_header:
            headers.append(_SERVER)
        headers.append((b"date", _date()))
        for name, value in message.get("headers") or ():
            if bytes(name).lower() == b"sec-websocket-protocol":
                raise RuntimeError("ASGI: set the subprotocol with the 'subprotocol' key, not a header")
            headers.append((bytes(name), bytes(value)))
        head = self.conn.response_head(101, headers)
        self.state = _OPEN
        ws = self.ws = Connection(ConnectionType.SERVER, extensions=extensions)
        try:
            await self.stream.send(head)
        except SocketkitError as e:
            self.state = _CLOSED
            self._set_disconnect(1006, "")
            raise WebSocketClosedError(f"WebSocket is closed ({e})", endpoint=self.stream.endpoint) from e
        if self.config.access_log:
            client = self.scope.get("client")
            logging.getLogger("socketkit.web.access").info(
                '%s - "WebSocket %s" 101', f"{client[0]}:{client[1]}" if client else "-", self.scope["path"])
        # Frames may have come right behind the request, in the same read.
        config = self.config
        self.start_frames(ws, self.conn.trailing_data, config.ws_ping_interval, config.ws_ping_timeout)

    async def _deny_body(self, message: dict[str, Any]) -> None:
        if self.state != _RESPONDING or self._response is None:
            raise RuntimeError("ASGI: websocket.http.response.body without a started denial response")
        conn = self.conn
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if not self._head_sent:
            self._head_sent = True
            status, headers = self._response
            if status == 101 or status < 200:
                raise RuntimeError(f"ASGI: a denial response cannot have status {status}")
            headers = [(b"date", _date()), *headers, (b"connection", b"close")]
            if self.config.server_header:
                headers.insert(1, _SERVER)
            data = conn.response_head(status, headers) + conn.body(body)
        else:
            data = conn.body(body)
        if not more:
            data += conn.end()
            self.state = _CLOSED
            self._set_disconnect(1006, "")
        try:
            await self.stream.send(data)
        except SocketkitError as e:
            raise WebSocketClosedError(f"connection is closed ({e})", endpoint=self.stream.endpoint) from e
        if not more:
            self.stream.close()


def _date() -> bytes:
    return formatdate(usegmt=True).encode()  # once per handshake: no cache needed
