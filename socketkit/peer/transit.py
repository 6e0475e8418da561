"""Transit on the socket layer: listen, connect to the other side's hints and to the relays, run the
handshake on every candidate at once, keep the first that completes, and carry records on it.

Both sides listen and both connect (whichever direction a firewall lets through wins); relays are tried
after RELAY_DELAY when direct hints exist, at once otherwise. The sender decides: `go` on the first
connection whose handshake completed, `nevermind` on the rest. Every attempt is bounded in time; the whole
race too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from typing import Any

from socketkit.errors import IncompleteReadError, PeerError, PeerProtocolError
from socketkit.net.connect import connect
from socketkit.net.interfaces import local_addresses
from socketkit.net.limits import Limits
from socketkit.net.server import Server, start_server
from socketkit.net.stream import Stream
from socketkit.peer import PUBLIC_RELAY
from socketkit.proto import transit as tp
from socketkit.proto.wormhole_transfer import MAX_HINTS, Hint, transit_message

log = logging.getLogger("socketkit.peer")

RELAY_DELAY = 2.0
ATTEMPT_TIMEOUT = 20.0
# Big buffers: a transfer is throughput-bound, and these bound memory per connection all the same.
TRANSIT_LIMITS = Limits(read_buffer=8 << 20, write_buffer=8 << 20, idle_timeout=120.0, max_connections=64)


def relay_hint(url: str) -> Hint:
    """tcp://host:port (or wormhole's tcp:host:port) as a relay hint."""
    text = url.strip()
    if text.startswith("tcp://"):
        text = text[6:]
    elif text.startswith("tcp:"):
        text = text[4:]
    else:
        raise PeerError(f"bad transit relay {url!r}: use tcp://HOST:PORT")
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PeerError(f"bad transit relay {url!r}: use tcp://HOST:PORT")
    return Hint(host, int(port), 0.0)


