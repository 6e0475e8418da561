"""MODE: channel modes (CHANMODES=b,k,l,imnt; PREFIX=(ov)@+) and the user mode +i."""

from __future__ import annotations

from typing import TYPE_CHECKING

from socketkit.chat.core_state import FLAG_MODES, Channel, Client, normalize_mask, ref
from socketkit.proto.irc import Message, Numeric

if TYPE_CHECKING:
    from socketkit.chat.core import ChatCore

N = Numeric
_KEY_BAD = frozenset(" ,:\0\r\n\x07")


def cmd_mode(core: ChatCore, c: Client, msg: Message) -> None:
    target = msg.params[0]
    if target.startswith("#"):
        ch = core.lookup_channel(target)
        if ch is None:
            core.num(c, N.ERR_NOSUCHCHANNEL, target, "No such channel")
        elif len(msg.params) == 1:
            show_modes(core, c, ch)
        else:
            channel_mode(core, c, ch, msg.params[1], msg.params[2:])
    else:
        user_mode(core, c, target, msg.params[1] if len(msg.params) > 1 else None)


def show_modes(core: ChatCore, c: Client, ch: Channel) -> None:
    flags = "+" + "".join(sorted(ch.modes))
    args = []
    if ch.key is not None:
        flags += "k"
        args.append(ch.key if c in ch.members else "*")
    if ch.limit is not None:
        flags += "l"
        args.append(str(ch.limit))
    core.num(c, N.RPL_CHANNELMODEIS, ch.name, flags, *args)
    core.num(c, N.RPL_CREATIONTIME, ch.name, str(int(ch.created)))


def show_bans(core: ChatCore, c: Client, ch: Channel) -> None:
    for mask, by, when in ch.bans:
        core.num(c, N.RPL_BANLIST, ch.name, mask, by, str(int(when)))
    core.num(c, N.RPL_ENDOFBANLIST, ch.name, "End of channel ban list")


def channel_mode(core: ChatCore, c: Client, ch: Channel, modestr: str, args: list[str]) -> None:
    # A bare ban-list query ("b", "+b") needs no privilege.
    if modestr.lstrip("+") == "b" and not args:
        show_bans(core, c, ch)
        return
    modes = ch.members.get(c)
    if modes is None or "o" not in modes:
        core.num(c, N.ERR_CHANOPRIVSNEEDED, ch.name, "You're not channel operator")
        return
    lim = core.limits
    sign = "+"
    applied: list[tuple[str, str, str | None]] = []  # (sign, mode, arg)
    with_arg = 0
    listed = False
    argi = 0
    for m in modestr[:64]:
        if m in "+-":
            sign = m
            continue
        needs_arg = m in "bkovl" and not (m == "l" and sign == "-")
        arg: str | None = None
        if needs_arg:
            if argi < len(args):
                arg = args[argi]
                argi += 1
            elif m == "b":
                if not listed:
                    show_bans(core, c, ch)
                    listed = True
                continue
            elif m == "k" and sign == "-":
                arg = "*"  # -k without the key still removes it
            else:
                continue  # Modern IRC: a mode missing its parameter is ignored
            with_arg += 1
            if with_arg > lim.modes:
                continue
        if m in FLAG_MODES:
            if (m in ch.modes) != (sign == "+"):
                (ch.modes.add if sign == "+" else ch.modes.discard)(m)
                applied.append((sign, m, None))
        elif m in "ov":
            assert arg is not None
            x = core.lookup_nick(arg)
            if x is None:
                core.num(c, N.ERR_NOSUCHNICK, arg, "No such nick/channel")
                continue
            have = ch.members.get(x)
            if have is None:
                core.num(c, N.ERR_USERNOTINCHANNEL, x.nick, ch.name, "They aren't on that channel")
                continue
            if ch.set_member_mode(x, sign, m):
                applied.append((sign, m, x.nick))
        elif m == "k":
            assert arg is not None
            if sign == "+":
                if not arg or len(arg) > lim.keylen or any(ch_ in _KEY_BAD for ch_ in arg):
                    core.num(c, N.ERR_INVALIDKEY, ch.name, "Key is not well-formed")
                    continue
                if ch.key is not None:
                    core.num(c, N.ERR_KEYSET, ch.name, "Channel key already set")
                    continue
                ch.key = arg
                applied.append(("+", "k", arg))
            elif ch.key is not None:
                ch.key = None
                applied.append(("-", "k", "*"))
        elif m == "l":
            if sign == "-":
                if ch.limit is not None:
                    ch.limit = None
                    applied.append(("-", "l", None))
                continue
            try:
                value = int(arg or "")
            except ValueError:
                value = 0
            if value <= 0:
                core.num(c, N.ERR_INVALIDMODEPARAM, ch.name, "l", "*", "Invalid limit")
                continue
            value = min(value, 1_000_000)
            if ch.limit != value:
                ch.limit = value
                applied.append(("+", "l", str(value)))
        elif m == "b":
            assert arg is not None
            change = _ban(core, c, ch, sign, arg)
            if change is not None:
                applied.append((sign, "b", change))
        else:
            core.num(c, N.ERR_UNKNOWNMODE, m, "is unknown mode char to me")
    if applied:
        if any(m not in "ov" for _, m, _ in applied):
            ch.touch(core.clock())
        core.relay(ch.members, c, "MODE", [ch.name, *render_modes(applied)])
        if core.federated:  # o/v name their target by reference too: its nick may change meanwhile
            changes = [[sign, m, arg, ref(core.lookup_nick(arg)) if m in "ov" and arg else None]
                       for sign, m, arg in applied]
            core.emit("mode", c, channel=ch.name, changes=changes, stamp=ch.stamp)


