"""One HTTP/2 request as the ASGI app sees it: the `receive` and `send` of its stream.

The connection (web/http2.py's H2Connection) hands it the request body as it arrives and wakes it when the
peer's window opens; this side turns ASGI messages into frames through the connection, within those windows.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any

from h2.errors import ErrorCodes

from socketkit.errors import DeadlineError

if TYPE_CHECKING:
    from socketkit.web.http2 import H2Connection

_DISCONNECT = {"type": "http.disconnect"}


class Request:
    """One stream: the ASGI `receive` and `send` of its request, and what the connection tells it."""

    __slots__ = ("conn", "sid", "scope", "task", "body", "ended", "reset", "wake", "started", "status",
                 "headers", "head_sent", "complete", "trailers", "end_sent", "received", "head", "pending", "sent")

    def __init__(self, conn: H2Connection, sid: int, scope: dict[str, Any]) -> None:
        self.conn = conn
        self.sid = sid
        self.scope = scope
        self.task: asyncio.Task[None] | None = None
        self.body: collections.deque[tuple[bytes, int]] = collections.deque()
        self.ended = False  # the request body is complete (END_STREAM received)
        self.end_sent = False  # `receive` has said more_body=False
        self.reset = False  # the stream is gone (reset by either side, or the connection ended)
        self.wake: asyncio.Future[None] | None = None  # a receive or a send waiting for the connection
        self.started = self.head_sent = self.complete = self.trailers = False
        self.status = 200
        self.headers: list[tuple[bytes, bytes]] = []
        self.received = 0
        self.head = scope["method"] == "HEAD"
        self.pending: list[tuple[bytes, bytes]] = []  # trailers sent with more_trailers=True
        self.sent = 0  # body bytes, for the access log

    def poke(self) -> None:
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _wait(self, what: str) -> None:
        self.wake = self.conn.loop.create_future()
        try:
            async with asyncio.timeout(self.conn.request_timeout):
                await self.wake
        except TimeoutError:
            raise DeadlineError(f"HTTP/2 stream {self.sid}: {what} for {self.conn.request_timeout:g}s") from None
        finally:
            self.wake = None

    # -- ASGI receive -------------------------------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        while True:
            if self.reset:
                return _DISCONNECT
            if self.body:
                chunk, flow = self.body.popleft()
                self.conn.consumed(self, flow)
                more = bool(self.body) or not self.ended
                if not more:
                    self.end_sent = True
                return {"type": "http.request", "body": chunk, "more_body": more}
            if self.ended and not self.end_sent:
                self.end_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if self.end_sent and self.complete:
                return _DISCONNECT
            try:
                if self.end_sent:
                    # After the body: wait (unbounded) until the response ends or the stream goes away.
                    self.wake = self.conn.loop.create_future()
                    try:
                        await self.wake
                    finally:
                        self.wake = None
                else:
                    await self._wait("no request body received")
            except DeadlineError:
                self.conn.reset(self, ErrorCodes.CANCEL)
                return _DISCONNECT

    # -- ASGI send ----------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> Any:
        # A plain method returning an awaitable, as HTTP/1.1's: the common messages cost no coroutine.
        kind = message["type"]
        if kind == "http.response.body":
            if not self.started or self.complete:
                raise RuntimeError(f"ASGI: {kind!r} " + ("before http.response.start" if not self.started
                                                        else "after the response was complete"))
            conn = self.conn
            if self.reset:
                return conn.stream.send(b"")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            end = not more and not self.trailers
            self.sent += len(body)
            if not self.head_sent:
                self.head_sent = True
                conn.send_head(self, self.status, self.headers, end and (self.head or not body))
            if body and not self.head and not self.reset:
                if not conn.h2.send_whole(self.sid, body, end):  # the common case: one frame, now
                    return self._send_body(body, end, more)
            elif end and not (self.reset or self.complete):
                machine = conn.h2
                machine.send_data(self.sid, b"", end_stream=True)
            if not more and not self.trailers:
                self.finish()
            return conn.flush()
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("ASGI: http.response.start sent twice")
            self.started = True
            self.status = int(message["status"])
            self.headers = message.get("headers") or ()
            self.trailers = bool(message.get("trailers"))
            return self.conn.ready
        if kind == "http.response.trailers":
            return self._trailers(message)
        raise RuntimeError(f"ASGI: unexpected message type {kind!r} on an http connection")

    async def _send_body(self, body: bytes, end: bool, more: bool) -> None:
        await self.conn.send_body(self, body, end)
        if not more and not self.trailers:
            self.finish()
        await self.conn.flush()

    async def _trailers(self, message: dict[str, Any]) -> None:
        if not self.trailers or not self.head_sent or self.complete:
            raise RuntimeError("ASGI: http.response.trailers without `trailers: True` and a body first")
        self.pending += list(message.get("headers") or ())
        if message.get("more_trailers", False):
            return
        if not self.reset:
            self.conn.send_trailers(self, self.pending)
        self.finish()
        await self.conn.flush()

    def end_stream_sent(self) -> bool:
        return self.reset or self.complete

    def finish(self) -> None:
        if self.complete:
            return
        self.complete = True
        self.conn.machine.ended(self.sid)
        self.poke()
        if self.conn.handler.access_log:
            self.conn.log_access(self, self.status)
