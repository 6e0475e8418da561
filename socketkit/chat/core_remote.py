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
from socketkit.chat.core_state import Channel, Client, Out, ref

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
                   realname=realname, registered=True, account=account, last_active=now, remote=node)
        x.update_prefix()
        core.clients[cid] = x
        _claim(core, x)
    elif nick != x.nick:
        _rename(core, x, nick)
    else:
        x.account = account
    return x


TS_SLACK = 1e-3  # seconds: creation times closer than this are the same channel incarnation


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
    core.relay(local, x, "JOIN", [ch.name])
    if x.away:
        watchers = [m for m in local if "away-notify" in m.caps]
        if watchers:
            core.relay(watchers, x, "AWAY", [x.away])


def lose_ts(core: ChatCore, ch: Channel, created: float) -> None:
    """Another node's `ch` is older than ours: ours was a younger incarnation (made while we did not know
    of theirs). Its ops and voices lapse and its settings (modes, key, limit, bans, topic) go back to a
    new channel's, shown to our members; the older side's state is then adopted from its record, whatever
    that record's stamp. Other nodes drop our side's ops the same way (see _join)."""
    ch.created = created
    ch.stamp = float("-inf")
    local = _local(ch.members)
    changes: list[tuple[str, str, str | None]] = []
    for m in sorted(ch.modes - core.default_modes):
        changes.append(("-", m, None))
    for m in sorted(core.default_modes - ch.modes):
        changes.append(("+", m, None))
    ch.modes = set(core.default_modes)
    if ch.key is not None:
        changes.append(("-", "k", "*"))
        ch.key = None
    if ch.limit is not None:
        changes.append(("-", "l", None))
        ch.limit = None
    changes += [("-", "b", mask) for mask, _, _ in ch.bans]
    ch.bans, ch.ban_folded = [], []
    ch.ban_cache.clear()
    ch.topic, ch.topic_by, ch.topic_time = "", "", 0.0
    lapsed = []
    for member, modes in list(ch.members.items()):
        if member.remote is None and modes:
            ch.members[member] = ""
            lapsed.append((member, modes))
            changes += [("-", m, member.nick) for m in modes]
    if changes and local:
        for i in range(0, len(changes), 12):  # a MODE line holds a bounded number of changes
            core.relay(local, core.server_name, "MODE", [ch.name, *render_modes(changes[i:i + 12])])
    for member, modes in lapsed:
        if core.federated:  # the other nodes may still count them: tell them (the member as the source)
            core.emit("mode", member, channel=ch.name, stamp=0.0,
                      changes=[["-", m, member.nick, ref(member)] for m in modes])


def _member_modes(value: Any) -> str:
    return "".join(sorted({m for m in value if m in "ov"})) if isinstance(value, str) else ""


def _clean_text(text: str, limit: int) -> bool:
    return len(text.encode()) <= limit and not any(ch in text for ch in "\r\n\0")


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if value == value and abs(value) < 1e12 else None


def resolve(core: ChatCore, me: str, node: str, reference: Any, nick: Any) -> Client | None:
    """The user an event from `node` names: by reference (core_state.ref) when it carries one, which
    survives nick changes; by nick otherwise."""
    if isinstance(reference, dict) and "u" in reference:
        owner, uid = reference.get("n") or node, reference["u"]
        if isinstance(uid, list):
            uid = tuple(uid)
        x = core.clients.get(uid if owner == me else (owner, uid))
        return x if x is not None and not x.closed else None
    return core.lookup_nick(str(nick or ""))


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
        _mode(core, me, node, x, ev)
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
        target = resolve(core, me, node, ev.get("ref"), ev.get("target"))
        if ch is not None and target is not None and target in ch.members:
            core.relay(_local(ch.members), x, "KICK", [ch.name, target.nick or "*", ev.get("reason") or ""])
            core.remove_member(ch, target)
    return core._flush()  # "user" and "nick": user() did it


