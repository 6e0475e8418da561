"""The mailbox connection: proto/wormhole.py's machine driven over a WebSocket on the socket layer."""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

from socketkit.errors import DeadlineError, PeerError, WrongCodeError
from socketkit.peer import PUBLIC_MAILBOX
from socketkit.peer.websocket import WebSocketClient
from socketkit.proto import wormhole as wh


class MailboxSession:
    """One side of a wormhole over one mailbox connection. Every wait is bounded by a timeout."""

    def __init__(self, url: str = PUBLIC_MAILBOX, *, appid: str = wh.APPID,
                 app_versions: dict[str, Any] | None = None, timeout: float = 30.0) -> None:
        self.url = url
        self.timeout = timeout
        self.machine = wh.Wormhole(appid=appid, app_versions=app_versions or {})
        self.welcome: dict[str, Any] = {}
        self.their_versions: dict[str, Any] | None = None
        self.verifier: bytes | None = None
        self._ws: WebSocketClient | None = None
        self._events: collections.deque[object] = collections.deque()
        self._messages: collections.deque[bytes] = collections.deque()

    @property
    def code(self) -> str | None:
        return self.machine.code

    async def open(self, code: str | None = None, *, allocate: bool = False, words: int = 2) -> None:
        try:
            self._ws = await WebSocketClient.connect(self.url, timeout=self.timeout)
        except PeerError:
            raise
        except Exception as e:  # noqa: BLE001 - ConnectError, DeadlineError, TLSError: one line for the user
            raise PeerError(f"cannot reach the mailbox server {self.url}: {e}") from None
        self.machine.start(code, allocate=allocate, words=words)
        await self._flush()

    async def _flush(self) -> None:
        assert self._ws is not None
        for text in self.machine.take_outgoing():
            await self._ws.send_text(text)

    async def _pump(self, timeout: float | None) -> None:
        """Read one server message and run it through the machine."""
        assert self._ws is not None
        try:
            text = await self._ws.receive_text(timeout=timeout)
        except DeadlineError:
            raise
        if text is None:
            raise PeerError(f"the mailbox server {self.url} closed the connection")
        for event in self.machine.receive(text):
            if isinstance(event, wh.Welcome):
                self.welcome = event.info
            elif isinstance(event, wh.Verified):
                self.their_versions = event.app_versions
                self.verifier = event.verifier
            elif isinstance(event, wh.Message):
                self._messages.append(event.body)
            self._events.append(event)
        await self._flush()

    async def wait_for(self, kind: type, timeout: float | None = None) -> Any:
        """Run the machine until an event of `kind`; DeadlineError after `timeout` (None: self.timeout)."""
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                while True:
                    while self._events:
                        event = self._events.popleft()
                        if isinstance(event, kind):
                            return event
                    await self._pump(None)
        except TimeoutError:
            raise DeadlineError(f"waited {limit:g}s for {kind.__name__} from the mailbox", seconds=limit) from None

    async def code_allocated(self) -> str:
        if self.machine.code is None:
            await self.wait_for(wh.CodeAllocated)
        assert self.machine.code is not None
        return self.machine.code

    async def verified(self, timeout: float) -> dict[str, Any]:
        """Wait for the other side (up to `timeout`), then for its version: the code is confirmed."""
        if self.their_versions is None:
            await self.wait_for(wh.KeyEstablished, timeout)
            await self.wait_for(wh.Verified, self.timeout)
        assert self.their_versions is not None
        return self.their_versions

    async def send_json(self, obj: dict[str, Any]) -> None:
        self.machine.send_json(obj)
        await self._flush()

    async def receive_json(self, timeout: float | None = None) -> dict[str, Any]:
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                while not self._messages:
                    await self._pump(None)
        except TimeoutError:
            raise DeadlineError(f"the other side said nothing for {limit:g}s", seconds=limit) from None
        body = self._messages.popleft()
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError):  # deep nesting raises RecursionError
            obj = None
        if not isinstance(obj, dict):
            raise PeerError("the other side sent a message that is not a JSON object")
        return obj

    def derive_key(self, purpose: bytes, length: int = 32) -> bytes:
        return self.machine.derive_key(purpose, length)

    async def close(self, mood: str = "happy", timeout: float = 0.0) -> None:
        """Release the nameplate and close the mailbox with `mood`, then the connection. Never raises.

        The server's `released`/`closed` replies are waited for only up to `timeout` (none by default): the
        messages are on the wire before our FIN, and a server that commits to disk may take a while (after a
        large transfer its fsync waits for the page cache) while there is nothing left for us to do."""
        ws, self._ws = self._ws, None
        if ws is None:
            return
        self._ws = ws
        try:
            self.machine.close(mood)
            await self._flush()
            if timeout > 0:
                async with asyncio.timeout(timeout):
                    while not self.machine.done:
                        await self._pump(None)
        except (Exception, TimeoutError):  # noqa: BLE001 - closing: the server may be gone
            pass
        finally:
            self._ws = None
            try:
                await ws.aclose(wait=False)
            except Exception:  # noqa: BLE001
                pass


def mood_for(exc: BaseException | None) -> str:
    if exc is None:
        return "happy"
    if isinstance(exc, WrongCodeError):
        return "scared"
    return "errory"


__all__ = ["MailboxSession", "PUBLIC_MAILBOX", "mood_for"]
