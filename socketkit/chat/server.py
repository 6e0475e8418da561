"""The chat service: the sans-I/O chat core wired to IRC connections (tcp://, tls://) and to browsers
(IRC over WebSocket, the IRCv3 `text.ircv3.net` subprotocol), persisted in SQLite.

The hot path, for a channel of N members: a read of one client is split into lines and fed to the core
(`ChatCore.feed`), which appends one formatted line to each recipient's queue (`Client.out`: a list
append, no object per delivery) and lists the recipient once in `core.pending`. Once per event-loop
iteration, after every read that iteration brought, `_flush` writes each pending client's queue with
one `write` (one `send` system call, or none when the socket is full): under load a client gets many
messages per system call instead of one system call per message.

Every connection, whatever its transport, is a sink the core's output is written to without waiting:
a fan-out to a channel never blocks on one slow member. Each sink's unsent bytes are bounded (`sendq`);
a client that stops reading is disconnected ("SendQ exceeded") before it can grow memory or stall
anyone else. IRC connections are callback connections (socketkit.net.callbacks): no Task and no
Stream per client, which is most of what a connected client costs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from socketkit.chat.core import AuthRequest, ChatCore, ChatLimits, Close
from socketkit.chat.core_state import Client
from socketkit.net.callbacks import CallbackServer, Connection, start_callback_server
from socketkit.net.endpoint import Endpoint
from socketkit.net.limits import Limits
from socketkit.proto.irc import MAX_LINE

log = logging.getLogger("socketkit.chat")

DEFAULT_LISTEN = ("tcp://127.0.0.1:6667", "tls://127.0.0.1:6697")
WS_SUBPROTOCOLS = ("text.ircv3.net", "binary.ircv3.net")


@dataclasses.dataclass
class ChatConfig:
    server_name: str = "irc.socketkit.local"
    network: str = "socketkit"
    motd: tuple[str, ...] = ("Welcome to socketkit chat.", "Browsers: the chat page of `socketkit up`.")
    data_dir: Path | None = None          # history.db lives here; None: history in memory only
    accounts: Any = None                  # an AccountStore (SASL PLAIN); None: the default store, lazily
    sasl: bool = True
    limits: ChatLimits = dataclasses.field(default_factory=ChatLimits)
    sendq: int = 1 << 20                  # unsent bytes per client before "SendQ exceeded"
    tick_interval: float = 0.25
    # Queued lines are written at the end of the loop iteration, but at most once per this many seconds:
    # under load each write (a system call) carries more messages; when quiet, nothing waits.
    flush_interval: float = 0.002
    backplane: str | None = None          # redis://, rediss:// or redis+sentinel:// URL to share channels
    backplane_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # see Backplane
    net_limits: Limits = dataclasses.field(default_factory=lambda: Limits(idle_timeout=None))
    utf8_only: bool = True                # UTF8ONLY: lines that are not UTF-8 are refused (FAIL INVALID_UTF8)


class IRCConnection(Connection):
    """One IRC client on tcp:// or tls://: bytes in to the core, the core's lines out."""

    __slots__ = ("service", "client", "buf", "discarding")

    def __init__(self, server: CallbackServer, service: ChatService) -> None:
        super().__init__(server)
        self.service = service
        self.client: Client | None = None
        self.buf = b""
        self.discarding = False  # the tail of an over-long line is being dropped

    def opened(self) -> None:
        self.service._opened(self)

    def received(self, data: bytes) -> None:
        self.service._received(self, data)

    def lost(self, exc: Exception | None) -> None:
        self.service._lost(self)