def _mode(core: ChatCore, me: str, node: str, x: Client, ev: dict[str, Any]) -> None:
    """A MODE that an operator on another node applied there (its node checked the privilege): the
    same changes here, shown to the local members. Malformed changes are skipped one by one."""
    ch = core.lookup_channel(str(ev.get("channel") or ""))
    if ch is None:
        return
    applied: list[tuple[str, str, str | None]] = []
    for change in (ev.get("changes") or ())[:64]:
        if not isinstance(change, list) or len(change) < 3:
            continue
        sign, m, arg = change[0], change[1], change[2]
        reference = change[3] if len(change) > 3 else None
        if sign not in ("+", "-") or not isinstance(m, str) or len(m) != 1:
            continue
        if arg is not None and (not isinstance(arg, str) or len(arg) > 512):
            continue
        if m in FLAG_MODES:
            (ch.modes.add if sign == "+" else ch.modes.discard)(m)
        elif m in "ov":
            member = resolve(core, me, node, reference, arg)
            have = ch.members.get(member) if member is not None else None
            if member is None or have is None:
                continue
            if (m in have) == (sign == "+"):
                continue  # nothing changes here: nothing to show
            ch.members[member] = "".join(sorted(set(have) | {m})) if sign == "+" else have.replace(m, "")
            arg = member.nick  # as it is called here and now
        elif m == "k":
            if sign == "+" and (not arg or len(arg) > core.limits.keylen):
                continue
            ch.key = arg if sign == "+" else None
        elif m == "l":
            if sign == "+":
                try:
                    value = int(arg or "")
                except ValueError:
                    continue
                if value <= 0:
                    continue
                ch.limit = min(value, 1_000_000)
            else:
                ch.limit = None
        elif m == "b":
            mask = str(arg or "")
            if not mask or len(mask) > core.limits.masklen:
                continue
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
        applied.append((sign, m, arg))
    stamp = _float(ev.get("stamp"))
    if stamp is not None:
        ch.stamp = max(ch.stamp, stamp)
    if applied:
        core.relay(_local(ch.members), x, "MODE", [ch.name, *render_modes(applied)])


def channel_record(ch: Channel) -> dict[str, Any]:
    """A channel's shared state, as a node that has members in it stores it for nodes starting later."""
    return {"ch": ch.name, "created": ch.created, "stamp": ch.stamp, "topic": ch.topic, "topic_by": ch.topic_by,
            "topic_time": ch.topic_time, "modes": "".join(sorted(ch.modes)), "key": ch.key, "limit": ch.limit,
            "bans": [list(b) for b in ch.bans]}


def apply_channel(core: ChatCore, rec: Any) -> bool:
    """Adopt another node's view of a channel we also hold, if it is newer than ours (last writer wins,
    by `stamp`; the older incarnation by `created` first, see _join). True when ours changed. A malformed
    record changes nothing."""
    if not isinstance(rec, dict) or not isinstance(rec.get("ch"), str):
        return False
    ch = core.lookup_channel(rec["ch"])
    created, stamp = _float(rec.get("created")), _float(rec.get("stamp"))
    if ch is None or created is None or stamp is None:
        return False
    try:
        topic, topic_by = str(rec.get("topic") or ""), str(rec.get("topic_by") or "")
        topic_time = _float(rec.get("topic_time")) or 0.0
        modes = {m for m in str(rec.get("modes") or "") if m in FLAG_MODES}
        key = rec.get("key")
        key = key if isinstance(key, str) and 0 < len(key) <= core.limits.keylen else None
        limit = rec.get("limit")
        limit = min(limit, 1_000_000) if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
        bans = []
        for b in (rec.get("bans") or ())[: core.limits.maxbans]:
            if isinstance(b, list) and len(b) == 3 and isinstance(b[0], str) and b[0] \
                    and len(b[0]) <= core.limits.masklen:
                bans.append((b[0], str(b[1]), _float(b[2]) or 0.0))
    except (TypeError, ValueError):
        return False
    changed = False
    if created > core.clock() + 300:
        return False  # from the future: see _join
    if not any(m.remote is None for m in ch.members):
        ch.created = created  # a mirror: see _join
    elif created < ch.created - TS_SLACK:
        lose_ts(core, ch, created)
        changed = True
    elif created > ch.created + TS_SLACK:
        return False  # a younger incarnation's state does not count
    if stamp <= ch.stamp:
        return changed
    ch.stamp = stamp
    ch.topic, ch.topic_by, ch.topic_time = topic, topic_by, topic_time
    ch.modes, ch.key, ch.limit = modes, key, limit
    ch.bans = bans
    ch.ban_folded = [core.fold(b[0]) for b in bans]
    ch.ban_cache.clear()
    return True


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
