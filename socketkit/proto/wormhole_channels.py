"""The magic-wormhole mailbox server's channels, sans-I/O: the nameplates and mailboxes of every app id, their
sides, the stored messages, the limits on all of them, expiry, and a journal of what changed.

`wormhole_server.MailboxServer` speaks the protocol and calls into `Channels`; the I/O layer persists the
journal (`take_changes()`) and gives the state back after a restart (`restore()`). No clocks: every method
that needs the time takes `now` (seconds since the epoch, as the protocol's `server_rx`/`server_tx`).

The rules follow the reference server (magic-wormhole-mailbox-server):
- a nameplate is a short numeric name pointing at one mailbox; `allocate` picks a free one at random among
  the free ids of the shortest length that has any (1-9, then 10-99, then 100-999, then random ones below
  a million); it is deleted once every side that claimed it released it, and may then be reused;
- a side that released a nameplate may not claim it again ("reclaimed"); a third side is "crowded";
- a mailbox keeps every message added to it until every side that opened it closed it, then it is deleted
  with its messages and the nameplates pointing at it; a channel nobody listens to expires `expiry`
  seconds after its last activity.
One difference, on purpose: a side refused as "crowded" is not recorded (the reference writes it down
first, which keeps the mailbox alive until it expires although its two real sides closed it).
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class MailboxLimits:
    """Bounds on what clients may store; the defaults protect a public server (every field is a limit)."""

    #: nameplates / mailboxes existing at once, over all app ids
    max_nameplates: int = 10_000
    max_mailboxes: int = 10_000
    #: nameplates / mailboxes one client address may have created and not yet freed
    max_nameplates_per_client: int = 100
    max_mailboxes_per_client: int = 100
    #: characters of one message's body (hex: two per byte of the client's data)
    max_body: int = 1 << 20
    #: messages kept in one mailbox, and body characters of all of them
    max_messages: int = 1_000
    max_mailbox_bytes: int = 4 << 20
    #: body characters kept over all mailboxes (the server's memory for messages)
    max_stored_bytes: int = 256 << 20
    #: characters of an app id, a side, a phase, a mailbox id or a mood
    max_field: int = 256
    #: seconds a nameplate and its mailbox survive after their last activity when nobody is connected to
    #: the mailbox (the reference prunes after 11 minutes; clients reconnect within that)
    expiry: float = 3600.0

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"MailboxLimits.{name} must be positive, got {value!r}")


class Refused(Exception):
    """A request the channels (or the protocol) turn down; str() is the text of the client's `error`.

    `limit` names the MailboxLimits field when a limit was hit (counted apart from plain protocol errors).
    """

    def __init__(self, explain: str, limit: str | None = None) -> None:
        super().__init__(explain)
        self.explain = explain
        self.limit = limit


@dataclass(slots=True)
class Side:
    """One side's part in a nameplate (active: claimed) or a mailbox (active: opened; mood at close)."""

    active: bool
    added: float
    mood: str | None = None


@dataclass(slots=True)
class Message:
    side: str
    phase: str
    body: str
    server_rx: float
    msg_id: Any = None


@dataclass(slots=True, eq=False)
class Nameplate:
    app: str
    name: str
    mailbox: str
    owner: str
    sides: dict[str, Side] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class Mailbox:
    app: str
    id: str
    for_nameplate: bool
    updated: float
    owner: str
    sides: dict[str, Side] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    size: int = 0                                           # body characters of `messages`
    nameplates: set[str] = field(default_factory=set)       # names pointing here
    listeners: set[int] = field(default_factory=set)        # connections subscribed (not persisted)


@dataclass(slots=True)
class Usage:
    """A summary written when a channel ends, as the reference's usage database keeps them."""

    kind: str                  # "nameplate", "mailbox" or "transit"
    app: str
    started: float
    waiting_time: float | None
    total_time: float
    result: str                # happy, lonely, quiet, errory, scary, pruney, crowded, ...
    total_bytes: int | None = None


