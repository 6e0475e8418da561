"""magic-wormhole's mailbox (rendezvous) server protocol, sans-I/O: JSON texts in, JSON texts out.

The I/O layer gives every WebSocket connection an id and calls `connect`, `receive` (one text or binary
message) and `disconnect`; each returns the `Send`s to write, possibly to other connections (a message
added to a mailbox goes to every connection listening to it, the sender's own included). No sockets, no
asyncio, no clocks: `now` is passed in (seconds since the epoch). The state (`channels`) changes as the
protocol runs; `take_changes()` hands the I/O layer what to persist.

The messages, as the reference server speaks them (every one it sends carries `server_tx`):
  <- welcome {welcome: {motd?, current_cli_version?, error?, your-address}}   on connect
  -> ping {ping}            <- pong {pong}               (no bind needed)
  -> bind {appid, side, client_version?}                 (first, once)
  -> list                   <- nameplates {nameplates: [{id}, ...]}
  -> allocate               <- allocated {nameplate}      (once per connection; claims it too)
  -> claim {nameplate}      <- claimed {mailbox}          (once per connection)
  -> release {nameplate?}   <- released                   (once per connection)
  -> open {mailbox}         <- message {side, phase, body, server_rx, id} for each stored one, then live
  -> add {phase, body, id?}    (to every listener, the sender included)
  -> close {mailbox?, mood?} <- closed                    (once per connection)
Every message with a `type` is answered first with ack {id} (the client's `id`, or null); bad input with
error {error, orig}. Nothing a client sends makes these methods raise.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from socketkit.proto.wormhole_channels import (
    Changes,
    Channels,
    Mailbox,
    MailboxLimits,
    Message,
    Nameplate,
    Refused,
    valid_nameplate,
)

__all__ = ["MailboxLimits", "MailboxServer", "Send"]

_HEX = re.compile(r"[0-9a-fA-F]*")
_MAX_DEPTH = 32
_ORIG_MAX = 4096  # an error echoes the client's message back only when it is this short (in characters)


class Send(NamedTuple):
    """Write `text` (one JSON object) to connection `cid`."""

    cid: int
    text: str


@dataclass(slots=True, eq=False)
class _Client:
    """One WebSocket connection's part of the protocol (the reference keeps the same flags)."""

    address: str
    port: int | None
    app: str | None = None
    side: str | None = None
    did_allocate: bool = False
    did_claim: bool = False
    nameplate: str | None = None
    did_release: bool = False
    mailbox: Mailbox | None = None       # opened (and listened to) on this connection
    mailbox_id: str | None = None        # the last one named by open or close
    did_close: bool = False


def _shallow(value: Any) -> bool:
    """True if `value` nests at most _MAX_DEPTH containers deep: what we echo back (ids, pings, the
    original of an error) must be encodable again, and deep nesting is never a real client's message."""
    level = [value]
    for _ in range(_MAX_DEPTH):
        inner = []
        for item in level:
            if isinstance(item, dict):
                inner.extend(item.values())
            elif isinstance(item, list):
                inner.extend(item)
        if not inner:
            return True
        level = inner
    return False


def _encodable(text: str) -> bool:
    # JSON may carry lone surrogates ("\ud800"); such a name could not be stored or compared sanely
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity would not survive a strict client


