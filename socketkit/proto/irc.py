"""IRC messages (Modern IRC client protocol, RFC 1459/2812) and IRCv3 message tags, sans-I/O.

    msg = parse(b"@time=2024-01-01T00:00:00.000Z :nick!u@h PRIVMSG #chan :hello there")
    msg.tags, msg.source, msg.command, msg.params   # {'time': ...}, 'nick!u@h', 'PRIVMSG', ['#chan', 'hello there']
    Message({}, "irc.example", "PONG", ["irc.example", "tok"]).format()   # b":irc.example PONG irc.example tok\r\n"

Safety rules:
- `parse` raises only IRCParseError (LineTooLong is one) for empty, garbage, NUL or stray CR/LF.
- `format` raises IRCFormatError rather than emit a param holding CR, LF or NUL, a middle param that
  is empty, holds a space or starts with ':' (each would let a value inject or shift a line).
- Tag values are escaped on the way out and unescaped on the way in (\\: \\s \\\\ \\r \\n).
- Lengths: 512 octets (CRLF included) for everything after the tags; 8191 for the tags a server sends
  (counting the '@' and the space), 4094 of tag data for the tags a client sends (4096 with the '@'
  and the space), see `check_length`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from socketkit.errors import SocketkitError

__all__ = [
    "IRCParseError", "IRCFormatError", "LineTooLong", "Message", "parse", "check_length", "line_lengths",
    "escape_tag_value", "unescape_tag_value", "valid_tag_key", "is_client_tag", "format_tags",
    "valid_nick", "valid_channel", "fold", "casefolder", "truncate_utf8", "Numeric", "NUMERICS",
    "MAX_BODY", "MAX_TAGS", "MAX_CLIENT_TAGS", "MAX_LINE", "NICKLEN", "CHANNELLEN",
]

MAX_BODY = 512          # source, command, params and CRLF
MAX_TAGS = 8191         # all tags of a server-sent line, '@' and trailing space included
MAX_CLIENT_TAGS = 4096  # tags a client may send, '@' and trailing space included (4094 of tag data)
MAX_LINE = MAX_BODY + MAX_TAGS  # what a transport must be ready to buffer for one line
NICKLEN = 30
CHANNELLEN = 64


class IRCParseError(SocketkitError, ValueError):
    """A line is not an IRC message."""


class LineTooLong(IRCParseError):
    """A line exceeds an IRC length limit; `part` is 'tags' or 'body', `limit` the octets allowed."""

    def __init__(self, part: str, length: int, limit: int) -> None:
        super().__init__(f"IRC {part} too long: {length} > {limit} octets")
        self.part = part
        self.length = length
        self.limit = limit


class IRCFormatError(SocketkitError, ValueError):
    """A message cannot be written without changing its meaning (CR/LF/NUL, misplaced space, ...)."""


# -- tags ---------------------------------------------------------------------------------------------
_ESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_ESCAPE_OUT = str.maketrans({";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"})
_TAG_KEY = re.compile(r"\+?(?:[A-Za-z0-9.\-]+/)?[A-Za-z0-9\-]+\Z")


def escape_tag_value(value: str) -> str:
    if "\0" in value:
        raise IRCFormatError("tag values cannot hold NUL")
    return value.translate(_ESCAPE_OUT)


def unescape_tag_value(raw: str) -> str:
    if "\\" not in raw:
        return raw
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch == "\\":
            i += 1
            if i < n:  # an unknown escape drops the backslash; a trailing lone backslash is dropped
                nxt = raw[i]
                out.append(_ESCAPES.get(nxt, nxt))
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def valid_tag_key(key: str) -> bool:
    return bool(_TAG_KEY.match(key))


def is_client_tag(key: str) -> bool:
    return key.startswith("+")


def format_tags(tags: dict[str, str]) -> str:
    """'@k=v;k2 ' (with the trailing space), or '' for no tags."""
    if not tags:
        return ""
    parts = []
    for key, value in tags.items():
        if not valid_tag_key(key):
            raise IRCFormatError(f"bad tag key {key!r}")
        parts.append(f"{key}={escape_tag_value(value)}" if value else key)
    return "@" + ";".join(parts) + " "


def _parse_tags(raw: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in raw.split(";"):
        key, _, value = item.partition("=")
        if key and valid_tag_key(key):  # invalid keys are dropped, not fatal: tags are optional data
            tags[key] = unescape_tag_value(value)
    return tags


# -- messages -----------------------------------------------------------------------------------------
_COMMAND = re.compile(r"(?:[A-Za-z]+|[0-9]{3})\Z")
# What a received line may carry as its command: a server answers a well-formed but unknown one with 421
# (ERR_UNKNOWNCOMMAND), so the parser accepts more than the commands IRC defines (e.g. FOO_BAR, PRIV1MSG).
_COMMAND_IN = re.compile(r"[A-Za-z0-9_\-]{1,64}\Z")
_BAD_CHARS = re.compile(r"[\r\n\0]")


@dataclass(slots=True)
class Message:
    tags: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    command: str = ""
    params: list[str] = field(default_factory=list)
    utf8: bool = field(default=True, compare=False)  # False: the line was not UTF-8 (read as Latin-1)

    @classmethod
    def parse(cls, line: bytes) -> Message:
        return parse(line)

    def format(self, *, trailing: bool = False) -> bytes:
        """The wire form with CRLF. Raises IRCFormatError instead of writing an ambiguous line.
        `trailing=True` writes the last param with ':' even when it would not need one (free text)."""
        cmd = str(self.command)
        if not _COMMAND.match(cmd):
            raise IRCFormatError(f"bad command {cmd!r}")
        parts = [format_tags(self.tags)] if self.tags else []
        if self.source is not None:
            src = str(self.source)
            if not src or " " in src or _BAD_CHARS.search(src):
                raise IRCFormatError(f"bad source {src!r}")
            parts.append(f":{src} ")
        parts.append(cmd)
        params = self.params
        last = len(params) - 1
        for i, p in enumerate(params):
            p = str(p)
            if _BAD_CHARS.search(p):
                raise IRCFormatError("IRC params cannot hold CR, LF or NUL")
            if i == last:
                parts.append(f" :{p}" if (trailing or not p or " " in p or p[0] == ":") else f" {p}")
            elif not p or " " in p or p[0] == ":":
                raise IRCFormatError(f"middle param {p!r} must be non-empty, without space or leading ':'")
            else:
                parts.append(f" {p}")
        parts.append("\r\n")
        try:
            return "".join(parts).encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates cannot go on the wire
            raise IRCFormatError(f"unencodable text: {exc.reason}") from None

    def __bytes__(self) -> bytes:
        return self.format()


def parse(line: bytes, *, check: str | None = None) -> Message:
    """Parse one line (a trailing CRLF or LF is allowed). `check='client'|'server'` also applies
    `check_length`. Raises IRCParseError (or LineTooLong) and nothing else. A line that is not UTF-8 is
    read as Latin-1 and comes back with `utf8=False` (a server may refuse it: UTF8ONLY)."""
    if type(line) is not bytes:
        if not isinstance(line, bytes | bytearray | memoryview):
            raise IRCParseError("an IRC line is bytes")
        line = bytes(line)
    if line[-1:] == b"\n":
        line = line[:-2] if line[-2:] == b"\r\n" else line[:-1]
    if check is not None:
        check_length(line, client=(check == "client"))
    if b"\0" in line or b"\r" in line or b"\n" in line:
        raise IRCParseError("NUL, CR or LF inside an IRC line")
    try:
        text = line.decode("utf-8")
        utf8 = True
    except UnicodeDecodeError:
        text = line.decode("latin-1")
        utf8 = False
    tags: dict[str, str] = {}
    if text[:1] == "@":
        end = text.find(" ")
        if end < 0:
            raise IRCParseError("tags without a command")
        tags = _parse_tags(text[1:end])
        text = text[end + 1:]
    if text[:1] == " ":
        text = text.lstrip(" ")
    source = None
    if text[:1] == ":":
        end = text.find(" ")
        if end < 0:
            raise IRCParseError("source without a command")
        source = text[1:end]
        if not source:
            raise IRCParseError("empty source")
        text = text[end + 1:].lstrip(" ")
    head, colon, trailing = text.partition(" :")
    words = head.split(" ")
    if "" in words:
        words = [w for w in words if w]
    if not words:
        raise IRCParseError("empty line" if not text.strip(" ") else "no command")
    command = words[0]
    if not _COMMAND_IN.match(command):
        raise IRCParseError(f"bad command {command[:32]!r}")
    params = words[1:]
    if colon:
        params.append(trailing)
    return Message(tags, source, command.upper(), params, utf8)


def line_lengths(line: bytes) -> tuple[int, int]:
    """(tag octets including '@' and the space, body octets excluding any CRLF) of one raw line."""
    if line.endswith(b"\n"):
        line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
    if line.startswith(b"@"):
        sp = line.find(b" ")
        if sp < 0:
            return len(line), 0
        tags = sp + 1
        while tags < len(line) and line[tags] == 0x20:
            tags += 1
        return tags, len(line) - tags
    return 0, len(line)


def check_length(line: bytes, *, client: bool = True) -> None:
    """Raise LineTooLong when the tags or the body of `line` exceed what IRCv3 allows."""
    tags, body = line_lengths(line)
    tag_limit = MAX_CLIENT_TAGS if client else MAX_TAGS
    if tags > tag_limit:
        raise LineTooLong("tags", tags, tag_limit)
    if body + 2 > MAX_BODY:
        raise LineTooLong("body", body + 2, MAX_BODY)


def truncate_utf8(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` UTF-8 octets, never inside a character."""
    if max_bytes <= 0:
        return ""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore")