def _ban(core: ChatCore, c: Client, ch: Channel, sign: str, raw: str) -> str | None:
    mask = normalize_mask(raw)
    while "**" in mask:
        mask = mask.replace("**", "*")
    if len(mask) > core.limits.masklen or " " in mask or mask.startswith(":"):
        core.num(c, N.ERR_INVALIDMODEPARAM, ch.name, "b", "*", "Invalid ban mask")
        return None
    folded = core.fold(mask)
    if sign == "+":
        if folded in ch.ban_folded:
            return None
        if len(ch.bans) >= core.limits.maxbans:
            core.num(c, N.ERR_BANLISTFULL, ch.name, mask, "Channel ban list is full")
            return None
        ch.add_ban(mask, folded, c.nick or "*", core.clock())
        return mask
    return ch.remove_ban(folded)


def render_modes(applied: list[tuple[str, str, str | None]]) -> list[str]:
    out, args = [], []
    last = ""
    for sign, m, arg in applied:
        if sign != last:
            out.append(sign)
            last = sign
        out.append(m)
        if arg is not None:
            args.append(arg)
    return ["".join(out), *args]


def user_mode(core: ChatCore, c: Client, nick: str, modestr: str | None) -> None:
    """+i (invisible) and +B (bot, IRCv3 bot mode) on oneself."""
    x = core.lookup_nick(nick)
    if x is None:
        core.num(c, N.ERR_NOSUCHNICK, nick, "No such nick/channel")
        return
    if x is not c:
        core.num(c, N.ERR_USERSDONTMATCH, "Cant change mode for other users")
        return
    if modestr is None:
        core.num(c, N.RPL_UMODEIS, "+" + ("B" if c.bot else "") + ("i" if c.invisible else ""))
        return
    sign = "+"
    changed: list[tuple[str, str, str | None]] = []
    unknown = False
    for m in modestr[:64]:
        if m in "+-":
            sign = m
        elif m in "iB":
            attr = "invisible" if m == "i" else "bot"
            if getattr(c, attr) != (sign == "+"):
                setattr(c, attr, sign == "+")
                changed = [ch for ch in changed if ch[1] != m] + [(sign, m, None)]
        else:
            unknown = True
    if unknown:
        core.num(c, N.ERR_UMODEUNKNOWNFLAG, "Unknown MODE flag")
    if changed:
        core.reply(c, "MODE", c.nick or "*", render_modes(changed)[0], source=c.nick)
        if core.federated:
            core.emit("umode", c, bot=c.bot)


HANDLERS = {"MODE": (cmd_mode, 1, False)}
