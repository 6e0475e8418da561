"""magic-wormhole's transit relay, sans-I/O: the handshake, pairing, and every connection's deadlines.

A relay client opens a TCP connection and sends one line:
    please relay TOKEN for side SIDE\\n      (TOKEN: 64 hex digits, SIDE: 16; the reference accepts any
    please relay TOKEN\\n                    word characters) -- the second is the old form, without a side
Two connections with the same token and different sides (or either without a side) are a pair: each is
answered "ok\\n", and from then on every byte one sends goes to the other. Until then the relay says
"bad handshake\\n" to a line it cannot read, "impatient\\n" to a client that sends before its "ok", and
when a pair forms, any other connection still waiting with that token is redundant and closed.

The machine sees the bytes only until a connection is paired; the I/O layer pumps the relayed bytes
itself (with backpressure) once it gets `Relay`. No sockets, no asyncio, no clocks: `now` is passed in,
and `tick(now)` closes the connections past their handshake or waiting deadline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["Close", "Relay", "Send", "TransitLimits", "TransitRelay"]

# The longest line a handshake can be is ~110 bytes; the reference reads lines of up to 1024.
MAX_LINE = 1024
_HANDSHAKE = re.compile(rb"please relay (\w{64})(?: for side (\w{16}))?", re.ASCII)

OK = b"ok\n"
BAD = b"bad handshake\n"
IMPATIENT = b"impatient\n"

HANDSHAKE, WAITING, RELAYING = "handshake", "waiting", "relaying"


@dataclass(frozen=True, slots=True)
class TransitLimits:
    #: open connections from one client address (a transfer takes one or two per side)
    max_per_address: int = 32
    #: seconds a new connection has to send its handshake line
    handshake_timeout: float = 30.0
    #: seconds a connection waits for its partner before it is closed
    wait_timeout: float = 120.0

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"TransitLimits.{name} must be positive, got {value!r}")


class Send(NamedTuple):
    cid: int
    data: bytes


class Close(NamedTuple):
    """Close connection `cid` (after what was sent to it is flushed); `reason` is for logs and counters."""

    cid: int
    reason: str


class Relay(NamedTuple):
    """From now on pump `cid`'s bytes to `partner`, starting with `first` (bytes `cid` sent right behind its
    handshake line, before it could see its "ok": the reference relays those too)."""

    cid: int
    partner: int
    first: bytes = b""


Event = Send | Close | Relay


@dataclass(slots=True, eq=False)
class _Conn:
    address: str
    since: float                     # connected, then: started waiting, then: paired
    state: str = HANDSHAKE
    buf: bytearray = field(default_factory=bytearray)
    token: bytes | None = None
    side: bytes | None = None
    partner: int | None = None


class TransitRelay:
    """Every connection of one transit relay; the I/O layer calls in and carries out the events."""

    def __init__(self, limits: TransitLimits | None = None) -> None:
        self.limits = limits or TransitLimits()
        self.conns: dict[int, _Conn] = {}
        self._pending: dict[bytes, list[int]] = {}          # token -> waiting connections, oldest first
        self._per_address: dict[str, int] = {}
        self.counters = {"pairs": 0, "bad_handshakes": 0, "impatient": 0, "redundant": 0,
                         "handshake_timeouts": 0, "lonely": 0, "refused": 0}

    # -- the I/O layer's calls ----------------------------------------------------------------------
    def connect(self, cid: int, now: float, address: str = "") -> list[Event]:
        """A new connection from `address`: nothing to say yet, unless that address has too many."""
        count = self._per_address.get(address, 0)
        if count >= self.limits.max_per_address:
            self.counters["refused"] += 1
            return [Send(cid, b"too many connections from your address\n"),
                    Close(cid, "max_per_address")]
        self._per_address[address] = count + 1
        self.conns[cid] = _Conn(address, now)
        return []

    def receive(self, cid: int, data: bytes, now: float) -> list[Event]:
        """Bytes from `cid` before it is paired (after that the I/O layer relays them and they are ignored
        here, as b"" is: call `lost` at the end of the stream)."""
        conn = self.conns.get(cid)
        if conn is None or not data:
            return []
        if conn.state == WAITING:
            self.counters["impatient"] += 1
            return [Send(cid, IMPATIENT), *self._end(cid, "impatient")]
        if conn.state != HANDSHAKE:
            return []
        conn.buf += data
        end = conn.buf.find(b"\n")
        if end < 0:
            if len(conn.buf) > MAX_LINE:
                return self._bad(cid)
            return []
        line, rest = bytes(conn.buf[:end]), bytes(conn.buf[end + 1:])
        conn.buf = bytearray()
        m = _HANDSHAKE.fullmatch(line)
        if m is None:
            return self._bad(cid)
        return self._register(cid, conn, m.group(1), m.group(2), rest, now)

    def lost(self, cid: int, now: float) -> list[Event]:
        """`cid` is gone (end of stream, reset, or its relaying ended): its partner is closed too."""
        conn = self.conns.get(cid)
        if conn is None:
            return []
        if conn.state == WAITING:
            self.counters["lonely"] += 1
        return self._end(cid, "lost")

    def tick(self, now: float) -> list[Event]:
        """Close the connections past their deadline: no handshake yet, or no partner yet."""
        out: list[Event] = []
        limits = self.limits
        for cid, conn in list(self.conns.items()):
            if conn.state == HANDSHAKE and now - conn.since >= limits.handshake_timeout:
                self.counters["handshake_timeouts"] += 1
                out += self._end(cid, "handshake timeout")
            elif conn.state == WAITING and now - conn.since >= limits.wait_timeout:
                self.counters["lonely"] += 1
                out += self._end(cid, "no partner came")
        return out

    def state(self, cid: int) -> str | None:
        conn = self.conns.get(cid)
        return conn.state if conn is not None else None

    def stats(self) -> dict[str, int]:
        states = [c.state for c in self.conns.values()]
        return {"handshaking": states.count(HANDSHAKE), "waiting": states.count(WAITING),
                "relaying": states.count(RELAYING), **self.counters}

    # -- inside -----------------------------------------------------------------------------------
    def _bad(self, cid: int) -> list[Event]:
        self.counters["bad_handshakes"] += 1
        return [Send(cid, BAD), *self._end(cid, "bad handshake")]

    def _register(self, cid: int, conn: _Conn, token: bytes, side: bytes | None, rest: bytes, now: float
                  ) -> list[Event]:
        waiting = self._pending.get(token, [])
        for other in waiting:
            peer = self.conns[other]
            if peer.side is None or side is None or peer.side != side:
                break
        else:
            if rest:  # bytes before "ok", with no partner to give them to
                self.counters["impatient"] += 1
                return [Send(cid, IMPATIENT), *self._end(cid, "impatient")]
            conn.state, conn.token, conn.side, conn.since = WAITING, token, side, now
            self._pending.setdefault(token, []).append(cid)
            return []
        out: list[Event] = []
        del self._pending[token]
        # The others still waiting with this token lost the race: the reference drops them as "redundant".
        for spare in waiting:
            if spare != other:
                self.counters["redundant"] += 1
                out += self._end(spare, "redundant")
        conn.token, conn.side = token, side
        self.counters["pairs"] += 1
        peer.state = conn.state = RELAYING
        peer.since = conn.since = now
        peer.partner, conn.partner = cid, other
        return [*out, Send(other, OK), Relay(other, cid), Send(cid, OK), Relay(cid, other, rest)]

    def _end(self, cid: int, reason: str) -> list[Event]:
        conn = self.conns.pop(cid, None)
        if conn is None:
            return []
        left = self._per_address.get(conn.address, 0) - 1
        if left > 0:
            self._per_address[conn.address] = left
        else:
            self._per_address.pop(conn.address, None)
        out: list[Event] = [Close(cid, reason)]
        if conn.state == WAITING and conn.token is not None:
            waiting = self._pending.get(conn.token)
            if waiting is not None and cid in waiting:
                waiting.remove(cid)
                if not waiting:
                    del self._pending[conn.token]
        if conn.state == RELAYING and conn.partner is not None:
            partner = self.conns.get(conn.partner)
            if partner is not None and partner.partner == cid:
                out += self._end(conn.partner, "partner left")
        return out
