"""Listeners that hand over raw accepted sockets, for protocol libraries that own their connections
(asyncssh: `asyncssh.run_server(sock)`), with the socket layer keeping what it keeps for every service:
endpoint parsing, binding, the connection limit, a per-address limit, counters, and a graceful stop.

    server = await start_socket_server("tcp://127.0.0.1:2222", handler, limits=Limits(), per_address=10)
    async def handler(sock: socket.socket, peer: tuple) -> None: ...   # runs until the connection is over
    server.endpoints, server.stats; await server.aclose(drain=5)

Unlike `start_server`, nothing here reads or writes: the handler's library does. `per_address` bounds
connections from one IP address at a time (a handler may lift a connection out of that count with
`server.release(sock)`, e.g. once an SSH client authenticated: OpenSSH's MaxStartups counts the
unauthenticated ones). `on_refused(peer, limit)` hears of each connection a limit turned away ("max_connections"
or "per_address") just before it is closed, for a log line or an audit record.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from socketkit.errors import ListenError
from socketkit.net.endpoint import Endpoint, parse
from socketkit.net.limits import Limits
from socketkit.net.server import Stats

log = logging.getLogger("socketkit.net")
SocketHandler = Callable[[socket.socket, Any], Awaitable[None]]


class SocketServer:
    def __init__(self, endpoints: list[Endpoint], handler: SocketHandler, *, limits: Limits | None = None,
                 per_address: int | None = None, name: str = "server",
                 on_refused: Callable[[Any, str], None] | None = None) -> None:
        self.requested = endpoints
        self.on_refused = on_refused
        self.handler = handler
        self.limits = limits or Limits()
        self.per_address = per_address
        self.name = name
        self._listeners: list[socket.socket] = []
        self._endpoints: list[Endpoint] = []
        self._accepters: list[asyncio.Task[None]] = []
        self._conns: dict[socket.socket, asyncio.Task[None]] = {}
        self._counted: dict[socket.socket, str] = {}
        self._per_ip: collections.Counter[str] = collections.Counter()
        self.accepted = 0
        self.refused = 0
        self.errors = 0
        # the library that owns the connections counts their bytes here (the sockets are its, not ours)
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    @property
    def stats(self) -> Stats:
        return Stats(open=len(self._conns), accepted=self.accepted, refused=self.refused, bytes_in=self.bytes_in,
                     bytes_out=self.bytes_out, errors=self.errors, idle_closed=0)

    async def start(self) -> None:
        try:
            for ep in self.requested:
                self._bind(ep)
        except BaseException:
            for s in self._listeners:
                s.close()
            raise
        for s in self._listeners:
            self._accepters.append(asyncio.create_task(self._accept_loop(s), name=f"socketkit {self.name} accept"))

    def _bind(self, ep: Endpoint) -> None:
        if ep.scheme != "tcp":
            raise ListenError(f"{self.name} listens on tcp:// endpoints only", endpoint=ep)
        try:
            infos = socket.getaddrinfo(ep.host or None, ep.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise ListenError(f"cannot resolve {ep.host!r}: {e.strerror}", endpoint=ep) from e
        for family, kind, proto, _, addr in infos[:1] if ep.port == 0 else infos:
            s = socket.socket(family, kind, proto)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(addr)
                s.listen(1024)
                s.setblocking(False)
            except OSError as e:
                s.close()
                raise ListenError(f"cannot listen: {e.strerror or e}", endpoint=ep) from e
            self._listeners.append(s)
            host, port = s.getsockname()[:2]
            self._endpoints.append(Endpoint("tcp", host=host, port=port, options=ep.options))

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listener)
            except OSError as e:  # EMFILE and friends: wait a moment rather than spin
                log.warning("%s: accept failed: %s", self.name, e)
                await asyncio.sleep(0.1)
                continue
            ip = peer[0] if isinstance(peer, tuple) else ""
            full = len(self._conns) >= self.limits.max_connections
            if full or (self.per_address is not None and self._per_ip[ip] >= self.per_address):
                self.refused += 1
                if self.on_refused is not None:
                    try:
                        self.on_refused(peer, "max_connections" if full else "per_address")
                    except Exception:  # noqa: BLE001 - a reporting hook must not stop the accept loop
                        log.exception("%s: on_refused failed", self.name)
                conn.close()
                continue
            self.accepted += 1
            self._per_ip[ip] += 1
            self._counted[conn] = ip
            self._conns[conn] = asyncio.create_task(self._serve(conn, peer))

    async def _serve(self, conn: socket.socket, peer: Any) -> None:
        try:
            await self.handler(conn, peer)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one connection's failure is logged, never the server's
            self.errors += 1
            log.exception("%s: handler failed for %s", self.name, peer)
        finally:
            self.release(conn)
            self._conns.pop(conn, None)
            with contextlib.suppress(OSError):
                conn.close()

    def release(self, conn: socket.socket) -> None:
        """Stop counting `conn` against its address's limit (it stays open)."""
        ip = self._counted.pop(conn, None)
        if ip is not None:
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]

    async def aclose(self, drain: float | None = None) -> None:
        drain = self.limits.drain_timeout if drain is None else drain
        for t in self._accepters:
            t.cancel()
        for s in self._listeners:
            s.close()
        if self._conns and drain > 0:
            await asyncio.wait(list(self._conns.values()), timeout=drain)
        for task in list(self._conns.values()):
            task.cancel()
        await asyncio.gather(*self._accepters, *self._conns.values(), return_exceptions=True)
        self._accepters.clear()


async def start_socket_server(endpoints: str | Endpoint | Iterable[str | Endpoint], handler: SocketHandler,
                              **options: Any) -> SocketServer:
    if isinstance(endpoints, (str, Endpoint)):
        endpoints = [endpoints]
    server = SocketServer([parse(e) for e in endpoints], handler, **options)
    await server.start()
    return server


__all__ = ["SocketServer", "start_socket_server"]