class WebSocketOutlet:
    """Lines for a browser: a bounded queue drained by one writer task (ASGI send awaits). One IRC line
    per WebSocket message (IRCv3 WebSocket)."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.client: Client | None = None
        self.queued = 0
        self.closing = False
        self.queue: deque[bytes | None] = deque()
        self.wakeup = asyncio.Event()

    @property
    def write_buffer_size(self) -> int:
        return self.queued

    def write(self, data: bytes) -> None:
        if self.closing:
            return
        self.queue.append(data)
        self.queued += len(data)
        self.wakeup.set()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.queue.append(None)
            self.wakeup.set()

    abort = close

    async def writer(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.queue:
                data = self.queue.popleft()
                if data is None:
                    await self.send({"type": "websocket.close", "code": 1000})
                    return
                self.queued -= len(data)
                for line in data.split(b"\r\n")[:-1]:
                    await self.send({"type": "websocket.send", "text": line.decode("utf-8", "replace")})


class ChatService:
    """One chat node: the core, its connections, the periodic tick, persistence and the backplane."""

    def __init__(self, config: ChatConfig | None = None) -> None:
        self.config = config or ChatConfig()
        cfg = self.config
        history = None
        if cfg.data_dir is not None:
            from socketkit.chat.history import SQLiteHistory

            history = SQLiteHistory(Path(cfg.data_dir) / "history.db")
        self.history = history
        self.core = ChatCore(server_name=cfg.server_name, network=cfg.network, motd=cfg.motd, limits=cfg.limits,
                             history=history, sasl=cfg.sasl, queue_output=True, utf8_only=cfg.utf8_only)
        self.outlets: dict[int, Any] = {}   # cid -> IRCConnection or WebSocketOutlet
        self.dropped = 0  # clients closed for breaking a limit: Excess Flood, SendQ exceeded
        self._ids = itertools.count(1)
        self._ticker: asyncio.Task[None] | None = None
        self._auth_tasks: set[asyncio.Task[None]] = set()
        self._accounts = cfg.accounts
        self._limiter: Any = None
        self.servers: list[CallbackServer] = []
        self.backplane: Any = None
        self._closed = False
        self._flush_at_end = False
        self._last_flush = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self, listen: Sequence[str | Endpoint] = DEFAULT_LISTEN) -> list[CallbackServer]:
        self._loop = asyncio.get_running_loop()
        if self.config.backplane:
            from socketkit.chat.backplane import Backplane

            self.backplane = Backplane(self, self.config.backplane, **self.config.backplane_options)
            await self.backplane.start()
        self._ticker = self._loop.create_task(self._tick_forever(), name="chat tick")
        if listen:
            self.servers.append(await start_callback_server(list(listen), self.connection, limits=self.config.net_limits,
                                                            name="chat", refuse_message=b"ERROR :Server is full\r\n"))
        return self.servers

    def connection(self, server: CallbackServer) -> IRCConnection:
        """The connection factory for a CallbackServer (`run` hands it to the socket layer)."""
        return IRCConnection(server, self)

    async def aclose(self, drain: float | None = 0.5) -> None:
        if self._closed:
            return
        self._closed = True
        # Tell every client why and close it; the outlets go first, so the QUITs the core relays while
        # forgetting them are not written to sockets that are closing anyway.
        outlets, self.outlets = self.outlets, {}
        for outlet in outlets.values():
            client = outlet.client
            host = client.host if client is not None else "*"
            if client is not None:
                self._write_now(outlet, client)
            outlet.write(b"ERROR :Closing Link: %s (Server shutting down)\r\n" % host.encode())
            outlet.close()
        for cid in outlets:
            self.dispatch(self.core.disconnect(cid, "Server shutting down"))
        for server in self.servers:
            await server.aclose(drain)
        if self._ticker is not None:
            self._ticker.cancel()
        for task in list(self._auth_tasks):
            task.cancel()
        if self.backplane is not None:
            await self.backplane.aclose()
        if self.history is not None:
            self.history.close()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_interval)
            try:
                self.dispatch(self.core.tick())
            except Exception:  # a bug in the core must not stop pings and fake lag for everyone
                log.exception("chat core tick failed")

    # -- the core's output ------------------------------------------------------------------------
    def dispatch(self, out: list[Any]) -> None:
        """Act on the core's items (Close, AuthRequest, backplane Events) and make sure the lines it
        queued are flushed at the end of this loop iteration."""
        for item in out:
            kind = type(item)
            if kind is Close:
                outlet = self.outlets.pop(item.cid, None)
                if outlet is not None:
                    if item.broke_limit:
                        self.dropped += 1
                    if outlet.client is not None:
                        self._write_now(outlet, outlet.client)  # its last lines (ERROR) first
                    outlet.close()
            elif kind is AuthRequest:
                self._verify(item)
            elif self.backplane is not None:
                self.backplane.publish(item)
        if self.backplane is not None:
            self.backplane.after_dispatch(out)
        if self.core.pending and not self._flush_at_end:
            self._flush_at_end = True
            loop = self._loop or asyncio.get_running_loop()
            wait = self._last_flush + self.config.flush_interval - loop.time()
            if wait > 0:  # busy: a few more messages share each client's next write
                loop.call_later(wait, self._flush)
            else:
                loop.call_soon(self._flush)

    def _write_now(self, outlet: Any, c: Client) -> None:
        out = c.out
        if out and c.remote is None:
            outlet.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _flush(self) -> None:
        """Write every pending client's queued lines, one write each; drop the ones past their SendQ."""
        self._flush_at_end = False
        self._last_flush = (self._loop or asyncio.get_running_loop()).time()
        sendq = self.config.sendq
        slow: list[Client] = []
        for c in self.core.take_pending():
            out = c.out
            if not out:
                continue
            sink = c.sink
            if sink is None:  # gone (or never a connection of ours)
                out.clear()
                continue
            sink.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            if sink.write_buffer_size > sendq:
                slow.append(c)
        for c in slow:
            outlet = self.outlets.pop(c.cid, None)
            if outlet is not None:
                log.info("chat client %s did not read: SendQ exceeded", c.cid)
                c.sink = None
                self.dropped += 1
                outlet.abort()  # what it has not read it never will: no flush, a reset
                self.dispatch(self.core.disconnect(c.cid, "SendQ exceeded"))

    def _verify(self, req: AuthRequest) -> None:
        async def check() -> None:
            account = None
            try:
                account = await self._check_password(req.username, req.password, req.cid)
            except Exception:
                log.exception("SASL verification failed")
            self.dispatch(self.core.auth_result(req.cid, account))

        task = asyncio.get_running_loop().create_task(check())
        self._auth_tasks.add(task)
        task.add_done_callback(self._auth_tasks.discard)

    async def _check_password(self, user: str, password: str, cid: int) -> Any:
        from socketkit.accounts import AccountStore, LoginLimiter, name_key, verify_async

        if self._accounts is None:
            self._accounts = AccountStore()
        if self._limiter is None:
            self._limiter = LoginLimiter()
        key = name_key(user) if user else ""
        if not self._limiter.allowed(key):
            return None
        account = await verify_async(self._accounts, user, password)
        (self._limiter.succeeded if account else self._limiter.failed)(key)
        return account.name if account else None

    # -- IRC over a byte stream (callbacks from IRCConnection) --------------------------------------
    def _attach(self, cid: int, outlet: Any) -> None:
        self.outlets[cid] = outlet
        client = self.core.clients.get(cid)
        if client is not None:
            client.sink = outlet
            outlet.client = client

    def _opened(self, conn: IRCConnection) -> None:
        cid = next(self._ids)
        peer = conn.peer
        host = peer[0] if isinstance(peer, tuple) else "localhost"
        out = self.core.connect(cid, host=host, tls=conn.tls)
        self._attach(cid, conn)
        self.dispatch(out)

    def _received(self, conn: IRCConnection, data: bytes) -> None:
        c = conn.client
        if c is None or c.closed:
            return
        if conn.buf:
            data = conn.buf + data
        lines = data.split(b"\n")
        rest = lines.pop()
        feed = self.core.feed
        for line in lines:
            if conn.discarding:  # the tail of an over-long line: dropped, already answered
                conn.discarding = False
                continue
            feed(c, line[:-1] if line[-1:] == b"\r" else line)
            if c.closed:
                break
        if len(rest) > MAX_LINE and not c.closed:
            # An over-long line: let the core answer (417), then drop it up to its end.
            if not conn.discarding:
                feed(c, rest[:MAX_LINE + 1])
            conn.discarding = True
            rest = b""
        conn.buf = rest
        self.dispatch(self.core._flush())

    def _lost(self, conn: IRCConnection) -> None:
        c = conn.client
        if c is None:
            return
        c.sink = None
        if self.outlets.get(c.cid) is conn:
            del self.outlets[c.cid]
            self.dispatch(self.core.disconnect(c.cid, "Connection closed"))

    # -- IRC over WebSocket (the browser page) ----------------------------------------------------------
    async def handle_websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        offered = scope.get("subprotocols") or []
        subprotocol = next((p for p in WS_SUBPROTOCOLS if p in offered), None)
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        cid = next(self._ids)
        outlet = WebSocketOutlet(send)
        client = scope.get("client") or ("localhost", 0)
        out = self.core.connect(cid, host=client[0], tls=scope.get("scheme") == "wss", websocket=True)
        self._attach(cid, outlet)
        self.dispatch(out)
        writer = asyncio.get_running_loop().create_task(outlet.writer())
        try:
            while cid in self.outlets:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                raw = data.encode() if data is not None else (message.get("bytes") or b"")
                # One WebSocket message is one IRC line (IRCv3 WebSocket); tolerate a trailing CRLF.
                c = outlet.client
                for line in raw.split(b"\n"):
                    line = line[:-1] if line.endswith(b"\r") else line
                    if line and c is not None and not c.closed:
                        self.core.feed(c, line[:MAX_LINE + 1])
                self.dispatch(self.core._flush())
        finally:
            if outlet.client is not None:
                outlet.client.sink = None
            if self.outlets.get(cid) is outlet:
                self.outlets.pop(cid, None)
                self.dispatch(self.core.disconnect(cid, "Connection closed"))
            outlet.close()
            try:
                await asyncio.wait_for(writer, 2)
            except (TimeoutError, Exception):  # noqa: BLE001 - the browser is gone either way
                writer.cancel()


