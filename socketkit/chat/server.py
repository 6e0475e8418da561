"""The chat service: the sans-I/O chat core wired to IRC connections (tcp://, tls://) and to browsers
(IRC over WebSocket, the IRCv3 `text.ircv3.net` subprotocol), persisted in SQLite.

Every connection, whatever its transport, is an `Outlet` the core's output is written to without
waiting: a fan-out to a channel never blocks on one slow member. Each outlet's unsent bytes are bounded
(`sendq`); a client that stops reading is disconnected ("SendQ exceeded") before it can grow memory or
stall anyone else.
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

from socketkit.chat.core import AuthRequest, ChatCore, ChatLimits, Close, Send
from socketkit.errors import SocketkitError
from socketkit.net.endpoint import Endpoint
from socketkit.net.limits import Limits
from socketkit.net.server import Server, start_server
from socketkit.net.stream import Stream
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
    backplane: str | None = None          # redis://host:port to share channels between nodes
    net_limits: Limits = dataclasses.field(default_factory=lambda: Limits(idle_timeout=None))


class Outlet:
    """Where the core's lines for one client go."""

    closing = False

    def write(self, line: bytes) -> bool:  # False: over the sendq bound
        raise NotImplementedError

    def close(self, reason: str) -> None:
        raise NotImplementedError


class StreamOutlet(Outlet):
    def __init__(self, stream: Stream, sendq: int) -> None:
        self.stream = stream
        self.sendq = sendq

    def write(self, line: bytes) -> bool:
        stream = self.stream
        if stream.closed:
            return True
        stream.send_nowait(line)
        return stream.write_buffer_size <= self.sendq

    def close(self, reason: str) -> None:
        self.closing = True
        self.stream.close()


