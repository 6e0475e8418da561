"""The chat service over real loopback sockets: numerics, channel operations, IRCv3, SASL, and the
safety bounds (flood control, line length, SendQ, max connections).

`IRC` below is a deliberately dumb raw-socket client (every wait bounded); the other chat service test
modules import it and `chat_service` from here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, wait_for

from socketkit.chat.core import ChatLimits
from socketkit.chat.server import ChatConfig, ChatService, IRCConnection
from socketkit.net.limits import Limits
from socketkit.proto.irc import Message, parse


# -- a raw IRC client ---------------------------------------------------------------------------------
class Closed(AssertionError):
    """The server closed the connection while we waited for something else."""


class IRC:
    """One IRC connection on a plain non-blocking socket: no library between the test and the wire."""

    def __init__(self, sock: socket.socket, name: str = "client") -> None:
        self.sock = sock
        self.name = name
        self.buf = b""
        self.pending: list[Message] = []   # received, not yet consumed by expect()
        self.seen: list[Message] = []      # everything received, for failure messages
        self.raw: list[bytes] = []
        self.eof = False

    @classmethod
    async def open(cls, port: int, name: str = "client", *, rcvbuf: int | None = None) -> IRC:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), WAIT)
        except BaseException:
            sock.close()
            raise
        return cls(sock, name)

    def close(self) -> None:
        self.sock.close()

    async def send(self, *lines: str | bytes) -> None:
        data = b"".join((ln.encode() if isinstance(ln, str) else ln) + b"\r\n" for ln in lines)
        await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(self.sock, data), WAIT)

    async def _read(self, timeout: float) -> bool:
        """Read once (bounded); False at EOF."""
        if self.eof:
            return False
        try:
            chunk = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), timeout)
        except TimeoutError:
            return True
        except ConnectionError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\r\n")
        for line in lines:
            self.raw.append(line)
            msg = parse(line)
            self.pending.append(msg)
            self.seen.append(msg)
        return True

    def _describe(self) -> str:
        return "\n  ".join(m.format().decode(errors="replace").rstrip()[:160] for m in self.seen[-25:])

    async def expect(self, command: str | None = None, *, where: Callable[[Message], Any] | None = None,
                     timeout: float = WAIT) -> Message:
        """The first pending (or next received) line with `command` for which `where` holds; the lines
        before it are consumed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, msg in enumerate(self.pending):
                if (command is None or msg.command == command) and (where is None or where(msg)):
                    del self.pending[:i + 1]
                    return msg
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"{self.name}: no {command or 'line'} within {timeout}s; saw:\n  "
                                     + self._describe())
            if not await self._read(left):
                raise Closed(f"{self.name}: connection closed before {command or 'a line'}; saw:\n  "
                             + self._describe())

    async def closed(self, timeout: float = WAIT) -> list[Message]:
        """Wait (bounded) until the server closes the connection; return what came before EOF."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self._read(max(0.0, deadline - loop.time())):
            if loop.time() >= deadline:
                raise AssertionError(f"{self.name}: still open after {timeout}s; saw:\n  " + self._describe())
        rest, self.pending = self.pending, []
        return rest

    async def quiet(self, command: str) -> None:
        """Assert no `command` arrives within a short window (used after a barrier, see `sync`)."""
        await self.sync()
        assert not [m for m in self.pending if m.command == command], self._describe()

    async def sync(self) -> None:
        """A PING/PONG round trip: everything the server sent before the PONG is now pending."""
        token = f"sync{time.monotonic_ns()}"
        await self.send(f"PING {token}")
        await self._expect_keep("PONG", lambda m: m.params[-1] == token)

    async def _expect_keep(self, command: str, where: Callable[[Message], Any]) -> Message:
        """Like expect(), but only the matching line is consumed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            for i, msg in enumerate(self.pending):
                if msg.command == command and where(msg):
                    del self.pending[i]
                    return msg
            left = deadline - loop.time()
            if left <= 0 or not await self._read(left):
                raise AssertionError(f"{self.name}: no {command}; saw:\n  " + self._describe())

    async def numeric(self, code: str, timeout: float = WAIT) -> Message:
        return await self.expect(code, timeout=timeout)

    async def register(self, nick: str, caps: str = "", *, sasl: tuple[str, str] | None = None) -> Message:
        if caps or sasl:
            await self.send("CAP LS 302")
            await self.expect("CAP", where=lambda m: m.params[1] == "LS" and m.params[2] != "*")
            wanted = " ".join(filter(None, [caps, "sasl" if sasl else ""]))
            await self.send(f"CAP REQ :{wanted}")
            ack = await self.expect("CAP", where=lambda m: m.params[1] in ("ACK", "NAK"))
            assert ack.params[1] == "ACK", ack
        await self.send(f"NICK {nick}", f"USER {nick} 0 * :Real {nick}")
        if sasl:
            await self.send("AUTHENTICATE PLAIN")
            await self.expect("AUTHENTICATE")
            blob = base64.b64encode(f"\0{sasl[0]}\0{sasl[1]}".encode()).decode()
            await self.send(f"AUTHENTICATE {blob}")
            await self.expect(where=lambda m: m.command in ("903", "904"))
        if caps or sasl:
            await self.send("CAP END")
        welcome = await self.expect("001")
        await self.expect(where=lambda m: m.command in ("376", "422"))  # end of MOTD: burst done
        return welcome

    async def join(self, channel: str) -> list[str]:
        """JOIN and return the NAMES list (with prefixes)."""
        await self.send(f"JOIN {channel}")
        await self.expect("JOIN", where=lambda m: m.params[0] == channel)
        names: list[str] = []
        while True:
            msg = await self.expect(where=lambda m: m.command in ("353", "366"))
            if msg.command == "366":
                return names
            names += msg.params[-1].split()


