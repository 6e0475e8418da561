"""A WebSocket client (RFC 6455) on socketkit's own Streams: ws:// and wss://, text and binary, bounded.

    ws = await WebSocketClient.connect("wss://example.org/chat", subprotocols=("v1",), max_message=1 << 20)
    await ws.send_text("hi"); await ws.send_bytes(b"...")
    message = await ws.receive()          # str or bytes, whole, at most max_message bytes; None once closed
    piece, last = await ws.receive_some() # or stream a message piece by piece, whatever its length
    await ws.aclose()

The frames are `socketkit.proto.wsframes` (sans-I/O); this module does the I/O: the opening handshake
(bounded in time and size), pings answered, the close handshake, and a few bounds: a whole message is at
most `max_message` bytes (1009 past it), a pong is not queued behind a peer that does not read. No
extensions are offered, so what is sent is what arrives. `ws://host:port/path` connects to
`tcp://host:port`, `wss://` to `tls://host:port?sni=host` (with `tls` options, e.g. `ca=...`).
"""

from __future__ import annotations

import codecs
import os
from urllib.parse import urlencode, urlsplit

from socketkit.errors import DeadlineError, IncompleteReadError, LineTooLongError, SocketkitError
from socketkit.net.connect import connect
from socketkit.net.stream import Stream
from socketkit.proto import wsframes as wf

READ_SIZE = 256 * 1024
MAX_RESPONSE_HEAD = 16 * 1024


class WebSocketError(SocketkitError):
    """The WebSocket could not be opened or was used after it closed."""


class WebSocketProtocolError(WebSocketError):
    """The server broke the protocol or a bound (a message too large)."""


def endpoint_of(url: str, tls_options: dict[str, str] | None = None, *,
                error: type[SocketkitError] = WebSocketError) -> tuple[str, str, str]:
    """(socketkit endpoint, Host header, resource) for a ws:// or wss:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise error(f"bad WebSocket URL {url!r}: use ws://HOST:PORT/PATH or wss://HOST/PATH")
    tls = parts.scheme == "wss"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:
        raise error(f"bad WebSocket URL {url!r}: the port is not a number") from None
    host = parts.hostname
    literal = f"[{host}]" if ":" in host else host
    endpoint = f"{'tls' if tls else 'tcp'}://{literal}:{port}"
    if tls:
        options = dict(tls_options or {})
        if ":" not in host:
            options.setdefault("sni", host)
        if options:
            endpoint += "?" + urlencode(options)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default = 443 if tls else 80
    return endpoint, literal if port == default else f"{literal}:{port}", resource


async def open_websocket(url: str, *, timeout: float = 15.0, subprotocols: tuple[str, ...] = (),
                         headers: tuple[tuple[str, str], ...] = (), tls_options: dict[str, str] | None = None,
                         error: type[SocketkitError] = WebSocketError) -> tuple[Stream, str | None]:
    """Connect and do the opening handshake; the stream is left right after the 101's head."""
    endpoint, host, resource = endpoint_of(url, tls_options, error=error)
    stream = await connect(endpoint, timeout=timeout)
    key = wf.new_key()
    try:
        with stream.deadline(timeout):
            await stream.send(wf.client_request(host, resource, key, subprotocols=subprotocols, headers=headers))
            try:
                head = await stream.receive_until(b"\r\n\r\n", max_size=MAX_RESPONSE_HEAD)
            except LineTooLongError:
                raise error(f"{url}: the server's response head is longer than {MAX_RESPONSE_HEAD} bytes") from None
            except IncompleteReadError:
                raise error(f"{url}: the server closed the connection during the WebSocket handshake") from None
        chosen = wf.check_response(head[:-4], key, subprotocols)
    except wf.HandshakeRefused as e:
        stream.abort()
        what = f"refused the WebSocket ({e})" if e.status not in (0, 101) else f"is not a WebSocket server ({e})"
        raise error(f"{url}: the server {what}") from None
    except BaseException:
        stream.abort()
        raise
    return stream, chosen


