"""WebSocket <-> TCP: the bridge websockify is, on socketkit's Streams (used by `remote desktop` and `relay`).

A WebSocket's binary frames carry a TCP connection's bytes, unchanged, both ways. Both directions run in
the transports' callbacks (`socketkit.net.relay.Splice`): a read from TCP becomes one frame, a read from
the WebSocket is unframed (`socketkit.proto.wsframes`, streaming: a frame's payload goes on as it arrives,
whatever the frame's length) and written on. A side whose write buffer is full stops the other side's
reading, so per direction at most one write buffer and the read in hand are held, whatever the rate: a
slow browser slows the VNC server down (TCP's window), it never grows our memory.

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
from socketkit.net.relay import Splice
from socketkit.net.stream import Stream
from socketkit.proto import wsframes as wf
from socketkit.proto.http1 import ConnectionClosed, Error, Request, ServerConnection, error_response
from socketkit.web import websocket_handshake as handshake

log = logging.getLogger("socketkit.wsbridge")

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
    (our frames are masked, the peer's are not).

    Both directions run inside the transports' callbacks (`socketkit.net.relay.Splice`): a read from the
    TCP side becomes one frame, header and payload in one write; a read from the WebSocket side is
    unframed (and unmasked) and its payload written on. Profiling the task-per-direction version showed
    most of the time in copying through the streams' buffers and in task switches; here there are none.
    """

    def __init__(self, ws: Stream, tcp: Stream, *, client: bool = False, close_timeout: float = CLOSE_TIMEOUT) -> None:
        self.ws = ws
        self.tcp = tcp
        self.client = client
        self.close_timeout = close_timeout
        self.parser = wf.FrameParser(masked=not client)
        self.close_sent = False
        self.close_code: int | None = None   # what the WebSocket peer closed with (1006: no close frame)
        self.to_tcp = 0                      # payload bytes delivered each way
        self.to_ws = 0
        self._splice: Splice | None = None
        self._out: bytearray | None = None   # reused for unmasked payload (see _from_ws)
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, leftover: bytes = b"") -> None:
        """Carry bytes both ways until either side ends; then close both (after the close handshake)."""
        if leftover:
            self.ws.unreceive(leftover)
        splice = self._splice = Splice(self.ws, self.tcp, self._from_ws, self._from_tcp, self._ws_ended,
                                       self._tcp_ended)
        try:
            await splice.run()
        finally:
            if self._timer is not None:
                self._timer.cancel()
            if self.close_code is None:
                self.close_code = 1006

    def _end(self) -> None:
        assert self._splice is not None
        self._splice.close()

    def _send_close(self, code: int, reason: str = "") -> None:
        if self.close_sent:
            return
        self.close_sent = True
        assert self._splice is not None
        self._splice.write_a(wf.frame(wf.CLOSE, wf.close_payload(code, reason), client=self.client))

    # WebSocket -> TCP
    def _from_ws(self, data: bytes) -> None:
        splice = self._splice
        assert splice is not None
        # The payload of every frame in this read, unmasked into one buffer: one write per read. The
        # buffer is used again only when the last write left nothing queued (the transport then holds
        # no reference to it), so a full socket never sees its bytes change under it.
        out = self._out
        if out is None or len(out) < len(data):
            out = self._out = bytearray(max(len(data), 65536))
        try:
            filled, items = self.parser.feed_into(data, out)
        except wf.FrameError as e:
            log.info("WebSocket protocol error from %s: %s", self.ws.peer, e.reason)
            self._send_close(e.code, e.reason)
            self._end()
            return
        if filled:
            splice.write_b(memoryview(out)[:filled])
            self.to_tcp += filled
            if self.tcp.write_buffer_size:
                self._out = None
        for item in items:
            kind = type(item)
            if kind is wf.Ping:
                # A peer that pings without reading gets no pile of pongs (RFC 6455 5.5.3 lets an
                # endpoint answer only the latest).
                if not self.close_sent and not self.ws._writing_paused:
                    splice.write_a(wf.frame(wf.PONG, item.payload, client=self.client))
            elif kind is wf.Close:
                self.close_code = item.code
                self._send_close(item.code if item.code != 1005 else 1000)
                self._end()  # RFC 6455 7.1.1: the server closes TCP once the close handshake is done
                return

    def _ws_ended(self) -> None:
        if self.close_code is None:
            self.close_code = 1006  # no close frame: the browser went away
        self._end()

    # TCP -> WebSocket
    def _from_tcp(self, data: bytes) -> None:
        if self.close_sent:
            return  # a close frame is out: no data frame may follow it
        splice = self._splice
        assert splice is not None
        if self.client:
            key = os.urandom(4)
            splice.writelines_a([wf.header(len(data), mask_key=key), wf.mask(data, key)])
        else:
            splice.writelines_a([wf.header(len(data)), data])
        self.to_ws += len(data)

    def _tcp_ended(self) -> None:
        # The server is done sending: say so, and give the peer close_timeout to answer the close
        # (what it still sends meanwhile is delivered, as far as the server reads it).
        self._send_close(1000, "the server closed the connection")
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.close_timeout, self._end)


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
