"""Channel state between chat nodes: which incarnation of a channel counts (TS6-style creation times),
MODE changes made on another node, and the per-channel records a node keeps in Redis for nodes that
start later. Part of core_remote (see there); sans-I/O like the rest of the core."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from socketkit.chat.core_modes import FLAG_MODES, render_modes
from socketkit.chat.core_state import Channel, Client, ref

if TYPE_CHECKING:
    from socketkit.chat.core import ChatCore


def _local(members: Any) -> list[Client]:
    """The members of this node (the ones a relay here can reach)."""
    return [m for m in members if m.remote is None]


TS_SLACK = 1e-3  # seconds: creation times closer than this are the same channel incarnation


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


def apply_mode(core: ChatCore, me: str, node: str, x: Client, ev: dict[str, Any]) -> None:
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
            if not ch.set_member_mode(member, sign, m):
                continue  # nothing changes here: nothing to show
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
                ch.add_ban(mask, folded, x.nick or "*", core.clock())
            elif sign == "-":
                ch.remove_ban(folded)
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
