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

from socketkit.chat.core_modes import FLAG_MODES, render_modes
from socketkit.chat.core_state import Channel, Client, Out

if TYPE_CHECKING:
    from socketkit.chat.core import ChatCore

SPLIT_REASON = "*.net *.split"


def _local(members: Any) -> list[Client]:
    return [m for m in members if m.remote is None]


def _claim(core: ChatCore, x: Client) -> None:
    holder = core.nicks.get(x.folded or "")
    # A local holder keeps the nick: the nick's key in Redis decides, and the losing node drops its user.
    if holder is None or holder.remote is not None:
        core.nicks[x.folded or ""] = x


def _rename(core: ChatCore, x: Client, nick: str) -> None:
    old_prefix = x.prefix
    if core.nicks.get(x.folded or "") is x:
        del core.nicks[x.folded or ""]
    x.nick, x.folded = nick, core.fold(nick)
    x.update_prefix()
    _claim(core, x)
    peers = _local(core.peers(x))
    if peers:
        core.relay(peers, old_prefix, "NICK", [nick], account=x.account)


def user(core: ChatCore, node: str, uid: Any, ident: Any) -> Client:
    """The remote user (node, uid), created or brought up to date with `ident`."""
    nick, username, host, realname, account = ident
    cid = (node, uid)
    x = core.clients.get(cid)
    if x is None:
        now = core.clock()
        x = Client(cid, host, False, False, now, nick=nick, folded=core.fold(nick), user=username,
                   realname=realname, registered=True, account=account, last_active=now, remote=node)
        x.update_prefix()
        core.clients[cid] = x
        _claim(core, x)
    elif nick != x.nick:
        _rename(core, x, nick)
    else:
        x.account = account
    return x


def _join(core: ChatCore, x: Client, name: str, modes: str) -> None:
    folded = core.fold(name)
    ch = x.channels.get(folded)
    if ch is not None:
        ch.members[x] = modes
        return
    ch = core.channels.get(folded)
    if ch is None:
        ch = Channel(name, folded, core.clock(), modes=set(core.default_modes))
        core.channels[folded] = ch
    ch.members[x] = modes
    x.channels[folded] = ch
    core.relay(_local(ch.members), x, "JOIN", [ch.name])


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
    if kind == "quit":
        x = core.clients.get((node, uid))
        if x is not None:
            core.drop(x, "Quit", error=False, quit_message=str(ev.get("reason") or "Quit"))
        return core._flush()
    x = user(core, node, uid, ev["i"])
    if kind == "join":
        _join(core, x, ev["channel"], ev.get("modes") or "")
    elif kind == "part":
        _part(core, x, ev["channel"], ev.get("reason") or "")
    elif kind == "msg":
        _message(core, me, x, ev)
    elif kind == "topic":
        ch = core.lookup_channel(ev["channel"])
        if ch is not None:
            ch.topic, ch.topic_by, ch.topic_time = ev["topic"], x.nick or "*", float(ev.get("time") or core.clock())
            ch.stamp = max(ch.stamp, ch.topic_time)
            core.relay(_local(ch.members), x, "TOPIC", [ch.name, ch.topic])
    elif kind == "mode":
        _mode(core, x, ev)
    elif kind == "away":
        x.away = str(ev.get("text") or "") or None
        watchers = [p for p in _local(core.peers(x)) if "away-notify" in p.caps]
        if watchers:
            core.relay(watchers, x, "AWAY", [x.away] if x.away else [])
    elif kind == "invite":
        ch = core.lookup_channel(ev["channel"])
        target = core.lookup_nick(ev.get("target") or "")
        if ch is not None and target is not None and target not in ch.members:
            if len(ch.invites) >= core.limits.max_invites:
                ch.invites.pop()
            ch.invites.add(target.folded or "")
            if target.remote is None:
                core.relay([target], x, "INVITE", [target.nick or "*", ch.name])
    elif kind == "kick":
        ch = core.lookup_channel(ev["channel"])
        target = core.lookup_nick(ev["target"])
        if ch is not None and target is not None and target in ch.members:
            core.relay(_local(ch.members), x, "KICK", [ch.name, target.nick or "*", ev.get("reason") or ""])
            core.remove_member(ch, target)
    return core._flush()  # "user" and "nick": user() did it


