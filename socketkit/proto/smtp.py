"""SMTP (RFC 5321) for socketkit, sans-I/O: the events, replies and address grammar both sides share.

The state machines live next door and are re-exported here, so callers write
`from socketkit.proto.smtp import SMTPServerConnection, SMTPClientConnection, Message, ...`:

- `smtp_server.SMTPServerConnection`: bytes from a client in, events and reply bytes out.
- `smtp_client.SMTPClientConnection`: command bytes out, parsed `Reply` objects in.

Neither touches a socket, an event loop or a clock; the mail service wires them to `socketkit.net`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from socketkit.errors import SocketkitError

if TYPE_CHECKING:
    from socketkit.proto.smtp_client import SMTPClientConnection
    from socketkit.proto.smtp_server import SMTPServerConnection

__all__ = [
    "SMTPUsageError", "SMTPReplyError", "AddressError",
    "Event", "Hello", "MailFrom", "RcptTo", "StartTLS", "AuthRequest", "Message", "Quit", "Close",
    "Reply", "parse_path", "parse_params", "split_path", "check_mail_params", "LineReader",
    "decode_sasl", "split_plain",
    "SMTPServerConnection", "SMTPClientConnection",
]


class SMTPUsageError(SocketkitError, RuntimeError):
    """The caller drove a state machine wrongly (e.g. `accept_rcpt()` with no recipient waiting)."""


class SMTPReplyError(SocketkitError, ValueError):
    """The server sent something that is not an SMTP reply (client side); the connection is unusable."""


class AddressError(ValueError):
    """A path did not parse. `utf8` is True when the only problem is non-ASCII without SMTPUTF8."""

    def __init__(self, why: str, *, utf8: bool = False) -> None:
        super().__init__(why)
        self.utf8 = utf8


# --- events (server side) ----------------------------------------------------------------------------


class Event:
    """Base of everything `SMTPServerConnection.receive()` returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Hello(Event):
    """HELO or EHLO was answered with 250. Informational: nothing to decide."""

    kind: str  # "HELO" | "EHLO"
    name: str


@dataclass(frozen=True, slots=True)
class MailFrom(Event):
    """A transaction started (already answered 250). `address` is "" for the null reverse path <>."""

    address: str
    params: dict[str, str | None]


@dataclass(frozen=True, slots=True)
class RcptTo(Event):
    """A recipient waits for the caller: answer with `accept_rcpt()` or `reject_rcpt(...)`.

    Only emitted when the connection has no `accept_recipient` callback.
    """

    address: str
    params: dict[str, str | None]


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """The 220 is queued: send it, upgrade the stream, then call `tls_started()`."""


@dataclass(frozen=True, slots=True)
class AuthRequest(Event):
    """Credentials to check: answer with `auth_result(ok)`. The password is never kept afterwards."""

    mechanism: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Message(Event):
    """A complete message, dot-stuffing undone, delivered only after a clean <CR><LF>.<CR><LF>.

    Store it durably, then call `message_stored(queue_id)` (250) or `message_failed()` (451).
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes = field(repr=False)
    utf8: bool = False
    body8bit: bool = False
    helo: str | None = None
    auth_user: str | None = None
    tls: bool = False
    mail_params: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Quit(Event):
    """QUIT was answered with 221: send the pending bytes and close."""


@dataclass(frozen=True, slots=True)
class Close(Event):
    """The machine ended the session (a 421 is queued): send the pending bytes and close."""

    reason: str


# --- replies (client side) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete (possibly multi-line) reply. `lines` hold the text after the code and the
    enhanced status code; `command` is the verb this reply answers ("GREETING" for the banner)."""

    code: int
    lines: tuple[str, ...]
    enhanced: str | None = None
    command: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400


# --- address grammar (RFC 5321 4.1.2, RFC 6531 for UTF-8) ---------------------------------------------

