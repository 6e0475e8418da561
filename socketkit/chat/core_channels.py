"""Channel membership and metadata: JOIN, PART, TOPIC, NAMES, LIST, INVITE, KICK."""

from __future__ import annotations

from typing import TYPE_CHECKING

from socketkit.chat.core_info import notify_away, prefix_of
from socketkit.chat.core_state import Channel, Client, glob_match, ref
from socketkit.proto.irc import Message, Numeric, truncate_utf8, valid_channel

if TYPE_CHECKING:
    from socketkit.chat.core import ChatCore

N = Numeric


def is_banned(core: ChatCore, ch: Channel, c: Client) -> bool:
    """Whether a ban mask matches c's nick!user@host; cached per member until the bans or the nick change."""
    if not ch.bans:
        return False
    cached = ch.ban_cache.get(c)
    if cached is not None and cached[0] == c.prefix:
        return cached[1]
    folded = core.fold(c.prefix)
    banned = any(glob_match(mask, folded) for mask in ch.ban_folded)
    if c in ch.members:
        ch.ban_cache[c] = (c.prefix, banned)
    return banned


def names_symbol(ch: Channel) -> str:
    return "@" if "s" in ch.modes else "="


def send_names(core: ChatCore, c: Client, ch: Channel, end: bool = True) -> None:
    multi = "multi-prefix" in c.caps
    full = "userhost-in-names" in c.caps
    member = c in ch.members
    if "s" in ch.modes and not member:  # a secret channel shows nothing to outsiders
        core.num(c, N.RPL_ENDOFNAMES, ch.name, "End of /NAMES list")
        return
    symbol = names_symbol(ch)
    room = 480 - len(core.server_name) - len(c.nick or "*") - len(ch.name.encode())
    words: list[str] = []
    size = 0
    for x, modes in ch.members.items():
        if not member and x.invisible:
            continue
        word = prefix_of(modes, multi) + (x.prefix if full else (x.nick or "*"))
        if words and size + len(word) + 1 > room:
            core.num(c, N.RPL_NAMREPLY, symbol, ch.name, " ".join(words))
            words, size = [], 0
        words.append(word)
        size += len(word) + 1
    if words:
        core.num(c, N.RPL_NAMREPLY, symbol, ch.name, " ".join(words))
    if end:
        core.num(c, N.RPL_ENDOFNAMES, ch.name, "End of /NAMES list")


def relay_join(core: ChatCore, recipients: list[Client], x: Client, ch: Channel) -> None:
    """x's JOIN to `recipients`: with its account and realname for those that asked for extended-join."""
    extended = [r for r in recipients if "extended-join" in r.caps]
    if extended:
        plain = [r for r in recipients if "extended-join" not in r.caps]
        core.relay(extended, x, "JOIN", [ch.name, x.account or "*", x.realname or "*"])
        recipients = plain
    if recipients:
        core.relay(recipients, x, "JOIN", [ch.name])


def send_topic(core: ChatCore, c: Client, ch: Channel) -> None:
    core.num(c, N.RPL_TOPIC, ch.name, ch.topic)
    core.num(c, N.RPL_TOPICWHOTIME, ch.name, ch.topic_by, str(int(ch.topic_time)))


def cmd_join(core: ChatCore, c: Client, msg: Message) -> None:
    if msg.params[0] == "0":
        for ch in list(c.channels.values()):
            core.relay(ch.members, c, "PART", [ch.name])
            core.remove_member(ch, c)
            if core.federated:
                core.emit("part", c, channel=ch.name, reason="")
        return
    keys = msg.params[1].split(",") if len(msg.params) > 1 else []
    for i, name in enumerate(msg.params[0].split(",")[: core.limits.chanlimit + 1]):
        if name and not join_one(core, c, name, keys[i] if i < len(keys) else None):
            return