async def start(config: ChatConfig | None = None, listen: Sequence[str | Endpoint] = DEFAULT_LISTEN) -> ChatService:
    service = ChatService(config)
    await service.start(listen)
    return service


def run(config: ChatConfig, listen: Sequence[str | Endpoint] = DEFAULT_LISTEN, *, web: Sequence[str] = (),
        user: str | None = None, loop: str = "auto", workers: int = 1) -> int:
    """Serve chat until SIGINT/SIGTERM, as `socketkit chat` does; `web` endpoints also serve the page.
    `workers` > 1 runs that many processes on the same ports, joined by the backplane (required then)."""
    import sys

    from socketkit.errors import SocketkitError
    from socketkit.net.runner import run_server

    if workers > 1 and not config.backplane:
        raise SocketkitError("--workers needs --backplane: the worker processes share channels through Redis")
    if workers > 1 and web:
        raise SocketkitError("--web serves from one process: run it without --workers (or in a node of its own)")

    async def setup():
        service = ChatService(config)
        await service.start(listen=[])
        page = None
        if web:
            from socketkit.chat.web import ChatWebApp
            from socketkit.web import WebServer
            from socketkit.web.config import WebConfig

            page = WebServer(WebConfig(app=ChatWebApp(service)))
            server = await page.start(list(web))
            for ep in server.endpoints:
                sys.stderr.write(f"chat page on {ep}\n")
                sys.stderr.flush()

        async def cleanup() -> None:
            if page is not None:
                await page.aclose(drain=0.5)
            await service.aclose()

        # Chat connections never end by themselves: close them (with an ERROR line) before the drain.
        return service.connection, cleanup, service.aclose

    return run_server(list(listen), setup, user=user, limits=config.net_limits, loop=loop, name="chat",
                      refuse_message=b"ERROR :Server is full\r\n", starter=start_callback_server, workers=workers)
