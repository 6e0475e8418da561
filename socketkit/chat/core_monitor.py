"""A user's presence and identity as others follow it: MONITOR (IRCv3 monitor), SETNAME (setname),
CHGHOST (chghost) and ACCOUNT (account-notify)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from socketkit.chat.core_state import Client
from socketkit.proto.irc import Message, Numeric, valid_nick

if TYPE_CHECKING:
    from socketkit.chat.core import ChatCore

N = Numeric
REALNAME_MAX = 128  # NAMELEN in RPL_ISUPPORT: the longest realname USER and SETNAME accept
_ROOM = 400         # characters of targets in one MONITOR numeric


def _numeric_lists(core: ChatCore, c: Client, code: str, items: list[str], tail: str | None = None) -> None:
    """`items` comma-joined over as few `code` numerics as fit the line length."""
    line: list[str] = []
    size = 0
    for item in items:
        if line and size + len(item) + 1 > _ROOM:
            core.num(c, code, ",".join(line)) if tail is None else core.num(c, code, ",".join(line), tail)
            line, size = [], 0
        line.append(item)
        size += len(item) + 1
    if line:
        core.num(c, code, ",".join(line)) if tail is None else core.num(c, code, ",".join(line), tail)


def _status(core: ChatCore, c: Client, folded_nicks: list[str], names: dict[str, str]) -> None:
    online, offline = [], []
    for folded in folded_nicks:
        x = core.nicks.get(folded)
        if x is not None and x.registered and not x.closed:
            online.append(x.prefix)
        else:
            offline.append(names.get(folded, folded))
    _numeric_lists(core, c, N.RPL_MONONLINE, online)
    _numeric_lists(core, c, N.RPL_MONOFFLINE, offline)


def cmd_monitor(core: ChatCore, c: Client, msg: Message) -> None:
    sub = msg.params[0]
    watched = c.monitors if c.monitors is not None else set()
    if sub == "+" or sub == "-":
        if len(msg.params) < 2:
            core.num(c, N.ERR_NEEDMOREPARAMS, "MONITOR", "Not enough parameters")
            return
        targets = [t for t in msg.params[1].split(",") if t]
        if sub == "-":
            for t in targets:
                folded = core.fold(t)
                watched.discard(folded)
                watchers = core.monitors.get(folded)
                if watchers is not None:
                    watchers.discard(c)
                    if not watchers:
                        del core.monitors[folded]
            c.monitors = watched or None
            return
        limit = core.limits.monitor
        added: list[str] = []
        names: dict[str, str] = {}
        for i, t in enumerate(targets):
            if not valid_nick(t, core.limits.nicklen):
                continue
            folded = core.fold(t)
            if folded in watched:
                continue
            if len(watched) >= limit:
                core.num(c, N.ERR_MONLISTFULL, str(limit), ",".join(targets[i:])[:300], "Monitor list is full")
                break
            watched.add(folded)
            core.monitors.setdefault(folded, set()).add(c)
            added.append(folded)
            names[folded] = t
        c.monitors = watched or None
        _status(core, c, added, names)
    elif sub in ("C", "c"):
        forget(core, c)
    elif sub in ("L", "l"):
        names = [x.nick if (x := core.nicks.get(f)) is not None and x.nick else f for f in sorted(watched)]
        _numeric_lists(core, c, N.RPL_MONLIST, names)
        core.num(c, N.RPL_ENDOFMONLIST, "End of MONITOR list")
    elif sub in ("S", "s"):
        _status(core, c, sorted(watched), {})
    else:
        core.num(c, N.ERR_UNKNOWNCOMMAND, "MONITOR", "Unknown MONITOR subcommand")


def forget(core: ChatCore, c: Client) -> None:
    """`c` stops monitoring everyone (MONITOR C, or it left)."""
    for folded in c.monitors or ():
        watchers = core.monitors.get(folded)
        if watchers is not None:
            watchers.discard(c)
            if not watchers:
                del core.monitors[folded]
    c.monitors = None


def online(core: ChatCore, x: Client) -> None:
    """`x` now holds its nick (registered, changed nick, or a user of another node appeared)."""
    watchers = core.monitors.get(x.folded or "")
    if watchers:
        for w in watchers:
            if w is not x and w.remote is None:
                core.num(w, N.RPL_MONONLINE, x.prefix)


def offline(core: ChatCore, x: Client, nick: str | None = None) -> None:
    """`x` no longer holds `nick` (its current one by default): it left or changed nick."""
    folded = core.fold(nick) if nick is not None else x.folded or ""
    watchers = core.monitors.get(folded)
    if watchers:
        for w in watchers:
            if w is not x and w.remote is None:
                core.num(w, N.RPL_MONOFFLINE, nick or x.nick or "*")


# -- identity changes seen by others -----------------------------------------------------------------
def cmd_setname(core: ChatCore, c: Client, msg: Message) -> None:
    realname = msg.params[0]
    if not msg.utf8 or not realname or len(realname.encode()) > REALNAME_MAX:
        core.fail(c, "SETNAME", "INVALID_REALNAME", text="Realname is not valid")
        return
    set_realname(core, c, realname)
    if core.federated:
        core.emit("setname", c, realname=realname)


def set_realname(core: ChatCore, x: Client, realname: str) -> None:
    """`x` is now called `realname`: told to itself and its peers that asked for setname."""
    if realname == x.realname:
        return
    x.realname = realname
    core.relay(core.peers(x, include_self=x.remote is None), x, "SETNAME", [realname], require="setname")


def change_host(core: ChatCore, x: Client, user: str, host: str) -> None:
    """`x`'s username or host changed: CHGHOST to those sharing a channel with it (and itself) that
    asked for chghost; the others are not told (as Ergo does without its QUIT/JOIN emulation)."""
    if (user, host) == (x.user, x.host):
        return
    old = x.prefix
    x.user, x.host = user, host
    x.update_prefix()
    core.relay(core.peers(x, include_self=x.remote is None), old, "CHGHOST", [user, host], require="chghost")


def account_changed(core: ChatCore, x: Client) -> None:
    """`x` logged in (or out, account None): ACCOUNT to its peers with account-notify."""
    core.relay(core.peers(x), x, "ACCOUNT", [x.account or "*"], require="account-notify")


HANDLERS = {
    "MONITOR": (cmd_monitor, 1, False),
    "SETNAME": (cmd_setname, 1, False),
}
