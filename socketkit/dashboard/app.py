"""The dashboard's ASGI app: the page, its JSON API, the live stream (SSE), /metrics, and the services'
own pages mounted under it (/mail, /chat ...).

    /                     the page (static/index.html, app.js, style.css; uPlot shipped in static/vendor)
    /api/status           every service: endpoints and counters
    /api/series?span=15m  the time series (15m at 1 s, 24h at 1 min)
    /api/sockets          listeners and open connections per service;  POST /api/close {service, id}
    /api/events?since=N   the event log
    /api/live             text/event-stream: a "tick" each second (the newest point) and each new event
    /metrics              Prometheus text exposition

Access: loopback clients only, unless a token is set (`?token=` once sets a cookie; `Authorization: Bearer`
works for scrapers) or the listener verifies client certificates (mTLS): then anyone who shows either.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from socketkit.dashboard.core import Dashboard
from socketkit.dashboard.metrics import exposition
from socketkit.web.lifespan import answer_lifespan

STATIC = Path(__file__).resolve().parent / "static"
_COMMON = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer")]
_PAGE_HEADERS = [(b"content-security-policy",
                  b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                  b"connect-src 'self'; frame-ancestors 'none'")]


@dataclass
class Mount:
    prefix: str
    app: Any
    title: str


def _loopback(client: Any) -> bool:
    host = client[0] if client else ""
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.") or host.startswith("::ffff:127.")


class DashboardApp:
    def __init__(self, dash: Dashboard, *, token: str | None = None, client_certs: bool = False,
                 live_timeout: float = 10.0) -> None:
        self.dash = dash
        self.token = token
        # True when every listener of this app verifies client certificates (tls://...?verify=true&ca=...):
        # whoever got through the handshake is a client the operator issued a certificate to.
        self.client_certs = client_certs
        self.mounts: list[Mount] = []
        self.links: list[tuple[str, str]] = []   # pages on other listeners (the desktop viewer)
        self.live_timeout = live_timeout
        self._live: set[asyncio.Event] = set()

    def mount(self, prefix: str, app: Any, title: str) -> None:
        self.mounts.append(Mount("/" + prefix.strip("/"), app, title))

    def close(self) -> None:
        """End the live streams (they would hold the web server's drain)."""
        for ended in list(self._live):
            ended.set()

    # -- access -----------------------------------------------------------------------------------
    def _allowed(self, scope: dict[str, Any]) -> tuple[bool, bytes | None]:
        """(allowed, a Set-Cookie value to send)."""
        if self.client_certs:
            return True, None
        if self.token is None:
            return _loopback(scope.get("client")), None
        headers = dict(scope.get("headers") or [])
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        auth = headers.get(b"authorization", b"").decode("latin-1")
        cookie = headers.get(b"cookie", b"").decode("latin-1")
        for candidate in (given, auth.removeprefix("Bearer ").strip(),
                          *[c.strip().removeprefix("socketkit_dashboard=") for c in cookie.split(";")
                            if c.strip().startswith("socketkit_dashboard=")]):
            if candidate and hmac.compare_digest(candidate.encode(), self.token.encode()):
                return True, (f"socketkit_dashboard={self.token}; HttpOnly; SameSite=Strict; Path=/".encode()
                              if given else None)
        return False, None

    # -- ASGI -------------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        allowed, cookie = self._allowed(scope)
        if not allowed:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _respond(send, 403, "text/plain; charset=utf-8",
                               b"forbidden: the dashboard answers loopback clients, or a token / client certificate\n")
            return
        path = scope.get("path", "/")
        for m in self.mounts:
            if path == m.prefix or path.startswith(m.prefix + "/"):
                sub = dict(scope)
                sub["root_path"] = scope.get("root_path", "") + m.prefix
                await m.app(sub, receive, send)
                return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        extra = [(b"set-cookie", cookie)] if cookie else []
        method = scope.get("method", "GET")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if path == "/api/live":
            # from the page's last known event (0: all kept), else from now
            since = int(query["since"][0] or 0) if "since" in query else self.dash.events.last_id
            await self._live_stream(receive, send, since)
        elif path == "/api/close" and method == "POST":
            await self._close(receive, send)
        elif method not in ("GET", "HEAD"):
            await _respond(send, 405, "text/plain; charset=utf-8", b"method not allowed\n", [(b"allow", b"GET, HEAD")])
        elif path == "/":
            await _respond(send, 200, "text/html; charset=utf-8", (STATIC / "index.html").read_bytes(),
                           extra + _PAGE_HEADERS)
        elif path.startswith("/static/"):
            await self._static(send, path[len("/static/"):])
        elif path == "/api/status":
            await _json(send, {"services": self.dash.status(), "pages": [
                {"href": m.prefix.lstrip("/") + "/", "title": m.title} for m in self.mounts] + [
                {"href": href, "title": title} for href, title in self.links], "started": self.dash.started})
        elif path == "/api/series":
            await _json(send, self.dash.series.view(query.get("span", ["15m"])[0]))
        elif path == "/api/sockets":
            await _json(send, {"services": self.dash.sockets(query.get("service", [None])[0])})
        elif path == "/api/events":
            await _json(send, {"events": self.dash.events.since(int(query.get("since", ["0"])[0] or 0), 200)})
        elif path == "/metrics":
            body, ctype = exposition(self.dash.status)
            await _respond(send, 200, ctype, body)
        else:
            await _respond(send, 404, "text/plain; charset=utf-8", b"not found\n")

    async def _static(self, send: Any, name: str) -> None:
        target = (STATIC / name).resolve()
        if STATIC not in target.parents or not target.is_file():
            await _respond(send, 404, "text/plain; charset=utf-8", b"not found\n")
            return
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        await _respond(send, 200, ctype, target.read_bytes(), cache="public, max-age=3600")

    async def _close(self, receive: Any, send: Any) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if len(body) > 4096:
                await _respond(send, 413, "text/plain; charset=utf-8", b"too large\n")
                return
            if not msg.get("more_body"):
                break
        try:
            req = json.loads(body)
            conn_id = req["id"]  # as /api/sockets gave it: a number, or a string (remote's connection ids)
            if isinstance(conn_id, bool) or not isinstance(conn_id, (int, str)) or len(str(conn_id)) > 64:
                raise TypeError(conn_id)
            done = self.dash.close(str(req["service"]), conn_id)
        except (ValueError, KeyError, TypeError):
            await _respond(send, 400, "text/plain; charset=utf-8", b"want {\"service\": NAME, \"id\": N}\n")
            return
        await _json(send, {"closed": done}, 200 if done else 404)

    async def _live_stream(self, receive: Any, send: Any, since: int) -> None:
        ended = asyncio.Event()
        self._live.add(ended)
        watcher = asyncio.ensure_future(_until_disconnect(receive, ended))
        last = since
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"x-accel-buffering", b"no"), *_COMMON]})
            chunk = b"retry: 2000\n: connected\n\n"
            while not ended.is_set():
                async with asyncio.timeout(self.live_timeout):  # a client that does not read is dropped
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                ticked = await self.dash.next_tick(5.0)
                if self.dash.stopped:
                    break  # no more ticks: the stream ends (it must not hold the web server's drain)
                parts = []
                if ticked:
                    parts.append(b"event: tick\ndata: " + json.dumps(self.dash.latest()).encode() + b"\n\n")
                for event in self.dash.events.since(last):
                    last = event["id"]
                    parts.append(f"event: event\nid: {last}\ndata: {json.dumps(event)}\n\n".encode())
                chunk = b"".join(parts) or b": heartbeat\n\n"
        except TimeoutError:
            raise ConnectionAbortedError("dashboard live stream: client too slow, dropped") from None
        except Exception as e:  # noqa: BLE001 - the client went away while we were writing
            raise ConnectionAbortedError("dashboard live stream: client gone") from e
        finally:
            self._live.discard(ended)
            watcher.cancel()
        try:
            async with asyncio.timeout(1.0):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception as e:  # noqa: BLE001
            raise ConnectionAbortedError("dashboard live stream: client gone") from e


async def _until_disconnect(receive: Any, ended: asyncio.Event) -> None:
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    finally:
        ended.set()


async def _json(send: Any, obj: Any, status: int = 200) -> None:
    await _respond(send, status, "application/json", json.dumps(obj).encode())


async def _respond(send: Any, status: int, ctype: str, body: bytes, extra: list[tuple[bytes, bytes]] | None = None,
                   cache: str = "no-store") -> None:
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
               (b"cache-control", cache.encode()), (b"x-content-type-options", b"nosniff"),
               (b"referrer-policy", b"no-referrer"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = ["DashboardApp"]
