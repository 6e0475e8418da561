"""The Stream's framed reads: exactly n bytes, up to a delimiter, line by line.

A mixin of `socketkit.net.stream.Stream` (it works on the stream's buffer and waits with its `_fill`):
kept apart so that stream.py holds the per-message hot path and its state, and stays readable.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from socketkit.errors import IncompleteReadError, LineTooLongError

if TYPE_CHECKING:
    from socketkit.net.stream import Stream

T = TypeVar("T")


class FramedReads:
    """receive_exactly, receive_until and lines (see Stream for the attributes they use)."""

    __slots__ = ()

    async def receive_exactly(self: Stream, n: int, *, timeout: float | None = None) -> bytes:
        """Exactly `n` bytes; IncompleteReadError (with what did arrive) if the stream ends first."""
        await self._buffer_at_least(n, timeout)
        buf = self._buf
        if len(buf) == n:
            data = bytes(buf)
            buf.clear()
        else:
            with memoryview(buf) as view:  # one copy (a bytearray slice would make two)
                data = view[:n].tobytes()
            del buf[:n]
        self._consumed()
        return data

    async def receive_exactly_with(self: Stream, n: int, use: Callable[[memoryview], T], *,
                                   timeout: float | None = None) -> T:
        """`use(view)` on exactly the next `n` bytes, read in place (no copy), and its result. The view is
        valid only during the call: a record decoder that decrypts or parses straight from the buffer."""
        await self._buffer_at_least(n, timeout)
        buf = self._buf
        with memoryview(buf) as view, view[:n] as part:
            result = use(part)
        del buf[:n]
        self._consumed()
        return result

    async def _buffer_at_least(self: Stream, n: int, timeout: float | None) -> None:
        when, seconds = self._when(timeout)
        with self._deadline_at(when, seconds):
            while len(self._buf) < n:
                if self._eof:
                    if self._error is not None or self._closing:
                        raise self._failure()
                    partial = bytes(self._buf)
                    self._buf.clear()
                    raise IncompleteReadError(
                        f"stream ended after {len(partial)} of {n} bytes", partial=partial, endpoint=self.endpoint
                    )
                await self._fill(None)

    async def receive_until(
        self: Stream, delimiter: bytes = b"\n", max_size: int | None = None, *, timeout: float | None = None
    ) -> bytes:
        """Bytes up to and including `delimiter`; LineTooLongError if none within `max_size` bytes.

        At end of stream, what is left (without delimiter) raises IncompleteReadError carrying it.
        """
        if not delimiter:
            raise ValueError("delimiter must not be empty")
        max_size = max_size or self.limits.max_line
        buf = self._buf
        start = 0
        when, seconds = self._when(timeout)
        with self._deadline_at(when, seconds):
            while True:
                i = buf.find(delimiter, start)
                if i >= 0:
                    end = i + len(delimiter)
                    if end > max_size:
                        break
                    data = bytes(buf[:end])
                    del buf[:end]
                    self._consumed()
                    return data
                if len(buf) >= max_size:
                    break
                start = max(0, len(buf) - len(delimiter) + 1)
                if self._eof:
                    if self._error is not None or self._closing:
                        raise self._failure()
                    partial = bytes(buf)
                    buf.clear()
                    raise IncompleteReadError(
                        f"stream ended before {delimiter!r} ({len(partial)} bytes pending)",
                        partial=partial, endpoint=self.endpoint,
                    )
                await self._fill(None)
        raise LineTooLongError(
            f"no {delimiter!r} within {max_size} bytes", limit="max_line", value=max_size, endpoint=self.endpoint
        )

    @contextlib.contextmanager
    def _deadline_at(self: Stream, when: float | None, seconds: float | None) -> Iterator[None]:
        previous = self._deadline, self._deadline_seconds
        self._deadline, self._deadline_seconds = when, seconds
        try:
            yield
        finally:
            self._deadline, self._deadline_seconds = previous

    async def lines(self: Stream, delimiter: bytes = b"\n", max_size: int | None = None) -> AsyncIterator[bytes]:
        """Each line with its delimiter; a last unterminated line is yielded as it is."""
        while True:
            try:
                yield await self.receive_until(delimiter, max_size)
            except IncompleteReadError as e:
                if e.partial:
                    yield e.partial
                return