_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_DOT_STRING_U = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"')
_QUOTED_U = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"')
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LABEL_U = re.compile(r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\u0080-\U0010ffff-]*[A-Za-z0-9\u0080-\U0010ffff])?")
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")
_PARAM_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_PARAM_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")


def split_path(text: str) -> tuple[str, str]:
    """Split '<path> rest' into ('path', 'rest'), honouring quoted '>' in local parts."""
    if not text.startswith("<"):
        raise AddressError("path must be enclosed in <>")
    quoted = escaped = False
    for i in range(1, len(text)):
        c = text[i]
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return text[1:i], text[i + 1:]
    raise AddressError("missing closing >")


def _check_domain(domain: str, utf8: bool) -> None:
    if domain.startswith("["):
        if not domain.endswith("]"):
            raise AddressError("bad address literal")
        inner = domain[1:-1]
        if inner[:5].lower() == "ipv6:":
            try:
                ipaddress.IPv6Address(inner[5:])
            except ValueError:
                raise AddressError("bad IPv6 address literal") from None
        elif ":" in inner:
            if not _GENERAL_LITERAL.fullmatch(inner):
                raise AddressError("bad address literal")
        else:
            try:
                ipaddress.IPv4Address(inner)
            except ValueError:
                raise AddressError("bad IPv4 address literal") from None
        return
    if not domain or len(domain.encode()) > 255:
        raise AddressError("bad domain length")
    label = _LABEL_U if utf8 else _LABEL
    for part in domain.split("."):
        if not label.fullmatch(part) or len(part.encode()) > 63:
            raise AddressError(f"bad domain label {part!r}")


def parse_path(path: str, *, utf8: bool = False, allow_null: bool = False,
               allow_postmaster: bool = False) -> str:
    """Validate the inside of <...> and return the mailbox, source route dropped ("" for <>).

    Non-ASCII is accepted only with `utf8` (the SMTPUTF8 MAIL parameter); otherwise
    AddressError(utf8=True) so the server can answer 553 5.6.7 rather than a syntax error.
    """
    if path == "":
        if allow_null:
            return ""
        raise AddressError("null path not allowed here")
    if not path.isascii() and not utf8:
        raise AddressError("non-ASCII address without SMTPUTF8", utf8=True)
    if len(path.encode()) > 256:
        raise AddressError("path longer than 256 octets")
    if path.startswith("@"):
        # A source route (@a,@b:user@c) is obsolete: RFC 5321 says accept it and ignore it.
        colon = path.find(":")
        if colon < 0:
            raise AddressError("bad source route")
        for hop in path[:colon].split(","):
            if not hop.startswith("@"):
                raise AddressError("bad source route")
            _check_domain(hop[1:], utf8)
        path = path[colon + 1:]
    if allow_postmaster and path.lower() == "postmaster":
        return path
    if path.startswith('"'):
        m = (_QUOTED_U if utf8 else _QUOTED).match(path)
    else:
        m = (_DOT_STRING_U if utf8 else _DOT_STRING).match(path)
    if not m or m.end() >= len(path) or path[m.end()] != "@":
        raise AddressError("bad local part")
    if len(m.group().encode()) > 64:
        raise AddressError("local part longer than 64 octets")
    _check_domain(path[m.end() + 1:], utf8)
    return path


def parse_params(text: str, *, utf8: bool = True) -> dict[str, str | None]:
    """Parse ESMTP parameters 'KEY=VALUE KEY2' into {'KEY': 'VALUE', 'KEY2': None} (keys upper-cased)."""
    params: dict[str, str | None] = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if not _PARAM_KEY.fullmatch(key):
            raise AddressError(f"bad parameter {word!r}")
        if eq and not (_PARAM_VALUE.fullmatch(value) and (utf8 or value.isascii())):
            raise AddressError(f"bad parameter value {word!r}")
        key = key.upper()
        if key in params:
            # Python's smtplib sends SMTPUTF8 twice when the caller also asks for it: a repeated flag
            # with no value means nothing new, so take it; anything else repeated is ambiguous.
            if not eq and params[key] is None:
                continue
            raise AddressError(f"duplicate parameter {key}")
        params[key] = value if eq else None
    return params