class MailboxServer:
    """The whole mailbox server's protocol state; one instance serves every connection."""

    def __init__(self, limits: MailboxLimits | None = None, *, welcome: dict[str, Any] | None = None,
                 allow_list: bool = True, rng: random.Random | None = None) -> None:
        self.limits = limits or MailboxLimits()
        self.channels = Channels(self.limits, rng)
        self.welcome = dict(welcome or {})
        self.allow_list = allow_list
        self.clients: dict[int, _Client] = {}
        self.errors = 0      # error messages sent for bad input
        self.refused = 0     # requests refused by a limit
        self.messages_in = 0
        self._handlers = {
            "list": self._list, "allocate": self._allocate, "claim": self._claim, "release": self._release,
            "open": self._open, "add": self._add, "close": self._close,
        }

    # -- the I/O layer's calls ----------------------------------------------------------------------
    def connect(self, cid: int, now: float, address: str = "", port: int | None = None) -> list[Send]:
        """A new connection (`address`: the client's IP, used for per-client limits): the welcome."""
        self.clients[cid] = _Client(address, port)
        welcome = dict(self.welcome)
        you: dict[str, Any] = {}
        if port is not None:
            you["port"] = port
        if address.startswith("::ffff:") and "." in address:
            you["ipv4"] = address[7:]
        elif ":" in address:
            you["ipv6"] = address
        elif address:
            you["ipv4"] = address
        if you:
            welcome["your-address"] = you
        return [self._text(cid, now, "welcome", welcome=welcome)]

    def disconnect(self, cid: int, now: float) -> list[Send]:
        """The connection is gone: it stops listening; its claims and open mailboxes stay (it may come back)."""
        client = self.clients.pop(cid, None)
        if client is not None and client.mailbox is not None:
            client.mailbox.listeners.discard(cid)
        return []

    def receive(self, cid: int, data: str | bytes, now: float) -> list[Send]:
        """One message from connection `cid` (a WebSocket text, or a binary one holding UTF-8 JSON)."""
        client = self.clients.get(cid)
        if client is None:
            return []
        self.messages_in += 1
        out: list[Send] = []
        try:
            msg = self._decode(data)
        except Refused as e:
            raw = data if isinstance(data, str) else data.decode("utf-8", "replace")
            self.errors += 1
            out.append(self._text(cid, now, "error", error=e.explain,
                                  orig=raw if len(raw) <= _ORIG_MAX else raw[:_ORIG_MAX]))
            return out
        try:
            if "type" not in msg:
                raise Refused("missing 'type'")
            out.append(self._text(cid, now, "ack", id=msg.get("id")))
            kind = msg["type"]
            if kind == "ping":
                if "ping" not in msg:
                    raise Refused("ping requires 'ping'")
                out.append(self._text(cid, now, "pong", pong=msg["ping"]))
            elif kind == "bind":
                self._bind(client, msg)
            elif client.app is None:
                raise Refused("must bind first")
            else:
                handler = self._handlers.get(kind) if isinstance(kind, str) else None
                if handler is None:
                    raise Refused("unknown type")
                handler(cid, client, msg, now, out)
        except Refused as e:
            if e.limit is not None:
                self.refused += 1
            else:
                self.errors += 1
            out.append(self._text(cid, now, "error", error=e.explain, orig=self._orig(msg, data)))
        return out

    def prune(self, now: float) -> list[Send]:
        """Expire idle channels (call every few minutes); connections that had one open lose it."""
        for mb in self.channels.prune(now):
            self._forget(mb)
        return []

    def take_changes(self) -> Changes:
        return self.channels.take_changes()

    def restore(self, nameplates: list[Nameplate], mailboxes: list[Mailbox]) -> None:
        self.channels.restore(nameplates, mailboxes)

    def stats(self) -> dict[str, int]:
        channels = self.channels
        return {
            "clients": len(self.clients),
            "listening": sum(1 for c in self.clients.values() if c.mailbox is not None),
            "nameplates": len(channels.nameplates),
            "mailboxes": len(channels.mailboxes),
            "messages": channels.message_count,
            "stored_bytes": channels.stored,
            "messages_in": self.messages_in,
            "errors": self.errors,
            "refused": self.refused,
        }

    # -- encoding ---------------------------------------------------------------------------------
    @staticmethod
    def _text(cid: int, now: float, kind: str, **fields: Any) -> Send:
        fields["type"] = kind
        fields["server_tx"] = now
        return Send(cid, json.dumps(fields))

    @staticmethod
    def _decode(data: str | bytes) -> dict[str, Any]:
        if isinstance(data, (bytes, bytearray, memoryview)):
            try:
                data = bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                raise Refused("message is not UTF-8") from None
        try:
            msg = json.loads(data, parse_constant=_reject_constant)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            raise Refused("message is not JSON") from None
        if not isinstance(msg, dict):
            raise Refused("message is not a JSON object")
        if not _shallow(msg):
            raise Refused(f"message nested deeper than {_MAX_DEPTH} levels")
        return msg

    @staticmethod
    def _orig(msg: dict[str, Any], data: str | bytes) -> Any:
        if len(data) <= _ORIG_MAX:
            return msg
        # A large message (a refused body) is not echoed whole: its type and id say which one it was.
        return {key: msg[key] for key in ("type", "id") if key in msg}

    def _field(self, msg: dict[str, Any], key: str, kind: str) -> str:
        value = msg[key]
        if not isinstance(value, str) or not 0 < len(value) <= self.limits.max_field or not _encodable(value):
            raise Refused(f"{kind} '{key}' must be a string of 1 to {self.limits.max_field} characters")
        return value

    # -- the commands -----------------------------------------------------------------------------
    def _bind(self, client: _Client, msg: dict[str, Any]) -> None:
        if client.app is not None:
            raise Refused("already bound")
        if "appid" not in msg:
            raise Refused("bind requires 'appid'")
        if "side" not in msg:
            raise Refused("bind requires 'side'")
        app = self._field(msg, "appid", "bind")
        side = self._field(msg, "side", "bind")
        client.app, client.side = app, side

    def _list(self, cid: int, client: _Client, msg: dict[str, Any], now: float, out: list[Send]) -> None:
        names = self.channels.names(client.app) if self.allow_list else []  # type: ignore[arg-type]
        out.append(self._text(cid, now, "nameplates", nameplates=[{"id": name} for name in names]))

    def _allocate(self, cid: int, client: _Client, msg: dict[str, Any], now: float, out: list[Send]) -> None:
        if client.did_allocate:
            raise Refused("you already allocated one, don't be greedy")
        name = self.channels.allocate(client.app, client.side, client.address, now)  # type: ignore[arg-type]
        client.did_allocate = True
        out.append(self._text(cid, now, "allocated", nameplate=name))

    def _claim(self, cid: int, client: _Client, msg: dict[str, Any], now: float, out: list[Send]) -> None:
        if "nameplate" not in msg:
            raise Refused("claim requires 'nameplate'")
        if client.did_claim:
            raise Refused("only one claim per connection")
        name = msg["nameplate"]
        if not valid_nameplate(name):
            raise Refused("nameplate must be a string of 1 to 40 digits")
        client.did_claim = True
        client.nameplate = name
        mb = self.channels.claim(client.app, name, client.side, client.address, now)  # type: ignore[arg-type]
        out.append(self._text(cid, now, "claimed", mailbox=mb.id))

    def _release(self, cid: int, client: _Client, msg: dict[str, Any], now: float, out: list[Send]) -> None:
        if client.did_release:
            raise Refused("only one release per connection")
        if "nameplate" in msg:
            name = msg["nameplate"]
            if client.nameplate is not None and name != client.nameplate:
                raise Refused("release and claim must use same nameplate")
            if not isinstance(name, str):
                raise Refused("nameplate must be a string")
        elif client.nameplate is None:
            raise Refused("release without nameplate must follow claim")
        else:
            name = client.nameplate
        client.did_release = True
        self.channels.release(client.app, name, client.side, now)  # type: ignore[arg-type]
        out.append(self._text(cid, now, "released"))

    def _open(self, cid: int, client: _Client, msg: dict[str, Any], now: float, out: list[Send]) -> None:
        if client.mailbox is not None:
            raise Refused("only one open per connection")
        if "mailbox" not in msg:
            raise Refused("open requires 'mailbox'")
        ident = self._field(msg, "mailbox", "open")
        client.mailbox_id = ident
        mb = self.channels.open(client.app, ident, client.side, client.address, now)  # type: ignore[arg-type]
        client.mailbox = mb
        mb.listeners.add(cid)
        for m in mb.messages:
            out.append(self._message(cid, m, now))

    def _add(self, cid: int, client: _Client, msg: dict[str, Any], now: float, out: list[Send]) -> None:
        mb = client.mailbox
        if mb is None:
            raise Refused("must open mailbox before adding")
        if "phase" not in msg:
            raise Refused("missing 'phase'")
        if "body" not in msg:
            raise Refused("missing 'body'")
        phase = self._field(msg, "phase", "add")
        body = msg["body"]
        if not isinstance(body, str) or not _HEX.fullmatch(body):
            raise Refused("add 'body' must be a string of hex digits")
        message = Message(client.side, phase, body, now, msg.get("id"))  # type: ignore[arg-type]
        self.channels.add(mb, message)
        text = self._message(0, message, now).text  # one encoding for every listener
        out.extend(Send(listener, text) for listener in sorted(mb.listeners))

    def _message(self, cid: int, m: Message, now: float) -> Send:
        return self._text(cid, now, "message", side=m.side, phase=m.phase, body=m.body, server_rx=m.server_rx,
                          id=m.msg_id)

    def _close(self, cid: int, client: _Client, msg: dict[str, Any], now: float, out: list[Send]) -> None:
        if client.did_close:
            raise Refused("only one close per connection")
        if "mailbox" in msg:
            ident = msg["mailbox"]
            if client.mailbox_id is not None and ident != client.mailbox_id:
                raise Refused("open and close must use same mailbox")
            if not isinstance(ident, str):
                raise Refused("mailbox must be a string")
        elif client.mailbox_id is None:
            raise Refused("close without mailbox must follow open")
        else:
            ident = client.mailbox_id
        mood = msg.get("mood")
        if mood is not None and (not isinstance(mood, str) or len(mood) > self.limits.max_field
                                 or not _encodable(mood)):
            raise Refused(f"close 'mood' must be a string of at most {self.limits.max_field} characters")
        mb = client.mailbox or self.channels.lookup(client.app, ident)  # type: ignore[arg-type]
        if mb is not None:
            gone = self.channels.close(mb, client.side, mood, now)  # type: ignore[arg-type]
            mb.listeners.discard(cid)
            if gone:
                self._forget(mb)
        client.did_close = True
        client.mailbox = None
        out.append(self._text(cid, now, "closed"))

    def _forget(self, mb: Mailbox) -> None:
        # Connections still listening to a deleted mailbox hold it no more: an `add` there would be lost.
        for listener in mb.listeners:
            client = self.clients.get(listener)
            if client is not None and client.mailbox is mb:
                client.mailbox = None
        mb.listeners.clear()