def nick_of(msg: Message) -> str:
    return (msg.source or "").split("!", 1)[0]


@contextlib.asynccontextmanager
async def chat_service(*, listen: str = "tcp://127.0.0.1:0", **config: Any) -> AsyncIterator[ChatService]:
    """A chat service on a free port; closed (and its history DB with it) afterwards."""
    config.setdefault("tick_interval", 0.05)
    service = ChatService(ChatConfig(**config))
    await service.start([listen])
    try:
        yield service
    finally:
        await service.aclose(drain=0.5)


def port_of(service: ChatService, index: int = 0) -> int:
    return service.servers[0].endpoints[index].port


@contextlib.asynccontextmanager
async def clients(service: ChatService, *nicks: str, caps: str = "") -> AsyncIterator[list[IRC]]:
    """Registered raw clients, closed afterwards."""
    opened: list[IRC] = []
    try:
        for nick in nicks:
            c = await IRC.open(port_of(service), nick)
            opened.append(c)
            await c.register(nick, caps)
        yield opened
    finally:
        for c in opened:
            c.close()


# -- registration and error numerics --------------------------------------------------------------------
async def test_registration_burst_and_motd():
    async with chat_service(server_name="irc.test", network="TestNet") as svc:
        c = await IRC.open(port_of(svc))
        try:
            await c.send("NICK alice", "USER al 0 * :Alice")
            welcome = await c.expect("001")
            assert welcome.source == "irc.test" and welcome.params[0] == "alice"
            isupport = (await c.expect("005")).params
            isupport += (await c.expect("005")).params
            assert "NETWORK=TestNet" in isupport
            await c.expect("375")
            motd = await c.expect("372")
            assert "Welcome to socketkit chat." in motd.params[-1]
            await c.expect("376")
        finally:
            c.close()


