"""The frame side of an open WebSocket: reader task, inbox with backpressure, keepalive, close handshake.

`FrameSide` is the base of `socketkit.web.websocket.Session`; it knows wsproto and the Stream, nothing
of ASGI beyond the shape of the messages it queues.

- The reader task owns the socket's receiving side after the handshake: it answers pings, completes close
  handshakes, notices pongs, and reassembles messages into a small inbox. While the inbox holds
  `MAX_QUEUE` messages or `MAX_QUEUE_BYTES` bytes it stops reading, so a client that sends faster than
  the application receives is slowed down by TCP.
- The keepalive task pings every `ws_ping_interval` seconds and drops a peer that sends nothing at all
  (no pong, no data) for `ws_ping_timeout` seconds after a ping.
- Every `ws.send()` returns whole frames written at once, so frames from the application and from these
  tasks never interleave.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from typing import Any

from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from socketkit.errors import SocketkitError
from socketkit.net.stream import Stream

log = logging.getLogger("socketkit.web")

MAX_QUEUE = 16                 # complete messages waiting for the application ...
MAX_QUEUE_BYTES = 1024 * 1024  # ... or this many bytes of them: then stop reading the socket
READ_SIZE = 65536
CLOSE_TIMEOUT = 5.0            # how long we wait for the peer's half of a close handshake
CLOSED = 3                     # Session.state once the connection is over (shared with the session)
OPEN_STATE = ConnectionState.OPEN


class FrameSide:
    """Frame-level state shared by the reader and keepalive tasks and the ASGI callables."""

    stream: Stream
    loop: asyncio.AbstractEventLoop
    max_size: int
    state: int
    scope: dict[str, Any]

    def __init__(self) -> None:
        self.ws: Connection | None = None
        self._inbox: collections.deque[tuple[dict[str, Any], int]] = collections.deque()
        self._queued = 0
        self._getter: asyncio.Future[None] | None = None
        self._space: asyncio.Future[None] | None = None
        self._disconnect: dict[str, Any] | None = None
        self._discard = False        # a close is under way: incoming data is dropped
        self._parts: list[Any] = []  # fragments of the message being received
        self._size = 0
        self._ping: tuple[bytes, asyncio.Future[None]] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None

    def start_frames(self, ws: Connection, trailing: bytes, ping_interval: float | None,
                     ping_timeout: float | None) -> None:
        """After the 101: feed what followed the request, start the reader (and keepalive) task."""
        self.ws = ws
        ws.receive_data(trailing)
        self._reader = self.loop.create_task(self._read_loop())
        if ping_interval:
            self._keepalive = self.loop.create_task(self._keepalive_loop(ping_interval, ping_timeout))

    async def next_message(self) -> dict[str, Any]:
        """The next queued message, or the disconnect message once the connection is over."""
        while True:
            inbox = self._inbox
            if inbox:
                message, size = inbox.popleft()
                self._queued -= size
                space = self._space
                if space is not None and not space.done() and not self._full():
                    space.set_result(None)
                return message
            if self._disconnect is not None:
                return self._disconnect
            if self._getter is not None:
                raise RuntimeError("ASGI: two tasks are waiting in receive() on one WebSocket")
            fut = self._getter = self.loop.create_future()
            try:
                await fut
            finally:
                self._getter = None

    async def stop_frames(self) -> None:
        """Wait (bounded) for the close handshake to end, then stop the tasks and close the stream."""
        reader = self._reader
        try:
            if reader is not None and not reader.done():
                if self.ws is not None and self.ws.state is OPEN_STATE:
                    # Cancelled (server shutdown) while open: say so to the peer.
                    self._start_close(1001, "server shutting down")
                try:
                    async with asyncio.timeout(CLOSE_TIMEOUT + 1):
                        await asyncio.shield(reader)
                except TimeoutError:
                    self.stream.abort()
        finally:
            for task in (self._keepalive, reader):
                if task is not None and not task.done():
                    task.cancel()
            for task in (self._keepalive, reader):
                if task is not None:
                    try:
                        await task
                    except BaseException:  # noqa: BLE001 - cancelled on purpose, errors already handled
                        pass
            if self._close_timer is not None:
                self._close_timer.cancel()
            self.stream.close()

    def _wake_getter(self) -> None:
        fut = self._getter
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _full(self) -> bool:
        return not self._discard and (len(self._inbox) >= MAX_QUEUE or self._queued >= MAX_QUEUE_BYTES)

    def _set_disconnect(self, code: int, reason: str) -> None:
        if self._disconnect is None:
            self._disconnect = {"type": "websocket.disconnect", "code": int(code), "reason": reason}
        self._wake_getter()

    # -- frames and tasks -----------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        try:
            self.stream.send_nowait(data)
        except SocketkitError:
            pass  # the reader sees the loss and ends the session

    def _start_close(self, code: int, reason: str) -> None:
        """Send our close frame; the reader finishes when the peer answers, the timer if it does not."""
        ws = self.ws
        assert ws is not None
        try:
            self._write(ws.send(CloseConnection(code=code, reason=reason)))
        except Exception:  # noqa: BLE001 - wsproto refuses in a state where a close is already out
            return
        self._stop_reading_data()
        if self._close_timer is None:
            self._close_timer = self.loop.call_later(CLOSE_TIMEOUT, self._close_timed_out)

    def _stop_reading_data(self) -> None:
        self._discard = True
        self._parts = []
        space = self._space
        if space is not None and not space.done():
            space.set_result(None)

    def _close_timed_out(self) -> None:
        self._set_disconnect(1006, "close handshake timed out")
        self.stream.abort()

    def _finish(self, code: int, reason: str) -> None:
        self.state = CLOSED
        self._set_disconnect(code, reason)
        if self._close_timer is not None:
            self._close_timer.cancel()
        self.stream.close()  # RFC 6455 7.1.1: after the close handshake the server closes TCP first
        ping = self._ping
        if ping is not None and not ping[1].done():
            ping[1].set_result(None)  # the keepalive task then sees the state and ends

    async def _read_loop(self) -> None:
        ws = self.ws
        assert ws is not None
        stream = self.stream
        try:
            while True:
                for event in ws.events():
                    if self._on_event(event):
                        return
                    if self._full():
                        break
                else:
                    data = await stream.receive(READ_SIZE)
                    ws.receive_data(data or None)  # None: EOF, reported as close code 1006
                    continue
                while self._full():  # backpressure: the app has not taken what we have
                    fut = self._space = self.loop.create_future()
                    try:
                        await fut
                    finally:
                        self._space = None
        except (SocketkitError, OSError):
            self._finish(1006, "")
        except Exception:
            log.exception("WebSocket reader failed for %s", self.scope.get("client"))
            self.stream.abort()
            self._finish(1011, "")

    def _on_event(self, event: Any) -> bool:
        """Handle one wsproto event; True when the connection is finished."""
        kind = type(event)
        if kind is TextMessage or kind is BytesMessage:
            if self._discard:
                return False
            chunk = event.data
            if kind is TextMessage and not chunk.isascii():
                size = self._size + len(chunk.encode())  # the limit is in bytes, as on the wire
            else:
                size = self._size + len(chunk)
            if size > self.max_size:
                self._set_disconnect(1009, f"message larger than {self.max_size} bytes")
                self._start_close(1009, "message too big")
                return False
            self._size = size
            self._parts.append(chunk)
            if event.message_finished:
                parts, self._parts, self._size = self._parts, [], 0
                if kind is TextMessage:
                    text = parts[0] if len(parts) == 1 else "".join(parts)
                    message = {"type": "websocket.receive", "text": text}
                else:
                    message = {"type": "websocket.receive",
                               "bytes": bytes(parts[0]) if len(parts) == 1 else b"".join(parts)}
                self._inbox.append((message, size))
                self._queued += size
                self._wake_getter()
            return False
        ws = self.ws
        assert ws is not None
        if kind is Ping:
            if ws.state is OPEN_STATE:
                self._write(ws.send(event.response()))
            return False
        if kind is Pong:
            ping = self._ping
            if ping is not None and event.payload == ping[0] and not ping[1].done():
                ping[1].set_result(None)
            return False
        if kind is CloseConnection:
            state = ws.state
            if state is ConnectionState.REMOTE_CLOSING:
                self._write(ws.send(event.response()))  # echo the peer's code (RFC 6455 5.5.1)
            elif state is OPEN_STATE:
                # wsproto reports a frame it could not parse (1002, 1007, 1009) as a close with that
                # code while the connection is still open: fail the connection with it.
                self._write(ws.send(CloseConnection(code=event.code, reason="")))
                log.info("WebSocket protocol error from %s: %s", self.scope.get("client"), event.reason)
            self._finish(event.code, event.reason or "")
            return True
        return False

    async def _keepalive_loop(self, interval: float, timeout: float | None) -> None:
        ws = self.ws
        assert ws is not None
        stream = self.stream
        while True:
            await asyncio.sleep(interval)
            if ws.state is not OPEN_STATE or stream.closed:
                return
            payload = os.urandom(4)
            pong = self.loop.create_future()
            self._ping = (payload, pong)
            seen = stream.bytes_in
            self._write(ws.send(Ping(payload=payload)))
            if timeout is None:
                continue
            try:
                await asyncio.wait_for(pong, timeout)
            except TimeoutError:
                if stream.bytes_in != seen:
                    continue  # it is sending: alive, its pong may wait behind data we have not read
                log.info("WebSocket peer %s did not answer a ping within %gs: dropping it",
                         self.scope.get("client"), timeout)
                self._set_disconnect(1006, "keepalive ping timeout")
                stream.abort()
                return
            finally:
                self._ping = None
