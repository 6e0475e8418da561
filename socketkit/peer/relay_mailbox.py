"""The mailbox server as a service: `proto.wormhole_server` behind socketkit's ASGI WebSocket server, at /v1.

Each WebSocket is one connection of the sans-I/O machine. Its answers are written through an `Outlet`: a
queue drained by one writer task, so a message added to a mailbox fans out to every listener without
waiting for any of them; a client whose unsent messages pass `sendq` bytes is disconnected. What the
machine changed is written to SQLite (`relay_store`) before the answers go out.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from socketkit.proto.wormhole_server import MailboxServer, Send
from socketkit.web.lifespan import answer_lifespan

if TYPE_CHECKING:
    from socketkit.peer.relay_store import RelayStore

log = logging.getLogger("socketkit.peer.relay")

PATHS = ("/v1", "/v1/")
_PAGE = b"Wormhole Relay (socketkit): connect a magic-wormhole client to ws://HOST:PORT/v1\n"


class Outlet:
    """Texts for one WebSocket: a bounded queue and the task that writes it."""

    def __init__(self, send: Any, sendq: int) -> None:
        self.send = send
        self.sendq = sendq
        self.queued = 0
        self.queue: deque[str | None] = deque()
        self.wakeup = asyncio.Event()
        self.closing = False

    def write(self, text: str) -> bool:
        """Queue `text`; False once the client is `sendq` bytes behind (it is then to be dropped).

        One message alone never counts as behind, whatever its size: only a backlog does."""
        if self.closing:
            return True
        self.queue.append(text)
        self.queued += len(text)
        self.wakeup.set()
        return self.queued <= self.sendq or len(self.queue) == 1

    def close(self, code: int = 1000, reason: str = "", *, drop: bool = False) -> None:
        """Close after what is queued (`drop`: instead of it, for a client too far behind)."""
        if not self.closing:
            self.closing = True
            self.code, self.reason = code, reason
            if drop:
                self.queue.clear()
                self.queued = 0
            self.queue.append(None)
            self.wakeup.set()

    async def writer(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.queue:
                text = self.queue.popleft()
                if text is None:
                    await self.send({"type": "websocket.close", "code": self.code, "reason": self.reason})
                    return
                self.queued -= len(text)
                await self.send({"type": "websocket.send", "text": text})


class MailboxService:
    """The ASGI app of the mailbox server (WebSocket at /v1, a one-line page at /), with its counters."""

    def __init__(self, server: MailboxServer, store: RelayStore | None, *, sendq: int, per_address: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.server = server
        self.store = store
        self.sendq = sendq
        self.per_address = per_address
        self.clock = clock
        self.outlets: dict[int, Outlet] = {}
        self._addresses: dict[str, int] = {}
        self._ids = itertools.count(1)
        self.refused = 0          # WebSockets turned away (too many from one address)
        self.dropped = 0          # clients disconnected for not reading (sendq)
        self.store_errors = 0

    # -- output and persistence -------------------------------------------------------------------
    def dispatch(self, out: list[Send]) -> None:
        self.persist()
        outlets = self.outlets
        slow = []
        for cid, text in out:
            outlet = outlets.get(cid)
            if outlet is not None and not outlet.write(text):
                slow.append(cid)
        for cid in slow:
            outlet = outlets.get(cid)
            if outlet is not None and not outlet.closing:
                log.info("mailbox client %s did not read its messages: disconnected", cid)
                self.dropped += 1
                # Its handler ends at its next message, or when it misses a ping (it reads nothing).
                outlet.close(1008, "too far behind", drop=True)

    def persist(self) -> None:
        changes = self.server.take_changes()
        if changes and self.store is not None:
            try:
                self.store.apply(changes)
            except (sqlite3.Error, ValueError) as e:  # the service goes on from memory; a restart loses this
                self.store_errors += 1
                log.error("relay database write failed: %s", e)

    def prune(self) -> None:
        self.dispatch(self.server.prune(self.clock()))

    async def prune_forever(self, interval: float, keep_usage: int) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.prune()
                if self.store is not None:
                    self.store.trim_usage(keep_usage)
            except Exception:  # a bug here must not stop expiry for good
                log.exception("mailbox prune failed")

    def close_all(self) -> None:
        """Server shutdown: every client is told (1001), so it reconnects later with its state kept."""
        for outlet in self.outlets.values():
            outlet.close(1001, "server shutting down")

    def stats(self) -> dict[str, int]:
        return {**self.server.stats(), "websockets": len(self.outlets), "ws_refused": self.refused,
                "ws_dropped": self.dropped, "store_errors": self.store_errors}

    # -- ASGI -------------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            found = scope["path"] == "/"
            body = _PAGE if found else b"not found\n"
            await send({"type": "http.response.start", "status": 200 if found else 404, "headers": [
                (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})
        elif kind == "lifespan":
            await answer_lifespan(receive, send)

    async def _websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        client = scope.get("client") or ("", None)
        host, port = client[0], client[1]
        if scope["path"] not in PATHS or self._addresses.get(host, 0) >= self.per_address:
            if scope["path"] in PATHS:
                self.refused += 1
            await send({"type": "websocket.close", "code": 1008})  # before accept: an HTTP 403
            return
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        cid = next(self._ids)
        outlet = self.outlets[cid] = Outlet(send, self.sendq)
        self._addresses[host] = self._addresses.get(host, 0) + 1
        writer = asyncio.get_running_loop().create_task(outlet.writer(), name=f"mailbox client {cid}")
        server = self.server
        try:
            self.dispatch(server.connect(cid, self.clock(), host, port))
            while not outlet.closing:
                message = await receive()
                if message["type"] != "websocket.receive":
                    break
                data = message.get("text")
                self.dispatch(server.receive(cid, data if data is not None else message.get("bytes") or b"",
                                             self.clock()))
        finally:
            self.outlets.pop(cid, None)
            left = self._addresses.get(host, 0) - 1
            if left > 0:
                self._addresses[host] = left
            else:
                self._addresses.pop(host, None)
            self.dispatch(server.disconnect(cid, self.clock()))
            outlet.close()
            try:
                await asyncio.wait_for(writer, 2)
            except Exception:  # noqa: BLE001 - the client is gone either way
                writer.cancel()
