"""Servers: several listeners, one handler, one `Limits`, live counters and a graceful stop.

Every connection's handler runs as a task in the server's TaskGroup, so stopping the server can never
leak a task: `aclose()` stops accepting, gives open connections `drain` seconds to finish, then closes
their streams and cancels what is left, and returns only when every handler has ended.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from socketkit.dashboard.events import emit
from socketkit.errors import ListenError
from socketkit.net.driver import Driver, inline_supported
from socketkit.net.endpoint import Endpoint, parse
from socketkit.net.limits import Limits
from socketkit.net.stream import Stream, StreamProtocol

log = logging.getLogger("socketkit.server")
Handler = Callable[[Stream], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of a server's counters."""

    open: int = 0
    accepted: int = 0
    refused: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: int = 0
    idle_closed: int = 0


class _ServerProtocol(StreamProtocol):
    __slots__ = ("server",)

    def __init__(self, stream: Stream, server: Server) -> None:
        super().__init__(stream)
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.stream._attach(transport)  # type: ignore[arg-type]
        self.server._accepted(self.stream)


class Server:
    """Listeners on one or more endpoints, all feeding one handler. Use `start_server()` to make one."""

    def __init__(
        self,
        endpoints: Sequence[str | Endpoint],
        handler: Handler,
        *,
        limits: Limits | None = None,
        refuse_message: bytes | None = None,
        name: str = "server",
        sockets: Sequence[socket.socket] = (),
        reuse_port: bool = False,
    ) -> None:
        self.requested = [parse(e) for e in endpoints]
        self.handler = handler
        self.limits = limits or Limits()
        self.refuse_message = refuse_message
        self.name = name
        self.reuse_port = reuse_port
        self._inherited = list(sockets)
        self._endpoints: list[Endpoint] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._streams: dict[Stream, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._main: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._accepting = False
        self._closed_in = 0
        self._closed_out = 0
        self.accepted = 0
        self.refused = 0
        self.errors = 0
        self.idle_closed = 0
        self._hits: dict[str, int] = {}
        self._hits_told: dict[str, float] = {}

    # -- counters -------------------------------------------------------------------------------
    @property
    def stats(self) -> Stats:
        live = list(self._streams)
        return Stats(
            open=len(live), accepted=self.accepted, refused=self.refused,
            bytes_in=self._closed_in + sum(s.bytes_in for s in live),
            bytes_out=self._closed_out + sum(s.bytes_out for s in live),
            errors=self.errors, idle_closed=self.idle_closed,
        )

    @property
    def endpoints(self) -> list[Endpoint]:
        """The endpoints really listening (port 0 replaced by the port the OS chose)."""
        return list(self._endpoints)

    @property
    def streams(self) -> list[Stream]:
        return list(self._streams)

    # -- start ----------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        self._stop = asyncio.Event()
        self._main = loop.create_task(self._run_group(ready), name=f"socketkit {self.name}")
        await ready
        try:
            for ep in self.requested:
                await self._listen(ep)
            for sock in self._inherited:
                await self._adopt(sock)
        except BaseException:
            await self.aclose(drain=0)
            raise
        self._accepting = True

    async def _run_group(self, ready: asyncio.Future[None]) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            ready.set_result(None)
            sweeper = tg.create_task(self._sweep_idle()) if self.limits.idle_timeout is not None else None
            await self._stop.wait()  # type: ignore[union-attr]
            for task in self._streams.values():
                task.cancel()
            if sweeper is not None:
                sweeper.cancel()

    def _factory(self, ep: Endpoint, cell: list[Endpoint] | None = None) -> Callable[[], asyncio.Protocol]:
        """Streams name the endpoint they came in on; `cell` lets it be set once the real port is known."""
        limits = self.limits
        cell = cell if cell is not None else [ep]

        def make() -> asyncio.Protocol:
            return _ServerProtocol(Stream(limits=limits, endpoint=cell[0]), self)

        return make

    async def _listen(self, ep: Endpoint) -> None:
        cell = [ep]
        srv, bound = await listen_on(ep, self._factory(ep, cell), limits=self.limits, reuse_port=self.reuse_port)
        self._servers.append(srv)
        self._endpoints.extend(bound)
        cell[0] = ep.with_port(bound[-1].port) if ep.port == 0 and not ep.is_unix and bound else ep

    async def _adopt(self, sock: socket.socket) -> None:
        """Serve on an already-bound listening socket (systemd socket activation, --workers)."""
        srv, ep = await adopt_listener(sock, self._factory)
        self._servers.append(srv)
        self._endpoints.append(ep)

    # -- connections ----------------------------------------------------------------------------
    def _accepted(self, stream: Stream) -> None:
        if not self._accepting or len(self._streams) >= self.limits.max_connections or self._tg is None:
            self.refused += 1
            if self._accepting:
                self._limit_hit("connections refused", "max_connections", self.limits.max_connections)
            if self.refuse_message and self._accepting:
                stream._transport.write(self.refuse_message)
            stream.close()
            return
        self.accepted += 1
        self._streams[stream] = self._tg.create_task(self._serve_one(stream))

    async def _serve_one(self, stream: Stream) -> None:
        try:
            if inline_supported():
                driver = Driver(self.handler(stream))
                stream._driver = driver
                try:
                    await driver.run()
                finally:
                    stream._driver = None
            else:
                await self.handler(stream)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not _is_disconnect(exc):
                self.errors += 1
                log.exception("%s: handler failed for %s", self.name, stream.peer)
        finally:
            stream.close()
            self._streams.pop(stream, None)
            self._closed_in += stream.bytes_in
            self._closed_out += stream.bytes_out

    async def _sweep_idle(self) -> None:
        idle = self.limits.idle_timeout
        assert idle is not None
        tick = max(0.05, min(1.0, idle / 4))
        seen: dict[Stream, tuple[int, int, int, float]] = {}
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            current: dict[Stream, tuple[int, int, int, float]] = {}
            for s in self._streams:
                if s.closed:
                    continue  # closing already (its flush is bounded by the stream itself)
                # Bytes still leaving count as activity: a long download to a slow reader is not idle.
                moved = (s.bytes_in, s.bytes_out, s.write_buffer_size)
                prev = seen.get(s)
                since = prev[3] if prev is not None and prev[:3] == moved else now
                if now - since >= idle:
                    self.idle_closed += 1
                    self._limit_hit("idle connections closed", "idle_timeout", idle)
                    s.close()
                    continue
                current[s] = (*moved, since)
            seen = current

    def _limit_hit(self, what: str, limit: str, value: object) -> None:
        """One event per second at most for the dashboard, with how many since the last (a flood of refusals
        must not flood the event log too)."""
        self._hits[what] = self._hits.get(what, 0) + 1
        now = time.monotonic()
        if now - self._hits_told.get(what, 0.0) >= 1.0:
            emit(what, service=self.name, count=self._hits.pop(what), limit=f"{limit}={value}")
            self._hits_told[what] = now

    # -- stop -----------------------------------------------------------------------------------
    async def aclose(self, drain: float | None = None) -> None:
        """Stop accepting; let handlers finish for `drain` seconds; then close and cancel the rest."""
        drain = self.limits.drain_timeout if drain is None else drain
        self._accepting = False
        for srv in self._servers:
            srv.close()
        for stream in list(self._streams):
            stream.stopping = True
            hook, stream.when_stopping = stream.when_stopping, None
            if hook is not None:  # it waits between messages: it ends now rather than after the drain
                try:
                    hook()
                except Exception:  # noqa: BLE001 - one connection's failure must not stop the rest
                    log.exception("%s: closing an idle connection failed", self.name)
        if self._streams and drain > 0:
            await asyncio.wait(list(self._streams.values()), timeout=drain)
        for stream in list(self._streams):
            # Past the drain nothing more is owed: a peer that does not read gets a reset, so no socket
            # outlives the server.
            if stream.write_buffer_size > 0:
                stream.abort()
            else:
                stream.close()
        if self._stop is not None:
            self._stop.set()
        if self._main is not None:
            try:
                await self._main
            except* Exception as group:
                log.error("%s: stopped with errors: %s", self.name, group.exceptions)
        for ep in self._endpoints:
            if ep.is_unix and not ep.is_abstract and ep.path:
                try:
                    _remove_stale_socket(ep.path)
                except ListenError:
                    pass  # someone else listens there now: their file, not ours to remove
        self._servers.clear()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def wait_stopped(self) -> None:
        if self._main is not None:
            await asyncio.shield(self._main)


def _is_disconnect(exc: BaseException) -> bool:
    from socketkit.errors import ClosedError, IncompleteReadError, PeerResetError

    # A client that leaves mid-message ends its conversation; it is not a bug in the handler.
    return isinstance(exc, (PeerResetError, ClosedError, IncompleteReadError, ConnectionError))


async def listen_on(ep: Endpoint, make: Callable[[], asyncio.BaseProtocol], *, limits: Limits,
                    reuse_port: bool = False) -> tuple[asyncio.AbstractServer, list[Endpoint]]:
    """One listener for a stream endpoint (tcp, tls, unix), `make` giving each connection its protocol: the
    asyncio server and the endpoints really bound (port 0 replaced; a host name may bind several
    addresses). Shared by Server and net/callbacks.py's CallbackServer."""
    loop = asyncio.get_running_loop()
    if ep.is_datagram:
        raise ListenError("udp:// endpoints are served with socketkit.bind(), not a stream server", endpoint=ep)
    ssl = None
    if ep.is_tls:
        from socketkit.net import tls

        ssl = tls.server_context(ep)
    try:
        if ep.is_unix:
            if not ep.is_abstract:
                _remove_stale_socket(ep.path)  # type: ignore[arg-type]
            srv = await loop.create_unix_server(make, ep.socket_path, backlog=2048, ssl=ssl)
            if ep.option("mode") and not ep.is_abstract:
                os.chmod(ep.path, int(ep.option("mode"), 8))  # type: ignore[arg-type]
            return srv, [ep]
        srv = await loop.create_server(
            make, ep.host, ep.port, backlog=2048, ssl=ssl,
            ssl_handshake_timeout=limits.handshake_timeout if ep.is_tls else None,
            reuse_port=reuse_port or ep.flag("reuse_port"), reuse_address=True,
        )
    except OSError as e:
        raise ListenError(f"cannot listen: {e.strerror or e}", endpoint=ep) from e
    bound = []
    for sock in srv.sockets:
        addr = sock.getsockname()
        bound.append(Endpoint(ep.scheme, host=addr[0], port=addr[1], options=ep.options))
    return srv, bound


async def adopt_listener(sock: socket.socket, make_for: Callable[[Endpoint], Callable[[], asyncio.BaseProtocol]]
                         ) -> tuple[asyncio.AbstractServer, Endpoint]:
    """Serve on an already-bound listening socket (systemd socket activation, --workers): the asyncio server
    and the endpoint it stands for; `make_for(endpoint)` gives the protocol factory."""
    loop = asyncio.get_running_loop()
    if sock.family == socket.AF_UNIX:
        ep = Endpoint("unix", path=sock.getsockname() or "@")
        return await loop.create_unix_server(make_for(ep), sock=sock, backlog=2048), ep
    host, port = sock.getsockname()[:2]
    ep = Endpoint("tcp", host=host, port=port)
    return await loop.create_server(make_for(ep), sock=sock, backlog=2048), ep


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a server that is gone; refuse if a live server still answers."""
    import stat

    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except OSError:
        pass  # nobody listens: stale
    else:
        raise ListenError(f"{path} is in use by a running server", endpoint=f"unix://{path}")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def start_server(
    endpoints: str | Endpoint | Iterable[str | Endpoint],
    handler: Handler,
    **options: object,
) -> Server:
    """Open the listeners and start accepting; returns the running Server."""
    if isinstance(endpoints, (str, Endpoint)):
        endpoints = [endpoints]
    server = Server(list(endpoints), handler, **options)  # type: ignore[arg-type]
    await server.start()
    return server


async def serve(
    endpoints: str | Endpoint | Iterable[str | Endpoint],
    handler: Handler,
    *,
    ready: Callable[[Server], object] | None = None,
    stop: asyncio.Event | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    starter: Callable[..., Awaitable[Server]] | None = None,
    **options: object,
) -> Server:
    """Run a server until SIGINT/SIGTERM (or `stop` is set), then stop it gracefully.

    `on_stop` runs first, before the drain: a service whose conversations never end by themselves
    (chat) says goodbye there. A second signal during the drain closes the remaining connections at once.
    `starter` replaces `start_server` (e.g. `socketkit.net.callbacks.start_callback_server`, with a
    connection factory as `handler`).
    """
    server = await (starter or start_server)(endpoints, handler, **options)
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    hurry = asyncio.Event()
    installed = []

    def on_signal() -> None:
        (hurry if stop.is_set() else stop).set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread: the caller stops us through `stop`
    try:
        if ready is not None:
            ready(server)
        await stop.wait()
        if on_stop is not None:
            await on_stop()
        closing = asyncio.ensure_future(server.aclose())
        hurried = asyncio.ensure_future(hurry.wait())
        await asyncio.wait({closing, hurried}, return_when=asyncio.FIRST_COMPLETED)
        if not closing.done():
            await server.aclose(drain=0)
            await closing
        hurried.cancel()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return server