# -- names --------------------------------------------------------------------------------------------
_NICK = re.compile(r"[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}\-]*\Z")
_CHANNEL_BAD = re.compile(r"[ ,:\x07\0\r\n]")


def valid_nick(nick: str, nicklen: int = NICKLEN) -> bool:
    return 0 < len(nick) <= nicklen and bool(_NICK.match(nick))


def valid_channel(name: str, channellen: int = CHANNELLEN) -> bool:
    """'#' then at least one character; no space, comma, colon, BEL, NUL, CR or LF (RFC 2812 chanstring)."""
    return (1 < len(name) and len(name.encode("utf-8", "surrogatepass")) <= channellen
            and name[0] == "#" and not _CHANNEL_BAD.search(name))


_ASCII_FOLD = str.maketrans({chr(c): chr(c + 32) for c in range(ord("A"), ord("Z") + 1)})
_RFC1459_FOLD = str.maketrans({**{chr(c): chr(c + 32) for c in range(ord("A"), ord("Z") + 1)},
                               "[": "{", "]": "}", "\\": "|", "~": "^"})
_FOLDS = {"ascii": _ASCII_FOLD, "rfc1459": _RFC1459_FOLD}


def fold(name: str, casemapping: str = "rfc1459") -> str:
    """Case-fold a nick or channel name for comparison under `casemapping` ('rfc1459' or 'ascii')."""
    return name.translate(_FOLDS[casemapping])