class WebSocketClient:
    """An open client WebSocket. Make one with `await WebSocketClient.connect(url)`."""

    #: the error types raised (a service may name its own, as socketkit.peer does)
    error: type[SocketkitError] = WebSocketError
    protocol_error: type[SocketkitError] = WebSocketProtocolError

    def __init__(self, stream: Stream, *, max_message: int = 1 << 20, subprotocol: str | None = None) -> None:
        self.stream = stream
        self.subprotocol = subprotocol
        self.max_message = max_message
        self.close_code: int | None = None   # the server's close code once it sent one
        self.close_reason = ""
        self._parser = wf.FrameParser(masked=False, text=True)
        self._pending: list[object] = []     # parsed, not yet handed out
        self._index = 0
        self._size = 0                       # bytes of the message being received
        self._text = False                   # the message being received is text
        self._decoder = None
        self._closed = False                 # our close frame went out (or the connection is gone)
        self._gone = False                   # the server closed or broke: nothing more will come

    @classmethod
    async def connect(cls, url: str, *, timeout: float = 15.0, max_message: int = 1 << 20,
                      subprotocols: tuple[str, ...] = (), headers: tuple[tuple[str, str], ...] = (),
                      tls_options: dict[str, str] | None = None) -> WebSocketClient:
        stream, chosen = await open_websocket(url, timeout=timeout, subprotocols=subprotocols, headers=headers,
                                              tls_options=tls_options, error=cls.error)
        return cls(stream, max_message=max_message, subprotocol=chosen)

    # -- sending ---------------------------------------------------------------------------------------
    async def send_text(self, text: str) -> None:
        await self._send(wf.TEXT, text.encode("utf-8"))

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        await self._send(wf.BINARY, data)

    async def send(self, message: str | bytes) -> None:
        await (self.send_text(message) if isinstance(message, str) else self.send_bytes(message))

    async def _send(self, opcode: int, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._gone:
            raise self.error("the WebSocket is closed")
        key = os.urandom(4)
        self.stream.send_nowait(wf.header(len(data), opcode, mask_key=key))
        await self.stream.send(wf.mask(data, key))  # (the header and payload are queued together)

    # -- receiving -------------------------------------------------------------------------------------
    async def receive_some(self, timeout: float | None = None) -> tuple[bytes | str, bool] | None:
        """The next piece of a message as it arrives, and whether it ends the message; None once closed.

        A text message's pieces are str (split on character boundaries); a binary one's bytes. Only the
        whole-message size is bounded here (`max_message`); streaming callers bound nothing else."""
        while True:
            item = await self._next_item(timeout)
            if item is None:
                return None
            if type(item) is wf.MessageEnd:
                text = self._text
                tail = self._decoder.decode(b"", final=True) if text else b""
                self._size = 0
                self._decoder = None
                return tail, True
            if type(item) is wf.MessageStart:
                self._text = item.text
                self._decoder = codecs.getincrementaldecoder("utf-8")() if item.text else None
                continue
            self._size += len(item)
            if self._size > self.max_message:
                await self.aclose(1009, wait=False)
                raise self.protocol_error(f"WebSocket message larger than {self.max_message} bytes")
            if self._text:
                try:
                    return self._decoder.decode(bytes(item)), False
                except UnicodeDecodeError:
                    await self.aclose(1007, wait=False)
                    raise self.protocol_error("a WebSocket text message is not UTF-8") from None
            return bytes(item), False

    async def receive(self, timeout: float | None = None) -> str | bytes | None:
        """The next whole message (str or bytes); None once the connection is closed."""
        parts: list = []
        while True:
            got = await self.receive_some(timeout)
            if got is None:
                return None
            piece, last = got
            if piece:
                parts.append(piece)
            if last:
                joiner = "" if isinstance(piece, str) else b""
                return joiner.join(parts) if parts else joiner

    async def receive_text(self, timeout: float | None = None) -> str | None:
        """The next text message (binary ones are skipped); None once the connection is closed."""
        while True:
            message = await self.receive(timeout)
            if message is None or isinstance(message, str):
                return message

    async def _next_item(self, timeout: float | None) -> object | None:
        """The next data piece or MessageEnd; control frames are dealt with here."""
        while True:
            pending = self._pending
            while self._index < len(pending):
                item = pending[self._index]
                self._index += 1
                kind = type(item)
                if kind is wf.Ping:
                    if not self._closed and not self.stream.writing_paused:  # no pile of pongs for a non-reader
                        self._write(wf.frame(wf.PONG, item.payload, client=True))
                elif kind is wf.Close:
                    self.close_code, self.close_reason = item.code, item.reason
                    if not self._closed:
                        self._closed = True
                        self._write(wf.frame(wf.CLOSE, wf.close_payload(item.code if item.code != 1005 else 1000),
                                             client=True))
                    self._gone = True
                    self.stream.close()
                    return None
                elif kind is not wf.Pong:
                    return item
            self._pending, self._index = [], 0
            if self._gone:
                return None
            try:
                data = await self.stream.receive(READ_SIZE, timeout=timeout)
            except DeadlineError:
                raise
            except SocketkitError:
                data = b""
            if not data:
                self._gone = True
                self.stream.close()
                return None
            try:
                self._pending = self._parser.feed(data)
            except wf.FrameError as e:
                await self.aclose(e.code, wait=False)
                raise self.protocol_error(f"bad WebSocket data from the server: {e.reason}") from None

    def _write(self, data: bytes) -> None:
        try:
            self.stream.send_nowait(data)
        except SocketkitError:
            self._gone = True

    async def aclose(self, code: int = 1000, *, wait: bool = True) -> None:
        """Send a close frame and close; with `wait`, until the connection is gone (bounded)."""
        if not self._closed and not self._gone:
            self._closed = True
            try:
                await self.stream.send(wf.frame(wf.CLOSE, wf.close_payload(code), client=True), timeout=2)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        self._closed = True
        if wait:
            await self.stream.aclose()
        else:
            self.stream.close()  # what is buffered still goes out, then FIN


__all__ = ["WebSocketClient", "WebSocketError", "WebSocketProtocolError", "endpoint_of", "open_websocket"]
