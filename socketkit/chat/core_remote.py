"""Users of other chat nodes, as a backplane (socketkit.chat.backplane) hands them to this core.

A remote user is a registered `Client` whose `cid` is `(node, uid)` and whose `remote` is the node's id:
it is a channel member, holds its nick in `core.nicks` (so NICK/433, NAMES, WHOIS and PRIVMSG find it)
and is a relay() recipient like anyone else; the Send items addressed to it have no connection on this
node and are dropped by the service. The core never pings it and never publishes what it does.

Events are dicts decoded from the wire (see backplane.py): {"k": kind, "u": uid, "i": ident, ...}.
Every event carries the user's identity, so a user whose registration was missed is created on first
sight, and applying an event twice changes nothing (a snapshot and the live stream may overlap).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from socketkit.chat import core_monitor
from socketkit.chat.core_channels import relay_join
from socketkit.chat.core_info import notify_away
from socketkit.chat.core_remote_channels import (
    TS_SLACK,
    _float,
    _local,
    apply_channel,
    apply_mode,
    lose_ts,
    resolve,
)
from socketkit.chat.core_state import DISCARD, Channel, Client, Out

if TYPE_CHECKING:
    from socketkit.chat.core import ChatCore

SPLIT_REASON = "*.net *.split"


def _claim(core: ChatCore, x: Client) -> None:
    holder = core.nicks.get(x.folded or "")
    # A local holder keeps the nick: the nick's key in Redis decides, and the losing node drops its user.
    if holder is None or holder.remote is not None:
        core.nicks[x.folded or ""] = x


def _rename(core: ChatCore, x: Client, nick: str) -> None:
    old_prefix, old_nick, old_folded = x.prefix, x.nick, x.folded
    if core.nicks.get(x.folded or "") is x:
        del core.nicks[x.folded or ""]
    x.nick, x.folded = nick, core.fold(nick)
    x.update_prefix()
    _claim(core, x)
    peers = _local(core.peers(x))
    if peers:
        core.relay(peers, old_prefix, "NICK", [nick], account=x.account)
    if old_folded != x.folded:
        core_monitor.offline(core, x, old_nick)
        core_monitor.online(core, x)


_BAD_IN_NAMES = frozenset(" \r\n\0")


def valid_ident(uid: Any, ident: Any) -> bool:
    """A user as another node describes it: uid an int or a string, ident (nick, user, host, realname,
    account) strings (account may be None), the nick non-empty and free of spaces and line breaks."""
    if isinstance(uid, bool) or not isinstance(uid, (int, str)):
        return False
    if not isinstance(ident, list) or len(ident) != 5:
        return False
    nick, username, host, realname, account = ident
    if not all(isinstance(v, str) for v in (nick, username, host, realname)):
        return False
    if account is not None and not isinstance(account, str):
        return False
    return bool(nick) and len(nick) <= 64 and not any(ch in _BAD_IN_NAMES for ch in nick + username + host)


def user(core: ChatCore, node: str, uid: Any, ident: Any) -> Client:
    """The remote user (node, uid), created or brought up to date with `ident` (see valid_ident)."""
    nick, username, host, realname, account = ident
    cid = (node, uid)
    x = core.clients.get(cid)
    if x is None:
        now = core.clock()
        x = Client(cid, host, False, False, now, nick=nick, folded=core.fold(nick), user=username,
                   realname=realname, registered=True, account=account, last_active=now, remote=node,
                   out=DISCARD)
        x.update_prefix()
        core.clients[cid] = x
        _claim(core, x)
        core_monitor.online(core, x)
        return x
    if nick != x.nick:
        _rename(core, x, nick)
    if (username, host) != (x.user, x.host):
        core_monitor.change_host(core, x, username, host)
    if realname != x.realname:
        core_monitor.set_realname(core, x, realname)
    if account != x.account:
        x.account = account
        core_monitor.account_changed(core, x)
    return x


def _join(core: ChatCore, x: Client, name: str, modes: str, created: Any = None) -> None:
    """Remote user `x` is in channel `name` with member modes `modes` ("", "o", "v", "ov"). `created` is
    when the channel began on x's node: as in TS6, the older incarnation of a channel wins, and ops or
    voices given in a younger one do not count (a node cut off from the network cannot hand out ops in a
    channel that exists elsewhere); see lose_ts for our side being the younger."""
    folded = core.fold(name)
    ch = core.channels.get(folded)
    when = _float(created)
    if when is not None and when > core.clock() + 300:
        when = None  # from the future: a clock off by that much cannot be trusted to order anything
    if ch is not None and when is not None and not any(m.remote is None for m in ch.members):
        # Only other nodes' members here: our copy is a mirror, perhaps a stale one kept through an
        # outage; whoever has members decides how old the channel is (they settle it among themselves).
        ch.created = when
    elif ch is not None and when is not None:
        if when > ch.created + TS_SLACK:
            modes = ""  # x's side is the younger incarnation
        elif when < ch.created - TS_SLACK:
            lose_ts(core, ch, when)
    elif ch is not None and when is None and modes and x.channels.get(folded) is None:
        modes = ""  # a join that does not say which incarnation gives nothing
    if x.channels.get(folded) is not None:
        ch.members[x] = modes
        return
    if ch is None:
        ch = Channel(name, folded, when if when is not None else core.clock(), modes=set(core.default_modes))
        core.channels[folded] = ch
    ch.members[x] = modes
    x.channels[folded] = ch
    ch.invites.discard(x.folded or "")  # an invite is used up by the join it let in, on every node
    local = _local(ch.members)
    relay_join(core, local, x, ch)
    if x.away:
        notify_away(core, local, x)


def _member_modes(value: Any) -> str:
    return "".join(sorted({m for m in value if m in "ov"})) if isinstance(value, str) else ""


def _clean_text(text: str, limit: int) -> bool:
    return len(text.encode()) <= limit and not any(ch in text for ch in "\r\n\0")


def _part(core: ChatCore, x: Client, name: str, reason: str) -> None:
    ch = x.channels.get(core.fold(name))
    if ch is None:
        return
    core.relay(_local(ch.members), x, "PART", [ch.name, reason] if reason else [ch.name])
    core.remove_member(ch, x)


def apply_event(core: ChatCore, me: str, node: str, ev: dict[str, Any]) -> list[Out]:
    """Apply one event of user `ev["u"]` on `node` (`me` is this node's id); returns the output."""
    kind = ev["k"]
    uid = ev["u"]
    if isinstance(uid, list):
        uid = tuple(uid)
    if kind != "quit" and not valid_ident(uid, ev.get("i")):
        return []
    if kind == "quit":
        x = core.clients.get((node, uid))
        if x is not None:
            core.drop(x, "Quit", error=False, quit_message=str(ev.get("reason") or "Quit"))
        return core._flush()
    x = user(core, node, uid, ev["i"])
    if kind == "join":
        _join(core, x, str(ev.get("channel") or ""), _member_modes(ev.get("modes")), ev.get("created"))
    elif kind == "part":
        _part(core, x, ev["channel"], ev.get("reason") or "")
    elif kind == "msg":
        _message(core, me, x, ev)
    elif kind == "topic":
        ch = core.lookup_channel(str(ev.get("channel") or ""))
        topic, when = ev.get("topic"), _float(ev.get("time"))
        if ch is not None and isinstance(topic, str) and _clean_text(topic, core.limits.topiclen):
            ch.topic, ch.topic_by = topic, x.nick or "*"
            ch.topic_time = when if when is not None else core.clock()
            ch.stamp = max(ch.stamp, ch.topic_time)
            core.relay(_local(ch.members), x, "TOPIC", [ch.name, ch.topic])
    elif kind == "mode":
        apply_mode(core, me, node, x, ev)
    elif kind == "away":
        x.away = str(ev.get("text") or "") or None
        notify_away(core, core.peers(x), x)
    elif kind == "umode":
        x.bot = ev.get("bot") is True
    elif kind == "setname":
        pass  # user() above took the new realname from the event's identity and told the local peers
    elif kind == "invite":
        ch = core.lookup_channel(ev["channel"])
        target = core.lookup_nick(ev.get("target") or "")
        if ch is not None and target is not None and target not in ch.members:
            ch.invite(target.folded or "", core.limits.max_invites)
            if target.remote is None:
                core.relay([target], x, "INVITE", [target.nick or "*", ch.name])
    elif kind == "kick":
        ch = core.lookup_channel(ev["channel"])
        target = resolve(core, me, node, ev.get("ref"), ev.get("target"))
        if ch is not None and target is not None and target in ch.members:
            core.relay(_local(ch.members), x, "KICK", [ch.name, target.nick or "*", ev.get("reason") or ""])
            core.remove_member(ch, target)
    return core._flush()  # "user" and "nick": user() did it


def _message(core: ChatCore, me: str, x: Client, ev: dict[str, Any]) -> None:
    command = ev["command"]
    text = ev.get("text")
    params_tail = [] if text is None else [text]
    tags = ev.get("tags") or None
    when = float(ev.get("time") or core.clock())
    msgid = ev.get("msgid")
    to = ev.get("to")
    if to is not None:
        if to[0] != me:
            return
        target = core.clients.get(to[1])
        if target is None or target.remote is not None or not target.registered:
            return
        core.relay([target], x, command, [target.nick or "*", *params_tail], msgid=msgid, client_tags=tags,
                   tags_only=command == "TAGMSG", when=when)
        return
    ch = core.lookup_channel(ev["target"])
    if ch is None:
        return
    core.relay(_local(ch.members), x, command, [ch.name, *params_tail], msgid=msgid, client_tags=tags,
               tags_only=command == "TAGMSG", when=when)
    if text is not None and core.history is not None and msgid:
        stored = dict(tags or {})
        if x.account:
            stored["account"] = x.account
        core.history.append(ch.folded, msgid, when, x.prefix, command, text, stored)


def apply_snapshot(core: ChatCore, node: str, records: list[Any], channels: list[Any] = ()) -> list[Out]:
    """Make node `node`'s users exactly the user records ([{"u": uid, "i": ident, "c": {channel: modes},
    "a": away}]) and adopt its channel records ({"ch": name, "created", "stamp", ...}: channel_record)
    where they are newer. Malformed records are skipped."""
    created: dict[str, Any] = {}
    for rec in channels:
        if isinstance(rec, dict) and isinstance(rec.get("ch"), str):
            created[core.fold(rec["ch"])] = rec.get("created")
    wanted = {}
    for r in records:
        if isinstance(r, dict) and valid_ident(r.get("u"), r.get("i")):
            wanted[(node, r["u"])] = r
    for x in [x for x in core.clients.values() if x.remote == node and x.cid not in wanted]:
        core.drop(x, SPLIT_REASON, error=False)
    for (_, uid), rec in wanted.items():
        x = user(core, node, uid, rec["i"])
        chans = {}
        raw = rec.get("c") if isinstance(rec.get("c"), dict) else {}
        for name, modes in raw.items():
            if isinstance(name, str) and name:
                chans[core.fold(name)] = (name, _member_modes(modes))
        for folded, ch in list(x.channels.items()):
            if folded not in chans:
                _part(core, x, ch.name, "")
        for folded, (name, modes) in chans.items():
            _join(core, x, name, modes, created.get(folded))
        away = rec.get("a")
        x.away = away if isinstance(away, str) and away else None
        x.bot = rec.get("b") is True
    for rec in channels:
        apply_channel(core, rec)
    return core._flush()


def remove_node(core: ChatCore, node: str, reason: str = SPLIT_REASON) -> list[Out]:
    """Node `node` is gone (it said goodbye, or its heartbeat stopped): its users quit."""
    for x in [x for x in core.clients.values() if x.remote == node]:
        core.drop(x, reason, error=False)
    return core._flush()


def nodes(core: ChatCore) -> set[str]:
    """The other nodes this core holds users of."""
    return {x.remote for x in core.clients.values() if x.remote is not None}


def record(c: Client) -> dict[str, Any]:
    """A local user as other nodes learn it from a snapshot."""
    rec = {"u": c.cid, "i": [c.nick or "*", c.user or "*", c.host, c.realname, c.account],
           "c": {ch.name: ch.members.get(c, "") for ch in c.channels.values()}, "a": c.away}
    if c.bot:
        rec["b"] = True
    return rec


def collide(core: ChatCore, cid: Any) -> list[Out]:
    """A local user lost its nick to a user on another node (the nick's key in Redis): drop it."""
    c = core.clients.get(cid)
    if c is not None and c.remote is None:
        folded = c.folded
        core.drop(c, "Nickname collision")
        winner = next((x for x in core.clients.values() if x.remote is not None and x.folded == folded), None)
        if winner is not None:
            core.nicks[folded or ""] = winner
    return core._flush()
