"""Byte pumps between streams: the heart of `socketkit relay` (a socat-like forwarder).

Each direction is one task that receives and sends; `send` waits while the far side reads slowly, so a
fast producer is held back by a slow consumer (backpressure both ways) and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from socketkit.errors import ClosedError, PeerResetError, SocketkitError, TLSError
from socketkit.net.connect import connect
from socketkit.net.endpoint import Endpoint, parse
from socketkit.net.limits import Limits
from socketkit.net.stream import Stream

log = logging.getLogger("socketkit.relay")


async def pump(src: Stream, dst: Stream, chunk: int = 65536) -> int:
    """Copy src to dst until src ends; then half-close dst (or close it when it cannot half-close).

    A reset, a TLS failure or a close on either side ends this direction and closes dst (which ends the
    other direction too): for a relay that is how a conversation ends, not a bug to log with a traceback.
    """
    moved = 0
    broken = False
    try:
        while data := await src.receive(chunk):
            await dst.send(data)
            moved += len(data)
    except (PeerResetError, ClosedError, TLSError):
        broken = True
    finally:
        try:
            if broken or dst._is_tls or src._error is not None:
                dst.close()
            else:
                await dst.send_eof()
        except SocketkitError:
            dst.close()
    return moved


async def splice(a: Stream, b: Stream) -> tuple[int, int]:
    """Pump both ways until both directions have ended (or one side fails)."""
    try:
        async with asyncio.TaskGroup() as tg:
            ab = tg.create_task(pump(a, b))
            ba = tg.create_task(pump(b, a))
        return ab.result(), ba.result()
    finally:
        a.close()
        b.close()


def relay_handler(target: str | Endpoint, *, limits: Limits | None = None, connect_timeout: float = 10.0):
    """A server handler that forwards every connection to `target`."""
    ep = parse(target)

    async def handle(client: Stream) -> None:
        try:
            upstream = await connect(ep, timeout=connect_timeout, limits=limits)
        except SocketkitError as e:
            log.warning("relay to %s failed for %s: %s", ep, client.peer, e)
            return
        await splice(client, upstream)

    return handle


class _End(asyncio.BufferedProtocol):
    """One side of a Splice: the kernel reads straight into this side's buffer, the splice's callback
    gets a view of what came inside `buffer_updated`, and this side's write-buffer pressure pauses the
    other side's reading."""

    __slots__ = ("splice", "stream", "on_data", "on_eof", "other", "size", "_buf")

    def __init__(self, splice: Splice, stream: Stream, on_data: Callable[[memoryview | bytes], None],
                 on_eof: Callable[[], None]) -> None:
        self.splice = splice
        self.stream = stream
        self.on_data = on_data
        self.on_eof = on_eof
        self.other: Stream | None = None
        self.size = stream.limits.read_buffer
        self._buf: memoryview | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        buf = self._buf
        if buf is None:
            buf = self._buf = memoryview(bytearray(self.size))
        return buf

    def buffer_updated(self, nbytes: int) -> None:
        self.stream.bytes_in += nbytes
        buf = self._buf
        assert buf is not None
        self.on_data(buf[:nbytes])
        # The callback may have written the view to the other side; while that side still queues
        # anything, it may be holding it: the next read goes into a fresh buffer, never under it.
        other = self.other
        if other is not None and not other._lost and other._transport.get_write_buffer_size():
            self._buf = None

    def eof_received(self) -> bool:
        self.stream._eof = True
        self.on_eof()
        return not self.stream._is_tls  # keep writing after the peer's FIN (TLS cannot half-close)

    def pause_writing(self) -> None:
        self.stream._writing_paused = True
        self.splice._pause(self.other)

    def resume_writing(self) -> None:
        self.stream._writing_paused = False
        self.splice._resume(self.other)

    def connection_lost(self, exc: Exception | None) -> None:
        ended = self.stream._eof
        self.stream.protocol.connection_lost(exc)  # the Stream learns it as always (waiters, the server)
        if not ended:
            self.on_eof()  # gone without a FIN (a reset, or closed by us): the same end for the callbacks
        self.splice._lost()


