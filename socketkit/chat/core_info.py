"""Welcome burst (001-005, LUSERS, MOTD) and the query commands: WHO, WHOIS, AWAY, MOTD, LUSERS,
VERSION, TIME, USERHOST, ISON."""

from __future__ import annotations

import time as _time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from socketkit.chat.core_monitor import REALNAME_MAX
from socketkit.chat.core_state import FLAG_MODES, Channel, Client, glob_match
from socketkit.proto.irc import Message, Numeric, truncate_utf8

if TYPE_CHECKING:
    from socketkit.chat.core import ChatCore

N = Numeric


def isupport_tokens(core: ChatCore) -> list[str]:
    lim = core.limits
    t = lim.maxtargets
    tokens = [
        f"AWAYLEN={lim.awaylen}", "BOT=B", f"CASEMAPPING={core.casemapping}", f"CHANLIMIT=#:{lim.chanlimit}",
        f"CHANMODES=b,k,l,{''.join(sorted(FLAG_MODES))}", f"CHANNELLEN={lim.channellen}", "CHANTYPES=#",
        f"KEYLEN={lim.keylen}", f"KICKLEN={lim.kicklen}", f"MAXLIST=b:{lim.maxbans}",
        f"MAXTARGETS={t}", f"MODES={lim.modes}", f"MONITOR={lim.monitor}", f"NAMELEN={REALNAME_MAX}",
        f"NETWORK={core.network}", f"NICKLEN={lim.nicklen}", "PREFIX=(ov)@+",
        f"TARGMAX=JOIN:,KICK:{t},NAMES:1,PART:,PRIVMSG:{t},NOTICE:{t},TAGMSG:{t},WHOIS:1,MONITOR:{lim.monitor}",
        f"TOPICLEN={lim.topiclen}", f"USERLEN={lim.userlen}", "WHOX",
    ]
    if core.utf8_only:
        tokens.insert(-1, "UTF8ONLY")
    if core.history is not None:
        tokens += [f"CHATHISTORY={lim.chathistory_max}", "MSGREFTYPES=msgid,timestamp"]
    return tokens


def send_isupport(core: ChatCore, c: Client) -> None:
    tokens = isupport_tokens(core)
    for i in range(0, len(tokens), 12):
        core.num(c, N.RPL_ISUPPORT, *tokens[i:i + 12], "are supported by this server")


def welcome(core: ChatCore, c: Client) -> None:
    created = _time.strftime("%Y-%m-%d %H:%M:%S UTC", _time.gmtime(core.created))
    core.num(c, N.RPL_WELCOME, f"Welcome to the {core.network} Network, {c.prefix}")
    core.num(c, N.RPL_YOURHOST, f"Your host is {core.server_name}, running version {core.version}")
    core.num(c, N.RPL_CREATED, f"This server was created {created}")
    core.num(c, N.RPL_MYINFO, core.server_name, core.version, "Bi",
             "".join(sorted(set("bklov") | FLAG_MODES)), "bklov")
    send_isupport(core, c)
    send_lusers(core, c)
    send_motd(core, c)


def send_lusers(core: ChatCore, c: Client) -> None:
    users = [x for x in core.clients.values() if x.registered]
    invisible = sum(1 for x in users if x.invisible)
    unknown = len(core.clients) - len(users)
    n = len(users)
    core.num(c, N.RPL_LUSERCLIENT, f"There are {n - invisible} users and {invisible} invisible on 1 servers")
    if unknown:
        core.num(c, N.RPL_LUSERUNKNOWN, str(unknown), "unknown connection(s)")
    core.num(c, N.RPL_LUSERCHANNELS, str(len(core.channels)), "channels formed")
    core.num(c, N.RPL_LUSERME, f"I have {n} clients and 0 servers")
    core.num(c, N.RPL_LOCALUSERS, str(n), str(core.max_users), f"Current local users {n}, max {core.max_users}")
    core.num(c, N.RPL_GLOBALUSERS, str(n), str(core.max_users), f"Current global users {n}, max {core.max_users}")


def send_motd(core: ChatCore, c: Client) -> None:
    if not core.motd:
        core.num(c, N.ERR_NOMOTD, "MOTD File is missing")
        return
    core.num(c, N.RPL_MOTDSTART, f"- {core.server_name} Message of the day - ")
    for line in core.motd:
        core.num(c, N.RPL_MOTD, f"- {line}")
    core.num(c, N.RPL_ENDOFMOTD, "End of /MOTD command.")


def cmd_motd(core: ChatCore, c: Client, msg: Message) -> None:
    send_motd(core, c)


