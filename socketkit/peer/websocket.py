"""A small WebSocket client (RFC 6455) on socketkit's own Streams, with wsproto doing the framing.

Only what a mailbox client needs: connect to ws:// or wss://, send and receive text messages (each bounded
in size), answer pings, close cleanly. `ws://host:port/path` becomes `tcp://host:port`, `wss://` becomes
`tls://host:port?sni=host`; the handshake and every read are bounded in time.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection,
                            RejectData, Request, TextMessage)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from socketkit.errors import PeerError, PeerProtocolError
from socketkit.net.connect import connect
from socketkit.net.stream import Stream


def endpoint_of(url: str) -> tuple[str, str, str]:
    """(socketkit endpoint, Host header, resource) for a ws:// or wss:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise PeerError(f"bad mailbox URL {url!r}: use ws://HOST:PORT/v1 or wss://HOST/v1")
    tls = parts.scheme == "wss"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:
        raise PeerError(f"bad mailbox URL {url!r}: the port is not a number") from None
    host = parts.hostname
    literal = f"[{host}]" if ":" in host else host
    endpoint = f"{'tls' if tls else 'tcp'}://{literal}:{port}" + (f"?sni={host}" if tls and ":" not in host else "")
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default = 443 if tls else 80
    return endpoint, literal if port == default else f"{literal}:{port}", resource


class WebSocketClient:
    def __init__(self, stream: Stream, ws: WSConnection, max_message: int) -> None:
        self.stream = stream
        self._ws = ws
        self._max = max_message
        self._parts: list[str] = []
        self._size = 0
        self._closed = False

    @classmethod
    async def connect(cls, url: str, *, timeout: float = 15.0, max_message: int = 1 << 20) -> WebSocketClient:
        endpoint, host, resource = endpoint_of(url)
        stream = await connect(endpoint, timeout=timeout)
        ws = WSConnection(ConnectionType.CLIENT)
        try:
            await stream.send(ws.send(Request(host=host, target=resource)))
            with stream.deadline(timeout):
                while True:
                    data = await stream.receive(65536)
                    if not data:
                        raise PeerError(f"{url}: the server closed the connection during the WebSocket handshake")
                    ws.receive_data(data)
                    for event in ws.events():
                        if isinstance(event, AcceptConnection):
                            return cls(stream, ws, max_message)
                        if isinstance(event, (RejectConnection, RejectData)):
                            status = getattr(event, "status_code", "?")
                            raise PeerError(f"{url}: the server refused the WebSocket (HTTP {status})")
        except RemoteProtocolError as e:
            stream.abort()
            raise PeerProtocolError(f"{url}: not a WebSocket server ({e})") from None
        except BaseException:
            stream.abort()
            raise

    async def send_text(self, text: str) -> None:
        if self._closed:
            raise PeerError("the mailbox connection is closed")
        await self.stream.send(self._ws.send(TextMessage(data=text)))

    async def receive_text(self, timeout: float | None = None) -> str | None:
        """The next whole text message; None once the server closed the connection."""
        while True:
            for event in self._ws.events():
                if isinstance(event, TextMessage):
                    self._size += len(event.data)
                    if self._size > self._max:
                        await self.aclose(1009)
                        raise PeerProtocolError(f"mailbox message larger than {self._max} bytes")
                    self._parts.append(event.data)
                    if event.message_finished:
                        text = "".join(self._parts)
                        self._parts.clear()
                        self._size = 0
                        return text
                elif isinstance(event, BytesMessage):
                    continue  # the mailbox protocol is text only
                elif isinstance(event, Ping):
                    await self.stream.send(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if not self._closed:
                        self._closed = True
                        try:
                            await self.stream.send(self._ws.send(event.response()))
                        except (LocalProtocolError, Exception):  # noqa: BLE001 - the peer may be gone
                            pass
                    self.stream.close()
                    return None
            if self._closed:
                return None
            data = await self.stream.receive(65536, timeout=timeout)
            if not data:
                self._closed = True
                return None
            try:
                self._ws.receive_data(data)
            except RemoteProtocolError as e:
                self.stream.abort()
                raise PeerProtocolError(f"bad WebSocket data from the mailbox server: {e}") from None

    async def aclose(self, code: int = 1000, *, wait: bool = True) -> None:
        """Send a close frame and close; with `wait`, until the connection is gone (bounded)."""
        if not self._closed:
            self._closed = True
            try:
                await self.stream.send(self._ws.send(CloseConnection(code=code)), timeout=2)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        if wait:
            await self.stream.aclose()
        else:
            self.stream.close()  # what is buffered still goes out, then FIN


__all__ = ["WebSocketClient", "endpoint_of"]
