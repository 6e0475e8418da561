"""Connection registration (PASS, NICK, USER, completion), PING/PONG and QUIT."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from socketkit.chat import core_monitor
from socketkit.chat.core_monitor import REALNAME_MAX
from socketkit.chat.core_state import Client
from socketkit.proto.irc import Message, Numeric, truncate_utf8, valid_nick

if TYPE_CHECKING:
    from socketkit.chat.core import ChatCore

N = Numeric
_USER_BAD = re.compile(r"[^A-Za-z0-9._\-]")


def try_register(core: ChatCore, c: Client) -> None:
    """Finish registration once NICK and USER are in and neither CAP nor SASL holds it."""
    if c.registered or c.closed or c.nick is None or c.user is None or c.cap_hold or c.sasl_pending:
        return
    if core.password is not None and c.password != core.password:
        core.num(c, N.ERR_PASSWDMISMATCH, "Password incorrect")
        core.drop(c, "Bad password")
        return
    c.registered = True
    c.sasl_buf = None
    c.last_active = core.clock()
    core.max_users = max(core.max_users, sum(1 for x in core.clients.values() if x.registered))
    from socketkit.chat.core_info import welcome  # late: core_info imports this module's helpers

    welcome(core, c)
    core_monitor.online(core, c)
    if core.federated:
        core.emit("user", c)


def cmd_pass(core: ChatCore, c: Client, msg: Message) -> None:
    if c.registered:
        core.num(c, N.ERR_ALREADYREGISTERED, "You may not reregister")
        return
    c.password = msg.params[0]


def cmd_nick(core: ChatCore, c: Client, msg: Message) -> None:
    if not msg.params or not msg.params[0]:
        core.num(c, N.ERR_NONICKNAMEGIVEN, "No nickname given")
        return
    nick = msg.params[0]
    if not valid_nick(nick, core.limits.nicklen):
        core.num(c, N.ERR_ERRONEUSNICKNAME, nick, "Erroneous nickname")
        return
    folded = core.fold(nick)
    holder = core.nicks.get(folded)
    if holder is not None and holder is not c:
        core.num(c, N.ERR_NICKNAMEINUSE, nick, "Nickname is already in use")
        return
    if nick == c.nick:
        return
    old_prefix, old_nick, old_folded = c.prefix, c.nick, c.folded
    if c.folded is not None and core.nicks.get(c.folded) is c:
        del core.nicks[c.folded]
    core.nicks[folded] = c
    c.nick, c.folded = nick, folded
    c.update_prefix()
    if c.registered:
        core.relay(core.peers(c, include_self=True), old_prefix, "NICK", [nick], account=c.account)
        if old_folded != folded:
            core_monitor.offline(core, c, old_nick)
            core_monitor.online(core, c)
        if core.federated:
            core.emit("nick", c)
    else:
        try_register(core, c)


def cmd_user(core: ChatCore, c: Client, msg: Message) -> None:
    if c.registered:
        core.num(c, N.ERR_ALREADYREGISTERED, "You may not reregister")
        return
    if not msg.params[0] or not msg.params[3]:
        # Modern IRC: an empty username or realname is refused, not replaced.
        core.num(c, N.ERR_NEEDMOREPARAMS, "USER", "Not enough parameters")
        return
    user = _USER_BAD.sub("", msg.params[0])[: core.limits.userlen - 1]
    if not user:
        # Nothing usable is left (non-ASCII, e.g. emoji or bytes that are not UTF-8): say so, so the
        # client can send another USER instead of waiting for a welcome that never comes.
        core.num(c, N.ERR_INVALIDUSERNAME, "Your username is not valid")
        return
    c.user = "~" + user  # no ident lookup: the tilde says the username is unverified
    c.realname = truncate_utf8(msg.params[3], REALNAME_MAX)
    c.update_prefix()
    try_register(core, c)


def cmd_ping(core: ChatCore, c: Client, msg: Message) -> None:
    token = msg.params[0]
    if not token:
        core.num(c, N.ERR_NEEDMOREPARAMS, "PING", "Not enough parameters")
        return
    core.reply(c, "PONG", core.server_name, token)


def cmd_pong(core: ChatCore, c: Client, msg: Message) -> None:
    c.ping_sent = None  # receive() handles PONG before the flood bucket; kept for completeness


def cmd_quit(core: ChatCore, c: Client, msg: Message) -> None:
    text = truncate_utf8(msg.params[0], core.limits.quitlen) if msg.params else ""
    core.drop(c, "Client Quit", quit_message=f"Quit: {text}" if text else "Quit")


HANDLERS = {
    "PASS": (cmd_pass, 1, True),
    "NICK": (cmd_nick, 0, True),
    "USER": (cmd_user, 4, True),
    "PING": (cmd_ping, 1, True),
    "PONG": (cmd_pong, 0, True),
    "QUIT": (cmd_quit, 0, True),
}