def cmd_info(core: ChatCore, c: Client, msg: Message) -> None:
    if msg.params and msg.params[0] and core.fold(msg.params[0]) != core.fold(core.server_name) \
            and core.lookup_nick(msg.params[0]) is None and "*" not in msg.params[0]:
        core.num(c, N.ERR_NOSUCHSERVER, msg.params[0], "No such server")
        return
    for line in (f"{core.version}: socketkit chat, an IRC server in Python (sans-I/O core, uvloop I/O)",
                 "https://modern.ircdocs.horse and https://ircv3.net are what it follows",
                 f"On-line since {_time.strftime('%Y-%m-%d %H:%M:%S UTC', _time.gmtime(core.created))}"):
        core.num(c, N.RPL_INFO, line)
    core.num(c, N.RPL_ENDOFINFO, "End of INFO list")


def cmd_lusers(core: ChatCore, c: Client, msg: Message) -> None:
    send_lusers(core, c)


def cmd_version(core: ChatCore, c: Client, msg: Message) -> None:
    core.num(c, N.RPL_VERSION, core.version, core.server_name, "socketkit chat")
    send_isupport(core, c)


def cmd_time(core: ChatCore, c: Client, msg: Message) -> None:
    now = core.clock()
    core.num(c, N.RPL_TIME, core.server_name, str(int(now)), "0",
             _time.strftime("%A %B %d %Y -- %H:%M:%S +00:00", _time.gmtime(now)))


def cmd_away(core: ChatCore, c: Client, msg: Message) -> None:
    text = truncate_utf8(msg.params[0], core.limits.awaylen) if msg.params else ""
    c.away = text or None
    if text:
        core.num(c, N.RPL_NOWAWAY, "You have been marked as being away")
    else:
        core.num(c, N.RPL_UNAWAY, "You are no longer marked as being away")
    if core.federated:
        core.emit("away", c, text=text)
    notify_away(core, core.peers(c), c)


def notify_away(core: ChatCore, recipients: Iterable[Client], x: Client) -> None:
    """x's AWAY state (its message, or none when back) to those of `recipients` on this node that asked
    for away-notify: after AWAY itself, and after x joins a channel while away."""
    watchers = [r for r in recipients if r is not x and r.remote is None and "away-notify" in r.caps]
    if watchers:
        core.relay(watchers, x, "AWAY", [x.away] if x.away else [])


def _status(core: ChatCore, c: Client, x: Client, ch: Channel | None) -> str:
    flags = "G" if x.away else "H"
    if x.bot:
        flags += "B"
    if ch is not None:
        flags += prefix_of(ch.members.get(x, ""), "multi-prefix" in c.caps)
    return flags


def prefix_of(modes: str, multi: bool) -> str:
    if multi:
        return ("@" if "o" in modes else "") + ("+" if "v" in modes else "")
    return "@" if "o" in modes else "+" if "v" in modes else ""


def shown_channel(c: Client, x: Client) -> Channel | None:
    """The channel a WHO reply about `x` names when the query did not name one: one `c` shares with x
    if there is one, else one of x's that `c` may see (not secret), else none."""
    for folded, ch in x.channels.items():
        if folded in c.channels:
            return ch
    if x.invisible and x is not c:
        return None
    return next((ch for ch in x.channels.values() if "s" not in ch.modes), None)


# WHOX (IRCv3 whox): the fields a `%fields[,token]` query may ask for, in the order they are sent.
_WHOX_ORDER = "tcuihsnfdlaor"


def _who_line(core: ChatCore, c: Client, x: Client, ch: Channel | None, whox: tuple[str, str] | None) -> None:
    if ch is None:
        ch = shown_channel(c, x)
    name = ch.name if ch is not None else "*"
    if whox is None:
        core.num(c, N.RPL_WHOREPLY, name, x.user or "*", x.host, core.server_name, x.nick or "*",
                 _status(core, c, x, ch), f"0 {x.realname}")
        return
    fields, token = whox
    values = {"t": token, "c": name, "u": x.user or "*", "i": x.host if _is_ip(x.host) else "255.255.255.255",
              "h": x.host, "s": core.server_name, "n": x.nick or "*", "f": _status(core, c, x, ch), "d": "0",
              "l": str(int(core.clock() - (x.last_spoke or x.connected))) if x.remote is None else "0",
              "a": x.account or "0", "o": "n/a", "r": x.realname}
    wanted = [values[f] for f in _WHOX_ORDER if f in fields]
    if wanted:  # the realname, which may hold spaces, is always the last (the ':' param)
        core.num(c, N.RPL_WHOSPCRPL, *wanted)


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.removeprefix("0") if host.startswith("0:") else host)
    except ValueError:
        return False
    return True


def visible(c: Client, x: Client) -> bool:
    """Whether `c` may see `x` in listings: +i hides a user from those who share no channel."""
    return not x.invisible or x is c or any(k in c.channels for k in x.channels)


def _whox(param: str | None) -> tuple[str, str] | None:
    if not param or not param.startswith("%"):
        return None
    fields, _, token = param[1:].partition(",")
    token = token[:3] if token.isdigit() else "0"
    return fields, token