@dataclass(slots=True)
class Changes:
    """What changed since the last `take_changes()`: the current record of each touched nameplate and
    mailbox (None: deleted, with its messages), the messages added, the usage summaries written."""

    nameplates: dict[tuple[str, str], Nameplate | None] = field(default_factory=dict)
    mailboxes: dict[tuple[str, str], Mailbox | None] = field(default_factory=dict)
    messages: list[tuple[str, str, Message]] = field(default_factory=list)
    usage: list[Usage] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.nameplates or self.mailboxes or self.messages or self.usage)


def valid_nameplate(name: object) -> bool:
    return isinstance(name, str) and 0 < len(name) <= 40 and name.isascii() and name.isdigit()


class Channels:
    """Every app id's nameplates and mailboxes, with their limits; see the module docstring."""

    def __init__(self, limits: MailboxLimits | None = None, rng: random.Random | None = None) -> None:
        self.limits = limits or MailboxLimits()
        self.rng = rng or random.SystemRandom()
        self.nameplates: dict[tuple[str, str], Nameplate] = {}
        self.mailboxes: dict[tuple[str, str], Mailbox] = {}
        self._names: dict[str, set[str]] = {}             # app -> its nameplate names
        self._owned_nameplates: dict[str, int] = {}
        self._owned_mailboxes: dict[str, int] = {}
        self.stored = 0                                    # body characters over all mailboxes
        self.message_count = 0
        self._changes = Changes()

    # -- the journal ------------------------------------------------------------------------------
    def take_changes(self) -> Changes:
        changes, self._changes = self._changes, Changes()
        return changes

    def _dirty_nameplate(self, np: Nameplate, gone: bool = False) -> None:
        self._changes.nameplates[(np.app, np.name)] = None if gone else np

    def _dirty_mailbox(self, mb: Mailbox, gone: bool = False) -> None:
        self._changes.mailboxes[(mb.app, mb.id)] = None if gone else mb

    def restore(self, nameplates: list[Nameplate], mailboxes: list[Mailbox]) -> None:
        """Load what a previous run persisted (nameplates whose mailbox is missing are dropped)."""
        for mb in mailboxes:
            mb.listeners = set()
            mb.nameplates = set()
            mb.size = sum(len(m.body) for m in mb.messages)
            self._add_mailbox(mb)
            self.stored += mb.size
            self.message_count += len(mb.messages)
        for np in nameplates:
            mb = self.mailboxes.get((np.app, np.mailbox))
            if mb is not None:
                self._add_nameplate(np, mb)

    # -- bookkeeping ------------------------------------------------------------------------------
    def _add_mailbox(self, mb: Mailbox) -> None:
        self.mailboxes[(mb.app, mb.id)] = mb
        self._owned_mailboxes[mb.owner] = self._owned_mailboxes.get(mb.owner, 0) + 1

    def _add_nameplate(self, np: Nameplate, mb: Mailbox) -> None:
        self.nameplates[(np.app, np.name)] = np
        self._names.setdefault(np.app, set()).add(np.name)
        self._owned_nameplates[np.owner] = self._owned_nameplates.get(np.owner, 0) + 1
        mb.nameplates.add(np.name)

    @staticmethod
    def _forget_owner(counts: dict[str, int], owner: str) -> None:
        left = counts.get(owner, 0) - 1
        if left > 0:
            counts[owner] = left
        else:
            counts.pop(owner, None)

    def _drop_nameplate(self, np: Nameplate, now: float, pruned: bool) -> None:
        del self.nameplates[(np.app, np.name)]
        names = self._names.get(np.app)
        if names is not None:
            names.discard(np.name)
            if not names:
                del self._names[np.app]
        self._forget_owner(self._owned_nameplates, np.owner)
        mb = self.mailboxes.get((np.app, np.mailbox))
        if mb is not None:
            mb.nameplates.discard(np.name)
        self._dirty_nameplate(np, gone=True)
        self._changes.usage.append(self._summary("nameplate", np.app, np.sides, now, pruned))

    def _drop_mailbox(self, mb: Mailbox, now: float, pruned: bool) -> None:
        for name in list(mb.nameplates):
            np = self.nameplates.get((mb.app, name))
            if np is not None:
                self._drop_nameplate(np, now, pruned)
        del self.mailboxes[(mb.app, mb.id)]
        self._forget_owner(self._owned_mailboxes, mb.owner)
        self.stored -= mb.size
        self.message_count -= len(mb.messages)
        self._dirty_mailbox(mb, gone=True)
        self._changes.usage.append(self._summary("mailbox", mb.app, mb.sides, now, pruned))

    @staticmethod
    def _summary(kind: str, app: str, sides: dict[str, Side], now: float, pruned: bool) -> Usage:
        times = sorted(s.added for s in sides.values())
        started = times[0] if times else now
        waiting = times[1] - times[0] if len(times) > 1 else None
        result = ("quiet", "lonely", "happy")[min(len(times), 2)]
        if kind == "nameplate" and not times:
            result = "lonely"
        moods = {s.mood for s in sides.values()}
        for mood in ("lonely", "errory", "scary"):  # later ones win, as in the reference
            if mood in moods:
                result = mood
        if pruned:
            result = "pruney"
        return Usage(kind, app, started, waiting, now - started, result)

    def _check_new_nameplate(self, owner: str) -> None:
        limits = self.limits
        if len(self.nameplates) >= limits.max_nameplates:
            raise Refused(f"server limit: too many nameplates in use (limit {limits.max_nameplates})",
                          "max_nameplates")
        if self._owned_nameplates.get(owner, 0) >= limits.max_nameplates_per_client:
            raise Refused("server limit: too many nameplates from your address (limit "
                          f"{limits.max_nameplates_per_client})", "max_nameplates_per_client")

    def _check_new_mailbox(self, owner: str) -> None:
        limits = self.limits
        if len(self.mailboxes) >= limits.max_mailboxes:
            raise Refused(f"server limit: too many mailboxes open (limit {limits.max_mailboxes})",
                          "max_mailboxes")
        if self._owned_mailboxes.get(owner, 0) >= limits.max_mailboxes_per_client:
            raise Refused("server limit: too many mailboxes from your address (limit "
                          f"{limits.max_mailboxes_per_client})", "max_mailboxes_per_client")

    def _new_mailbox(self, app: str, for_nameplate: bool, owner: str, now: float, ident: str | None = None
                     ) -> Mailbox:
        if ident is None:
            while True:  # 64 random bits, as the reference: a collision is all but impossible, but cheap to rule out
                raw = self.rng.getrandbits(64).to_bytes(8, "big")
                ident = base64.b32encode(raw).decode("ascii").lower().rstrip("=")
                if (app, ident) not in self.mailboxes:
                    break
        mb = Mailbox(app, ident, for_nameplate, now, owner)
        self._add_mailbox(mb)
        return mb

    # -- nameplates -------------------------------------------------------------------------------
    def names(self, app: str) -> list[str]:
        return sorted(self._names.get(app, ()))

    def free_name(self, app: str) -> str:
        used = self._names.get(app, set())
        for low, high in ((1, 10), (10, 100), (100, 1000)):
            free = [str(i) for i in range(low, high) if str(i) not in used]
            if free:
                return self.rng.choice(free)
        for _ in range(1000):
            name = str(self.rng.randrange(1000, 1_000_000))
            if name not in used:
                return name
        raise Refused("unable to find a free nameplate-id", "max_nameplates")

    def allocate(self, app: str, side: str, owner: str, now: float) -> str:
        self._check_new_nameplate(owner)
        self._check_new_mailbox(owner)
        name = self.free_name(app)
        self.claim(app, name, side, owner, now)
        return name

    def claim(self, app: str, name: str, side: str, owner: str, now: float) -> Mailbox:
        """Claim `name` for `side` (creating it and its mailbox if new); opens the mailbox for the side."""
        np = self.nameplates.get((app, name))
        if np is None:
            self._check_new_nameplate(owner)
            self._check_new_mailbox(owner)
            mb = self._new_mailbox(app, True, owner, now)
            np = Nameplate(app, name, mb.id, owner)
            self._add_nameplate(np, mb)
        else:
            mb = self.mailboxes[(app, np.mailbox)]
            mine = np.sides.get(side)
            if mine is None and len(np.sides) >= 2:
                raise Refused("crowded")
            if mine is not None and not mine.active:
                # claiming again could make a new mailbox behind the other side's back
                raise Refused("reclaimed")
            if side not in mb.sides and len(mb.sides) >= 2:
                raise Refused("crowded")
        if side not in np.sides:
            np.sides[side] = Side(True, now)
        self._dirty_nameplate(np)
        self._open_side(mb, side, now)
        return mb

    def release(self, app: str, name: str, side: str, now: float) -> None:
        np = self.nameplates.get((app, name))
        if np is None:
            return
        mine = np.sides.get(side)
        if mine is None:
            return
        mine.active = False
        if any(s.active for s in np.sides.values()):
            self._dirty_nameplate(np)
        else:
            self._drop_nameplate(np, now, pruned=False)

    # -- mailboxes --------------------------------------------------------------------------------
    def _open_side(self, mb: Mailbox, side: str, now: float) -> None:
        # A side that closed and opens again stays closed (as in the reference): it may listen, but its
        # earlier close still counts towards deleting the mailbox.
        if side not in mb.sides:
            mb.sides[side] = Side(True, now)
        mb.updated = now
        self._dirty_mailbox(mb)

    def open(self, app: str, ident: str, side: str, owner: str, now: float) -> Mailbox:
        mb = self.mailboxes.get((app, ident))
        if mb is None:
            self._check_new_mailbox(owner)
            mb = self._new_mailbox(app, False, owner, now, ident)
        elif side not in mb.sides and len(mb.sides) >= 2:
            raise Refused("crowded")
        self._open_side(mb, side, now)
        return mb

    def add(self, mb: Mailbox, message: Message) -> None:
        limits = self.limits
        size = len(message.body)
        if size > limits.max_body:
            raise Refused(f"message body too large: {size} characters (limit {limits.max_body})", "max_body")
        if len(mb.messages) >= limits.max_messages:
            raise Refused(f"mailbox is full: {len(mb.messages)} messages (limit {limits.max_messages})",
                          "max_messages")
        if mb.size + size > limits.max_mailbox_bytes:
            raise Refused(f"mailbox is full: {mb.size + size} characters (limit {limits.max_mailbox_bytes})",
                          "max_mailbox_bytes")
        if self.stored + size > limits.max_stored_bytes:
            raise Refused("server limit: no room for more messages (limit "
                          f"{limits.max_stored_bytes})", "max_stored_bytes")
        mb.messages.append(message)
        mb.size += size
        mb.updated = message.server_rx
        self.stored += size
        self.message_count += 1
        self._changes.messages.append((mb.app, mb.id, message))
        self._dirty_mailbox(mb)

    def lookup(self, app: str, ident: str) -> Mailbox | None:
        return self.mailboxes.get((app, ident))

    def close(self, mb: Mailbox, side: str, mood: str | None, now: float) -> bool:
        """Close `mb` for `side`; True when that was the last open side and the mailbox is gone."""
        if self.mailboxes.get((mb.app, mb.id)) is not mb:
            return True
        mine = mb.sides.get(side)
        if mine is None:
            if len(mb.sides) >= 2:
                raise Refused("crowded")
            mine = mb.sides[side] = Side(False, now)
        mine.active = False
        mine.mood = mood
        mb.updated = now
        if any(s.active for s in mb.sides.values()):
            self._dirty_mailbox(mb)
            return False
        self._drop_mailbox(mb, now, pruned=False)
        return True

    def prune(self, now: float) -> list[Mailbox]:
        """Delete the channels idle for `expiry` seconds with nobody listening; returns the mailboxes gone."""
        old = now - self.limits.expiry
        gone = []
        for mb in list(self.mailboxes.values()):
            if mb.listeners:
                # In use: keep it fresh, on disk too (a restart must not find it stale), as the reference does
                mb.updated = max(mb.updated, now)
                self._dirty_mailbox(mb)
                continue
            if mb.updated <= old:
                self._drop_mailbox(mb, now, pruned=True)
                gone.append(mb)
        return gone