async def test_error_numerics_through_the_service():
    async with chat_service() as svc, clients(svc, "alice", "bob") as (alice, bob):
        # 451: commands before registration
        early = await IRC.open(port_of(svc), "early")
        try:
            await early.send("JOIN #x")
            assert (await early.numeric("451")).params[0] == "*"
            await early.send("PRIVMSG alice :hi")
            await early.numeric("451")
            # 433: a taken nick (case-insensitively)
            await early.send("NICK ALICE")
            taken = await early.numeric("433")
            assert taken.params[1] == "ALICE"
            await early.send("NICK carol", "USER carol 0 * :Carol")
            await early.numeric("001")
        finally:
            early.close()
        await alice.send("NICK Bob")
        assert (await alice.numeric("433")).params[1] == "Bob"
        # 421 unknown command, 461 missing parameters
        await alice.send("FROBNICATE now")
        assert (await alice.numeric("421")).params[1] == "FROBNICATE"
        await alice.send("JOIN")
        assert (await alice.numeric("461")).params[1] == "JOIN"
        await alice.send("KICK #x")
        assert (await alice.numeric("461")).params[1] == "KICK"
        # 401 no such nick, 403 no such channel
        await alice.send("PRIVMSG nobody :hello?")
        assert (await alice.numeric("401")).params[1] == "nobody"
        await alice.send("PART #nowhere")
        assert (await alice.numeric("403")).params[1] == "#nowhere"
        # 442 not on that channel, 482 not an operator
        await alice.join("#room")
        await bob.send("PART #room")
        assert (await bob.numeric("442")).params[1] == "#room"
        await bob.join("#room")
        await bob.send("KICK #room alice")
        assert (await bob.numeric("482")).params[1] == "#room"
        await bob.send("MODE #room +m")
        await bob.numeric("482")
        await bob.send("TOPIC #room :mine now")  # +t is on by default
        await bob.numeric("482")
        # nothing of that reached alice
        await alice.quiet("KICK")
        assert not [m for m in alice.pending if m.command in ("MODE", "TOPIC")]


async def test_ping_pong_both_ways():
    # ping_timeout leaves room for a loaded machine to be late with alice's answers; bob's silence still
    # ends him within two seconds.
    limits = ChatLimits(ping_interval=0.3, ping_timeout=1.5)
    async with chat_service(limits=limits) as svc, clients(svc, "alice", "bob") as (alice, bob):
        await alice.send("PING :are you there")
        pong = await alice.expect("PONG")
        assert pong.params == [svc.config.server_name, "are you there"]
        # The server PINGs an idle client; answering keeps it, silence ends it with a Ping timeout.
        await alice.join("#p")
        await bob.join("#p")
        # alice answers every PING (at least two) while bob, who answers none, times out. One wait for
        # either line: bob's QUIT may come before or between alice's PINGs, and a wait for a PING alone
        # would read past it.
        quit_, answered = None, 0
        while quit_ is None or answered < 2:
            msg = await alice.expect(where=lambda m: m.command == "PING" or (
                m.command == "QUIT" and nick_of(m) == "bob"))
            if msg.command == "QUIT":
                quit_ = msg
            else:
                await alice.send(f"PONG :{msg.params[-1]}")
                answered += 1
        assert "Ping timeout" in quit_.params[-1]
        rest = await bob.closed()
        assert any(m.command == "ERROR" and "Ping timeout" in m.params[-1] for m in rest), bob._describe()
        assert any(m.command == "PING" for m in bob.seen), bob._describe()  # he was asked, and said nothing
        await alice.sync()  # alice, who answered, is still served


async def test_quit_is_broadcast_and_socket_close_too():
    async with chat_service() as svc, clients(svc, "alice", "bob", "carol") as (alice, bob, carol):
        for c in (alice, bob, carol):
            await c.join("#q")
        await bob.send("QUIT :off to lunch")
        rest = await bob.closed()
        assert any(m.command == "ERROR" for m in rest)
        for c in (alice, carol):
            q = await c.expect("QUIT")
            assert nick_of(q) == "bob" and q.params == ["Quit: off to lunch"]
        carol.close()  # no QUIT at all: the others still hear of it
        q = await alice.expect("QUIT", where=lambda m: nick_of(m) == "carol")
        assert q.params == ["Connection closed"]
        await alice.send("NAMES #q")
        names = await alice.numeric("353")
        assert names.params[-1].split() == ["@alice"]