def _tcp(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"tcp://[{host}]:{port}"
    except ValueError:
        pass
    return f"tcp://{host}:{port}"


class Pipe:
    """The winning connection: records in, records out. The record layer can be switched once, after the
    socketkit start record (see proto/wormhole_transfer.py)."""

    def __init__(self, stream: Stream, key: bytes, is_sender: bool, description: str) -> None:
        self.stream = stream
        self._key = key
        self._is_sender = is_sender
        self.records: tp.SecretBoxRecords | tp.AesGcmRecords = tp.SecretBoxRecords(key, is_sender)
        self.description = description
        self.max_record = tp.MAX_RECORD

    def use(self, layer: str) -> None:
        """Switch both directions to another record layer (numbering starts again: new keys)."""
        if layer != self.records.name:
            self.records = tp.RECORD_LAYERS[layer](self._key, self._is_sender)

    async def send_record(self, plaintext: bytes) -> None:
        for part in self.records.seal(plaintext):
            await self.stream.send(part)

    async def receive_record(self, timeout: float | None = None) -> bytes:
        header = await self.stream.receive_exactly(4, timeout=timeout)
        n = int.from_bytes(header, "big")
        if n > self.max_record:
            raise PeerProtocolError(f"transit record of {n} bytes (at most {self.max_record})")
        # decrypted straight out of the stream's buffer: the record is never copied before the cipher
        return await self.stream.receive_exactly_with(n, self.records.open, timeout=timeout)

    async def aclose(self) -> None:
        await self.stream.aclose()


class Transit:
    """One side's transit: `listen()` for our hints, `add_hints()` with theirs, then `connect()`."""

    def __init__(self, key: bytes, *, is_sender: bool, relays: list[Hint] | None = None, listen: bool = True,
                 advertise: list[str] | None = None, timeout: float = 60.0) -> None:
        self.key = key
        self.is_sender = is_sender
        self.side = os.urandom(8).hex()
        self.our_relays = list(relays or [])
        self.listen_enabled = listen
        self.advertise = advertise
        self.timeout = timeout
        self.their_direct: list[Hint] = []
        self.their_relays: list[Hint] = []
        self.direct: list[Hint] = []
        self._server: Server | None = None
        # Made now: a candidate may complete before connect() is called (the other side was quicker).
        self._winner: asyncio.Future[Pipe] = asyncio.get_running_loop().create_future()
        self._candidates: set[Stream] = set()
        self._release = asyncio.Event()

    async def listen(self) -> list[Hint]:
        """Start the listener (unless told not to) and return our direct hints."""
        if not self.listen_enabled or self._server is not None:
            return self.direct
        addresses = self.advertise or local_addresses()
        # Listen where we advertise when told to (e.g. loopback only); on every interface otherwise.
        bind = addresses[0] if self.advertise and len(addresses) == 1 else "0.0.0.0"
        if bind != "0.0.0.0" and ipaddress.ip_address(bind).version == 6:
            bind = f"[{bind}]"
        self._server = await start_server(f"tcp://{bind}:0", self._inbound, limits=TRANSIT_LIMITS, name="transit")
        port = self._server.endpoints[0].port
        self.direct = [Hint(a, port, 0.0) for a in addresses if ipaddress.ip_address(a).version == 4 or bind != "0.0.0.0"]
        return self.direct

    def message(self) -> dict[str, Any]:
        return transit_message(self.direct, self.our_relays)

    def add_hints(self, direct: list[Hint], relays: list[Hint]) -> None:
        self.their_direct += [h for h in direct if h not in self.their_direct]
        self.their_relays += [h for h in relays if h not in self.their_relays and h not in self.our_relays]
        # at most MAX_HINTS of each, however many transit messages the other side sends
        del self.their_direct[MAX_HINTS:], self.their_relays[MAX_HINTS:]

    # -- the race -------------------------------------------------------------------------------
    async def connect(self) -> Pipe:
        attempts: list[asyncio.Task[None]] = []
        delay = 0.0
        for hint in self.their_direct:
            attempts.append(asyncio.create_task(self._outbound(hint, None, 0.0)))
            delay = RELAY_DELAY
        for hint in self.our_relays + self.their_relays:
            attempts.append(asyncio.create_task(self._outbound(hint, self.side, delay)))
        if not attempts and self._server is None:
            raise PeerError("no way to reach the other side: no hints from it, no listener, no relay")
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    pending = [t for t in attempts if not t.done()]
                    if self._winner.done():
                        break
                    if not pending and self._server is None:
                        break
                    waiters: list[asyncio.Future[Any]] = [self._winner, *pending]
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    if not pending and not self._winner.done():
                        # Every outbound attempt failed; an inbound one may still come until the timeout.
                        await asyncio.wait([self._winner])
        except TimeoutError:
            raise PeerError(f"could not connect to the other side within {self.timeout:g}s "
                            "(direct and relayed attempts all failed)") from None
        finally:
            for t in attempts:
                t.cancel()
            await asyncio.gather(*attempts, return_exceptions=True)
        if not self._winner.done():
            raise PeerError("could not connect to the other side: every direct and relayed attempt failed")
        pipe = self._winner.result()
        if self._server is not None:
            # No new candidates; the winner (if it came in) is held by its handler until aclose().
            self._server._accepting = False
        return pipe

    async def _outbound(self, hint: Hint, relay_side: str | None, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self._winner.done():
            return
        what = f"{'relay ' if relay_side else ''}{hint.host}:{hint.port}"
        try:
            stream = await connect(_tcp(hint.host, hint.port), timeout=ATTEMPT_TIMEOUT, limits=TRANSIT_LIMITS)
        except Exception as e:  # noqa: BLE001 - one candidate failing is normal
            log.debug("transit: %s: %s", what, e)
            return
        ok = False
        try:
            ok = await self._handshake(stream, relay_side, ("relay " if relay_side else "direct ") + what)
        finally:
            if not ok:
                stream.abort()

    async def _inbound(self, stream: Stream) -> None:
        peer = stream.peer
        desc = f"direct <- {peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "direct (inbound)"
        if await self._handshake(stream, None, desc):
            await self._release.wait()  # the transfer runs on this stream from another task

    async def _handshake(self, stream: Stream, relay_side: str | None, desc: str) -> bool:
        hs = tp.Handshake(self.key, self.is_sender, relay_side)
        self._candidates.add(stream)
        try:
            async with asyncio.timeout(ATTEMPT_TIMEOUT):
                await stream.send(hs.take())
                rest = b""
                while hs.state not in ("ready", "done"):
                    data = await stream.receive(4096)
                    if not data:
                        raise tp.HandshakeFailed("closed during the handshake")
                    rest = hs.feed(data)
                    out = hs.take()
                    if out:
                        await stream.send(out)
                if self.is_sender:
                    won = not self._winner.done()
                    hs.decide(won)
                    await stream.send(hs.take())
                    if not won:
                        return False
                elif self._winner.done():
                    return False
        except (tp.HandshakeFailed, TimeoutError, IncompleteReadError, OSError, PeerError) as e:
            log.debug("transit: %s: %s", desc, e)
            return False
        finally:
            self._candidates.discard(stream)
        if rest:
            stream.unreceive(rest)
        self._winner.set_result(Pipe(stream, self.key, self.is_sender, desc))
        for other in list(self._candidates):  # the race is over: no one waits on a loser
            other.abort()
        return True

    async def aclose(self) -> None:
        self._release.set()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.aclose(drain=0)
            self._server = None


__all__ = ["PUBLIC_RELAY", "Pipe", "Transit", "relay_hint"]
