"""`socketkit remote desktop`: a VNC desktop in the browser, safe by default.

One listener serves the viewer (socketkit's own small page on noVNC's `core/rfb.js`, shipped in the
package) and, at `/websockify?token=...`, a WebSocket-to-TCP bridge to the VNC server that any noVNC page
or websockify client can use (`socketkit.web.wsbridge`: binary frames, bytes unchanged, `binary` chosen
when offered). What websockify leaves to the operator is the default here:

- loopback only unless told (`--listen`); `tls://` listeners get the development certificate when none is
  given, and `?verify=true&ca=team-ca.pem` asks every browser for a client certificate (mTLS);
- a token, made up at start and printed with the URL when none is given; a WebSocket without it is
  answered 401 (no token) or 403 (a wrong one) before anything is connected to the VNC server, and an
  address that keeps guessing is slowed down (429);
- limits: connections, idle time, bytes buffered per direction (a slow browser slows the VNC server down);
- every connection and refusal is a line in the remote audit log (`socketkit.remote.audit`).
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from socketkit.errors import SocketkitError
from socketkit.net.connect import connect
from socketkit.net.endpoint import Endpoint, parse
from socketkit.net.limits import Limits
from socketkit.net.server import Server, start_server
from socketkit.net.stream import Stream
from socketkit.proto.http1 import Request, ServerConnection
from socketkit.remote.desktop_page import StaticFiles
from socketkit.web import websocket_handshake as handshake
from socketkit.web import wsbridge

log = logging.getLogger("socketkit.remote.desktop")

DEFAULT_VNC = "tcp://127.0.0.1:5900"
DEFAULT_LISTEN = "tcp://127.0.0.1:6080"
BRIDGE_PATH = "/websockify"


@dataclasses.dataclass(frozen=True)
class DesktopLimits:
    max_connections: int = 64           # browsers (and page loads) at once
    max_bridges: int = 16               # VNC sessions at once
    idle_timeout: float = 3600.0        # a session with nothing moving either way for this long is closed
    buffer: int = 1 << 20               # bytes held per direction per stage (read buffer, write buffer)
    request_timeout: float = 15.0       # a request head must arrive within this once begun
    connect_timeout: float = 10.0       # connecting to the VNC server
    guesses: int = 10                   # wrong tokens per address before it is slowed down ...
    guess_window: float = 60.0          # ... to this many per this many seconds

    def socket_limits(self) -> Limits:
        return Limits(max_connections=self.max_connections, idle_timeout=self.idle_timeout,
                      read_buffer=self.buffer, write_buffer=self.buffer, request_timeout=self.request_timeout,
                      max_header_size=16 * 1024, max_headers=64, max_body=1)


@dataclasses.dataclass
class DesktopConfig:
    vnc: str = DEFAULT_VNC
    listen: list[str] = dataclasses.field(default_factory=lambda: [DEFAULT_LISTEN])
    token: str | None = None            # None: one is made up at start
    limits: DesktopLimits = dataclasses.field(default_factory=DesktopLimits)
    audit_log: str | Path | None = None  # None: the remote audit log under the data directory


def read_token_file(path: str | Path) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise SocketkitError(f"--token-file {path}: {e.strerror or e}") from None
    if not token:
        raise SocketkitError(f"--token-file {path} is empty")
    return token


def check_token(token: str) -> str:
    if len(token) < 8 or not all(c.isalnum() or c in "-_.~" for c in token):
        raise SocketkitError("the token must be at least 8 characters of letters, digits and -_.~ "
                             "(it travels in a URL)")
    return token


class _Guesses:
    """Wrong tokens per client address, a token bucket: `guesses` at once, then one per window/guesses."""

    def __init__(self, burst: int, window: float, max_keys: int = 10_000) -> None:
        self.burst, self.rate, self.max_keys = burst, burst / window, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def _tokens(self, key: str, now: float) -> float:
        tokens, when = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - when) * self.rate)

    def allowed(self, key: str) -> bool:
        return self._tokens(key, time.monotonic()) >= 1.0

    def failed(self, key: str) -> None:
        now = time.monotonic()
        tokens = max(0.0, self._tokens(key, now) - 1.0)
        self._buckets.pop(key, None)
        if len(self._buckets) >= self.max_keys:
            self._buckets.pop(next(iter(self._buckets)))  # the least recently failed goes
        self._buckets[key] = (tokens, now)


class DesktopService:
    """The viewer page and the bridge on one listener. `await service.start()`; `service.urls()`."""

    def __init__(self, config: DesktopConfig) -> None:
        self.config = config
        self.vnc: Endpoint = parse(config.vnc)
        if self.vnc.is_datagram:
            raise SocketkitError(f"--vnc {config.vnc}: a VNC server listens on tcp://, tls:// or unix://")
        self.generated = config.token is None
        self.token = check_token(config.token) if config.token is not None else secrets.token_urlsafe(24)
        self.limits = config.limits
        self.socket_limits = self.limits.socket_limits()
        self.files = StaticFiles()
        self.server: Server | None = None
        self._guesses = _Guesses(self.limits.guesses, self.limits.guess_window)
        self._audit: Any = None
        self.sessions = 0        # bridges open now
        self.sessions_total = 0
        self.refused = 0
        self.bytes_to_vnc = 0
        self.bytes_to_browser = 0

    # -- life ----------------------------------------------------------------------------------------
    async def start(self, listen: Sequence[str | Endpoint] | None = None) -> Server:
        self.files.load()
        self._open_audit()
        self.server = await start_server(list(listen or self.config.listen), self.handle,
                                         limits=self.socket_limits, name="desktop")
        self.audit("desktop-start", listen=[str(ep) for ep in self.server.endpoints], vnc=str(self.vnc),
                   token="generated" if self.generated else "given")
        return self.server

    async def aclose(self, drain: float | None = 2.0) -> None:
        if self.server is not None:
            await self.server.aclose(drain=drain)
        if self._audit is not None:
            self.audit("desktop-stop")
            self._audit.close()
            self._audit = None

    def _open_audit(self) -> None:
        from socketkit.remote import audit_log_path
        from socketkit.remote.audit import AuditLog

        self._audit = AuditLog(self.config.audit_log or audit_log_path())

    def audit(self, event: str, **fields: Any) -> None:
        if self._audit is not None:
            self._audit.write(event, service="desktop", **fields)

    def urls(self) -> list[str]:
        """The viewer's URL on every listener, with the token (in the fragment: it is never sent to the
        server with the page request, nor in a Referer; the page moves it into the WebSocket's query)."""
        out = []
        for ep in (self.server.endpoints if self.server is not None else []):
            if ep.is_unix:
                continue
            host = ep.host or "127.0.0.1"
            if host in ("0.0.0.0", "::"):
                host = "127.0.0.1" if host == "0.0.0.0" else "::1"
            literal = f"[{host}]" if ":" in host else host
            out.append(f"{'https' if ep.is_tls else 'http'}://{literal}:{ep.port}/#token={self.token}")
        return out

    def stats(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "sessions_total": self.sessions_total, "refused": self.refused,
                "bytes_to_vnc": self.bytes_to_vnc, "bytes_to_browser": self.bytes_to_browser}

    # -- connections ---------------------------------------------------------------------------------
    async def handle(self, stream: Stream) -> None:
        conn = wsbridge.new_connection(self.socket_limits)
        while True:
            request = await wsbridge.read_request(stream, conn, self.limits.request_timeout)
            if request is None:
                return
            if request.upgrade == b"websocket":
                await self._websocket(stream, conn, request)
                return
            if not await self.files.respond(stream, conn, request):
                return

    def _client(self, stream: Stream) -> str:
        peer = stream.peer
        return peer[0] if isinstance(peer, tuple) else "local"

    async def _refuse(self, stream: Stream, status: int, reason: str, why: str,
                      headers: list[tuple[bytes, bytes]] = ()) -> None:
        self.refused += 1
        peer = stream.peer
        self.audit("desktop-refused", client=_addr(peer), status=status, reason=why, **_tls_fields(stream))
        await wsbridge.refuse(stream, status, reason, list(headers))

    async def _websocket(self, stream: Stream, conn: ServerConnection, request: Request) -> None:
        client = self._client(stream)
        if request.path != BRIDGE_PATH:
            await self._refuse(stream, 404, f"no WebSocket here: the bridge is at {BRIDGE_PATH}", "wrong path")
            return
        if not self._guesses.allowed(client):
            await self._refuse(stream, 429, "too many wrong tokens from this address; wait a minute",
                               "too many wrong tokens", [(b"retry-after", b"60")])
            return
        tokens = parse_qs(request.query.decode("latin-1")).get("token", [])
        if not tokens:
            await self._refuse(stream, 401, "this desktop needs its token: /websockify?token=...", "no token",
                               [(b"www-authenticate", b'Token realm="socketkit desktop"')])
            return
        if len(tokens) != 1 or not hmac.compare_digest(tokens[0].encode("utf-8", "replace"), self.token.encode()):
            self._guesses.failed(client)
            await self._refuse(stream, 403, "wrong token", "wrong token")
            return
        try:
            key = wsbridge.check_upgrade(request)
        except handshake.HandshakeError as e:
            await self._refuse(stream, e.status, e.reason, f"bad handshake: {e.reason}", e.headers)
            return
        if self.sessions >= self.limits.max_bridges:
            await self._refuse(stream, 503, f"{self.limits.max_bridges} desktop sessions are open already",
                               "too many sessions")
            return
        # Only now, with the right token, does anything reach the VNC server.
        try:
            vnc = await connect(self.vnc, timeout=self.limits.connect_timeout, limits=self.socket_limits)
        except SocketkitError as e:
            await self._refuse(stream, 502, f"the VNC server {self.vnc} does not answer ({e})", f"vnc: {e}")
            return
        subprotocol = wsbridge.choose_subprotocol(request)
        try:
            await stream.send(wsbridge.accept_head(conn, key, subprotocol))
        except SocketkitError:
            vnc.close()
            return
        self.sessions += 1
        self.sessions_total += 1
        started = time.monotonic()
        self.audit("desktop-connect", client=_addr(stream.peer), vnc=str(self.vnc), subprotocol=subprotocol,
                   user_agent=_header(request, b"user-agent"), **_tls_fields(stream))
        bridge = wsbridge.Bridge(stream, vnc)
        try:
            await bridge.run(conn.trailing_data)
        finally:
            self.sessions -= 1
            self.bytes_to_vnc += bridge.to_tcp
            self.bytes_to_browser += bridge.to_ws
            self.audit("desktop-disconnect", client=_addr(stream.peer), seconds=round(time.monotonic() - started, 3),
                       bytes_to_vnc=bridge.to_tcp, bytes_to_browser=bridge.to_ws, close_code=bridge.close_code)


