"""`Stream`: a byte stream (TCP, TLS or Unix) built directly on an asyncio Protocol.

Why not StreamReader/StreamWriter: they spend a coroutine on `drain()` after every write and keep two
objects in step; here one small Protocol owns the buffer, the waiters and both directions of flow
control, so an echo round trip costs one future and one task wake-up (bench/echo.py measures it).

Flow control, both ways:
- reading: past `limits.read_buffer` unread bytes we stop reading the socket (the kernel's window then
  slows the peer down) and resume once the handler has taken half of it;
- writing: `send` returns at once while the transport's buffer is under `limits.write_buffer`, and
  waits for the peer to read when it is over, so a fast sender's memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from socketkit.errors import (
    ClosedError,
    DeadlineError,
    PeerResetError,
    SocketkitError,
    TLSError,
)
from socketkit.net.driver import PARK, Driver
from socketkit.net.limits import Limits
from socketkit.net.stream_life import Lifecycle
from socketkit.net.stream_read import FramedReads

_DEFAULT_LIMITS = Limits()
_RESET_ERRORS = (ConnectionError, BrokenPipeError, OSError)


class StreamProtocol(asyncio.Protocol):
    """The asyncio side of a Stream; user code only ever sees the Stream."""

    __slots__ = ("stream",)

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.stream._attach(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        s = self.stream
        s.bytes_in += len(data)
        d = s._driver
        if d is not None and not s._buf:
            if d.waiting and not d.stepping:
                quick = s._quick
                if quick is not None and quick(data):
                    return  # answered where it arrived; the handler stays parked
                # The handler is parked on this stream with nothing buffered: hand the bytes over as
                # they are and resume it here (see socketkit.net.driver).
                s._handoff = data
                d.step_inline()
                return
        buf = s._buf
        buf += data
        if len(buf) > s._high_read and not s._reading_paused:
            s._reading_paused = True
            s._transport.pause_reading()
        if d is not None:
            if d.waiting and not d.stepping:
                d.step_inline()
                return
        w = s._read_waiter
        if w is not None:
            s._read_waiter = None
            if not w.done():
                w.set_result(None)

    def eof_received(self) -> bool:
        s = self.stream
        s._eof = True
        s._wake_reader()
        # Keep the socket open for writing (half-close); TLS cannot, and asyncio warns if asked.
        return not s._is_tls

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream._connection_lost(exc)

    def pause_writing(self) -> None:
        self.stream._writing_paused = True

    def resume_writing(self) -> None:
        s = self.stream
        s._writing_paused = False
        w = s._drain_waiter
        if w is not None:
            s._drain_waiter = None
            if not w.done():
                w.set_result(None)


class Stream(FramedReads, Lifecycle):
    """A connected byte stream. Made by `socketkit.connect()` or handed to a server's handler."""

    def __init__(self, *, limits: Limits | None = None, endpoint: object | None = None) -> None:
        limits = limits or _DEFAULT_LIMITS
        self.limits = limits
        self.endpoint = endpoint
        self.protocol = StreamProtocol(self)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._buf = bytearray()
        self._high_read = limits.read_buffer
        self._reading_paused = False
        self._writing_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._sendfile_fd: tuple[Any, int] | None = None  # (transport, its socket's fd) for sendfile
        self._closed_waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._eof_sent = False
        self._send_blocked = False  # closing, lost or EOF sent: one flag for the hot path
        self._closing = False       # we asked to close
        self._lost = False          # the transport is gone
        self._error: BaseException | None = None
        self._is_tls = False
        self._deadline: float | None = None
        self._deadline_seconds: float | None = None
        self._driver: Driver | None = None  # set by the server: see socketkit.net.driver
        self._handoff: bytes | None = None  # bytes handed to a parked handler, not yet taken
        # While its handler is parked between messages, a protocol may answer a whole message right where
        # it arrives (True: done, the handler stays parked), without resuming the handler (web/http.py)
        self._quick: Any = None  # Callable[[bytes], bool] | None
        # Graceful stop. A handler waiting between messages (an HTTP keep-alive connection between
        # requests) sets `when_stopping`; a server that begins to stop calls it (the handler closes
        # politely at once) rather than waiting its whole drain for a connection that owes nothing.
        # `stopping` tells a handler that gets back to waiting later to end there.
        self.when_stopping: Callable[[], None] | None = None
        self.stopping = False
        self._abort_handle: asyncio.TimerHandle | None = None  # bounds the flush after close()
        self.bytes_in = 0
        self.bytes_out = 0
        self.opened_at = self._loop.time()  # for status pages: a connection's age

    # -- protocol callbacks -------------------------------------------------------------------
    def _attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._is_tls = transport.get_extra_info("ssl_object") is not None
        transport.set_write_buffer_limits(high=self.limits.write_buffer)

    def _wake_reader(self) -> None:
        if self._driver is not None:
            self._driver.wake()
        w = self._read_waiter
        if w is not None:
            self._read_waiter = None
            if not w.done():
                w.set_result(None)

    def _connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._send_blocked = True
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        if exc is not None and self._error is None and not self._closing:
            self._error = exc
        self._eof = True
        self._wake_reader()
        w = self._drain_waiter
        if w is not None:
            self._drain_waiter = None
            if not w.done():
                w.set_result(None)
        w = self._closed_waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- addresses and details -------------------------------------------------------------------
    @property
    def local(self) -> Any:
        return self._transport.get_extra_info("sockname")

    @property
    def peer(self) -> Any:
        return self._transport.get_extra_info("peername")

    @property
    def tls(self):
        """TLS details (version, cipher, ALPN, verified peer certificate), or None for plain streams."""
        obj = self._transport.get_extra_info("ssl_object") if self._transport else None
        if obj is None:
            return None
        from socketkit.net import tls

        return tls.info(obj)

    @property
    def closed(self) -> bool:
        return self._closing or self._lost

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._buf

    @property
    def unread(self) -> bool:
        """Bytes have arrived that no receive() has taken yet (buffered, or handed to a parked handler)."""
        return bool(self._buf) or self._handoff is not None

    def extra(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    # -- errors ---------------------------------------------------------------------------------
    def _failure(self) -> SocketkitError:
        if self._closing:
            return ClosedError("stream is closed", endpoint=self.endpoint)
        exc = self._error
        if isinstance(exc, ssl.SSLError):
            err: SocketkitError = TLSError(f"TLS failure: {exc.reason or exc}", endpoint=self.endpoint)
        else:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or "closed")
            err = PeerResetError(f"connection reset by peer ({why})", endpoint=self.endpoint)
        err.__cause__ = exc
        return err

    # -- deadlines ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Every receive/send inside the block must finish within `seconds` from now, in total."""
        previous, previous_seconds = self._deadline, self._deadline_seconds
        when = self._loop.time() + seconds
        if previous is None or when < previous:
            self._deadline, self._deadline_seconds = when, seconds
        try:
            yield
        finally:
            self._deadline, self._deadline_seconds = previous, previous_seconds

    def _when(self, timeout: float | None) -> tuple[float | None, float | None]:
        when, seconds = self._deadline, self._deadline_seconds
        if timeout is not None:
            mine = self._loop.time() + timeout
            if when is None or mine < when:
                when, seconds = mine, timeout
        return when, seconds

    async def _wait(self, fut: asyncio.Future[None], timeout: float | None, what: str) -> None:
        when, seconds = self._when(timeout)
        if when is None:
            await fut
            return
        handle = self._loop.call_at(when, _expire, fut, seconds, what, self.endpoint)
        try:
            await fut
        finally:
            handle.cancel()

    # -- receiving ------------------------------------------------------------------------------
    async def _fill(self, timeout: float | None) -> None:
        """Wait until more bytes arrive (or EOF / error)."""
        d = self._driver
        if self._receiving() or (d is not None and d.parked and not d.stepping):
            raise RuntimeError("another task is already receiving on this stream")
        if d is not None and d.stepping and timeout is None and self._deadline is None:
            if self._reading_paused:
                self._reading_paused = False
                self._transport.resume_reading()
            await PARK
            if self._handoff is not None:
                self._buf += self._handoff
                self._handoff = None
            return
        if self._closing:
            raise self._failure()
        if self._reading_paused:
            # The caller wants more than is buffered (a long line): let it come.
            self._reading_paused = False
            self._transport.resume_reading()
        fut = self._loop.create_future()
        self._read_waiter = fut
        try:
            await self._wait(fut, timeout, "receive")
        finally:
            if self._read_waiter is fut:  # (a reader that came after our cancellation has its own)
                self._read_waiter = None

    def _receiving(self) -> bool:
        """Another task waits in receive. One that was cancelled does not count: its future is done at
        once, though the task has yet to run (an ASGI app that cancels its disconnect watcher and returns,
        then the server reading the next request)."""
        w = self._read_waiter
        return w is not None and not w.done()

    def _consumed(self) -> None:
        if self._reading_paused and len(self._buf) <= self._high_read // 2 and not self._lost:
            self._reading_paused = False
            self._transport.resume_reading()

    async def receive(self, max_bytes: int = 65536, *, timeout: float | None = None) -> bytes:
        """Up to `max_bytes` bytes as soon as any are there; b"" at end of stream."""
        buf = self._buf
        if not buf:
            if self._eof:
                if self._error is not None or self._closing:
                    raise self._failure()
                return b""
            d = self._driver
            if d is not None and d.stepping and timeout is None and self._deadline is None \
                    and not self._reading_paused:
                if self._closing:
                    raise self._failure()
                if self._read_waiter is not None and self._receiving():
                    raise RuntimeError("another task is already receiving on this stream")
                await PARK  # the common case, kept inline: see socketkit.net.driver
                data = self._handoff
                if data is not None:
                    self._handoff = None
                    if len(data) <= max_bytes:
                        return data
                    buf += data
            else:
                await self._fill(timeout)
            if not buf:
                if self._error is not None or self._closing:
                    raise self._failure()
                return b""
        if len(buf) <= max_bytes:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:max_bytes])
            del buf[:max_bytes]
        if self._reading_paused:
            self._consumed()
        return data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        # receive() without the size cap, written out: this is the hot path of every echo-like handler.
        buf = self._buf
        if not buf:
            if not self._eof:
                d = self._driver
                if d is not None and d.stepping and self._deadline is None and not self._reading_paused:
                    if self._closing or self._read_waiter is not None:
                        if self._closing:
                            raise self._failure()
                        if self._receiving():
                            raise RuntimeError("another task is already receiving on this stream")
                    await PARK
                    data = self._handoff
                    if data is not None:
                        self._handoff = None
                        return data
                else:
                    await self._fill(None)
            if not buf:
                if self._error is not None or self._closing:
                    raise self._failure()
                raise StopAsyncIteration
        data = bytes(buf)
        buf.clear()
        if self._reading_paused:
            self._consumed()
        return data

    def unreceive(self, data: bytes) -> None:
        """Put bytes back in front of the buffer (a protocol that read ahead of a handover)."""
        self._buf[:0] = data

    # -- sending --------------------------------------------------------------------------------
    def send(self, data: bytes | bytearray | memoryview, *, timeout: float | None = None) -> Awaitable[None]:
        """Queue `data` at once; the awaitable returned waits while the peer reads slower than we write.

        Always `await stream.send(...)`. (It is a plain method returning an awaitable so that the common
        case, buffer not full, costs no coroutine.)
        """
        transport = self._transport
        if self._send_blocked or transport.is_closing():
            # (is_closing: a write already failed; the transport drops the rest until connection_lost)
            raise self._send_failure()
        transport.write(data)
        self.bytes_out += len(data)
        if self._writing_paused:
            return self._drain(timeout)
        return _SENT

    def _send_failure(self) -> SocketkitError:
        if self._eof_sent and not (self._lost or self._closing):
            return ClosedError("send after send_eof()", endpoint=self.endpoint)
        return self._failure()

    async def _drain(self, timeout: float | None) -> None:
        while self._writing_paused and not self._lost and not self._closing:
            fut = self._loop.create_future()
            self._drain_waiter = fut
            try:
                await self._wait(fut, timeout, "send")
            finally:
                self._drain_waiter = None
        if (self._lost and self._error is not None) or self._closing:
            raise self._failure()

    def send_nowait(self, data: bytes) -> None:
        """Queue without waiting; for protocol code that checks `writing_paused` itself."""
        if self._send_blocked:
            raise self._send_failure()
        self._transport.write(data)
        self.bytes_out += len(data)

    @property
    def writing_paused(self) -> bool:
        return self._writing_paused

    @property
    def write_buffer_size(self) -> int:
        transport = self._transport
        if transport is None or self._lost:
            return 0
        try:
            return transport.get_write_buffer_size()
        except AttributeError:  # asyncio's closed TLS transport has no protocol left to ask
            return 0

    async def send_eof(self) -> None:
        """Half-close: tell the peer we will send no more; we can still receive."""
        if self._eof_sent:
            return
        if self._is_tls or not self._transport.can_write_eof():
            raise SocketkitError("this stream cannot half-close (TLS has no half-close)", endpoint=self.endpoint)
        if self._lost or self._closing:
            raise self._failure()
        self._eof_sent = True
        self._send_blocked = True
        try:
            self._transport.write_eof()
        except OSError as e:  # ENOTCONN: the peer is gone already (uvloop raises it from shutdown())
            raise PeerResetError(f"cannot half-close: the connection is gone ({e.strerror or e})",
                                 endpoint=self.endpoint) from e

    async def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send `count` bytes of `file` from `offset`; zero-copy `sendfile(2)` on plain TCP/Unix sockets
        (see socketkit.net.sendfile). Returns the bytes sent: fewer if the file shrank meanwhile."""
        from socketkit.net.sendfile import send_file

        return await send_file(self, file, offset, count)

    def sendfile_nowait(self, file: Any, offset: int, count: int) -> int:
        """What of `count` bytes of `file` the socket takes right now, zero-copy, without waiting (0 where
        it cannot: see socketkit.net.sendfile); `sendfile()` sends the rest."""
        from socketkit.net.sendfile import send_file_nowait

        return send_file_nowait(self, file, offset, count)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Stream {self.endpoint or ''} {state} in={self.bytes_in} out={self.bytes_out}>"


class _Sent:
    """The awaitable `send` returns when nothing needs waiting for."""

    __slots__ = ()
    # Done at once, and with no Python frame: see `_Park.__await__` in socketkit.net.driver.
    __await__ = staticmethod(functools.partial(iter, ()))


_SENT = _Sent()


def _expire(fut: asyncio.Future[None], seconds: float | None, what: str, endpoint: object) -> None:
    if not fut.done():
        fut.set_exception(DeadlineError(f"{what} did not finish within {seconds:g}s", seconds=seconds,
                                        endpoint=endpoint))
