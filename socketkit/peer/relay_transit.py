"""The transit relay as a service: `proto.transit_relay` on socketkit Streams, with the relay's byte pumps.

Every connection's handler reads its own stream: the handshake line, then (once paired) its side of the
conversation, which `socketkit.net.relay.pump` copies to the partner with backpressure both ways: a side
that sends faster than the other reads is held back after `read_buffer` + `write_buffer` bytes (the
Limits of the transit server) plus one chunk in flight, never more.

While a connection waits for its partner, a reader task watches its stream (bytes there are "impatient",
EOF means it left) and the handler waits for that or for the partner. The partner's arrival writes both
"ok"s at once (the first side may then answer before its handler wakes up: bytes its reader took after
the pairing are relayed first, not taken for impatience).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from socketkit.dashboard.events import emit
from socketkit.errors import SocketkitError
from socketkit.net.relay import pump
from socketkit.net.stream import Stream
from socketkit.proto.transit_relay import HANDSHAKE, MAX_LINE, WAITING, Close, Relay, Send, TransitRelay
from socketkit.proto.wormhole_channels import Usage

if TYPE_CHECKING:
    from socketkit.peer.relay_store import RelayStore

log = logging.getLogger("socketkit.peer.relay")


def _where(stream: Stream) -> str:
    peer = stream.peer
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


class _Peer:
    """The service's side of one transit connection."""

    __slots__ = ("cid", "stream", "wake", "partner", "first", "closing", "done", "moved", "base", "started")

    def __init__(self, cid: int, stream: Stream) -> None:
        self.cid = cid
        self.stream = stream
        self.wake: asyncio.Future[None] | None = None   # set while its handler waits for a partner
        self.partner: _Peer | None = None
        self.first = b""                   # its bytes to relay before pumping its stream
        self.closing = False
        self.done = asyncio.Event()        # its direction of the pair is over (or it never got that far)
        self.moved = 0
        self.base: int | None = None       # stream.bytes_in when relaying began (live byte counter)
        self.started = time.time()


class TransitService:
    """The stream handler of the transit relay's servers (`await start_server(eps, service.handle)`)."""

    def __init__(self, relay: TransitRelay, store: RelayStore | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.relay = relay
        self.store = store
        self.clock = clock
        self.peers: dict[int, _Peer] = {}
        self._ids = itertools.count(1)
        self.bytes_relayed = 0             # by pairs that ended; stats() adds the live ones

    def stats(self) -> dict[str, int]:
        live = sum(p.stream.bytes_in - p.base for p in self.peers.values() if p.base is not None)
        return {**self.relay.stats(), "bytes_relayed": self.bytes_relayed + live}

    async def tick_forever(self) -> None:
        limits = self.relay.limits
        interval = max(0.02, min(1.0, limits.handshake_timeout / 4, limits.wait_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            self._apply(self.relay.tick(self.clock()))

    # -- events -----------------------------------------------------------------------------------
    def _apply(self, events: list[Send | Close | Relay]) -> None:
        for event in events:
            peer = self.peers.get(event.cid)
            if peer is None:
                continue
            kind = type(event)
            if kind is Send:
                if not peer.closing:
                    try:
                        peer.stream.send_nowait(event.data)  # type: ignore[union-attr]
                    except SocketkitError:
                        pass
            elif kind is Close:
                peer.closing = True
                peer.stream.close()   # a handler waiting on this stream wakes with ClosedError
            else:
                peer.partner = self.peers.get(event.partner)  # type: ignore[union-attr]
                peer.first = event.first  # type: ignore[union-attr]
                if peer.wake is not None and not peer.wake.done():
                    peer.wake.set_result(None)

    # -- one connection ---------------------------------------------------------------------------
    async def handle(self, stream: Stream) -> None:
        cid = next(self._ids)
        peer = self.peers[cid] = _Peer(cid, stream)
        relay = self.relay
        address = stream.peer[0] if isinstance(stream.peer, tuple) else ""
        try:
            self._apply(relay.connect(cid, self.clock(), address))
            while relay.state(cid) == HANDSHAKE and not peer.closing:
                data = await stream.receive(MAX_LINE + 1)
                self._apply(relay.receive(cid, data, self.clock()) if data else relay.lost(cid, self.clock()))
            if relay.state(cid) == WAITING:
                await self._wait(peer)
            if peer.partner is not None and not peer.closing:
                await self._relay(peer, peer.partner)
        except (SocketkitError, OSError):
            pass  # reset, closed by a deadline or by the partner's end: the pair's end is below
        finally:
            peer.done.set()
            self._apply(relay.lost(cid, self.clock()))
            self.peers.pop(cid, None)
            if peer.base is not None:
                self.bytes_relayed += peer.moved
                peer.base = None

    async def _wait(self, peer: _Peer) -> None:
        loop = asyncio.get_running_loop()
        reader = loop.create_task(peer.stream.receive(4096))
        try:
            if peer.partner is None:
                peer.wake = loop.create_future()
                await asyncio.wait((reader, peer.wake), return_when=asyncio.FIRST_COMPLETED)
        finally:
            peer.wake = None
            reader.cancel()
            try:
                data: bytes | None = await reader
            except asyncio.CancelledError:
                if not reader.cancelled():
                    raise  # we are cancelled ourselves (server shutdown)
                data = None
            except SocketkitError:
                data = b""
        if data is None or peer.closing:
            return
        cid, now = peer.cid, self.clock()
        if not data:
            self._apply(self.relay.lost(cid, now))                # it left before its partner came
        elif self.relay.state(cid) == WAITING:
            self._apply(self.relay.receive(cid, data, now))       # impatient
        else:
            peer.first = data + peer.first                        # its answer to the "ok" just sent

    async def _relay(self, peer: _Peer, partner: _Peer) -> None:
        stream = peer.stream
        stream.info = {"protocol": "transit relay", "paired with": _where(partner.stream)}
        if peer.cid < partner.cid:
            emit("transfer through the relay started", service="peer", between=f"{_where(stream)} and "
                 f"{_where(partner.stream)}")
        peer.base = stream.bytes_in - len(peer.first)
        try:
            if peer.first:
                await partner.stream.send(peer.first)
                peer.moved = len(peer.first)
            peer.moved += await pump(stream, partner.stream)
        finally:
            peer.done.set()
        # Our direction is over; the other may still flow (a half-close): the pair ends with both.
        await partner.done.wait()
        if peer.cid < partner.cid:
            took = time.time() - min(peer.started, partner.started)
            emit("transfer relayed", service="peer", bytes=peer.moved + partner.moved, seconds=round(took, 1),
                 rate=f"{(peer.moved + partner.moved) / max(took, 1e-3) / 1e6:.1f} MB/s")
        if peer.cid < partner.cid and self.store is not None:
            total = peer.moved + partner.moved
            started = min(peer.started, partner.started)
            usage = Usage("transit", "", started, abs(peer.started - partner.started), time.time() - started,
                          "happy", total)
            try:
                self.store.record([usage])
            except Exception as e:  # noqa: BLE001 - counters are not worth a failed transfer
                log.error("relay database write failed: %s", e)
