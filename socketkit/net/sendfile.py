"""`Stream.sendfile`: a file's bytes to a stream, without copying them through Python where possible.

asyncio's own loop implements `loop.sendfile` (bounded here by the stream's deadline); uvloop does not.
For a plain (not TLS) uvloop stream we call `os.sendfile` on the socket ourselves, but only while the
transport has nothing queued, so bytes stay in order. When the socket is full we wait until it takes
more, watching a duplicate of its descriptor (the loop lets nobody else watch the one its transport
owns), and sendfile again: a slow reader's download stays zero-copy. Where the loop will not watch it,
one piece goes through the transport instead, and we carry on behind it once its queue is empty. TLS
streams copy (the kernel cannot encrypt for us).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from socketkit.errors import DeadlineError, PeerResetError, SocketkitError

if TYPE_CHECKING:
    from socketkit.net.stream import Stream

_SENDFILE_MAX = 1 << 20   # bytes per os.sendfile call
_COPY_CHUNK = 256 * 1024  # bytes per piece handed to the transport when the socket is full


async def send_file(stream: Stream, file: Any, offset: int, count: int | None) -> int:
    if stream._send_blocked:
        raise stream._send_failure()
    if count is None:
        count = os.fstat(file.fileno()).st_size - offset
    if count <= 0:
        return 0
    if stream._writing_paused:
        await stream._drain(None)
    loop = stream._loop
    if not isinstance(loop, asyncio.BaseEventLoop) or stream._is_tls:
        return await _behind_the_transport(stream, file, offset, count, zero_copy=not stream._is_tls)
    when, seconds = stream._when(None)  # the stream's deadline, as every send of it has
    try:
        if when is None:
            sent = await loop.sendfile(stream._transport, file, offset, count, fallback=True)
        else:
            async with asyncio.timeout_at(when):
                sent = await loop.sendfile(stream._transport, file, offset, count, fallback=True)
    except TimeoutError:
        raise DeadlineError(f"send did not finish within {seconds:g}s", seconds=seconds,
                            endpoint=stream.endpoint) from None
    except (ConnectionError, OSError) as e:
        raise _error(stream, e) from e
    stream.bytes_out += sent
    return sent


def _error(stream: Stream, e: BaseException) -> SocketkitError:
    if stream._lost or stream._closing:
        return stream._failure()
    return PeerResetError(f"connection broke during sendfile ({e})", endpoint=stream.endpoint)


def _socket_fd(stream: Stream) -> int:
    """The descriptor under the stream's transport, for sendfile; -1 where there is none to use."""
    transport = stream._transport
    known = stream._sendfile_fd  # looked up once per transport: uvloop makes a socket object per lookup
    if known is not None and known[0] is transport:
        return known[1]
    sock = transport.get_extra_info("socket")
    fd_out = sock.fileno() if (sock is not None and hasattr(os, "sendfile")) else -1
    stream._sendfile_fd = (transport, fd_out)
    return fd_out


def send_file_nowait(stream: Stream, file: Any, offset: int, count: int) -> int:
    """As much of `count` bytes of `file` from `offset` as the socket takes right now, zero-copy, without
    waiting: the bytes sent, 0 when none can go now (a full socket, bytes queued on the transport that must
    go first, TLS, a loop whose transport we do not write behind). The caller sends the rest with
    `send_file`."""
    if count <= 0 or stream._send_blocked or stream._is_tls or isinstance(stream._loop, asyncio.BaseEventLoop):
        return 0
    if stream._transport.get_write_buffer_size():
        return 0
    fd_out = _socket_fd(stream)
    if fd_out < 0:
        return 0
    n = _sendfile_once(stream, fd_out, file.fileno(), offset, count)
    if n < 0:
        return 0
    stream.bytes_out += n
    return n


def _sendfile_once(stream: Stream, fd_out: int, fd_in: int, offset: int, count: int) -> int:
    """One sendfile(2) to the stream's socket: the bytes sent, -1 when the socket is full."""
    try:
        return os.sendfile(fd_out, fd_in, offset, count)
    except BlockingIOError:
        return -1
    except OSError as e:
        raise _error(stream, e) from e


async def _behind_the_transport(stream: Stream, file: Any, offset: int, count: int, zero_copy: bool) -> int:
    transport = stream._transport
    fd_out = _socket_fd(stream) if zero_copy else -1
    fd_in = file.fileno()
    total = 0
    watch: _Watch | bool | None = None  # made at the first full socket; False: the loop cannot watch it
    # While sending, "paused" means "anything queued at all": we may only sendfile behind an empty queue.
    transport.set_write_buffer_limits(high=0, low=0)
    try:
        while count > 0:
            if stream._lost or stream._closing:
                raise stream._failure()
            if transport.get_write_buffer_size() > 0:
                stream._writing_paused = True
                await stream._drain(None)
                continue
            n = 0
            full = False
            if fd_out >= 0:
                n = _sendfile_once(stream, fd_out, fd_in, offset, min(count, _SENDFILE_MAX))
                if n < 0:
                    n, full = 0, True
                if n == 0 and not full and os.fstat(fd_in).st_size <= offset:
                    break  # the file shrank under us: the caller sees a short count
            if full and watch is not False:
                # The socket is full: wait until it takes more and sendfile again (zero copy all the way),
                # on a duplicate of its descriptor (the loop lets no one else watch the transport's own).
                if watch is None:
                    watch = _Watch(stream, fd_out)
                if watch.ok:
                    await watch.writable()
                    continue
                watch = False
            if n == 0:
                chunk = os.pread(fd_in, min(count, _COPY_CHUNK), offset)
                if not chunk:
                    break
                transport.write(chunk)
                n = len(chunk)
            offset += n
            count -= n
            total += n
            stream.bytes_out += n
    finally:
        if isinstance(watch, _Watch):
            watch.close()
        if not stream._lost:
            transport.set_write_buffer_limits(high=stream.limits.write_buffer)
    return total


class _Watch:
    """Writability of a stream's socket, watched through a duplicate descriptor (the event loop refuses a
    reader or writer on a descriptor a transport owns). The wait is the stream's drain waiter, so a lost
    connection ends it as it ends any send, and the stream's deadline bounds it."""

    def __init__(self, stream: Stream, fd: int) -> None:
        self.stream = stream
        self.fd = -1
        try:
            self.fd = os.dup(fd)
        except OSError:
            pass

    @property
    def ok(self) -> bool:
        return self.fd >= 0

    async def writable(self) -> None:
        stream = self.stream
        loop = stream._loop
        fut = loop.create_future()
        try:
            loop.add_writer(self.fd, _wake, fut)
        except (RuntimeError, ValueError, OSError, NotImplementedError):
            self.close()  # this loop will not watch it: the caller copies through the transport instead
            return
        stream._drain_waiter = fut
        try:
            await stream._wait(fut, None, "send")
        finally:
            stream._drain_waiter = None
            loop.remove_writer(self.fd)
        if stream._lost or stream._closing:
            raise stream._failure()

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            try:
                self.stream._loop.remove_writer(fd)
            except (RuntimeError, ValueError, OSError):
                pass
            os.close(fd)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