def join_one(core: ChatCore, c: Client, name: str, key: str | None) -> bool:
    """Join one channel; False when the client can join no more (stop the list)."""
    if not valid_channel(name, core.limits.channellen):
        core.num(c, N.ERR_BADCHANMASK, name, "Bad Channel Mask")
        return True
    folded = core.fold(name)
    if folded in c.channels:
        return True
    if len(c.channels) >= core.limits.chanlimit:
        core.num(c, N.ERR_TOOMANYCHANNELS, name, "You have joined too many channels")
        return False
    ch = core.channels.get(folded)
    created = ch is None
    if ch is None:
        ch = Channel(name, folded, core.clock(), modes=set(core.default_modes))
        core.channels[folded] = ch
    else:
        invited = c.folded in ch.invites
        if is_banned(core, ch, c) and not invited:
            core.num(c, N.ERR_BANNEDFROMCHAN, ch.name, "Cannot join channel (+b)")
            return True
        if "i" in ch.modes and not invited:
            core.num(c, N.ERR_INVITEONLYCHAN, ch.name, "Cannot join channel (+i)")
            return True
        if ch.key is not None and key != ch.key:
            core.num(c, N.ERR_BADCHANNELKEY, ch.name, "Cannot join channel (+k)")
            return True
        if ch.limit is not None and len(ch.members) >= ch.limit and not invited:
            core.num(c, N.ERR_CHANNELISFULL, ch.name, "Cannot join channel (+l)")
            return True
        ch.invites.discard(c.folded or "")
    ch.members[c] = "o" if created else ""
    c.channels[folded] = ch
    if core.observer is not None:
        core.observer("channel created" if created else "joined", channel=ch.name, nick=c.nick or "*")
    relay_join(core, list(ch.members), c, ch)
    if core.federated:
        core.emit("join", c, channel=ch.name, modes=ch.members[c], created=ch.created)
    if c.away:
        notify_away(core, ch.members, c)
    if ch.topic:
        send_topic(core, c, ch)
    send_names(core, c, ch)
    if core.history is not None:  # a new channel too: after a restart its history is on disk
        from socketkit.chat.core_messages import replay_on_join

        replay_on_join(core, c, ch)
    return True


def cmd_part(core: ChatCore, c: Client, msg: Message) -> None:
    reason = truncate_utf8(msg.params[1], core.limits.quitlen) if len(msg.params) > 1 else ""
    for name in msg.params[0].split(",")[: core.limits.chanlimit]:
        if not name:
            continue
        ch = core.lookup_channel(name)
        if ch is None:
            core.num(c, N.ERR_NOSUCHCHANNEL, name, "No such channel")
        elif c not in ch.members:
            core.num(c, N.ERR_NOTONCHANNEL, ch.name, "You're not on that channel")
        else:
            core.relay(ch.members, c, "PART", [ch.name, reason] if reason else [ch.name])
            core.remove_member(ch, c)
            if core.federated:
                core.emit("part", c, channel=ch.name, reason=reason)


def cmd_topic(core: ChatCore, c: Client, msg: Message) -> None:
    name = msg.params[0]
    ch = core.lookup_channel(name)
    if ch is None:
        core.num(c, N.ERR_NOSUCHCHANNEL, name, "No such channel")
        return
    if len(msg.params) == 1:
        if ch.topic:
            send_topic(core, c, ch)
        else:
            core.num(c, N.RPL_NOTOPIC, ch.name, "No topic is set")
        return
    if c not in ch.members:
        core.num(c, N.ERR_NOTONCHANNEL, ch.name, "You're not on that channel")
        return
    if "t" in ch.modes and "o" not in ch.members[c]:
        core.num(c, N.ERR_CHANOPRIVSNEEDED, ch.name, "You're not channel operator")
        return
    ch.topic = truncate_utf8(msg.params[1], core.limits.topiclen)
    ch.topic_by = c.nick or "*"
    ch.topic_time = core.clock()
    ch.touch(ch.topic_time)
    core.relay(ch.members, c, "TOPIC", [ch.name, ch.topic])
    if core.federated:
        core.emit("topic", c, channel=ch.name, topic=ch.topic, time=ch.topic_time)


def cmd_names(core: ChatCore, c: Client, msg: Message) -> None:
    if not msg.params or not msg.params[0]:
        # Every channel the client may see (its own, and the others that are not secret), then one end.
        shown = 0
        for ch in list(core.channels.values()):
            if c in ch.members or "s" not in ch.modes:
                if shown >= core.limits.list_max:
                    break
                send_names(core, c, ch, end=False)
                shown += 1
        core.num(c, N.RPL_ENDOFNAMES, "*", "End of /NAMES list")
        return
    name = msg.params[0].split(",")[0]
    ch = core.lookup_channel(name)
    if ch is None:
        core.num(c, N.RPL_ENDOFNAMES, name, "End of /NAMES list")
    else:
        send_names(core, c, ch)