async def test_kick():
    async with chat_service() as svc, clients(svc, "op", "victim", "watcher") as (op, victim, watcher):
        for c in (op, victim, watcher):
            await c.join("#k")
        await op.send("KICK #k victim :behave")
        for c in (op, victim, watcher):
            kick = await c.expect("KICK")
            assert nick_of(kick) == "op" and kick.params == ["#k", "victim", "behave"]
        await victim.send("PRIVMSG #k :still here?")  # +n: outsiders cannot speak
        assert (await victim.numeric("404")).params[1] == "#k"
        await op.send("KICK #k victim")
        assert (await op.numeric("441")).params[1:3] == ["victim", "#k"]
        await victim.join("#k")  # a kick is not a ban
        await watcher.expect("JOIN", where=lambda m: nick_of(m) == "victim")


async def test_modes_op_voice_moderated_ban():
    async with chat_service() as svc, clients(svc, "op", "alice", "bob") as (op, alice, bob):
        names = await op.join("#m")
        assert names == ["@op"]
        await alice.join("#m")
        await bob.join("#m")
        # +m: only voiced or operators speak
        await op.send("MODE #m +m")
        for c in (op, alice, bob):
            assert (await c.expect("MODE")).params == ["#m", "+m"]
        await alice.send("PRIVMSG #m :can I talk?")
        assert (await alice.numeric("404")).params[1] == "#m"
        await op.send("MODE #m +v alice")
        await bob.expect("MODE", where=lambda m: m.params == ["#m", "+v", "alice"])
        await alice.send("PRIVMSG #m :now I can")
        said = await bob.expect("PRIVMSG")
        assert nick_of(said) == "alice" and said.params == ["#m", "now I can"]
        # +o: bob becomes an operator and may set the topic (+t) and kick
        await bob.send("TOPIC #m :bob's topic")
        await bob.numeric("482")
        await op.send("MODE #m +o bob")
        await bob.expect("MODE", where=lambda m: m.params == ["#m", "+o", "bob"])
        await bob.send("TOPIC #m :bob's topic")
        topic = await alice.expect("TOPIC")
        assert nick_of(topic) == "bob" and topic.params == ["#m", "bob's topic"]
        await alice.send("NAMES #m")
        assert sorted((await alice.numeric("353")).params[-1].split()) == ["+alice", "@bob", "@op"]
        # +b: a banned member cannot speak even without +m, nor rejoin
        await op.send("MODE #m -m")
        await op.send("MODE #m -v alice")
        await op.send("MODE #m +b alice!*@*")
        await alice.expect("MODE", where=lambda m: m.params[1:] == ["+b", "alice!*@*"])
        await alice.send("PRIVMSG #m :banned?")
        await alice.numeric("404")
        await alice.send("PART #m")
        await alice.expect("PART")
        await alice.send("JOIN #m")
        assert (await alice.numeric("474")).params[1] == "#m"
        await op.send("MODE #m b")
        banned = await op.numeric("367")
        assert banned.params[1:3] == ["#m", "alice!*@*"]
        await op.numeric("368")
        await op.send("MODE #m -b alice!*@*")
        await op.expect("MODE", where=lambda m: m.params[1:] == ["-b", "alice!*@*"])
        await alice.join("#m")


async def test_privmsg_between_clients_and_channels():
    async with chat_service() as svc, clients(svc, "alice", "bob") as (alice, bob):
        await alice.send("PRIVMSG bob :psst")
        msg = await bob.expect("PRIVMSG")
        assert msg.source == "alice!~alice@127.0.0.1" and msg.params == ["bob", "psst"]
        await alice.join("#c")
        await bob.join("#c")
        await bob.send("NOTICE #c :a notice")
        notice = await alice.expect("NOTICE")
        assert nick_of(notice) == "bob" and notice.params == ["#c", "a notice"]
        await alice.quiet("PRIVMSG")  # no echo without echo-message


