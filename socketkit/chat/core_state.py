"""The chat core's data: limits, output items, clients and channels. No behaviour beyond bookkeeping."""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChatLimits", "Send", "Close", "AuthRequest", "Out", "Event", "Client", "Channel", "glob_match",
           "normalize_mask"]


@dataclass(frozen=True, slots=True)
class ChatLimits:
    """Every bound the chat core enforces; the lengths are advertised in RPL_ISUPPORT."""

    nicklen: int = 30
    channellen: int = 64
    topiclen: int = 390
    kicklen: int = 390
    awaylen: int = 390
    quitlen: int = 390
    userlen: int = 16
    keylen: int = 23
    maxtargets: int = 4
    chanlimit: int = 50          # channels per client (405 past it)
    modes: int = 4               # modes with a parameter per MODE command
    maxbans: int = 100           # MAXLIST b:
    masklen: int = 128           # longest ban mask accepted
    max_invites: int = 100       # pending invites kept per channel
    flood_burst: int = 10        # lines a client may send at once...
    flood_rate: float = 2.0      # ...then this many lines per second, sustained
    flood_queue: int = 50        # lines held back ("fake lag") before Excess Flood
    flood_exempt: tuple[str, ...] = ()           # CIDRs whose clients skip flood control (bridges, bots)
    flood_exempt_accounts: tuple[str, ...] = ()  # accounts (SASL) that skip it once logged in
    ping_interval: float = 120.0  # idle seconds before the server PINGs
    ping_timeout: float = 60.0   # seconds to answer that PING
    registration_timeout: float = 60.0
    list_max: int = 1000         # LIST entries per reply
    who_max: int = 500           # WHO entries per reply
    history_replay: int = 20     # lines replayed on JOIN (0: none)
    chathistory_max: int = 100   # CHATHISTORY limit ceiling
    sasl_max: int = 8192         # base64 octets in one AUTHENTICATE exchange
    sasl_failures: int = 3       # failed SASL attempts per connection before it is closed
    monitor: int = 100           # nicks one client may MONITOR

    def __post_init__(self) -> None:
        if isinstance(self.flood_burst, bool) or not isinstance(self.flood_burst, int) or self.flood_burst < 1:
            raise ValueError(f"ChatLimits.flood_burst must be a whole number >= 1, got {self.flood_burst!r}")
        if not isinstance(self.flood_rate, int | float) or not 0 < self.flood_rate < math.inf:
            raise ValueError(f"ChatLimits.flood_rate must be a positive number of lines per second, "
                             f"got {self.flood_rate!r}")
        if isinstance(self.flood_queue, bool) or not isinstance(self.flood_queue, int) or self.flood_queue < 0:
            raise ValueError(f"ChatLimits.flood_queue must be a whole number >= 0, got {self.flood_queue!r}")
        if isinstance(self.flood_exempt, str) or isinstance(self.flood_exempt_accounts, str):
            raise ValueError("ChatLimits.flood_exempt and flood_exempt_accounts are tuples, not strings")
        for cidr in self.flood_exempt:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except (TypeError, ValueError):
                raise ValueError(f"ChatLimits.flood_exempt: {cidr!r} is not an address or CIDR "
                                 "(e.g. 10.0.0.0/8, 2001:db8::/32)") from None

    def exempt_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(cidr, strict=False) for cidr in self.flood_exempt]