def casefolder(casemapping: str = "rfc1459"):
    """A one-argument fold function for `casemapping` (bound once; used on hot paths)."""
    table = _FOLDS[casemapping]
    return lambda name: name.translate(table)


# -- numerics -----------------------------------------------------------------------------------------
class Numeric(StrEnum):
    RPL_WELCOME = "001"
    RPL_YOURHOST = "002"
    RPL_CREATED = "003"
    RPL_MYINFO = "004"
    RPL_ISUPPORT = "005"
    RPL_UMODEIS = "221"
    RPL_LUSERCLIENT = "251"
    RPL_LUSEROP = "252"
    RPL_LUSERUNKNOWN = "253"
    RPL_LUSERCHANNELS = "254"
    RPL_LUSERME = "255"
    RPL_LOCALUSERS = "265"
    RPL_GLOBALUSERS = "266"
    RPL_AWAY = "301"
    RPL_USERHOST = "302"
    RPL_ISON = "303"
    RPL_UNAWAY = "305"
    RPL_NOWAWAY = "306"
    RPL_WHOISUSER = "311"
    RPL_WHOISSERVER = "312"
    RPL_ENDOFWHO = "315"
    RPL_WHOISIDLE = "317"
    RPL_ENDOFWHOIS = "318"
    RPL_WHOISCHANNELS = "319"
    RPL_LISTSTART = "321"
    RPL_LIST = "322"
    RPL_LISTEND = "323"
    RPL_CHANNELMODEIS = "324"
    RPL_CREATIONTIME = "329"
    RPL_WHOISACCOUNT = "330"
    RPL_WHOISBOT = "335"
    RPL_NOTOPIC = "331"
    RPL_TOPIC = "332"
    RPL_TOPICWHOTIME = "333"
    RPL_INVITING = "341"
    RPL_VERSION = "351"
    RPL_WHOREPLY = "352"
    RPL_NAMREPLY = "353"
    RPL_WHOSPCRPL = "354"
    RPL_ENDOFNAMES = "366"
    RPL_BANLIST = "367"
    RPL_ENDOFBANLIST = "368"
    RPL_INFO = "371"
    RPL_MOTD = "372"
    RPL_ENDOFINFO = "374"
    RPL_MOTDSTART = "375"
    RPL_ENDOFMOTD = "376"
    RPL_TIME = "391"
    ERR_NOSUCHNICK = "401"
    ERR_NOSUCHSERVER = "402"
    ERR_NOSUCHCHANNEL = "403"
    ERR_CANNOTSENDTOCHAN = "404"
    ERR_TOOMANYCHANNELS = "405"
    ERR_TOOMANYTARGETS = "407"
    ERR_INVALIDCAPCMD = "410"
    ERR_NORECIPIENT = "411"
    ERR_NOTEXTTOSEND = "412"
    ERR_INPUTTOOLONG = "417"
    ERR_UNKNOWNCOMMAND = "421"
    ERR_NOMOTD = "422"
    ERR_NONICKNAMEGIVEN = "431"
    ERR_ERRONEUSNICKNAME = "432"
    ERR_NICKNAMEINUSE = "433"
    ERR_USERNOTINCHANNEL = "441"
    ERR_NOTONCHANNEL = "442"
    ERR_USERONCHANNEL = "443"
    ERR_NOTREGISTERED = "451"
    ERR_NEEDMOREPARAMS = "461"
    ERR_ALREADYREGISTERED = "462"
    ERR_PASSWDMISMATCH = "464"
    ERR_INVALIDUSERNAME = "468"
    ERR_KEYSET = "467"
    ERR_CHANNELISFULL = "471"
    ERR_UNKNOWNMODE = "472"
    ERR_INVITEONLYCHAN = "473"
    ERR_BANNEDFROMCHAN = "474"
    ERR_BADCHANNELKEY = "475"
    ERR_BADCHANMASK = "476"
    ERR_BANLISTFULL = "478"
    ERR_CHANOPRIVSNEEDED = "482"
    ERR_UMODEUNKNOWNFLAG = "501"
    ERR_USERSDONTMATCH = "502"
    ERR_INVALIDKEY = "525"
    RPL_WHOISSECURE = "671"
    ERR_INVALIDMODEPARAM = "696"
    RPL_MONONLINE = "730"
    RPL_MONOFFLINE = "731"
    RPL_MONLIST = "732"
    RPL_ENDOFMONLIST = "733"
    ERR_MONLISTFULL = "734"
    RPL_LOGGEDIN = "900"
    RPL_LOGGEDOUT = "901"
    ERR_NICKLOCKED = "902"
    RPL_SASLSUCCESS = "903"
    ERR_SASLFAIL = "904"
    ERR_SASLTOOLONG = "905"
    ERR_SASLABORTED = "906"
    ERR_SASLALREADY = "907"
    RPL_SASLMECHS = "908"


NUMERICS: dict[str, str] = {n.name: n.value for n in Numeric}