def _mode(core: ChatCore, x: Client, ev: dict[str, Any]) -> None:
    """A MODE that an operator on another node applied there (its node checked the privilege): the
    same changes here, shown to the local members."""
    ch = core.lookup_channel(ev["channel"])
    if ch is None:
        return
    applied: list[tuple[str, str, str | None]] = []
    for change in ev.get("changes") or ():
        try:
            sign, m, arg = change
        except (TypeError, ValueError):
            continue
        if sign not in "+-" or not isinstance(m, str) or len(m) != 1:
            continue
        if m in FLAG_MODES:
            (ch.modes.add if sign == "+" else ch.modes.discard)(m)
        elif m in "ov":
            member = core.lookup_nick(str(arg or ""))
            have = ch.members.get(member) if member is not None else None
            if have is None:
                continue
            ch.members[member] = "".join(sorted(set(have) | {m})) if sign == "+" else have.replace(m, "")
        elif m == "k":
            ch.key = str(arg) if sign == "+" and arg else None
        elif m == "l":
            try:
                ch.limit = min(int(arg), 1_000_000) if sign == "+" else None
            except (TypeError, ValueError):
                continue
        elif m == "b":
            mask = str(arg or "")
            folded = core.fold(mask)
            if sign == "+" and folded not in ch.ban_folded and len(ch.bans) < core.limits.maxbans:
                ch.bans.append((mask, x.nick or "*", core.clock()))
                ch.ban_folded.append(folded)
            elif sign == "-" and folded in ch.ban_folded:
                i = ch.ban_folded.index(folded)
                del ch.bans[i], ch.ban_folded[i]
            ch.ban_cache.clear()
        else:
            continue
        applied.append((sign, m, None if arg is None else str(arg)))
    ch.stamp = max(ch.stamp, float(ev.get("stamp") or 0.0))
    if applied:
        core.relay(_local(ch.members), x, "MODE", [ch.name, *render_modes(applied)])


def channel_record(ch: Channel) -> dict[str, Any]:
    """A channel's shared state, as a node that has members in it stores it for nodes starting later."""
    return {"ch": ch.name, "created": ch.created, "stamp": ch.stamp, "topic": ch.topic, "topic_by": ch.topic_by,
            "topic_time": ch.topic_time, "modes": "".join(sorted(ch.modes)), "key": ch.key, "limit": ch.limit,
            "bans": [list(b) for b in ch.bans]}


def apply_channel(core: ChatCore, rec: dict[str, Any]) -> None:
    """Adopt another node's view of a channel we also hold, if it is newer than ours (last writer wins,
    by `stamp`); the creation time is the earliest any node saw."""
    ch = core.lookup_channel(str(rec.get("ch") or ""))
    if ch is None:
        return
    created = float(rec.get("created") or ch.created)
    ch.created = min(ch.created, created)
    stamp = float(rec.get("stamp") or 0.0)
    if stamp <= ch.stamp:
        return
    ch.stamp = stamp
    ch.topic = str(rec.get("topic") or "")
    ch.topic_by = str(rec.get("topic_by") or "")
    ch.topic_time = float(rec.get("topic_time") or 0.0)
    ch.modes = {m for m in str(rec.get("modes") or "") if m in FLAG_MODES}
    ch.key = rec.get("key") or None
    limit = rec.get("limit")
    ch.limit = int(limit) if isinstance(limit, int) and limit > 0 else None
    bans = [(str(b[0]), str(b[1]), float(b[2])) for b in rec.get("bans") or () if len(b) == 3]
    ch.bans = bans[: core.limits.maxbans]
    ch.ban_folded = [core.fold(b[0]) for b in ch.bans]
    ch.ban_cache.clear()


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


def apply_snapshot(core: ChatCore, node: str, records: list[dict[str, Any]]) -> list[Out]:
    """Make node `node`'s users exactly the user records ([{"u": uid, "i": ident, "c": {channel: modes},
    "a": away}]), then adopt its channel records ({"ch": name, ...}: see channel_record) where newer."""
    channels = [r for r in records if "ch" in r]
    records = [r for r in records if "u" in r]
    wanted = {(node, r["u"]): r for r in records}
    for x in [x for x in core.clients.values() if x.remote == node and x.cid not in wanted]:
        core.drop(x, SPLIT_REASON, error=False)
    for (_, uid), rec in wanted.items():
        x = user(core, node, uid, rec["i"])
        chans = {core.fold(name): (name, modes) for name, modes in (rec.get("c") or {}).items()}
        for folded, ch in list(x.channels.items()):
            if folded not in chans:
                _part(core, x, ch.name, "")
        for name, modes in chans.values():
            _join(core, x, name, modes)
        x.away = rec.get("a") or None
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
    return {"u": c.cid, "i": [c.nick or "*", c.user or "*", c.host, c.realname, c.account],
            "c": {ch.name: ch.members.get(c, "") for ch in c.channels.values()}, "a": c.away}


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
