"""The ASGI lifespan protocol: startup before the first connection, shutdown after the last."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from socketkit.errors import SocketkitError

log = logging.getLogger("socketkit.web")


class Lifespan:
    def __init__(self, app: Any, mode: str = "auto", timeout: float = 30.0) -> None:
        self.app = app
        self.mode = mode
        self.timeout = timeout
        self.state: dict[str, Any] = {}
        self.supported = mode != "off"
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._failed: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        if not self.supported:
            return
        self._task = asyncio.get_running_loop().create_task(self._main(), name="asgi lifespan")
        await self._inbox.put({"type": "lifespan.startup"})
        done = asyncio.ensure_future(self._started.wait())
        await asyncio.wait({done, self._task}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
        done.cancel()
        if self._failed is not None:
            raise SocketkitError(f"application startup failed: {self._failed}")
        if not self._started.is_set() and self.supported:
            if self._task.done():
                return  # the app ended the lifespan without answering: treated as unsupported
            raise SocketkitError(f"application startup did not finish within {self.timeout:g}s")

    async def shutdown(self) -> None:
        if not self.supported or self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            async with asyncio.timeout(self.timeout):
                await self._stopped.wait()
        except TimeoutError:
            log.error("application shutdown did not finish within %gs", self.timeout)
            self._task.cancel()
        if self._failed is not None:
            log.error("application shutdown failed: %s", self._failed)

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:  # noqa: BLE001 - an app may refuse the lifespan scope
            if isinstance(exc, asyncio.CancelledError):
                raise
            if self.mode == "on" or self._started.is_set():
                log.exception("exception in the ASGI lifespan")
                self._failed = self._failed or repr(exc)
            else:
                log.debug("ASGI app does not support lifespan (%r); going on without it", exc)
                self.supported = False
        finally:
            self._started.set()
            self._stopped.set()

    async def _receive(self) -> dict[str, Any]:
        return await self._inbox.get()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._started.set()
        elif kind == "lifespan.startup.failed":
            self._failed = message.get("message", "") or "lifespan.startup.failed"
            self._started.set()
        elif kind == "lifespan.shutdown.complete":
            self._stopped.set()
        elif kind == "lifespan.shutdown.failed":
            self._failed = message.get("message", "") or "lifespan.shutdown.failed"
            self._stopped.set()
        else:
            raise RuntimeError(f"ASGI: unexpected lifespan message {kind!r}")


async def answer_lifespan(receive: Any, send: Any, on_shutdown: Any = None) -> None:
    """For an ASGI app with nothing to set up: acknowledge startup and shutdown (calling `on_shutdown`
    first, if given). The small apps socketkit ships (static files, pages) all answer this way."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if on_shutdown is not None:
                on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
