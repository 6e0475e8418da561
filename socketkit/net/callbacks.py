"""Servers whose connections are driven by callbacks: no Stream and no Task per connection.

For services with many long-lived connections that each move little and answer at once (chat): a
connection is one small object with `__slots__` on top of the event loop's transport (about 1.3 KiB
with uvloop, against about 4 KiB for a Stream, its handler's Task and coroutine), and bytes arrive in a
method call instead of resuming a coroutine. Everything else is the socket layer's as for `Server`:
endpoints, TLS, the connection limit (refused politely), counters, a graceful stop.

    class Echo(Connection):
        __slots__ = ()
        def received(self, data: bytes) -> None:
            self.write(data)

    server = await start_callback_server(["tcp://127.0.0.1:0"], Echo, limits=Limits())
    server.endpoints, server.stats; await server.aclose(drain=5)

A connection's own timeouts are its owner's: `Limits.idle_timeout` is not applied here (a chat server
pings its clients itself). Writes never wait: `write()` queues, `write_buffer_size` says how much is
waiting, and the owner decides what too much is (it closes or aborts the connection).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from socketkit.errors import ListenError
from socketkit.net.endpoint import Endpoint, parse
from socketkit.net.limits import Limits
from socketkit.net.server import Stats, _remove_stale_socket, adopt_listener, listen_on

log = logging.getLogger("socketkit.server")


class Connection(asyncio.Protocol):
    """One accepted connection. Subclass it and override `opened`, `received` and `lost`."""

    __slots__ = ("transport", "server", "_abort_timer", "bytes_in", "bytes_out")

    def __init__(self, server: CallbackServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self.bytes_in = 0   # this connection's own counts (the server keeps the totals)
        self.bytes_out = 0

    # -- for subclasses -------------------------------------------------------------------------
    def opened(self) -> None:
        """The connection is accepted (and within the server's limits)."""

    def received(self, data: bytes) -> None:
        """Bytes arrived."""

    def lost(self, exc: Exception | None) -> None:
        """The connection is gone (closed by either side, reset or aborted); called once."""

    # -- what a subclass can do -----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.bytes_out += len(data)
            self.server.bytes_out += len(data)
            transport.write(data)

    @property
    def write_buffer_size(self) -> int:
        transport = self.transport
        if transport is None:
            return 0
        try:
            return transport.get_write_buffer_size()
        except AttributeError:  # asyncio's closed TLS transport has no protocol left to ask
            return 0

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    @property
    def peer(self) -> Any:
        return self.transport.get_extra_info("peername") if self.transport is not None else None

    @property
    def local(self) -> Any:
        return self.transport.get_extra_info("sockname") if self.transport is not None else None

    @property
    def tls(self) -> bool:
        return self.transport is not None and self.transport.get_extra_info("ssl_object") is not None

    def close(self) -> None:
        """Close after flushing what was written; a peer that does not read gets `drain_timeout`
        seconds, then a reset. Idempotent."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        pending = self.write_buffer_size
        transport.close()
        if pending > 0:
            loop = asyncio.get_running_loop()
            self._abort_timer = loop.call_later(self.server.limits.drain_timeout, self.abort)

    def abort(self) -> None:
        """Close at once, dropping what was not sent (the peer sees a reset). Idempotent."""
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:  # linger 0: RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self.server
        if not server._accepting or len(server._conns) >= server.limits.max_connections:
            server.refused += 1
            if server.refuse_message and server._accepting:
                transport.write(server.refuse_message)  # type: ignore[attr-defined]
            transport.close()
            return  # self.transport stays None: connection_lost will not call lost()
        self.transport = transport  # type: ignore[assignment]
        server.accepted += 1
        server._conns[self] = None
        try:
            self.opened()
        except Exception:
            server._failed(self)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.server.bytes_in += len(data)
        try:
            self.received(data)
        except Exception:
            self.server._failed(self)

    def eof_received(self) -> bool:
        return False  # the peer is done: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        if self.transport is None:
            return  # refused
        server = self.server
        server._conns.pop(self, None)
        try:
            self.lost(exc)
        except Exception:
            server.errors += 1
            log.exception("%s: connection_lost failed", server.name)
        finally:
            if not server._conns and server._empty is not None:
                server._empty.set()


class CallbackServer:
    """Listeners on one or more endpoints whose connections are `factory(server)` objects (Connection
    subclasses). Use `start_callback_server()` to make one. Same surface as `Server`: `endpoints`,
    `stats`, `aclose(drain)`, `wait_stopped()`."""

    def __init__(self, endpoints: Sequence[str | Endpoint], factory: Callable[[CallbackServer], Connection], *,
                 limits: Limits | None = None, refuse_message: bytes | None = None, name: str = "server",
                 sockets: Sequence[socket.socket] = (), reuse_port: bool = False) -> None:
        self.requested = [parse(e) for e in endpoints]
        self.factory = factory
        self.limits = limits or Limits()
        self.refuse_message = refuse_message
        self.name = name
        self.reuse_port = reuse_port
        self._inherited = list(sockets)
        self._endpoints: list[Endpoint] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: dict[Connection, None] = {}
        self._accepting = False
        self._empty: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self.accepted = 0
        self.refused = 0
        self.errors = 0
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def stats(self) -> Stats:
        return Stats(open=len(self._conns), accepted=self.accepted, refused=self.refused, bytes_in=self.bytes_in,
                     bytes_out=self.bytes_out, errors=self.errors, idle_closed=0)

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    @property
    def connections(self) -> list[Connection]:
        return list(self._conns)

    async def start(self) -> None:
        self._stopped = asyncio.Event()
        try:
            for ep in self.requested:
                await self._listen(ep)
            for sock in self._inherited:
                await self._adopt(sock)
        except BaseException:
            await self.aclose(drain=0)
            raise
        self._accepting = True

    def _make(self) -> Connection:
        return self.factory(self)

    async def _listen(self, ep: Endpoint) -> None:
        srv, bound = await listen_on(ep, self._make, limits=self.limits, reuse_port=self.reuse_port)
        self._servers.append(srv)
        self._endpoints.extend(bound)

    async def _adopt(self, sock: socket.socket) -> None:
        """Serve on an already-bound listening socket (systemd socket activation, --workers)."""
        srv, ep = await adopt_listener(sock, lambda _ep: self._make)
        self._servers.append(srv)
        self._endpoints.append(ep)

    def _failed(self, conn: Connection) -> None:
        self.errors += 1
        log.exception("%s: connection handler failed for %s", self.name, conn.peer)
        conn.abort()

    async def aclose(self, drain: float | None = None) -> None:
        """Stop accepting; give open connections `drain` seconds to end; then close the rest (a reset
        for those with unsent data)."""
        drain = self.limits.drain_timeout if drain is None else drain
        self._accepting = False
        for srv in self._servers:
            srv.close()
        if self._conns and drain > 0:
            self._empty = asyncio.Event()
            try:
                await asyncio.wait_for(self._empty.wait(), drain)
            except TimeoutError:
                pass
        for conn in list(self._conns):
            if conn.write_buffer_size > 0:
                conn.abort()
            else:
                conn.close()
        for ep in self._endpoints:
            if ep.is_unix and not ep.is_abstract and ep.path:
                try:
                    _remove_stale_socket(ep.path)
                except ListenError:
                    pass
        self._servers.clear()
        if self._stopped is not None:
            self._stopped.set()

    async def wait_stopped(self) -> None:
        if self._stopped is not None:
            await self._stopped.wait()


async def start_callback_server(endpoints: str | Endpoint | Iterable[str | Endpoint],
                                factory: Callable[[CallbackServer], Connection], **options: Any) -> CallbackServer:
    """Open the listeners and start accepting; returns the running CallbackServer."""
    if isinstance(endpoints, (str, Endpoint)):
        endpoints = [endpoints]
    server = CallbackServer(list(endpoints), factory, **options)
    await server.start()
    return server


__all__ = ["CallbackServer", "Connection", "start_callback_server"]