def cmd_list(core: ChatCore, c: Client, msg: Message) -> None:
    cap = core.limits.list_max
    if msg.params and msg.params[0]:
        wanted = [core.lookup_channel(n) for n in msg.params[0].split(",")[:cap]]
        chans = [ch for ch in wanted if ch is not None]
    else:
        chans = list(core.channels.values())
    core.num(c, N.RPL_LISTSTART, "Channel", "Users  Name")
    count = 0
    for ch in chans:
        if "s" in ch.modes and c not in ch.members:
            continue
        visible = sum(1 for x in ch.members if not x.invisible or c in ch.members)
        if visible == 0:
            continue
        if count >= cap:
            core.notice(c, f"LIST output truncated to {cap} channels")
            break
        core.num(c, N.RPL_LIST, ch.name, str(visible), ch.topic)
        count += 1
    core.num(c, N.RPL_LISTEND, "End of /LIST")


def cmd_invite(core: ChatCore, c: Client, msg: Message) -> None:
    nick, name = msg.params[0], msg.params[1]
    x = core.lookup_nick(nick)
    if x is None:
        core.num(c, N.ERR_NOSUCHNICK, nick, "No such nick/channel")
        return
    ch = core.lookup_channel(name)
    if ch is None:
        core.num(c, N.ERR_NOSUCHCHANNEL, name, "No such channel")
        return
    if c not in ch.members:
        core.num(c, N.ERR_NOTONCHANNEL, ch.name, "You're not on that channel")
        return
    if "i" in ch.modes and "o" not in ch.members[c]:
        core.num(c, N.ERR_CHANOPRIVSNEEDED, ch.name, "You're not channel operator")
        return
    if x in ch.members:
        core.num(c, N.ERR_USERONCHANNEL, x.nick, ch.name, "is already on channel")
        return
    ch.invite(x.folded or "", core.limits.max_invites)
    core.num(c, N.RPL_INVITING, x.nick, ch.name)
    if x.away:
        core.num(c, N.RPL_AWAY, x.nick, x.away)
    core.relay([x], c, "INVITE", [x.nick or "*", ch.name])
    core.relay([m for m in ch.members if m is not x and m.remote is None], c, "INVITE", [x.nick or "*", ch.name],
               skip=c, require="invite-notify")
    if core.federated:  # the invited user may be on another node, and joins there
        core.emit("invite", c, channel=ch.name, target=x.nick)


def cmd_kick(core: ChatCore, c: Client, msg: Message) -> None:
    # RFC 2812 3.2.8: one channel and several users, or as many channels as users (paired in order).
    # Every kicked user gets a KICK line of its own: one channel and one user per line.
    names = msg.params[0].split(",")
    nicks = msg.params[1].split(",")[: core.limits.maxtargets]
    if len(names) > 1 and len(names) != len(nicks):
        core.num(c, N.ERR_NEEDMOREPARAMS, "KICK", "Not enough parameters")
        return
    reason = msg.params[2] if len(msg.params) > 2 and msg.params[2] else (c.nick or "")
    reason = truncate_utf8(reason, core.limits.kicklen)
    for i, nick in enumerate(nicks):
        _kick_one(core, c, names[i] if len(names) > 1 else names[0], nick, reason)


def _kick_one(core: ChatCore, c: Client, name: str, nick: str, reason: str) -> None:
    ch = core.lookup_channel(name)
    if ch is None:
        core.num(c, N.ERR_NOSUCHCHANNEL, name, "No such channel")
        return
    if c not in ch.members:
        core.num(c, N.ERR_NOTONCHANNEL, ch.name, "You're not on that channel")
        return
    if "o" not in ch.members[c]:
        core.num(c, N.ERR_CHANOPRIVSNEEDED, ch.name, "You're not channel operator")
        return
    x = core.lookup_nick(nick)
    if x is None or x not in ch.members:
        core.num(c, N.ERR_USERNOTINCHANNEL, nick, ch.name, "They aren't on that channel")
        return
    core.relay(ch.members, c, "KICK", [ch.name, x.nick or "*", reason])
    core.remove_member(ch, x)
    if core.federated:
        core.emit("kick", c, channel=ch.name, target=x.nick, ref=ref(x), reason=reason)


HANDLERS = {
    "JOIN": (cmd_join, 1, False),
    "PART": (cmd_part, 1, False),
    "TOPIC": (cmd_topic, 1, False),
    "NAMES": (cmd_names, 0, False),
    "LIST": (cmd_list, 0, False),
    "INVITE": (cmd_invite, 2, False),
    "KICK": (cmd_kick, 2, False),
}
