"""PRIVMSG, NOTICE and TAGMSG delivery, history replay on JOIN and draft/chathistory.

History choice: channel PRIVMSG/NOTICE are stored (private messages are not). On JOIN the last
`history_replay` lines are replayed, except to clients that negotiated draft/chathistory (they ask for
what they want). Clients with batch + server-time get them inside a `chathistory` batch with their
original time; others get the original PRIVMSG/NOTICE lines as they were, with no NOTICE wrapped around
them, so plain clients show the recent conversation without any server chatter.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import TYPE_CHECKING

from socketkit.chat.core_channels import is_banned
from socketkit.chat.core_history import HistoryEntry
from socketkit.chat.core_state import Channel, Client
from socketkit.proto.irc import Message, Numeric, truncate_utf8

if TYPE_CHECKING:
    from socketkit.chat.core import ChatCore

N = Numeric


def _deliver(core: ChatCore, c: Client, msg: Message) -> None:
    command = msg.command
    quiet = command != "PRIVMSG"  # no error replies to NOTICE (nor TAGMSG: it is machine talk)
    tagmsg = command == "TAGMSG"
    if not msg.params or not msg.params[0]:
        if not quiet:
            core.num(c, N.ERR_NORECIPIENT, f"No recipient given ({command})")
        return
    if not tagmsg and (len(msg.params) < 2 or not msg.params[1]):
        if not quiet:
            core.num(c, N.ERR_NOTEXTTOSEND, "No text to send")
        return
    raw = msg.params[0]
    targets: dict[str, str] = {}
    if "," in raw:
        for t in raw.split(","):
            if t:
                targets.setdefault(core.fold(t), t)
    else:
        targets[core.fold(raw)] = raw
    if len(targets) > core.limits.maxtargets:
        if not quiet:
            core.num(c, N.ERR_TOOMANYTARGETS, list(targets.values())[core.limits.maxtargets],
                     f"Too many targets. The maximum is {core.limits.maxtargets}")
        return
    client_tags = {k: v for k, v in msg.tags.items() if k[0] == "+"} if msg.tags else None
    now = core.clock()
    if not tagmsg:
        c.last_spoke = now
    echo = "echo-message" in c.caps
    for folded, target in targets.items():
        text = None
        if not tagmsg:
            text = msg.params[1]
            overhead = len(c.prefix) + len(command) + len(target) + 7  # ":" " " " " " :" CRLF
            if 4 * len(text) + 4 * overhead > 512:  # it may not fit: measure in octets, cut if need be
                overhead = len(f":{c.prefix} {command} {target} :\r\n".encode())
                text = truncate_utf8(text, 512 - overhead)
        params = [target] if text is None else [target, text]
        if target[0] == "#":
            ch = core.channels.get(folded)
            if ch is None:
                if not quiet:
                    core.num(c, N.ERR_NOSUCHCHANNEL, target, "No such channel")
                continue
            modes = ch.members.get(c)
            voiced = modes is not None and ("o" in modes or "v" in modes)
            if ((modes is None and "n" in ch.modes) or ("m" in ch.modes and not voiced)
                    or (not voiced and is_banned(core, ch, c))):
                if not quiet:
                    core.num(c, N.ERR_CANNOTSENDTOCHAN, ch.name, "Cannot send to channel")
                continue
            params[0] = ch.name
            msgid = core.new_msgid()
            # The sender's echo comes in channel order (it is a member): what matters is that every
            # recipient sees the channel's messages in one order, and each client's lines stay in order.
            core.relay(ch.members, c, command, params, msgid=msgid, client_tags=client_tags,
                       tags_only=tagmsg, when=now, skip=None if echo else c)
            if core.federated:
                core.emit("msg", c, command=command, target=ch.name, text=text, msgid=msgid,
                          tags=client_tags, time=now)
            if text is not None and core.history is not None:
                tags = dict(client_tags or {})
                if c.account:
                    tags["account"] = c.account
                core.history.append(ch.folded, msgid, now, c.prefix, command, text, tags)
        else:
            x = core.lookup_nick(target)
            if x is None:
                if not quiet:
                    core.num(c, N.ERR_NOSUCHNICK, target, "No such nick/channel")
                continue
            params[0] = x.nick or target
            msgid = core.new_msgid()
            if x is c:
                # To oneself: the echo (with echo-message) is the response, the delivery comes after it.
                if echo:
                    core.relay([c], c, command, params, msgid=msgid, client_tags=client_tags, tags_only=tagmsg,
                               when=now)
                start = len(c.out)
                core.relay([c], c, command, params, msgid=msgid, client_tags=client_tags, tags_only=tagmsg,
                           when=now)
                delivered = c.out[start:]
                del c.out[start:]
                for line in delivered:
                    core.deliver_to_self(c, line)
            else:
                core.relay([x, c] if echo else [x], c, command, params,
                           msgid=msgid, client_tags=client_tags, tags_only=tagmsg, when=now)
            if x.remote is not None and core.federated:  # a user on another node: the backplane delivers
                core.emit("msg", c, command=command, target=params[0], to=list(x.cid), text=text, msgid=msgid,
                          tags=client_tags, time=now)
            if command == "PRIVMSG" and x.away:
                core.num(c, N.RPL_AWAY, x.nick, x.away)


# -- history ------------------------------------------------------------------------------------------
def _send_entries(core: ChatCore, c: Client, target: str, entries: list[HistoryEntry], batch: bool) -> None:
    extra = None
    if batch:
        ref = secrets.token_hex(4)
        extra = {"batch": ref}
        core.reply(c, "BATCH", f"+{ref}", "chathistory", target, trailing=False)
    for e in entries:
        client_tags = {k: v for k, v in e.tags.items() if k[0] == "+"}
        params = [target, e.text]
        core.relay([c], e.source, e.command, params, msgid=e.msgid, client_tags=client_tags or None,
                   when=e.time, account=e.tags.get("account"), extra=extra)
    if batch:
        core.reply(c, "BATCH", f"-{extra['batch']}")


def replay_on_join(core: ChatCore, c: Client, ch: Channel) -> None:
    n = core.limits.history_replay
    if n <= 0 or core.history is None or "draft/chathistory" in c.caps:
        return
    entries = core.history.latest(ch.folded, n)
    if entries:
        _send_entries(core, c, ch.name, entries, "batch" in c.caps and "server-time" in c.caps)


def _fail(core: ChatCore, c: Client, code: str, *params: str) -> None:
    core.reply(c, "FAIL", "CHATHISTORY", code, *params)


def _ref(value: str) -> str | float | None:
    kind, _, rest = value.partition("=")
    if kind == "msgid" and rest:
        return rest
    if kind == "timestamp" and rest:
        try:
            return datetime.fromisoformat(rest).timestamp()
        except ValueError:
            return None
    return None


def _past(ref: str | float) -> str | float:
    """`ref` as the bound of "strictly after": clients see times to the millisecond, so a timestamp
    covers its whole millisecond (a message stored at .3174 s is at, not after, "...317Z")."""
    return ref + 0.000999 if isinstance(ref, float) else ref


def _is_at(e: HistoryEntry, ref: str | float) -> bool:
    return e.msgid == ref if isinstance(ref, str) else e.time >= ref


def cmd_chathistory(core: ChatCore, c: Client, msg: Message) -> None:
    store = core.history
    p = msg.params
    sub = p[0].upper() if p else ""
    if store is None:
        core.num(c, N.ERR_UNKNOWNCOMMAND, "CHATHISTORY", "Unknown command")
        return
    need = {"LATEST": 4, "BEFORE": 4, "AFTER": 4, "AROUND": 4, "BETWEEN": 5}.get(sub)
    if need is None:
        _fail(core, c, "INVALID_PARAMS", sub or "*", "Unknown or unsupported subcommand")
        return
    if len(p) < need:
        _fail(core, c, "NEED_MORE_PARAMS", sub, "Missing parameters")
        return
    target = p[1]
    try:
        limit = int(p[need - 1])
    except ValueError:
        limit = 0
    if limit <= 0:
        _fail(core, c, "INVALID_PARAMS", sub, "Invalid limit")
        return
    limit = min(limit, core.limits.chathistory_max)
    ch = core.lookup_channel(target) if target.startswith("#") else None
    if target.startswith("#") and (ch is None or c not in ch.members):
        _fail(core, c, "INVALID_TARGET", sub, target[:64] if " " not in target else "*", "No such channel")
        return
    refs: list[str | float] = []
    for raw in p[2:need - 1]:
        ref = None if (raw == "*" and sub == "LATEST") else _ref(raw)
        if ref is None and not (raw == "*" and sub == "LATEST"):
            _fail(core, c, "INVALID_PARAMS", sub, "Invalid message reference")
            return
        if ref is not None:
            refs.append(ref)
    entries: list[HistoryEntry] = []
    if ch is not None:
        key = ch.folded
        if sub == "LATEST":
            entries = store.latest(key, limit)
            if refs:
                ref = refs[0]
                hit = next((i for i, e in enumerate(entries) if _is_at(e, ref)), None)
                if isinstance(ref, str):
                    entries = entries[hit + 1:] if hit is not None else entries
                else:
                    entries = [e for e in entries if e.time > _past(ref)]
        elif sub == "BEFORE":
            entries = store.before(key, refs[0], limit)
        elif sub == "AFTER":
            entries = store.after(key, _past(refs[0]), limit)
        elif sub == "AROUND":
            before = store.before(key, refs[0], limit // 2)
            start = before[-1].msgid if before else refs[0]
            entries = before + store.after(key, _past(start), limit - len(before))
        else:  # BETWEEN
            entries = []
            for e in store.after(key, _past(refs[0]), limit):
                if _is_at(e, refs[1]):
                    break
                entries.append(e)
    _send_entries(core, c, ch.name if ch else target, entries, "batch" in c.caps)


def cmd_privmsg(core: ChatCore, c: Client, msg: Message) -> None:
    _deliver(core, c, msg)


HANDLERS = {
    "PRIVMSG": (cmd_privmsg, 0, False),
    "NOTICE": (cmd_privmsg, 0, False),
    "TAGMSG": (cmd_privmsg, 0, False),
    "CHATHISTORY": (cmd_chathistory, 0, False),
}
