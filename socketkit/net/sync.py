"""A blocking facade for scripts: the same Streams, errors and timeouts, without async/await.

    with socketkit.sync.connect("tcp://127.0.0.1:7007", timeout=5) as s:
        s.send(b"hello\\n")
        print(s.receive_until(b"\\n"))

The async Streams run on one private event loop in a daemon thread (started on first use and shared
by every blocking stream in the process); each call hands its coroutine over and waits for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from socketkit.errors import DeadlineError
from socketkit.net.connect import connect as _connect
from socketkit.net.endpoint import Endpoint
from socketkit.net.limits import Limits
from socketkit.net.stream import Stream

T = TypeVar("T")
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _portal() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            from socketkit.net.loop import new_event_loop

            loop = new_event_loop("auto")
            started = threading.Event()

            def main() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(started.set)
                loop.run_forever()

            threading.Thread(target=main, name="socketkit-sync", daemon=True).start()
            started.wait(10)
            _loop = loop
        return _loop


def _call(coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
    """Run `coro` on the portal loop; the deadline itself is enforced inside the loop."""
    loop = _portal()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("socketkit.sync cannot be used from inside its own event loop")
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        # The coroutine carries its own timeout, counted from when the loop starts it; this wait only guards
        # against a stuck loop, so it allows the loop as long again (at least a second) to get to it.
        return future.result(None if timeout is None else 2 * timeout + 1.0)
    except DeadlineError:
        raise
    except concurrent.futures.TimeoutError:  # (an alias of TimeoutError: ours is handled above)
        future.cancel()
        raise DeadlineError("operation did not finish in time", seconds=timeout) from None
    except KeyboardInterrupt:
        future.cancel()
        raise


async def _bounded(coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
    if timeout is None:
        return await coro
    try:
        async with asyncio.timeout(timeout):
            return await coro
    except TimeoutError as e:
        if isinstance(e, DeadlineError):
            raise
        raise DeadlineError(f"did not finish within {timeout:g}s", seconds=timeout) from None


class SyncStream:
    """Blocking twin of `Stream`; every method takes `timeout` (default: the one given to connect)."""

    def __init__(self, stream: Stream, timeout: float | None) -> None:
        self.stream = stream
        self.timeout = timeout

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        timeout = self.timeout if timeout is None else timeout
        return _call(_bounded(coro, timeout), timeout)

    def send(self, data: bytes, *, timeout: float | None = None) -> None:
        self._run(self.stream.send(data), timeout)

    def sendall(self, data: bytes, *, timeout: float | None = None) -> None:
        self.send(data, timeout=timeout)

    def receive(self, max_bytes: int = 65536, *, timeout: float | None = None) -> bytes:
        return self._run(self.stream.receive(max_bytes), timeout)

    def receive_exactly(self, n: int, *, timeout: float | None = None) -> bytes:
        return self._run(self.stream.receive_exactly(n), timeout)

    def receive_until(self, delimiter: bytes = b"\n", max_size: int | None = None, *,
                      timeout: float | None = None) -> bytes:
        return self._run(self.stream.receive_until(delimiter, max_size), timeout)

    def send_eof(self) -> None:
        self._run(self.stream.send_eof(), None)

    def start_tls(self, context, *, server_hostname: str | None = None, timeout: float | None = None) -> None:
        self._run(self.stream.start_tls(context, server_hostname=server_hostname), timeout)

    def __iter__(self) -> Iterator[bytes]:
        while data := self.receive():
            yield data

    @property
    def local(self) -> Any:
        return self.stream.local

    @property
    def peer(self) -> Any:
        return self.stream.peer

    @property
    def tls(self):
        return self.stream.tls

    def close(self) -> None:
        if not self.stream.closed or not self.stream._lost:
            _call(self.stream.aclose(), 6.0)

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(endpoint: str | Endpoint, *, timeout: float | None = 10.0, limits: Limits | None = None,
            ssl_context=None) -> SyncStream:
    """Blocking `socketkit.connect`: same endpoints, errors and timeouts."""
    stream = _call(_connect(endpoint, timeout=timeout, limits=limits, ssl_context=ssl_context),
                   None if timeout is None else timeout)
    return SyncStream(stream, timeout)
