"""A tiny harness for ChatCore tests: simulated clients, a fake clock, each client's received lines.

Imported by the tests/chat/test_core*.py modules (pytest puts this directory on sys.path)."""

from __future__ import annotations

from collections import defaultdict

from socketkit.chat.core import AuthRequest, ChatCore, ChatLimits, Close, Send
from socketkit.proto.irc import Message, parse

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Net:
    def __init__(self, **kw) -> None:
        self.clock = kw.pop("clock", None) or Clock()
        kw.setdefault("motd", ["Welcome to the test network"])
        kw.setdefault("limits", ChatLimits(flood_burst=1000))  # flood tests pass their own limits
        self.core = ChatCore(clock=self.clock, **kw)
        self.inbox: dict[object, list[bytes]] = defaultdict(list)
        self.closed: dict[object, str] = {}
        self.auth: list[AuthRequest] = []
        self.last: list = []

    def _take(self, out: list) -> list:
        self.last = out
        for item in out:
            if isinstance(item, Send):
                assert isinstance(item.line, bytes) and item.line.endswith(b"\r\n")
                assert item.line.count(b"\n") == 1 and b"\0" not in item.line
                self.inbox[item.cid].append(item.line)
            elif isinstance(item, Close):
                self.closed[item.cid] = item.reason
            elif isinstance(item, AuthRequest):
                self.auth.append(item)
        return out

    def connect(self, cid, **kw) -> list:
        return self._take(self.core.connect(cid, **kw))

    def send(self, cid, *lines: str | bytes) -> list:
        out = []
        for line in lines:
            out += self._take(self.core.receive(cid, line.encode() if isinstance(line, str) else line))
        self.last = out
        return out

    def tick(self) -> list:
        return self._take(self.core.tick())

    def auth_result(self, cid, account) -> list:
        return self._take(self.core.auth_result(cid, account))

    def disconnect(self, cid, reason="Connection reset") -> list:
        return self._take(self.core.disconnect(cid, reason))

    def register(self, cid, nick: str, caps: str = "", user: str | None = None, **kw) -> None:
        self.connect(cid, **kw)
        if caps:
            self.send(cid, "CAP LS 302", f"CAP REQ :{caps}")
        self.send(cid, f"NICK {nick}", f"USER {user or nick} 0 * :Real {nick}")
        if caps:
            self.send(cid, "CAP END")
        assert any(b" 001 " in line for line in self.inbox[cid]), self.inbox[cid]
        self.clear(cid)

    def clear(self, *cids) -> None:
        for cid in cids or list(self.inbox):
            self.inbox[cid] = []

    def lines(self, cid) -> list[str]:
        return [line.decode("utf-8", "replace").rstrip("\r\n") for line in self.inbox[cid]]

    def msgs(self, cid) -> list[Message]:
        return [parse(line) for line in self.inbox[cid]]

    def take(self, cid) -> list[Message]:
        out = self.msgs(cid)
        self.inbox[cid] = []
        return out

    def codes(self, cid) -> list[str]:
        return [m.command for m in self.msgs(cid)]

    def numeric(self, cid, code: str) -> list[Message]:
        return [m for m in self.msgs(cid) if m.command == code]


def room(net: Net, channel: str = "#room", *nicks: str, caps: str = "") -> None:
    """Register `nicks` (cid = nick) and join them all to `channel`, then clear their inboxes."""
    for nick in nicks:
        net.register(nick, nick, caps=caps)
        net.send(nick, f"JOIN {channel}")
    net.clear()
