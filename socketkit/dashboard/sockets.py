"""The sockets themselves, like `ss -tnpi` for socketkit's own: every open connection of every service
(endpoints, protocol, age, bytes each way, idle time, what the service knows of it) and every listener
(with its backlog and limits), and a way for the operator to close one.

Idle time comes from watching the byte counters between samples (as the idle sweeper does), so the hot
path records nothing for it. A service adds what it knows to a connection by setting `stream.info`, a small
dict (the chat nick, the mail envelope in progress, "websocket", an HTTP/2 stream count); services whose
library owns the connections (remote: asyncssh) report them through their own `connections()` callable.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from socketkit.net.server import Server


def address_text(value: Any) -> str:
    """A socket address as the sockets view shows it: host:port, [v6]:port, or a path."""
    if isinstance(value, tuple) and len(value) >= 2:
        host = value[0]
        try:
            if ipaddress.ip_address(host.split("%")[0]).version == 6:
                return f"[{host}]:{value[1]}"
        except ValueError:
            pass
        return f"{host}:{value[1]}"
    return str(value or "")


class SocketWatch:
    """Keeps, per open stream, when its counters last moved; `sample(now)` once a second."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[int, int, float]] = {}

    def sample(self, servers: list[Server], now: float) -> None:
        current: dict[int, tuple[int, int, float]] = {}
        for server in servers:
            for s in getattr(server, "streams", ()):
                key = id(s)
                moved = (s.bytes_in, s.bytes_out)
                prev = self._seen.get(key)
                since = prev[2] if prev is not None and prev[:2] == moved else now
                current[key] = (*moved, since)
        self._seen = current

    def idle(self, stream: Any, now: float) -> float:
        prev = self._seen.get(id(stream))
        return max(0.0, now - prev[2]) if prev is not None else 0.0


def describe_stream(stream: Any, now: float, watch: SocketWatch) -> dict[str, Any]:
    try:
        ssl_info = stream.tls
    except Exception:  # noqa: BLE001 - a stream torn down under us
        ssl_info = None
    endpoint = getattr(stream, "endpoint", None)
    scheme = getattr(endpoint, "scheme", "tcp")
    proto = "unix" if scheme == "unix" else "tcp"
    if ssl_info is not None:
        proto = f"tls {ssl_info.version or ''} {ssl_info.cipher or ''}".strip()
    raw = getattr(stream, "info", None)
    if callable(raw):  # a service that describes its connection when asked (mail: the envelope in progress)
        try:
            raw = raw()
        except Exception:  # noqa: BLE001 - a status page never breaks a connection
            raw = None
    info = dict(raw or {})
    if info.get("protocol"):
        proto = f"{info.pop('protocol')} over {proto}"
    try:
        local, peer = stream.local, stream.peer
    except Exception:  # noqa: BLE001
        local = peer = None
    return {
        "id": id(stream), "local": address_text(local), "peer": address_text(peer), "protocol": proto,
        "age": round(now - getattr(stream, "opened_at", now), 1), "bytes_in": stream.bytes_in,
        "bytes_out": stream.bytes_out, "idle": round(watch.idle(stream, now), 1), "info": info,
    }


def listeners(server: Any) -> list[dict[str, Any]]:
    limits = getattr(server, "limits", None)
    out = []
    for ep in getattr(server, "endpoints", ()):
        row: dict[str, Any] = {"endpoint": str(ep), "backlog": 2048 if isinstance(server, Server) else 1024}
        if limits is not None:
            row["limits"] = {"max_connections": limits.max_connections, "idle_timeout": limits.idle_timeout}
        out.append(row)
    return out


def service_sockets(running: Any, now: float, watch: SocketWatch) -> dict[str, Any]:
    """One service's listeners and open connections, busiest (most bytes) first."""
    conns: list[dict[str, Any]] = []
    for server in running.servers:
        for s in getattr(server, "streams", ()):
            conns.append(describe_stream(s, now, watch))
    extra = getattr(running, "connections", None)
    if extra is not None:
        conns += extra()
    conns.sort(key=lambda c: -(c.get("bytes_in", 0) + c.get("bytes_out", 0)))
    return {"name": running.name, "listeners": [row for server in running.servers for row in listeners(server)],
            "connections": conns}


def close_connection(runnings: list[Any], service: str, conn_id: int | str) -> bool:
    """Close one connection the operator picked; True if it was found."""
    for running in runnings:
        if running.name != service:
            continue
        for server in running.servers:
            for s in getattr(server, "streams", ()):
                if id(s) == conn_id:
                    s.close()
                    return True
        closer = getattr(running, "close_connection", None)
        if closer is not None:
            return bool(closer(conn_id))
    return False


__all__ = ["SocketWatch", "close_connection", "describe_stream", "listeners", "service_sockets"]