def _loopback(host: str | None) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return host == "localhost"


def _addr(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
    return str(peer or "local")


def _header(request: Request, name: bytes) -> str | None:
    for n, v in request.headers:
        if n == name:
            return v.decode("latin-1")[:200]
    return None


def _tls_fields(stream: Stream) -> dict[str, Any]:
    info = stream.tls
    if info is None:
        return {}
    return {"tls": info.version, "client_cert": info.peer_subject, "client_fingerprint": info.peer_fingerprint}


async def serve_desktop(config: DesktopConfig, *, out: Any = None) -> None:
    """Run until SIGINT/SIGTERM, printing the viewer's URL (with the token) when listening."""
    import sys

    from socketkit.net.loop import stop_on_signals

    out = out or sys.stderr
    service = DesktopService(config)
    server = await service.start()
    try:
        for ep in server.endpoints:
            out.write(f"listening on {ep}\n")
        out.write(f"VNC server: {service.vnc}\n")
        for url in service.urls():
            out.write(f"open the desktop: {url}\n")
        if service.generated:
            out.write("(the token was made up for this run; --token or --token-file keeps one)\n")
        for ep in server.endpoints:
            if ep.scheme == "tcp" and not _loopback(ep.host):
                out.write(f"warning: {ep} is plain HTTP beyond loopback: the token and the desktop travel "
                          "unencrypted; use tls://... (and ?verify=true&ca=... for client certificates)\n")
        out.flush()
        with stop_on_signals() as stop:
            await stop.wait()
    finally:
        await service.aclose()


async def vnc_answers(endpoint: str = DEFAULT_VNC, timeout: float = 1.0) -> bool:
    """True when a VNC server greets on `endpoint` ("RFB 003.00x")."""
    try:
        stream = await connect(endpoint, timeout=timeout)
    except (SocketkitError, OSError):
        return False
    try:
        greeting = await stream.receive(12, timeout=timeout)
        return greeting.startswith(b"RFB ")
    except (SocketkitError, OSError):
        return False
    finally:
        stream.abort()


async def start_desktop_for_up(host: str, listen_url: str | None = None, *, vnc: str = DEFAULT_VNC):
    """For `socketkit up`: (servers, notes, details). With no VNC server on `vnc`, no listener: a note says
    how to start one (the viewer would have nothing to show)."""
    # (A refused connection answers at once; the time only matters for a VNC server slow to greet, such as
    # x11vnc on a busy machine, which must not be reported absent.)
    if not await vnc_answers(vnc, timeout=3.0):
        notes = [f"no VNC server answers on {vnc}; start one, e.g. `x11vnc -localhost -display :0` "
                 "(or Xvfb :1 & x11vnc -localhost -display :1), then restart socketkit up"]
        return [], notes, None
    service = DesktopService(DesktopConfig(vnc=vnc, listen=[listen_url or f"tcp://{host}:6080"]))
    server = await service.start()
    notes = [f"desktop viewer: {url}" for url in service.urls()]
    return [server], notes, service.stats