def check_mail_params(params: dict[str, str | None], *, max_size: int,
                      smtputf8: bool) -> tuple[int, str, str] | None:
    """The reply refusing MAIL's parameters (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531), or None."""
    for key, value in params.items():
        if key == "SIZE":
            if value is None or not value.isdigit() or len(value) > 20:
                return 501, "5.5.4", "Bad SIZE parameter"
            if int(value) > max_size:
                return 552, "5.3.4", "Message size exceeds fixed limit"
        elif key == "BODY":
            if (value or "").upper() not in ("7BIT", "8BITMIME"):
                return 501, "5.5.4", "Unsupported BODY type"
        elif key == "SMTPUTF8" and smtputf8 and value is None:
            pass
        elif key != "AUTH":  # RFC 4954 AUTH=<identity> is accepted and ignored
            return 555, "5.5.4", f"Unsupported option: {key}"
    return None


# --- SASL (RFC 4954) ----------------------------------------------------------------------------------


def decode_sasl(text: str) -> str:
    """A base64 client response as text ('=' is the empty response); ValueError when it is not."""
    try:
        return b"".decode() if text == "=" else base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("cannot decode SASL response") from None


def split_plain(value: str) -> tuple[str, str, str]:
    """PLAIN (RFC 4616): 'authzid NUL authcid NUL password' -> the three parts; ValueError otherwise."""
    parts = value.split("\0")
    if len(parts) != 3 or not parts[1]:
        raise ValueError("bad PLAIN response")
    return parts[0], parts[1], parts[2]


# --- bounded line reader ------------------------------------------------------------------------------


class LineReader:
    """Splits input at LF and never holds more than `max_line` bytes of one line.

    `next()` returns a line (bytes, line ending included, possibly a bare LF), None when more input
    is needed, or one of the markers: LONG_START when a line passes `max_line` (its bytes are
    dropped from then on), then LONG_END_CRLF / LONG_END_LF when that line finally ends, telling
    whether it ended in a real CRLF -- which DATA needs to recognise the next <CR><LF>.<CR><LF>.
    """

    LONG_START, LONG_END_CRLF, LONG_END_LF = "long-start", "long-end-crlf", "long-end-lf"

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.buf = bytearray()
        self._skipping = False
        self._skip_cr = False  # the last byte dropped from an overlong line was CR

    def __len__(self) -> int:
        return len(self.buf)

    @property
    def skipping(self) -> bool:
        """True while the rest of an overlong line is being dropped."""
        return self._skipping

    def feed(self, data: bytes) -> None:
        self.buf += data

    def clear(self) -> None:
        self.buf.clear()
        self._skipping = False

    def next(self) -> bytes | str | None:
        buf = self.buf
        if self._skipping:
            i = buf.find(b"\n")
            if i < 0:
                if buf:
                    self._skip_cr = buf[-1] == 13
                buf.clear()
                return None
            crlf = buf[i - 1] == 13 if i else self._skip_cr
            del buf[:i + 1]
            self._skipping = False
            return self.LONG_END_CRLF if crlf else self.LONG_END_LF
        i = buf.find(b"\n", 0, self.max_line)
        if i < 0:
            if len(buf) < self.max_line:
                return None
            self._skipping = True
            self._skip_cr = buf[self.max_line - 1] == 13
            del buf[:self.max_line]  # later bytes may already hold the line's end and further lines
            return self.LONG_START
        line = bytes(buf[:i + 1])
        del buf[:i + 1]
        return line


def __getattr__(name: str):  # the machines import this module, so they are re-exported lazily
    if name == "SMTPServerConnection":
        from socketkit.proto.smtp_server import SMTPServerConnection

        return SMTPServerConnection
    if name == "SMTPClientConnection":
        from socketkit.proto.smtp_client import SMTPClientConnection

        return SMTPClientConnection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
