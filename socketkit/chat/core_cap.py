"""IRCv3 capability negotiation (CAP LS/LIST/REQ/END, cap-notify) and SASL PLAIN (AUTHENTICATE)."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from socketkit.chat import core_monitor
from socketkit.chat.core_register import try_register
from socketkit.chat.core_state import TAG_ACCOUNT, TAG_MSGTAGS, TAG_TIME, AuthRequest, Client
from socketkit.proto.irc import Message, Numeric

if TYPE_CHECKING:
    from socketkit.chat.core import ChatCore

N = Numeric
SASL_CHUNK = 400
_TAG_BITS = {"server-time": TAG_TIME, "message-tags": TAG_MSGTAGS, "account-tag": TAG_ACCOUNT}


def available_caps(core: ChatCore) -> dict[str, str | None]:
    caps: dict[str, str | None] = dict.fromkeys(
        ["cap-notify", "message-tags", "server-time", "echo-message", "multi-prefix", "away-notify",
         "account-tag", "account-notify", "batch", "extended-join", "invite-notify", "setname", "chghost",
         "labeled-response", "standard-replies", "userhost-in-names"])
    if core.sasl:
        caps["sasl"] = "PLAIN"
    if core.history is not None:
        caps["draft/chathistory"] = None
    return caps


def _cap_token(core: ChatCore, name: str, c: Client) -> str:
    value = core.caps.get(name)
    return f"{name}={value}" if value and c.cap_version >= 302 else name


def _cap_reply(core: ChatCore, c: Client, sub: str, words: list[str]) -> None:
    """One CAP reply, split over several lines ('*' continuation, CAP 302) when it would not fit."""
    nick = c.nick or "*"
    room = 400 - len(core.server_name) - len(nick)
    lines: list[list[str]] = [[]]
    size = 0
    for w in words:
        if lines[-1] and size + len(w) + 1 > room:
            lines.append([])
            size = 0
        lines[-1].append(w)
        size += len(w) + 1
    for i, chunk in enumerate(lines):
        more = i < len(lines) - 1 and c.cap_version >= 302
        params = [nick, sub, "*", " ".join(chunk)] if more else [nick, sub, " ".join(chunk)]
        core.reply(c, "CAP", *params)


def set_caps(c: Client, caps: set[str]) -> None:
    c.caps = caps
    c.tagmask = sum(bit for name, bit in _TAG_BITS.items() if name in caps)


def cmd_cap(core: ChatCore, c: Client, msg: Message) -> None:
    sub = msg.params[0].upper()
    if sub == "LS":
        if not c.registered:
            c.cap_hold = True
        try:
            version = int(msg.params[1]) if len(msg.params) > 1 else 0
        except ValueError:
            version = 0
        if version >= 302:
            c.cap_version = max(c.cap_version, version)
            set_caps(c, c.caps | {"cap-notify"})  # implied by 302
        _cap_reply(core, c, "LS", [_cap_token(core, name, c) for name in core.caps])
    elif sub == "LIST":
        _cap_reply(core, c, "LIST", sorted(c.caps))
    elif sub == "REQ":
        if not c.registered:
            c.cap_hold = True
        raw = msg.params[1] if len(msg.params) > 1 else ""
        wanted = raw.split()
        new = set(c.caps)
        ok = bool(wanted)
        for item in wanted:
            name = item[1:] if item.startswith("-") else item
            if name not in core.caps or (item.startswith("-") and name == "cap-notify" and c.cap_version >= 302):
                ok = False
                break
            if item.startswith("-"):
                new.discard(name)
            else:
                new.add(name)
        if ok:
            set_caps(c, new)
        core.reply(c, "CAP", c.nick or "*", "ACK" if ok else "NAK", raw[:400])
    elif sub == "END":
        if not c.registered:
            c.cap_hold = False
            if c.sasl_buf is not None:  # an unfinished exchange is abandoned
                c.sasl_buf = None
                core.num(c, N.ERR_SASLABORTED, "SASL authentication aborted")
            try_register(core, c)
    else:
        core.num(c, N.ERR_INVALIDCAPCMD, msg.params[0], "Invalid CAP command")


def cap_change(core: ChatCore, name: str, value: str | None, available: bool) -> None:
    """Advertise (CAP NEW) or withdraw (CAP DEL) a capability to clients with cap-notify."""
    if available:
        core.caps[name] = value
    else:
        core.caps.pop(name, None)
    for c in core.clients.values():
        if "cap-notify" in c.caps:
            word = _cap_token(core, name, c) if available else name
            core.reply(c, "CAP", c.nick or "*", "NEW" if available else "DEL", word)
        if not available and name in c.caps:
            set_caps(c, c.caps - {name})


# -- SASL ---------------------------------------------------------------------------------------------
def _sasl_fail(core: ChatCore, c: Client) -> None:
    c.sasl_buf = None
    c.sasl_failures += 1
    core.num(c, N.ERR_SASLFAIL, "SASL authentication failed")
    if c.sasl_failures >= core.limits.sasl_failures:
        core.drop(c, "Too many SASL failures")


def cmd_authenticate(core: ChatCore, c: Client, msg: Message) -> None:
    arg = msg.params[0]
    if "sasl" not in core.caps or c.sasl_pending:
        if not c.sasl_pending:
            core.num(c, N.ERR_SASLFAIL, "SASL authentication failed")
        return
    if c.sasl_buf is None:
        if arg == "*":
            core.num(c, N.ERR_SASLABORTED, "SASL authentication aborted")
            return
        if c.account is not None:
            core.num(c, N.ERR_SASLALREADY, "You have already authenticated using SASL")
            return
        if arg.upper() != "PLAIN":
            core.num(c, N.RPL_SASLMECHS, "PLAIN", "are available SASL mechanisms")
            _sasl_fail(core, c)
            return
        c.sasl_buf = ""
        core.send(c, b"AUTHENTICATE +\r\n")
        return
    if arg == "*":
        c.sasl_buf = None
        core.num(c, N.ERR_SASLABORTED, "SASL authentication aborted")
        return
    if len(arg) > SASL_CHUNK:
        c.sasl_buf = None
        core.num(c, N.ERR_SASLTOOLONG, "SASL message too long")
        return
    if arg != "+":
        c.sasl_buf += arg
    if len(c.sasl_buf) > core.limits.sasl_max:
        c.sasl_buf = None
        core.num(c, N.ERR_SASLTOOLONG, "SASL message too long")
        return
    if len(arg) == SASL_CHUNK:
        return  # a full chunk: more follows (or '+')
    data, c.sasl_buf = c.sasl_buf, None
    try:
        authzid, authcid, password = base64.b64decode(data, validate=True).decode("utf-8").split("\0")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        _sasl_fail(core, c)
        return
    if not authcid or (authzid and authzid != authcid):
        _sasl_fail(core, c)
        return
    c.sasl_pending = True
    if core.authenticate is not None:
        finish_sasl(core, c, core.authenticate(authcid, password))
    else:
        core._out.append(AuthRequest(c.cid, authcid, password))


def finish_sasl(core: ChatCore, c: Client, account: Any) -> None:
    c.sasl_pending = False
    name = getattr(account, "name", account)
    if not name:
        _sasl_fail(core, c)
        if not c.closed:
            try_register(core, c)
        return
    c.account = str(name)
    c.sasl_failures = 0
    core.exempt_account(c)
    core.num(c, N.RPL_LOGGEDIN, c.prefix, c.account, f"You are now logged in as {c.account}")
    core.num(c, N.RPL_SASLSUCCESS, "SASL authentication successful")
    if c.registered:
        core_monitor.account_changed(core, c)
    else:
        try_register(core, c)


HANDLERS = {
    "CAP": (cmd_cap, 1, True),
    "AUTHENTICATE": (cmd_authenticate, 1, True),
}
