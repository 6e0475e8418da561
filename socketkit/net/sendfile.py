"""`Stream.sendfile`: a file's bytes to a stream, without copying them through Python where possible.

asyncio's own loop implements `loop.sendfile`; uvloop does not. For a plain (not TLS) uvloop stream we
call `os.sendfile` on the socket ourselves, but only while the transport has nothing queued, so bytes
stay in order; when the socket is full we hand one piece to the transport, which waits for writability
for us, and carry on behind it once its queue is empty again. TLS streams copy (the kernel cannot
encrypt for us).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from socketkit.errors import PeerResetError, SocketkitError

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
    try:
        sent = await loop.sendfile(stream._transport, file, offset, count, fallback=True)
    except (ConnectionError, OSError) as e:
        raise _error(stream, e) from e
    stream.bytes_out += sent
    return sent


def _error(stream: Stream, e: BaseException) -> SocketkitError:
    if stream._lost or stream._closing:
        return stream._failure()
    return PeerResetError(f"connection broke during sendfile ({e})", endpoint=stream.endpoint)


async def _behind_the_transport(stream: Stream, file: Any, offset: int, count: int, zero_copy: bool) -> int:
    transport = stream._transport
    sock = transport.get_extra_info("socket")
    fd_out = sock.fileno() if (zero_copy and sock is not None and hasattr(os, "sendfile")) else -1
    fd_in = file.fileno()
    total = 0
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
            if fd_out >= 0:
                try:
                    n = os.sendfile(fd_out, fd_in, offset, min(count, _SENDFILE_MAX))
                except BlockingIOError:
                    n = 0
                except OSError as e:
                    raise _error(stream, e) from e
                if n == 0 and count > 0 and os.fstat(fd_in).st_size <= offset:
                    break  # the file shrank under us: the caller sees a short count
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
        if not stream._lost:
            transport.set_write_buffer_limits(high=stream.limits.write_buffer)
    return total