# -- IRCv3 ------------------------------------------------------------------------------------------
async def test_cap_ls_302_and_tags_on_received_lines():
    async with chat_service() as svc:
        alice = await IRC.open(port_of(svc), "alice")
        bob = await IRC.open(port_of(svc), "bob")
        try:
            await alice.send("CAP LS 302")
            ls = await alice.expect("CAP")
            assert ls.params[:2] == ["*", "LS"]
            offered = set(ls.params[-1].split())
            assert {"server-time", "echo-message", "message-tags", "sasl=PLAIN", "batch"} <= offered
            await alice.send("CAP REQ :server-time echo-message message-tags")
            ack = await alice.expect("CAP")
            assert ack.params[1] == "ACK" and set(ack.params[2].split()) == {
                "server-time", "echo-message", "message-tags"}
            await alice.send("NICK alice", "USER alice 0 * :A")
            await alice.quiet("001")  # CAP negotiation holds registration
            await alice.send("CAP LIST")
            listed = await alice.expect("CAP", where=lambda m: m.params[1] == "LIST")
            assert {"server-time", "echo-message", "message-tags"} <= set(listed.params[-1].split())
            await alice.send("CAP END")
            await alice.expect("376")
            await bob.register("bob", "message-tags")
            await alice.join("#t")
            await bob.join("#t")
            await bob.send("@+draft/react=wave PRIVMSG #t :tagged hello")
            got = await alice.expect("PRIVMSG")
            assert got.tags["+draft/react"] == "wave"
            assert got.tags["time"].endswith("Z") and "msgid" in got.tags
            assert got.params == ["#t", "tagged hello"]
            await bob.quiet("PRIVMSG")  # bob has no echo-message
            await alice.send("PRIVMSG #t :echo me")
            echoed = await alice.expect("PRIVMSG")
            assert nick_of(echoed) == "alice" and echoed.params == ["#t", "echo me"]
            to_bob = await bob.expect("PRIVMSG")
            assert to_bob.tags["msgid"] == echoed.tags["msgid"] and "time" not in to_bob.tags
            await alice.send("@+typing=active TAGMSG #t")
            tagmsg = await bob.expect("TAGMSG")
            assert tagmsg.tags["+typing"] == "active"
            await alice.send("CAP REQ :no-such-cap")
            assert (await alice.expect("CAP")).params[1] == "NAK"
        finally:
            alice.close()
            bob.close()


@pytest.fixture
def account_store(tmp_path: Path):
    from socketkit.accounts import AccountStore

    store = AccountStore(tmp_path / "accounts.db")
    store.add("Alice", "correct horse battery")
    yield store
    store.close()


async def test_sasl_plain_success_and_account_tag(account_store):
    async with chat_service(accounts=account_store) as svc:
        alice = await IRC.open(port_of(svc), "alice")
        bob = await IRC.open(port_of(svc), "bob")
        try:
            await alice.register("alice", sasl=("Alice", "correct horse battery"))
            logged = next(m for m in alice.seen if m.command == "900")
            assert logged.params[2] == "Alice"
            assert any(m.command == "903" for m in alice.seen)
            await bob.register("bob", "account-tag")
            await alice.join("#s")
            await bob.join("#s")
            await alice.send("PRIVMSG #s :signed")
            got = await bob.expect("PRIVMSG")
            assert got.tags.get("account") == "Alice"
            await alice.send("WHOIS alice")
            assert (await alice.numeric("330")).params[2] == "Alice"
        finally:
            alice.close()
            bob.close()


