"""WebSocket <-> TCP: the bridge websockify is, on socketkit's Streams (used by `remote desktop` and `relay`).

A WebSocket's binary frames carry a TCP connection's bytes, unchanged, both ways. Each direction is one
task: read what the socket has (up to READ_SIZE), frame or unframe it (`socketkit.proto.wsframes`,
streaming: a frame's payload goes on as it arrives), and `send`, which waits while the far side reads
slowly. So per direction at most the reading stream's read buffer, the writing stream's write buffer and
the read in hand are held, whatever the rate: a slow browser slows the VNC server down (TCP's window),
it never grows our memory.

The WebSocket accept here is the raw one (no ASGI): the request head is read with `proto.http1`, checked
with `web.websocket_handshake`, and the 101 names `binary` when the client offers it (websockify does the
same; noVNC offers nothing). No extension is negotiated, so the bytes on the wire are the VNC bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from socketkit.errors import ClosedError, DeadlineError, PeerResetError, SocketkitError, TLSError
from socketkit.net.connect import connect
from socketkit.net.endpoint import Endpoint, parse
from socketkit.net.limits import Limits
from socketkit.net.stream import Stream
from socketkit.proto import wsframes as wf
from socketkit.proto.http1 import ConnectionClosed, Error, Request, ServerConnection, error_response
from socketkit.web import websocket_handshake as handshake

log = logging.getLogger("socketkit.wsbridge")

READ_SIZE = 256 * 1024
CLOSE_TIMEOUT = 5.0   # how long the peer gets to answer our close frame
_BROKEN = (PeerResetError, ClosedError, TLSError, ConnectionError)


# -- the HTTP side -------------------------------------------------------------------------------------
def new_connection(limits: Limits) -> ServerConnection:
    return ServerConnection(max_header_size=min(limits.max_header_size, 16 * 1024), max_headers=limits.max_headers,
                            max_body=0)


async def read_request(stream: Stream, conn: ServerConnection, timeout: float) -> Request | None:
    """The next request head within `timeout` seconds; None when the connection is to be closed (an error
    was answered, or the client went away)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    events = conn.next_request() if conn.request is not None else []
    while True:
        for event in events or ():
            if isinstance(event, Request):
                return event
            if isinstance(event, Error):
                await _answer(stream, event.status, event.reason)
                return None
            if isinstance(event, ConnectionClosed):
                return None
        if events is None:
            return None
        left = deadline - loop.time()
        try:
            # Between requests the server's idle timeout applies; once a head has begun, the request
            # timeout (a client that trickles a byte at a time is not waited for).
            data = await stream.receive(65536, timeout=left if conn.request_pending else None)
        except DeadlineError:
            await _answer(stream, 408, "request head not received in time")
            return None
        except _BROKEN:
            return None
        events = conn.receive(data)
        if not data and not events:
            return None


