"""The chat server (Modern IRC client protocol + IRCv3) as a sans-I/O state machine.

    core = ChatCore(server_name="irc.example", network="example", clock=time.time, motd=["hi"],
                    limits=ChatLimits(), history=MemoryHistory(), authenticate=None)
    out = core.connect(cid, host="127.0.0.1", tls=False)   # every call returns a list of Out items:
    out = core.receive(cid, b"NICK alice")                  #   Send(cid, line)  write line (CRLF included)
    out = core.tick()                                       #   Close(cid, reason)  close the socket
    out = core.auth_result(cid, "alice" or None)            #   AuthRequest(cid, user, password)
    out = core.disconnect(cid, "Connection reset")

The core never does I/O and reads time only through `clock`. The transport splits lines (without CRLF)
and bounds them at MAX_LINE; the core answers 417 to a line past the IRC limits. Command handlers live
in core_register (connection, NICK/USER), core_cap (CAP, SASL), core_channels (JOIN..KICK),
core_modes (MODE), core_messages (PRIVMSG/NOTICE/TAGMSG, history), core_info (WHO, WHOIS, ...) and
core_monitor (MONITOR, SETNAME, CHGHOST-style updates).

Output, two ways:
- By default every call returns Send items, one per line, as above (simple to test and to drive).
- With `queue_output=True` (the chat service) lines stay in each client's `out` list and the client is
  listed once in `core.pending`; the I/O layer takes `pending` when it flushes (once per event-loop
  iteration) and writes each client's lines with one call. The calls then return only the other items
  (Close, AuthRequest, Event). A channel message costs one list append per recipient: no object per
  delivery, and one formatted line shared by every recipient with the same capabilities.

Rules worth knowing:
- Flood control: a token bucket per client (`flood_burst` lines, then `flood_rate` lines a second).
  Lines past it wait in a queue ("fake lag"), processed in order by later receive()/tick() calls;
  more than `flood_queue` waiting lines close the client with "Excess Flood". PONG skips the bucket
  (answering our PING must never be lagged into a timeout); PING does not, because clients use it
  as an ordering barrier. Clients from `flood_exempt` networks or logged into `flood_exempt_accounts`
  skip it.
- Fan-out formats a relayed line once per distinct tag-capability set (server-time, message-tags,
  account-tag) and hands every recipient of that set the same bytes object.
- server-time: a client that asked for it gets a `time` tag on every line, numerics included.
- labeled-response: the lines a labeled command produces for its sender carry the label (one line),
  come in a `labeled-response` batch (several) or are an ACK (none).
- NOTICE never produces error numerics (RFC 2812 3.3.2: no automatic replies to a NOTICE).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time as _time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from socketkit.chat import (
    core_cap,
    core_channels,
    core_info,
    core_messages,
    core_modes,
    core_monitor,
    core_register,
)
from socketkit.chat.core_history import HistoryEntry, HistoryStore, MemoryHistory
from socketkit.chat.core_state import (
    TAG_ACCOUNT,
    TAG_MSGTAGS,
    TAG_TIME,
    AuthRequest,
    Channel,
    ChatLimits,
    Client,
    Close,
    Event,
    Out,
    Send,
)
from socketkit.proto.irc import (
    IRCParseError,
    LineTooLong,
    Message,
    Numeric,
    casefolder,
    check_length,
    format_tags,
    parse,
    truncate_utf8,
)

__all__ = ["ChatCore", "ChatLimits", "Send", "Close", "AuthRequest", "Out", "HistoryStore",
           "HistoryEntry", "MemoryHistory"]

# command -> (handler(core, client, msg), minimum params, allowed before registration)
_HANDLERS: dict[str, tuple[Callable[..., None], int, bool]] = {}
for _mod in (core_register, core_cap, core_channels, core_modes, core_messages, core_info, core_monitor):
    _HANDLERS.update(_mod.HANDLERS)


_TEXT_LAST = frozenset(["PRIVMSG", "NOTICE", "PART", "QUIT", "KICK", "TOPIC", "AWAY", "SETNAME"])
_CRLFNUL = re.compile(r"[\r\n\0]")
_MESSAGES = frozenset(["PRIVMSG", "NOTICE"])
_FAST_MESSAGE = re.compile(rb"(PRIVMSG|NOTICE) ([^\x00-\x20,:][^\x00-\x20,]*) :([^\x00\r\n]*)\Z")


def _mid(value: object) -> str:
    """A user-supplied token echoed as a middle param: bounded, and '*' when it could shift params."""
    text = str(value)[:100]
    if not text or text[0] == ":" or any(ch in text for ch in " \r\n\0"):
        return "*"
    return text


def _last(value: object) -> str:
    return str(value).replace("\r", " ").replace("\n", " ").replace("\0", "")


def add_tag(line: bytes, tag: bytes) -> bytes:
    """`line` with one more tag (`key=value`, already escaped) in front of the ones it has."""
    if line[:1] == b"@":
        return b"@" + tag + b";" + line[1:]
    return b"@" + tag + b" " + line


def has_tag(line: bytes, key: bytes) -> bool:
    if line[:1] != b"@":
        return False
    tags = line[1:line.find(b" ")]
    return any(t.split(b"=", 1)[0] == key for t in tags.split(b";"))


class ChatCore:
    """All clients and channels of one chat server. Not thread-safe: call it from one task."""

    def __init__(self, server_name: str = "irc.socketkit.local", network: str = "socketkit",
                 clock: Callable[[], float] = _time.time, motd: Iterable[str] | None = None,
                 limits: ChatLimits | None = None, history: HistoryStore | None = None,
                 authenticate: Callable[[str, str], Any] | None = None, *, sasl: bool = True,
                 password: str | None = None, casemapping: str = "rfc1459",
                 version: str = "socketkit-0.1", default_modes: str = "nt", queue_output: bool = False,
                 utf8_only: bool = True) -> None:
        self.server_name = server_name
        self.network = network
        self.clock = clock
        self.motd = list(motd) if motd is not None else []
        self.limits = limits or ChatLimits()
        self.history = history
        self.authenticate = authenticate  # sync (user, password) -> account | None; else AuthRequest
        self.sasl = sasl
        self.password = password
        self.casemapping = casemapping
        self.fold = casefolder(casemapping)
        self.version = version
        self.default_modes = set(default_modes)
        self.created = clock()
        self.clients: dict[Any, Client] = {}
        self.nicks: dict[str, Client] = {}
        self.channels: dict[str, Channel] = {}
        self.max_users = 0
        self.caps = core_cap.available_caps(self)
        self.queue_output = queue_output
        self.utf8_only = utf8_only
        self.lines = 0                     # lines received from clients (a status page's messages/s)
        # Told of what a status page shows as it happens (a channel made, a join, a flood cut): the service
        # sets it (socketkit up: the dashboard's event log); None costs nothing.
        self.observer: Callable[..., None] | None = None
        self.pending: list[Client] = []    # clients with lines in `out`, each listed once
        self._out: list[Out] = []          # the other items, in order
        self._msgid_prefix = secrets.token_urlsafe(6)
        self._msgid_counter = 0
        self._stamp_ms = -1
        self._stamp = b""
        self._exempt_nets = self.limits.exempt_networks()
        self._exempt_accounts = {a.casefold() for a in self.limits.flood_exempt_accounts}
        self.monitors: dict[str, set[Client]] = {}  # folded nick -> clients MONITORing it (core_monitor)
        self._labeling: Client | None = None  # the client whose labeled command is running
        self._deferred: list[bytes] = []      # its lines that are not part of the response
        # Set by a backplane (socketkit.chat.backplane): local users' actions then also come out as
        # Event items, and users of other nodes live here as Clients with `remote` set (core_remote).
        self.federated = False

    # --- public API -----------------------------------------------------------------------------------

    def connect(self, cid: Any, host: str = "127.0.0.1", tls: bool = False, websocket: bool = False
                ) -> list[Out]:
        if cid in self.clients:
            raise ValueError(f"connection id {cid!r} is already connected")
        now = self.clock()
        exempt = self._exempt_host(host)
        if host.startswith(":"):  # '::1' would read as a trailing param in WHO/WHOIS replies
            host = "0" + host
        c = Client(cid, host, tls, websocket, now, last_active=now, tokens=float(self.limits.flood_burst),
                   refilled=now, exempt=exempt)
        c.update_prefix()
        self.clients[cid] = c
        return self._flush()

    def receive(self, cid: Any, line: bytes) -> list[Out]:
        """Handle one line from `cid` (CRLF optional). Never raises on bad input."""
        c = self.clients.get(cid)
        if c is None:
            return []
        self.feed(c, line)
        return self._flush()

    def feed(self, c: Client, line: bytes) -> None:
        """receive() for a connection's own Client object, leaving the output queued: the service's hot
        path (it collects the output once per read). A closed client's lines are ignored."""
        if c.closed:
            return
        self.lines += 1
        now = self.clock()
        c.last_active = now
        c.ping_sent = None  # any line proves the client alive
        fast = _FAST_MESSAGE.match(line) if len(line) <= 510 else None
        item: Message | IRCParseError
        if fast is not None:
            # The hot path's line, `PRIVMSG #channel :text`: what parse() would make of it, for a fraction
            # of its cost. Anything else (tags, a source, several targets, not UTF-8) goes through parse().
            try:
                item = Message({}, None, fast[1].decode(), [fast[2].decode(), fast[3].decode()])
            except UnicodeDecodeError:
                fast = None
        if fast is None:
            try:
                if len(line) > 510 or line[:1] == b"@":  # shorter lines cannot break a length limit
                    check_length(line, client=True)
                item = parse(line)
            except IRCParseError as exc:
                item = exc
        if type(item) is Message:
            if item.command == "PONG":
                if item.tags and "label" in item.tags and "labeled-response" in c.caps:
                    self._handle(c, item)  # answered with an ACK, and still free of the flood bucket
                return
        if c.exempt:
            self._handle(c, item)
            return
        self._refill(c, now)
        if c.queue:
            self._drain(c)
        if not c.closed:
            if not c.queue and c.tokens >= 1.0:
                c.tokens -= 1.0
                self._handle(c, item)
            elif c.queue is not None and len(c.queue) >= self.limits.flood_queue:
                if self.observer is not None:
                    self.observer("flood: disconnected", nick=c.nick or "*", host=c.host,
                                  limit=f"flood_queue={self.limits.flood_queue}")
                self.drop(c, "Excess Flood", broke_limit=True)
            else:
                if c.queue is None:
                    c.queue = deque()
                c.queue.append(item)

    def disconnect(self, cid: Any, reason: str = "Connection closed") -> list[Out]:
        """The socket is gone: tell the client's channels, forget it. Idempotent."""
        c = self.clients.get(cid)
        if c is not None:
            self.drop(c, reason, error=False)
        return self._flush()

    def tick(self) -> list[Out]:
        """Run fake-lagged lines whose time has come, PING idle clients, drop dead ones."""
        now = self.clock()
        lim = self.limits
        for c in list(self.clients.values()):
            if c.closed or c.remote is not None:  # a remote user is its own node's to ping
                continue
            if c.queue:
                self._refill(c, now)
                self._drain(c)
                if c.closed:
                    continue
            if not c.registered:
                if now - c.connected >= lim.registration_timeout:
                    self.drop(c, "Registration timed out")
            elif c.ping_sent is not None:
                if now - c.ping_sent >= lim.ping_timeout:
                    self.drop(c, f"Ping timeout: {int(now - c.last_active)} seconds")
            elif now - c.last_active >= lim.ping_interval:
                c.ping_sent = now
                self.send(c, Message({}, None, "PING", [self.server_name]).format())
        return self._flush()

    def auth_result(self, cid: Any, account: Any) -> list[Out]:
        """The answer to an AuthRequest: an account name (or an object with `.name`) or None."""
        c = self.clients.get(cid)
        if c is not None and c.sasl_pending:
            core_cap.finish_sasl(self, c, account)
        return self._flush()

    def take_pending(self) -> list[Client]:
        """(queue_output) The clients with queued lines; the caller writes and clears each one's `out`."""
        pending, self.pending = self.pending, []
        return pending

    # --- helpers used by the handler modules ----------------------------------------------------------

    def _flush(self) -> list[Out]:
        out, self._out = self._out, []
        if self.queue_output or not self.pending:
            return out
        sends: list[Out] = []
        for c in self.take_pending():
            cid = c.cid
            sends.extend(Send(cid, line) for line in c.out)
            c.out.clear()
        return sends + out if out else sends

    def _exempt_host(self, host: str) -> bool:
        if not self._exempt_nets:
            return False
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._exempt_nets)

    def exempt_account(self, c: Client) -> None:
        """`c` just logged in: its account may be one that skips flood control."""
        if c.account is not None and c.account.casefold() in self._exempt_accounts:
            c.exempt = True

    def _refill(self, c: Client, now: float) -> None:
        burst = float(self.limits.flood_burst)
        if c.tokens < burst:
            c.tokens = min(burst, c.tokens + (now - c.refilled) * self.limits.flood_rate)
        c.refilled = now

    def _drain(self, c: Client) -> None:
        queue = c.queue
        while queue and c.tokens >= 1.0 and not c.closed:
            c.tokens -= 1.0
            self._handle(c, queue.popleft())
        if not queue:
            c.queue = None

    def _handle(self, c: Client, item: Message | IRCParseError) -> None:
        if type(item) is Message and item.tags and "label" in item.tags and "labeled-response" in c.caps:
            label = item.tags["label"]
            start = len(c.out)
            self._labeling = c
            try:
                self._run(c, item)
            finally:
                self._labeling = None
            if not c.closed and label and len(label) <= 64:
                self._label(c, start, label)
            deferred, self._deferred = self._deferred, []
            for line in deferred:
                self.send(c, line)
            return
        self._run(c, item)

    def deliver_to_self(self, c: Client, line: bytes) -> None:
        """A message `c` sent to itself arriving: not part of the response to its command (labeled-response
        labels only the echo), so it goes after the response."""
        if self._labeling is c:
            self._deferred.append(line)
        else:
            self.send(c, line)

    def _run(self, c: Client, item: Message | IRCParseError) -> None:
        if isinstance(item, LineTooLong):
            self.num(c, Numeric.ERR_INPUTTOOLONG, "Input line was too long")
            return
        if not isinstance(item, Message):
            return  # garbage is ignored, as Modern IRC allows; it still cost a token
        if not item.utf8 and self.utf8_only:  # UTF8ONLY: nothing that is not UTF-8 is relayed or stored
            if item.command != "NOTICE":
                self.fail(c, item.command if item.command in _HANDLERS else "*", "INVALID_UTF8",
                          text="Message rejected: it is not UTF-8")
            return
        entry = _HANDLERS.get(item.command)
        if entry is None:
            self.num(c, Numeric.ERR_UNKNOWNCOMMAND, item.command, "Unknown command")
            return
        handler, min_params, early = entry
        if not c.registered and not early:
            self.num(c, Numeric.ERR_NOTREGISTERED, "You have not registered")
            return
        if len(item.params) < min_params:
            if item.command != "NOTICE":
                self.num(c, Numeric.ERR_NEEDMOREPARAMS, item.command, "Not enough parameters")
            return
        handler(self, c, item)

    def _label(self, c: Client, start: int, label: str) -> None:
        """labeled-response: mark what the labeled command sent `c` (its out from `start` on)."""
        tag = b"label=" + format_tags({"label": label})[7:-1].encode()
        out = c.out
        produced = len(out) - start
        if produced == 0:
            self.reply(c, "ACK", tags={"label": label})
        elif produced == 1:
            out[start] = add_tag(out[start], tag)
        elif "batch" not in c.caps:
            return  # several lines and no batch to put them in: they go unlabeled (labeled-response needs batch)
        else:
            ref = f"L{secrets.token_hex(4)}"
            body = [line if has_tag(line, b"batch") else add_tag(line, b"batch=" + ref.encode())
                    for line in out[start:]]
            del out[start:]
            self.reply(c, "BATCH", f"+{ref}", "labeled-response", tags={"label": label})
            out.extend(body)
            self.reply(c, "BATCH", f"-{ref}")

    def stamp(self) -> bytes:
        """The server-time tag value for now, formatted once per millisecond."""
        now = self.clock()
        ms = int(now * 1000)
        if ms != self._stamp_ms:
            self._stamp_ms = ms
            self._stamp = self.isotime(now).encode()
        return self._stamp

    def send(self, c: Client, line: bytes) -> None:
        if c.tagmask & TAG_TIME and line[:1] != b"@":
            line = b"@time=" + self.stamp() + b" " + line
        out = c.out
        if not out:
            self.pending.append(c)
        out.append(line)

    def reply(self, c: Client, command: str, *params: str, source: str | None = None,
              tags: dict[str, str] | None = None, trailing: bool | None = None) -> None:
        """A message from the server (or `source`) to one client; the last of several params gets ':'."""
        ps = [*map(_mid, params[:-1]), _last(params[-1])] if params else []
        if c.tagmask & TAG_TIME:
            tags = {"time": self.stamp().decode(), **(tags or {})}
        msg = Message(tags or {}, source or self.server_name, command, ps)
        self.send(c, msg.format(trailing=len(params) > 1 if trailing is None else trailing))

    def num(self, c: Client, code: str, *params: object) -> None:
        """Numeric reply: `code nick middle... :last`, user-supplied middles made safe."""
        ps = [c.nick or "*"]
        if params:
            ps.extend(_mid(p) for p in params[:-1])
            ps.append(_last(params[-1]))
        self.send(c, Message({}, self.server_name, code, ps).format(trailing=len(ps) > 1))

    def notice(self, c: Client, text: str) -> None:
        self.reply(c, "NOTICE", c.nick or "*", text)

    def fail(self, c: Client, command: str, code: str, *context: str, text: str) -> None:
        """IRCv3 standard-replies: FAIL <command> <code> [<context>...] :<description>."""
        self.reply(c, "FAIL", command, code, *context, text)

    def drop(self, c: Client, reason: str, *, error: bool = True, quit_message: str | None = None,
             broke_limit: bool = False) -> None:
        """Close `c`: ERROR line and Close (unless the socket is already gone), QUIT to its channels."""
        if c.closed:
            return
        c.closed = True
        if self.federated and c.registered:
            self.emit("quit", c, reason=_last(quit_message or reason),
                      channels=[ch.name for ch in c.channels.values()])
        if error:
            line = Message({}, None, "ERROR", [_last(f"Closing Link: {c.host} ({reason})")]).format(trailing=True)
            self.send(c, line)
            self._out.append(Close(c.cid, reason, broke_limit))
        if c.registered:
            peers = self.peers(c)
            if peers:
                self.relay(peers, c, "QUIT", [_last(quit_message or reason)])
        for ch in list(c.channels.values()):
            self.remove_member(ch, c)
        c.channels.clear()
        c.queue = None
        if c.folded is not None and self.nicks.get(c.folded) is c:
            del self.nicks[c.folded]
            if c.registered:
                core_monitor.offline(self, c)
        if c.monitors:
            core_monitor.forget(self, c)
        self.clients.pop(c.cid, None)

    def emit(self, kind: str, c: Client, **data: Any) -> None:
        """Tell the backplane (if any) what local user `c` did; see core_state.Event."""
        if self.federated and c.remote is None:
            ident = (c.nick or "*", c.user or "*", c.host, c.realname, c.account)
            self._out.append(Event(kind, c.cid, ident, data))

    def remove_member(self, ch: Channel, c: Client) -> None:
        ch.members.pop(c, None)
        ch.ban_cache.pop(c, None)
        c.channels.pop(ch.folded, None)
        if not ch.members:
            self.channels.pop(ch.folded, None)

    def peers(self, c: Client, include_self: bool = False) -> list[Client]:
        """Everyone sharing a channel with `c`, each once."""
        seen: dict[Client, None] = {c: None} if include_self else {}
        for ch in c.channels.values():
            seen.update(dict.fromkeys(ch.members))
        if not include_self:
            seen.pop(c, None)
        return list(seen)

    def new_msgid(self) -> str:
        # Unique per server start (the random prefix) and per message (the counter); nothing secret.
        self._msgid_counter += 1
        return f"{self._msgid_prefix}{self._msgid_counter:x}"

    @staticmethod
    def isotime(t: float) -> str:
        dt = datetime.fromtimestamp(t, UTC)
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"

    def relay(self, recipients: Iterable[Client], source: Client | str, command: str, params: list[str], *,
              msgid: str | None = None, client_tags: dict[str, str] | None = None, tags_only: bool = False,
              when: float | None = None, account: str | None = None, extra: dict[str, str] | None = None,
              skip: Client | None = None, require: str | None = None) -> None:
        """Send one event to many clients, formatting it once per tag-capability set.

        `tags_only` (TAGMSG) skips clients without message-tags; `require` skips clients without that
        capability; `skip` is left out (the sender of a channel message). `extra` tags (e.g. batch) go
        to all."""
        if isinstance(source, Client):
            account = source.account if account is None else account
            src = source.prefix
            bot = source.bot
        else:
            src = source
            bot = False
        text_last = command in _TEXT_LAST
        if command in _MESSAGES and len(params) == 2 \
                and not _CRLFNUL.search(params[1]) and " " not in params[0]:
            # The hot path's line, written directly (what Message.format would write, minus its checks of
            # names the core made itself). The text is checked: it may come from another node.
            try:
                body = f":{src} {command} {params[0]} :{params[1]}\r\n".encode()
            except UnicodeEncodeError:  # a lone surrogate: let format() refuse it
                body = Message({}, src, command, params).format(trailing=True)
        else:
            body = Message({}, src, command, params).format(trailing=text_last)
        if len(body) > 512 and text_last and params:  # long names + a max-length text: cut the text
            excess = len(body) - 512
            params = [*params[:-1], truncate_utf8(params[-1], len(params[-1].encode()) - excess)]
            body = Message({}, src, command, params).format(trailing=True)
        plain = None if (extra or tags_only) else body  # the line for clients without tag capabilities
        stamp: str | None = None
        cache: dict[int, bytes] = {}
        pending = self.pending
        if plain is not None and require is None:
            # The common case, per recipient: one list append (and a note the first time it has output);
            # the few with tag capabilities go through the general loop below.
            tagged = []
            for r in recipients:
                if r.tagmask:
                    tagged.append(r)
                elif r is not skip:
                    out = r.out
                    if not out:
                        pending.append(r)
                    out.append(plain)
            if not tagged:
                return
            recipients = tagged
        for r in recipients:
            if r is skip or (require is not None and require not in r.caps):
                continue
            mask = r.tagmask
            if mask == 0 and plain is not None:
                line = plain
            else:
                if tags_only and not mask & TAG_MSGTAGS:
                    continue
                line = cache.get(mask)  # type: ignore[assignment]
                if line is None:
                    tags: dict[str, str] = dict(extra) if extra else {}
                    if mask & TAG_TIME:
                        if stamp is None:
                            stamp = self.isotime(self.clock() if when is None else when)
                        tags["time"] = stamp
                    if mask & TAG_MSGTAGS:
                        if msgid:
                            tags["msgid"] = msgid
                        if client_tags:
                            tags.update(client_tags)
                        if bot:
                            tags["bot"] = ""
                    if mask & TAG_ACCOUNT and account:
                        tags["account"] = account
                    line = format_tags(tags).encode() + body if tags else body
                    cache[mask] = line
            out = r.out
            if not out:
                pending.append(r)
            out.append(line)

    def lookup_nick(self, nick: str) -> Client | None:
        c = self.nicks.get(self.fold(nick))
        return c if c is not None and c.registered else None

    def lookup_channel(self, name: str) -> Channel | None:
        return self.channels.get(self.fold(name))