@dataclass(frozen=True, slots=True)
class Send:
    """Write `line` (a complete IRC line, CRLF included) to connection `cid`. Lines fanned out to many
    clients are the same bytes object."""

    cid: Any
    line: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Close connection `cid` after writing what was sent before; the core has forgotten it already."""

    cid: Any
    reason: str
    broke_limit: bool = False  # the client broke a limit (a flood): the service counts it as a problem


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """Verify `username`/`password` (SASL PLAIN) and answer with `ChatCore.auth_result(cid, account)`."""

    cid: Any
    username: str
    password: str

    def __repr__(self) -> str:  # keep passwords out of logs and test failure output
        return f"AuthRequest(cid={self.cid!r}, username={self.username!r}, password='***')"


Out = Send | Close | AuthRequest


@dataclass(frozen=True, slots=True)
class Event:
    """A local user's network-visible action, for a backplane to share with other nodes. Only emitted
    while `ChatCore.federated` is set; `ident` is (nick, user, host, realname, account) at that moment."""

    kind: str      # user nick quit join part kick topic msg
    cid: Any
    ident: tuple[str, str, str, str, str | None]
    data: dict[str, Any]

# Channel modes without a parameter: invite-only, moderated, no external messages, secret, topic by ops.
FLAG_MODES = frozenset("imnst")

# Bits of Client.tagmask: the capabilities that change how a relayed line is written.
TAG_TIME, TAG_MSGTAGS, TAG_ACCOUNT = 1, 2, 4

NO_CAPS: frozenset[str] = frozenset()  # every client's caps until it asks for some: one shared object


class _Discard(list):
    """The output queue of a user on another node: lines relayed to it go nowhere (its own node
    delivers them). Never empty, so the core never lists it as having output to flush."""

    __slots__ = ()

    def append(self, line: bytes) -> None:
        pass


DISCARD = _Discard([b""])


@dataclass(eq=False, slots=True)
class Client:
    cid: Any
    host: str
    tls: bool
    websocket: bool
    connected: float
    nick: str | None = None
    folded: str | None = None
    user: str | None = None
    realname: str = ""
    registered: bool = False
    cap_hold: bool = False              # CAP LS/REQ seen and no CAP END yet
    cap_version: int = 0
    caps: set[str] | frozenset[str] = NO_CAPS
    tagmask: int = 0
    password: str | None = None         # from PASS
    account: str | None = None
    away: str | None = None
    invisible: bool = False
    bot: bool = False                   # user mode +B (draft/bot)
    channels: dict[str, Channel] = field(default_factory=dict)  # folded name -> channel
    prefix: str = "*"                   # nick!user@host once known
    last_active: float = 0.0            # last line received (idle for PING)
    last_spoke: float = 0.0             # last PRIVMSG/NOTICE (WHOIS idle)
    ping_sent: float | None = None
    tokens: float = 0.0
    refilled: float = 0.0
    exempt: bool = False                # skips flood control (ChatLimits.flood_exempt*)
    queue: deque | None = None          # fake-lagged lines (created when the first one waits)
    sasl_buf: str | None = None         # collecting base64 after AUTHENTICATE PLAIN
    sasl_pending: bool = False          # an AuthRequest is out
    sasl_failures: int = 0
    closed: bool = False
    remote: str | None = None           # a user on another node (backplane): the node's id, else None
    monitors: set[str] | None = None    # folded nicks this client MONITORs
    # Lines for this client not yet handed to its connection (see ChatCore.pending), and the
    # connection itself: an opaque object the I/O layer sets and reads; the core never touches it.
    out: list[bytes] = field(default_factory=list)
    sink: Any = None

    def update_prefix(self) -> None:
        self.prefix = f"{self.nick or '*'}!{self.user or '*'}@{self.host}"


@dataclass(eq=False, slots=True)
class Channel:
    name: str
    folded: str
    created: float
    members: dict[Client, str] = field(default_factory=dict)  # client -> "" / "o" / "v" / "ov"
    topic: str = ""
    topic_by: str = ""
    topic_time: float = 0.0
    modes: set[str] = field(default_factory=set)  # flag modes among i m n t
    key: str | None = None
    limit: int | None = None
    bans: list[tuple[str, str, float]] = field(default_factory=list)  # (mask, set by, when)
    ban_folded: list[str] = field(default_factory=list)                # the masks, case-folded
    invites: set[str] = field(default_factory=set)                     # folded nicks
    ban_cache: dict[Client, tuple[str, bool]] = field(default_factory=dict)  # member -> (prefix, banned)
    # When the shared state (topic, modes, key, limit, bans) last changed, by the clock of the node that
    # changed it: several nodes' views of a channel are reconciled newest-first (see core_remote).
    stamp: float = 0.0

    def touch(self, now: float) -> None:
        """The shared state changed here at `now`: never stamped behind a stamp adopted from a node."""
        self.stamp = max(now, self.stamp + 1e-6)

    def set_member_mode(self, member: Client, sign: str, mode: str) -> bool:
        """+o/-o/+v/-v on a member; False when it already was so."""
        have = self.members[member]
        if (mode in have) == (sign == "+"):
            return False
        self.members[member] = "".join(sorted(set(have) | {mode})) if sign == "+" else have.replace(mode, "")
        return True

    def add_ban(self, mask: str, folded: str, by: str, when: float) -> None:
        self.bans.append((mask, by, when))
        self.ban_folded.append(folded)
        self.ban_cache.clear()

    def remove_ban(self, folded: str) -> str | None:
        """Lift the ban whose folded mask is `folded`; its mask as it was set, or None if there is none."""
        if folded not in self.ban_folded:
            return None
        i = self.ban_folded.index(folded)
        mask = self.bans[i][0]
        del self.bans[i], self.ban_folded[i]
        self.ban_cache.clear()
        return mask

    def invite(self, folded_nick: str, limit: int) -> None:
        """Remember an invitation, the oldest forgotten past `limit`."""
        if len(self.invites) >= limit:
            self.invites.pop()
        self.invites.add(folded_nick)


def ref(c: Client) -> dict[str, Any]:
    """How an event names a user for other nodes, whatever its nick is by the time they read it: a user
    of the sending node by its uid, a user of a third node by (node, uid). See core_remote.resolve."""
    if c.remote is None:
        return {"u": c.cid}
    return {"n": c.remote, "u": c.cid[1]}


def normalize_mask(mask: str) -> str:
    """nick -> nick!*@*, user@host -> *!user@host, nick!user -> nick!user@*."""
    if "!" not in mask and "@" not in mask:
        return f"{mask}!*@*"
    if "!" not in mask:
        return f"*!{mask}"
    if "@" not in mask:
        return f"{mask}@*"
    return mask


def glob_match(pattern: str, text: str) -> bool:
    """'*' any run, '?' one character, everything else literal. The classic two-pointer walk: at most
    len(pattern) * len(text) steps, so a mask full of stars cannot blow up the way a regex would."""
    p = t = 0
    star = -1
    mark = 0
    np, nt = len(pattern), len(text)
    while t < nt:
        if p < np and (pattern[p] == "?" or pattern[p] == text[t]):
            p += 1
            t += 1
        elif p < np and pattern[p] == "*":
            star, mark = p, t
            p += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            t = mark
        else:
            return False
    while p < np and pattern[p] == "*":
        p += 1
    return p == np
