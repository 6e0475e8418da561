"""The backplane's link to Redis: one RESP3 connection (commands pipelined and answered in order,
pub/sub pushes handed to a callback), the redis:// URL, and the error type. See backplane.py."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from socketkit.chat import resp
from socketkit.errors import SocketkitError
from socketkit.net.stream import Stream


class BackplaneError(SocketkitError):
    """Redis refused or broke the conversation (wrong URL, old Redis, protocol error)."""


class _Conn:
    """One RESP3 connection: commands are pipelined and answered in order; pushes go to `on_push`."""

    def __init__(self, stream: Stream, on_push: Callable[[resp.Push], None]) -> None:
        self.stream = stream
        self.parser = resp.Parser()
        self.waiting: deque[Callable[[Any], None] | None] = deque()
        self.on_push = on_push
        self.last_reply = time.monotonic()

    def send(self, *args: Any, cb: Callable[[Any], None] | None = None) -> None:
        self.stream.send_nowait(resp.encode_command(*args))
        self.waiting.append(cb)

    def send_many(self, commands: list[tuple[Any, ...]]) -> None:
        if commands:
            self.stream.send_nowait(b"".join(resp.encode_command(*c) for c in commands))
            self.waiting.extend([None] * len(commands))

    async def call(self, *args: Any, timeout: float = 5.0) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.send(*args, cb=lambda v: fut.done() or fut.set_result(v))
        try:
            value = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise BackplaneError(f"redis did not answer {args[0]} within {timeout:g}s") from None
        if isinstance(value, resp.Error):
            raise BackplaneError(f"redis refused {args[0]}: {value}")
        return value

    async def read_loop(self) -> None:
        try:
            async for chunk in self.stream:
                self.last_reply = time.monotonic()
                for reply in self.parser.feed(chunk):
                    if type(reply) is resp.Push:
                        self.on_push(reply)
                    elif self.waiting:
                        cb = self.waiting.popleft()
                        if cb is not None:
                            cb(reply)
        finally:
            lost = resp.Error("LOST connection to redis")
            while self.waiting:
                cb = self.waiting.popleft()
                if cb is not None:
                    cb(lost)


def parse_url(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise BackplaneError(f"backplane {url!r}: expected redis://HOST:PORT (or rediss:// for TLS)")
    try:
        port = parts.port or 6379
    except ValueError:
        raise BackplaneError(f"backplane {url!r}: bad port") from None
    host = parts.hostname or "127.0.0.1"
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise BackplaneError(f"backplane {url!r}: the path is a database number, e.g. redis://host:6379/0")
    scheme = "tls" if parts.scheme == "rediss" else "tcp"
    return {"endpoint": f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}",
            "password": unquote(parts.password) if parts.password else None,
            "username": unquote(parts.username) if parts.username else None,
            "db": int(path) if path else None, "query": query}
