"""The Stream's life after connecting: STARTTLS upgrade, closing (bounded flush), abort, aclose.

A mixin of `socketkit.net.stream.Stream`, kept apart from the per-message hot path in stream.py.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from typing import TYPE_CHECKING

from socketkit.errors import DeadlineError, PeerResetError, SocketkitError, TLSError

if TYPE_CHECKING:
    from socketkit.net.stream import Stream


class Lifecycle:
    """start_tls, close, abort, aclose, wait_lost and the async context manager (see Stream)."""

    __slots__ = ()

    async def start_tls(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Upgrade this live stream to TLS (STARTTLS). Unread plaintext is refused: an attacker could
        have injected it before the handshake (the classic STARTTLS command-injection flaw)."""
        if self._is_tls:
            raise TLSError("stream is already TLS", endpoint=self.endpoint)
        if self._buf:
            raise TLSError(
                f"{len(self._buf)} bytes of plaintext arrived after STARTTLS and before the handshake",
                endpoint=self.endpoint,
            )
        if self._lost or self._closing:
            raise self._failure()
        try:
            transport = await self._loop.start_tls(
                self._transport, self.protocol, context, server_side=server_side,
                server_hostname=server_hostname if not server_side else None,
                ssl_handshake_timeout=timeout or self.limits.handshake_timeout,
            )
        except ssl.SSLError as e:
            self._transport.abort()
            raise TLSError(f"TLS handshake failed: {e.reason or e}", endpoint=self.endpoint) from e
        except TimeoutError as e:
            self._transport.abort()
            raise DeadlineError("TLS handshake timed out", seconds=timeout, endpoint=self.endpoint) from e
        except OSError as e:
            self._transport.abort()
            from socketkit.net.connect import _is_handshake_timeout

            if _is_handshake_timeout(e):
                raise DeadlineError("TLS handshake timed out", seconds=timeout, endpoint=self.endpoint) from e
            raise PeerResetError(f"connection lost during TLS handshake ({e})", endpoint=self.endpoint) from e
        if transport is None:
            raise PeerResetError("connection lost during TLS handshake", endpoint=self.endpoint)
        self._transport = transport
        self._is_tls = True
        transport.set_write_buffer_limits(high=self.limits.write_buffer)

    # -- closing --------------------------------------------------------------------------------
    def close(self: Stream) -> None:
        """Close after flushing what was sent. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._send_blocked = True
        transport = self._transport
        if transport is not None and not self._lost:
            pending = self.write_buffer_size  # before close(): asyncio's TLS transport forgets it then
            transport.close()
            # A peer that never reads would keep the flush (and the socket) forever: give it
            # drain_timeout seconds, then reset.
            if pending > 0:
                self._abort_handle = self._loop.call_later(self.limits.drain_timeout, self._abort_if_alive)
        self._wake_reader()
        self._wake_drain()

    async def close_lingering(self: Stream, timeout: float = 5.0, max_bytes: int = 16 << 20) -> None:
        """Close without destroying the last reply: half-close (plain TCP and Unix), then read and drop
        what the peer still sends until its EOF, for at most `timeout` seconds and `max_bytes` bytes.

        Closing a socket with unread input makes the kernel answer with a reset, and a reset that reaches
        the peer before it has read our reply discards that reply (RFC 9112 9.6: "lingering close").
        """
        try:
            if self._lost or self._closing or self._transport is None:
                return
            if not self._eof_sent and not self._is_tls and self._transport.can_write_eof():
                await self.send_eof()
            loop = self._loop
            deadline = loop.time() + timeout
            left = max_bytes
            while left > 0:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                data = await self.receive(min(left, 65536), timeout=remaining)
                if not data:
                    break
                left -= len(data)
        except (SocketkitError, OSError):
            pass  # the peer left or the time is up: nothing more to wait for
        finally:
            self.close()

    def _abort_if_alive(self: Stream) -> None:
        self._abort_handle = None
        if not self._lost and self._transport is not None:
            self._transport.abort()

    def _wake_drain(self: Stream) -> None:
        w = self._drain_waiter
        if w is not None:
            self._drain_waiter = None
            if not w.done():
                w.set_result(None)

    def abort(self: Stream) -> None:
        """Close at once, dropping unsent data (the peer sees a reset). Idempotent."""
        self._closing = True
        self._send_blocked = True
        if self._transport is not None and not self._lost:
            sock = self._transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                try:  # linger 0: the kernel sends RST instead of FIN, so the peer sees a reset
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            self._transport.abort()
        self._wake_reader()

    async def aclose(self: Stream, timeout: float = 5.0) -> None:
        """Close and wait (bounded) until the connection is really gone."""
        self.close()
        if self._lost or self._transport is None:
            return
        if self._closed_waiter is None:
            self._closed_waiter = self._loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._closed_waiter)
        except TimeoutError:
            self._transport.abort()

    async def wait_lost(self: Stream) -> None:
        """Return once the connection is gone (closed by either side, reset, or aborted)."""
        if self._lost or self._transport is None:
            return
        if self._closed_waiter is None:
            self._closed_waiter = self._loop.create_future()
        await asyncio.shield(self._closed_waiter)

    async def __aenter__(self: Stream) -> Stream:
        return self

    async def __aexit__(self: Stream, *exc_info: object) -> None:
        await self.aclose()