class Splice:
    """Two streams' transports wired straight to callbacks, for relays that transform what they move
    (the WebSocket bridge): a chunk is handled inside `data_received`, with no task switch and no copy
    through the streams' buffers, and written on with `write_a`/`write_b`.

    Backpressure both ways: when a side's write buffer passes its stream's `write_buffer` limit the
    other side stops being read (the kernel's window then slows its sender), and reading resumes once
    the buffer has drained. So each direction holds at most one write buffer plus the read in hand.
    Both streams must have been read only through their public API so far; whatever they buffered is
    handed to the callbacks first. A callback gets a view of the side's read buffer: it must be done with
    it when it returns (write it to the other side, or copy it), as the buffer is read into again. `run()` returns when both connections are gone, or `close()` was
    called and they went (bounded by the streams' drain timeout).
    """

    def __init__(self, a: Stream, b: Stream, on_a: Callable[[memoryview | bytes], None],
                 on_b: Callable[[memoryview | bytes], None],
                 on_a_eof: Callable[[], None], on_b_eof: Callable[[], None]) -> None:
        self.a, self.b = a, b
        self._ends = (_End(self, a, on_a, on_a_eof), _End(self, b, on_b, on_b_eof))
        self._ends[0].other, self._ends[1].other = b, a
        self._done: asyncio.Future[None] | None = None
        self._paused: set[int] = set()

    def write_a(self, data: bytes | bytearray | memoryview) -> None:
        self._write(self.a, data)

    def write_b(self, data: bytes | bytearray | memoryview) -> None:
        self._write(self.b, data)

    def writelines_a(self, parts: list) -> None:
        """Several pieces in one system call (a frame header and its payload)."""
        a = self.a
        if a._lost or a._closing or a._transport.is_closing():
            return
        a._transport.writelines(parts)
        a.bytes_out += sum(map(len, parts))

    @staticmethod
    def _write(stream: Stream, data: bytes | bytearray | memoryview) -> None:
        if stream._lost or stream._closing or stream._transport.is_closing():
            return  # the side is gone or going: what would go to it has nowhere to go
        stream._transport.write(data)
        stream.bytes_out += len(data)

    def write_eof_b(self) -> None:
        b = self.b
        if not (b._lost or b._closing or b._is_tls) and b._transport.can_write_eof():
            try:
                b._transport.write_eof()
            except OSError:
                pass

    def _pause(self, stream: Stream | None) -> None:
        if stream is not None and not (stream._lost or stream._closing):
            try:
                stream._transport.pause_reading()
            except (RuntimeError, OSError):
                pass

    def _resume(self, stream: Stream | None) -> None:
        if stream is not None and not (stream._lost or stream._closing):
            try:
                stream._transport.resume_reading()
            except (RuntimeError, OSError):
                pass

    def _lost(self) -> None:
        if self.a._lost and self.b._lost and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def close(self) -> None:
        """Close both sides (what was written still goes out, within the streams' drain bound)."""
        self.a.close()
        self.b.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        a, b = self.a, self.b
        pending = []
        for stream, end in zip((a, b), self._ends, strict=True):
            if stream._lost:
                continue
            stream._transport.set_protocol(end)
            pending.append((stream, end, bytes(stream._buf)))
            stream._buf.clear()
        try:
            for stream, end, data in pending:
                if data:
                    end.on_data(data)  # (counted in bytes_in already, when the stream buffered them)
                if stream._reading_paused and not stream._closing:
                    stream._reading_paused = False
                    self._resume(stream)
                if stream._eof and not stream._lost:
                    end.on_eof()
            self._lost()
            await self._done
        finally:
            # Cancelled (a server shutting down) or done: nothing is left open behind us.
            if not (a._lost and b._lost):
                self.close()
                try:
                    async with asyncio.timeout(max(a.limits.drain_timeout, 1.0)):
                        await asyncio.shield(self._done)
                except (TimeoutError, asyncio.CancelledError):
                    a.abort()
                    b.abort()