async def test_sasl_plain_failure(account_store):
    async with chat_service(accounts=account_store) as svc:
        mallory = await IRC.open(port_of(svc), "mallory")
        try:
            await mallory.send("CAP LS 302", "CAP REQ :sasl account-tag", "NICK mallory", "USER m 0 * :M")
            await mallory.send("AUTHENTICATE PLAIN")
            await mallory.expect("AUTHENTICATE")
            blob = base64.b64encode(b"\0Alice\0wrong password!").decode()
            await mallory.send(f"AUTHENTICATE {blob}")
            fail = await mallory.numeric("904")
            assert fail.params[0] == "mallory"
            assert not any(m.command in ("900", "903") for m in mallory.seen)
            await mallory.send("CAP END")  # registering without an account is still allowed
            await mallory.numeric("001")
            await mallory.send("WHOIS mallory")
            await mallory.numeric("318")
            assert not any(m.command == "330" for m in mallory.seen)
        finally:
            mallory.close()


# -- safety bounds ----------------------------------------------------------------------------------
async def test_flood_is_lagged_then_disconnected_while_others_keep_working():
    async with chat_service() as svc, clients(svc, "flooder", "alice", "bob") as (flooder, alice, bob):
        for c in (flooder, alice, bob):
            await c.join("#f")
        await flooder.send(*[f"PRIVMSG #f :flood {i}" for i in range(200)])
        rest = await flooder.closed()
        error = [m for m in rest if m.command == "ERROR"]
        assert error and "Excess Flood" in error[0].params[-1], flooder._describe()
        # Fake lag first: what was left of the burst (registering and JOIN spent some) got through,
        # the rest waited in the queue until its bound, and none of that reached the channel.
        quit_ = await alice.expect("QUIT", where=lambda m: nick_of(m) == "flooder")
        assert "Excess Flood" in quit_.params[-1]
        relayed = [m.params[-1] for m in alice.seen if m.command == "PRIVMSG" and nick_of(m) == "flooder"]
        assert 0 < len(relayed) <= ChatLimits().flood_burst, relayed
        assert relayed == [f"flood {i}" for i in range(len(relayed))]
        # The channel keeps working for everyone else.
        start = time.monotonic()
        await alice.send("PRIVMSG #f :still fine")
        got = await bob.expect("PRIVMSG", where=lambda m: nick_of(m) == "alice")
        # (the bound only tells "served at once" from "held back": a loaded machine may take a second)
        assert got.params[-1] == "still fine" and time.monotonic() - start < 5.0


async def test_fake_lag_delays_but_keeps_order():
    limits = ChatLimits(flood_burst=3, flood_rate=20, flood_queue=50)
    async with chat_service(limits=limits) as svc, clients(svc, "fast", "reader") as (fast, reader):
        await fast.join("#l")
        await reader.join("#l")
        await fast.send(*[f"PRIVMSG #l :n{i}" for i in range(20)])
        got = [(await reader.expect("PRIVMSG")).params[-1] for _ in range(20)]
        assert got == [f"n{i}" for i in range(20)]
        await fast.sync()  # not disconnected: 20 lines stayed under the queue bound


async def test_line_over_the_limit_gets_417_and_the_connection_survives():
    async with chat_service() as svc, clients(svc, "alice", "bob") as (alice, bob):
        await alice.join("#big")
        await bob.join("#big")
        await alice.send("PRIVMSG #big :" + "x" * 600)
        assert (await alice.numeric("417")).params[-1] == "Input line was too long"
        huge = "PRIVMSG #big :" + "y" * 20_000  # past the transport's buffer bound too
        await alice.send(huge, "PRIVMSG #big :after the long one")
        await alice.numeric("417")
        got = await bob.expect("PRIVMSG")
        assert got.params[-1] == "after the long one"  # nothing of the long lines was relayed
        await alice.send("@" + "+t=" + "z" * 5000 + " PRIVMSG #big :too many tags")
        await alice.numeric("417")
        await alice.sync()