class WebSocketOutlet(Outlet):
    """Lines for a browser: a bounded queue drained by one writer task (ASGI send awaits)."""

    def __init__(self, send: Any, sendq: int) -> None:
        self.send = send
        self.sendq = sendq
        self.queued = 0
        self.queue: deque[bytes | None] = deque()
        self.wakeup = asyncio.Event()

    def write(self, line: bytes) -> bool:
        if self.closing:
            return True
        self.queue.append(line)
        self.queued += len(line)
        self.wakeup.set()
        return self.queued <= self.sendq

    def close(self, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.queue.append(None)
            self.wakeup.set()

    async def writer(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.queue:
                line = self.queue.popleft()
                if line is None:
                    await self.send({"type": "websocket.close", "code": 1000})
                    return
                self.queued -= len(line)
                await self.send({"type": "websocket.send", "text": line.rstrip(b"\r\n").decode("utf-8", "replace")})


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
                             history=history, sasl=cfg.sasl)
        self.outlets: dict[int, Outlet] = {}
        self._ids = itertools.count(1)
        self._ticker: asyncio.Task[None] | None = None
        self._auth_tasks: set[asyncio.Task[None]] = set()
        self._accounts = cfg.accounts
        self._limiter: Any = None
        self.servers: list[Server] = []
        self.backplane: Any = None
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self, listen: Sequence[str | Endpoint] = DEFAULT_LISTEN) -> list[Server]:
        if self.config.backplane:
            from socketkit.chat.backplane import Backplane

            self.backplane = Backplane(self, self.config.backplane)
            await self.backplane.start()
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever(), name="chat tick")
        if listen:
            self.servers.append(await start_server(list(listen), self.handle_stream, limits=self.config.net_limits,
                                                   name="chat", refuse_message=b"ERROR :Server is full\r\n"))
        return self.servers

    async def aclose(self, drain: float | None = 0.5) -> None:
        if self._closed:
            return
        self._closed = True
        # Tell every client why and close it (which ends its handler at once, so `drain` is not spent
        # waiting for connections nobody will close); the outlets go first, so the QUITs the core
        # relays while forgetting them are not written to sockets that are closing anyway.
        outlets, self.outlets = self.outlets, {}
        for cid, outlet in outlets.items():
            client = self.core.clients.get(cid)
            host = client.host if client is not None else "*"
            outlet.write(b"ERROR :Closing Link: %s (Server shutting down)\r\n" % host.encode())
            outlet.close("Server shutting down")
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
        outlets = self.outlets
        slow: list[int] = []
        for item in out:
            kind = type(item)
            if kind is Send:
                outlet = outlets.get(item.cid)
                if outlet is not None and not outlet.write(item.line):
                    slow.append(item.cid)
            elif kind is Close:
                outlet = outlets.pop(item.cid, None)
                if outlet is not None:
                    outlet.close(item.reason)
            elif kind is AuthRequest:
                self._verify(item)
            elif self.backplane is not None:
                self.backplane.publish(item)
        for cid in slow:
            if cid in outlets:
                log.info("chat client %s did not read: SendQ exceeded", cid)
                self.dispatch(self.core.disconnect(cid, "SendQ exceeded"))
                outlet = outlets.pop(cid, None)
                if outlet is not None:
                    outlet.close("SendQ exceeded")
        if self.backplane is not None:
            self.backplane.after_dispatch(out)

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

    # -- IRC over a byte stream ---------------------------------------------------------------------
    async def handle_stream(self, stream: Stream) -> None:
        cid = next(self._ids)
        self.outlets[cid] = StreamOutlet(stream, self.config.sendq)
        peer = stream.peer
        host = peer[0] if isinstance(peer, tuple) else "localhost"
        self.dispatch(self.core.connect(cid, host=host, tls=stream.extra("ssl_object") is not None))
        buf = bytearray()
        discarding = False
        try:
            async for chunk in stream:
                buf += chunk
                start = 0
                while True:
                    end = buf.find(b"\n", start)
                    if end < 0:
                        break
                    line = bytes(buf[start:end - 1 if end > start and buf[end - 1] == 13 else end])
                    start = end + 1
                    if discarding:  # the tail of an over-long line: dropped, already answered
                        discarding = False
                        continue
                    if cid not in self.outlets:
                        return
                    self.dispatch(self.core.receive(cid, line))
                del buf[:start]
                if len(buf) > MAX_LINE:
                    # An over-long line: let the core answer (417), then drop it up to its end.
                    if not discarding:
                        self.dispatch(self.core.receive(cid, bytes(buf[:MAX_LINE + 1])))
                    discarding = True
                    buf.clear()
                if cid not in self.outlets:
                    return
        except (SocketkitError, ConnectionError):
            pass
        finally:
            if cid in self.outlets:
                self.outlets.pop(cid, None)
                self.dispatch(self.core.disconnect(cid, "Connection closed"))

    # -- IRC over WebSocket (the browser page) ----------------------------------------------------------
    async def handle_websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        offered = scope.get("subprotocols") or []
        subprotocol = next((p for p in WS_SUBPROTOCOLS if p in offered), None)
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        cid = next(self._ids)
        outlet = WebSocketOutlet(send, self.config.sendq)
        self.outlets[cid] = outlet
        client = scope.get("client") or ("localhost", 0)
        self.dispatch(self.core.connect(cid, host=client[0], tls=scope.get("scheme") == "wss", websocket=True))
        writer = asyncio.get_running_loop().create_task(outlet.writer())
        try:
            while cid in self.outlets:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                raw = data.encode() if data is not None else (message.get("bytes") or b"")
                # One WebSocket message is one IRC line (IRCv3 WebSocket); tolerate a trailing CRLF.
                for line in raw.split(b"\n"):
                    line = line[:-1] if line.endswith(b"\r") else line
                    if line:
                        self.dispatch(self.core.receive(cid, line[:MAX_LINE + 1]))
        finally:
            if self.outlets.get(cid) is outlet:
                self.outlets.pop(cid, None)
                self.dispatch(self.core.disconnect(cid, "Connection closed"))
            outlet.close("done")
            try:
                await asyncio.wait_for(writer, 2)
            except (TimeoutError, Exception):  # noqa: BLE001 - the browser is gone either way
                writer.cancel()


async def start(config: ChatConfig | None = None, listen: Sequence[str | Endpoint] = DEFAULT_LISTEN) -> ChatService:
    service = ChatService(config)
    await service.start(listen)
    return service


def run(config: ChatConfig, listen: Sequence[str | Endpoint] = DEFAULT_LISTEN, *, web: Sequence[str] = (),
        user: str | None = None, loop: str = "auto") -> int:
    """Serve chat until SIGINT/SIGTERM, as `socketkit chat` does; `web` endpoints also serve the page."""
    import sys

    from socketkit.net.runner import run_server

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
        return service.handle_stream, cleanup, service.aclose

    return run_server(list(listen), setup, user=user, limits=config.net_limits, loop=loop, name="chat",
                      refuse_message=b"ERROR :Server is full\r\n")