async def _answer(stream: Stream, status: int, reason: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    try:
        await stream.send(error_response(status, reason, list(headers)), timeout=5)
    except SocketkitError:
        pass
    stream.close()


async def refuse(stream: Stream, status: int, reason: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Answer a WebSocket request with an HTTP error and close: nothing was bridged."""
    await _answer(stream, status, reason, headers)


def check_upgrade(request: Request) -> bytes:
    """The Sec-WebSocket-Key of a valid opening handshake; raises handshake.HandshakeError otherwise."""
    return handshake.check(request)


def choose_subprotocol(request: Request) -> str | None:
    """`binary` when offered (websockify's choice, for older clients); otherwise none."""
    return "binary" if "binary" in handshake.subprotocols(request) else None


def accept_head(conn: ServerConnection, key: bytes, subprotocol: str | None) -> bytes:
    headers = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
               (b"sec-websocket-accept", handshake.accept_key(key)), (b"server", b"socketkit")]
    if subprotocol:
        headers.append((b"sec-websocket-protocol", subprotocol.encode("ascii")))
    return conn.response_head(101, headers)


# -- the bridge ----------------------------------------------------------------------------------------
class Bridge:
    """One WebSocket (`ws`) carrying one TCP connection (`tcp`). `client`: we are the WebSocket's client
    (our frames are masked, the peer's are not)."""

    def __init__(self, ws: Stream, tcp: Stream, *, client: bool = False, close_timeout: float = CLOSE_TIMEOUT,
                 read_size: int = READ_SIZE) -> None:
        self.ws = ws
        self.tcp = tcp
        self.client = client
        self.close_timeout = close_timeout
        self.read_size = read_size
        self.parser = wf.FrameParser(masked=not client)
        self.close_sent = False
        self.close_code: int | None = None   # what the WebSocket peer closed with (1006: no close frame)
        self.to_tcp = 0                      # payload bytes delivered each way
        self.to_ws = 0

    async def run(self, leftover: bytes = b"") -> None:
        """Carry bytes both ways until either side ends; then close both (after the close handshake)."""
        inbound = asyncio.create_task(self._inbound(leftover))
        outbound = asyncio.create_task(self._outbound())
        try:
            done, _ = await asyncio.wait((inbound, outbound), return_when=asyncio.FIRST_COMPLETED)
            if inbound not in done:
                # TCP ended and our close frame is out: the peer answers it, with what it still sends.
                try:
                    async with asyncio.timeout(self.close_timeout):
                        await asyncio.shield(inbound)
                except TimeoutError:
                    pass
        finally:
            for task in (inbound, outbound):
                task.cancel()
            for task in (inbound, outbound):
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - ended on purpose
                    pass
            self.tcp.close()  # what was sent still goes out, within the stream's drain bound
            self.ws.close()

    def _send_close(self, code: int, reason: str = "") -> None:
        if self.close_sent:
            return
        self.close_sent = True
        try:
            self.ws.send_nowait(wf.frame(wf.CLOSE, wf.close_payload(code, reason), client=self.client))
        except SocketkitError:
            pass

    async def _inbound(self, data: bytes) -> None:
        """WebSocket frames -> their payload on TCP; pings answered; ends with the peer's close."""
        ws, tcp, parser = self.ws, self.tcp, self.parser
        client = self.client
        size = self.read_size
        try:
            while True:
                if data:
                    try:
                        items = parser.feed(data)
                    except wf.FrameError as e:
                        log.info("WebSocket protocol error from %s: %s", ws.peer, e.reason)
                        self._send_close(e.code, e.reason)
                        self.close_code = 1006
                        return
                    for item in items:
                        kind = type(item)
                        if kind is bytes or kind is bytearray or kind is memoryview:
                            await tcp.send(item)
                            self.to_tcp += len(item)
                        elif kind is wf.Ping:
                            # A peer that pings without reading gets no pile of pongs (RFC 6455 5.5.3
                            # lets an endpoint answer only the latest).
                            if not self.close_sent and not ws.writing_paused:
                                ws.send_nowait(wf.frame(wf.PONG, item.payload, client=client))
                        elif kind is wf.Close:
                            self.close_code = item.code
                            self._send_close(item.code if item.code != 1005 else 1000)
                            return
                data = await ws.receive(size)
                if not data:
                    self.close_code = 1006
                    return
        except _BROKEN:
            self.close_code = 1006

    async def _outbound(self) -> None:
        """TCP's bytes -> binary frames; at TCP's end a close frame (1000, or 1011 when it broke)."""
        ws, tcp = self.ws, self.tcp
        size = self.read_size
        code, reason = 1000, "the server closed the connection"
        try:
            if self.client:
                while data := await tcp.receive(size):
                    key = os.urandom(4)
                    ws.send_nowait(wf.header(len(data), mask_key=key))
                    await ws.send(wf.mask(data, key))  # queued right behind its header: frames never interleave
                    self.to_ws += len(data)
            else:
                while data := await tcp.receive(size):
                    ws.send_nowait(wf.header(len(data)))
                    await ws.send(data)
                    self.to_ws += len(data)
        except _BROKEN:
            code, reason = 1011, "the connection to the server broke"
        self._send_close(code, reason)


async def bridge(ws: Stream, tcp: Stream, *, client: bool = False, leftover: bytes = b"",
                 close_timeout: float = CLOSE_TIMEOUT) -> Bridge:
    """Carry `tcp`'s bytes over the WebSocket on `ws` (already opened) and back, until one side ends."""
    b = Bridge(ws, tcp, client=client, close_timeout=close_timeout)
    await b.run(leftover)
    return b


# -- `socketkit relay ws://... tcp://...` and `socketkit relay tcp://... ws://...` ---------------------------
def is_ws_url(text: str) -> bool:
    return text.startswith(("ws://", "wss://"))


def listen_endpoint_of(url: str) -> tuple[Endpoint, str | None]:
    """`ws://HOST:PORT[/PATH]` -> (tcp://HOST:PORT, PATH); `wss://...?cert=..&key=..` -> tls:// with those
    options (no cert: the development certificate; `verify=true&ca=...`: client certificates)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    scheme = {"ws": "tcp", "wss": "tls"}[parts.scheme]
    rest = parts.netloc + (f"?{parts.query}" if parts.query else "")
    path = parts.path if parts.path not in ("", "/") else None
    return parse(f"{scheme}://{rest}"), path


def ws_listener_handler(target: str | Endpoint, *, path: str | None = None, limits: Limits | None = None,
                        connect_timeout: float = 10.0):
    """A server handler: each WebSocket (on `path`, or any path) is bridged to a new connection to `target`."""
    ep = parse(target)
    limits = limits or Limits()

    async def handle(stream: Stream) -> None:
        conn = new_connection(limits)
        request = await read_request(stream, conn, limits.request_timeout)
        if request is None:
            return
        if request.upgrade != b"websocket":
            await refuse(stream, 426, "this is a WebSocket endpoint", [(b"upgrade", b"websocket")])
            return
        if path is not None and request.path != path:
            await refuse(stream, 404, f"no WebSocket at {request.path}")
            return
        try:
            key = check_upgrade(request)
        except handshake.HandshakeError as e:
            await refuse(stream, e.status, e.reason, e.headers)
            return
        try:
            upstream = await connect(ep, timeout=connect_timeout, limits=limits)
        except SocketkitError as e:
            log.warning("relay to %s failed for %s: %s", ep, stream.peer, e)
            await refuse(stream, 502, f"cannot reach the server behind this WebSocket ({e})")
            return
        try:
            await stream.send(accept_head(conn, key, choose_subprotocol(request)))
        except SocketkitError:
            upstream.close()
            return
        await bridge(stream, upstream, leftover=conn.trailing_data)

    return handle


def ws_target_handler(url: str, *, limits: Limits | None = None, connect_timeout: float = 10.0,
                      tls_options: dict[str, str] | None = None, subprotocols: tuple[str, ...] = ("binary",)):
    """A server handler: each TCP connection is carried over a new WebSocket to `url` (ws:// or wss://)."""
    from socketkit.web.wsclient import WebSocketError, endpoint_of, open_websocket

    endpoint_of(url, tls_options)  # a bad URL fails at start, not at the first connection

    async def handle(stream: Stream) -> None:
        try:
            ws, _ = await open_websocket(url, timeout=connect_timeout, subprotocols=subprotocols,
                                         tls_options=tls_options)
        except (SocketkitError, WebSocketError) as e:
            log.warning("relay to %s failed for %s: %s", url, stream.peer, e)
            return
        await bridge(ws, stream, client=True)

    return handle


def describe(bridge_: Bridge) -> dict[str, Any]:
    return {"to_server": bridge_.to_tcp, "to_client": bridge_.to_ws, "close_code": bridge_.close_code}