def cmd_who(core: ChatCore, c: Client, msg: Message) -> None:
    mask = msg.params[0] if msg.params and msg.params[0] else "*"
    whox = _whox(msg.params[1] if len(msg.params) > 1 else None)
    cap = core.limits.who_max
    count = 0
    ch = core.lookup_channel(mask) if mask.startswith("#") else None
    if ch is not None:
        member = c in ch.members
        if member or "s" not in ch.modes:
            for x in ch.members:
                if member or not x.invisible:
                    if count >= cap:
                        break
                    _who_line(core, c, x, ch, whox)
                    count += 1
    elif not mask.startswith("#"):
        exact = core.lookup_nick(mask) if "*" not in mask and "?" not in mask else None
        if exact is not None:
            _who_line(core, c, exact, None, whox)
            count = 1
        elif len(mask) <= 64:  # a long mask of stars would make the search cost quadratic
            pattern = core.fold(mask)
            for x in core.clients.values():
                if not x.registered or not visible(c, x):
                    continue
                if any(glob_match(pattern, core.fold(v)) for v in (x.nick or "", x.user or "", x.host, x.realname)):
                    if count >= cap:
                        break
                    _who_line(core, c, x, None, whox)
                    count += 1
    if count >= cap:
        core.notice(c, f"WHO output truncated to {cap} entries")
    core.num(c, N.RPL_ENDOFWHO, mask, "End of WHO list")


def cmd_whois(core: ChatCore, c: Client, msg: Message) -> None:
    target = msg.params[-1].split(",")[0] if msg.params else ""
    if not target:
        core.num(c, N.ERR_NONICKNAMEGIVEN, "No nickname given")
        return
    x = core.lookup_nick(target)
    if x is None:
        core.num(c, N.ERR_NOSUCHNICK, target, "No such nick/channel")
        core.num(c, N.RPL_ENDOFWHOIS, target, "End of /WHOIS list")
        return
    multi = "multi-prefix" in c.caps
    core.num(c, N.RPL_WHOISUSER, x.nick, x.user, x.host, "*", x.realname)
    chans = [prefix_of(ch.members.get(x, ""), multi) + ch.name for ch in x.channels.values()
             if c in ch.members or x is c or (not x.invisible and "s" not in ch.modes)]
    line: list[str] = []
    for name in chans:  # split so that each 319 stays well under 512 octets
        if sum(len(n) + 1 for n in line) + len(name) > 380:
            core.num(c, N.RPL_WHOISCHANNELS, x.nick, " ".join(line))
            line = []
        line.append(name)
    if line:
        core.num(c, N.RPL_WHOISCHANNELS, x.nick, " ".join(line))
    core.num(c, N.RPL_WHOISSERVER, x.nick, core.server_name, core.network)
    if x.away:
        core.num(c, N.RPL_AWAY, x.nick, x.away)
    if x.account:
        core.num(c, N.RPL_WHOISACCOUNT, x.nick, x.account, "is logged in as")
    if x.bot:
        core.num(c, N.RPL_WHOISBOT, x.nick, f"is a bot on {core.network}")
    if x.tls:
        core.num(c, N.RPL_WHOISSECURE, x.nick, "is using a secure connection")
    now = core.clock()
    core.num(c, N.RPL_WHOISIDLE, x.nick, str(int(now - (x.last_spoke or x.connected))), str(int(x.connected)),
             "seconds idle, signon time")
    core.num(c, N.RPL_ENDOFWHOIS, x.nick, "End of /WHOIS list")


def cmd_userhost(core: ChatCore, c: Client, msg: Message) -> None:
    replies = []
    for nick in msg.params[:5]:
        x = core.lookup_nick(nick)
        if x is not None:
            replies.append(f"{x.nick}={'-' if x.away else '+'}{x.user}@{x.host}")
    core.num(c, N.RPL_USERHOST, " ".join(replies))


def cmd_ison(core: ChatCore, c: Client, msg: Message) -> None:
    found = []
    for word in " ".join(msg.params).split()[:64]:
        x = core.lookup_nick(word)
        if x is not None:
            found.append(x.nick)
    core.num(c, N.RPL_ISON, " ".join(found))


HANDLERS = {
    "MOTD": (cmd_motd, 0, False),
    "LUSERS": (cmd_lusers, 0, False),
    "INFO": (cmd_info, 0, False),
    "VERSION": (cmd_version, 0, False),
    "TIME": (cmd_time, 0, False),
    "AWAY": (cmd_away, 0, False),
    "WHO": (cmd_who, 0, False),
    "WHOIS": (cmd_whois, 1, False),
    "USERHOST": (cmd_userhost, 1, False),
    "ISON": (cmd_ison, 1, False),
}