async def test_slow_consumer_is_dropped_with_bounded_memory(monkeypatch):
    sendq = 64 * 1024
    peak: dict[int, int] = {}
    original = IRCConnection.write

    def recording_write(self: IRCConnection, data: bytes) -> None:
        original(self, data)
        key = id(self)
        peak[key] = max(peak.get(key, 0), self.write_buffer_size)

    monkeypatch.setattr(IRCConnection, "write", recording_write)
    limits = ChatLimits(flood_burst=100_000, flood_queue=100_000)
    async with chat_service(limits=limits, sendq=sendq) as svc, \
            clients(svc, "flooder", "alice") as (flooder, alice):
        slow = await IRC.open(port_of(svc), "slow", rcvbuf=4096)
        try:
            await slow.register("slow")
            for c in (flooder, alice, slow):
                await c.join("#slow")
            await flooder.expect("JOIN", where=lambda m: nick_of(m) == "slow")
            slow_cid = max(svc.outlets)
            slow_conn = svc.outlets[slow_cid]
            assert isinstance(slow_conn, IRCConnection)
            sock = slow_conn.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel holds little
            line = "PRIVMSG #slow :" + "s" * 400
            rtts: list[float] = []
            sent = 0
            # Flood in small rounds; after each, time a PRIVMSG from the flooder to alice through the
            # channel the slow client is filling up.
            started = time.monotonic()
            while slow_cid in svc.outlets and sent < 20_000:
                await flooder.send(*[line] * 10)
                sent += 10
                start = time.monotonic()
                token = f"rtt{sent}"
                await flooder.send(f"PRIVMSG #slow :{token}")
                await alice.expect("PRIVMSG", where=lambda m, t=token: m.params[-1] == t)
                rtts.append(time.monotonic() - start)
            assert slow_cid not in svc.outlets, "the slow client was never disconnected"
            assert time.monotonic() - started < WAIT
            assert sent <= 4000, f"needed {sent} lines to overflow a {sendq}-byte SendQ"
            assert len(rtts) >= 5, rtts  # several round trips happened while the SendQ filled
            # Memory: the unsent bytes never grew past the bound by more than one flush's worth.
            assert peak[id(slow_conn)] <= sendq + 16 * 1024, peak[id(slow_conn)]
            # No round trip waited for the slow client (that would stall until it was dropped, or for good);
            # the bound leaves room for a loaded machine.
            assert max(rtts) < 5.0, rtts
            # The QUIT may have come in before the last round's token, and so already been read past: look
            # in everything alice has seen, after a PING round trip that orders her after the disconnection.
            await alice.sync()
            quits = [m for m in alice.seen if m.command == "QUIT" and nick_of(m) == "slow"]
            assert [m.params[-1] for m in quits] == ["SendQ exceeded"], alice._describe()
            await wait_for(lambda: slow_conn.transport is None or slow_conn.closing,
                           what="the slow client's socket to be closed")
            # The others go on as before.
            await alice.send("PRIVMSG #slow :after")
            await flooder.expect("PRIVMSG", where=lambda m: m.params[-1] == "after")
        finally:
            slow.close()


async def test_max_connections_refuses_politely():
    net_limits = Limits(idle_timeout=None, max_connections=2)
    async with chat_service(net_limits=net_limits) as svc, clients(svc, "one", "two") as (one, two):
        third = await IRC.open(port_of(svc), "third")
        try:
            rest = await third.closed()
            assert [m.command for m in rest] == ["ERROR"] and rest[0].params[-1] == "Server is full"
        finally:
            third.close()
        await one.sync()
        two.close()
        await wait_for(lambda: len(svc.outlets) == 1, what="the closed client to be forgotten")
        again = await IRC.open(port_of(svc), "again")
        try:
            await again.register("again")
        finally:
            again.close()


async def test_aclose_tells_clients_and_closes_them():
    async with chat_service() as svc:
        c = await IRC.open(port_of(svc), "c")
        try:
            await c.register("c")
            await svc.aclose(drain=0.5)
            rest = await c.closed()
            assert any(m.command == "ERROR" and "Server shutting down" in m.params[-1] for m in rest)
        finally:
            c.close()
