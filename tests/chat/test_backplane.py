"""Chat nodes sharing one network through Redis: a real `redis-server` on loopback (one per module),
two or three ChatService nodes on it, and raw IRC clients on each node. Plus the RESP codec alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import wait_for

from socketkit.chat.server import ChatConfig, ChatService
from socketkit.net.connect import connect
from socketkit.proto.irc import Message, parse

WAIT = 10.0
REDIS = shutil.which("redis-server") or ("/usr/bin/redis-server" if shutil.which("/usr/bin/redis-server") else None)


def redis_dir() -> str:
    """A scratch directory for one redis-server: it writes dump.rdb (a replica's full sync does even with
    --save "") into its working directory, which must never be the checkout nor shared with another server."""
    return tempfile.mkdtemp(prefix="socketkit-redis-")


async def first_across(sender: Any, receiver: Any, channel: str, text: str, *, tries: int, what: str) -> Any:
    """Send numbered lines to `channel` until the receiver gets one (a node may still be finding its way back
    to Redis): the first PRIVMSG that crossed."""
    for i in range(tries):
        await sender.send(f"PRIVMSG {channel} :{text} {i}")
        try:
            return await receiver.expect("PRIVMSG", timeout=0.2)
        except AssertionError:
            continue
    raise AssertionError(f"no message crossed {what}")

# -- a redis-server per module --------------------------------------------------------------------------
def reserve_port() -> tuple[int, socket.socket]:
    """A free loopback port, and the socket that holds it: bound with SO_REUSEADDR, never listening. A
    redis-server (which sets SO_REUSEADDR too) can still listen on the port, while the kernel gives it to
    no outgoing connection as its local port (connect() skips ports bound explicitly). Without the hold,
    any connection made on the machine while Redis is down (between a stop and a start, or before the
    first start) may take the port, and Redis could not come back on it."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1], s


def redis_call(port: int, *args: Any, timeout: float = 5.0) -> Any:
    """One command, for the test's own look at Redis: the raw reply (bytes, ints, lists), through
    redis-py's blocking client with its reply conversions turned off."""
    import redis as redis_py

    client = redis_py.Redis(host="127.0.0.1", port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
                            retry=None)
    try:
        client.response_callbacks.clear()
        return client.execute_command(*args)
    except (redis_py.exceptions.ConnectionError, redis_py.exceptions.TimeoutError) as e:
        raise ConnectionError(str(e)) from None  # an OSError, as a socket of our own would raise
    finally:
        client.close()


class Redis:
    def __init__(self) -> None:
        self.port, self._hold = reserve_port()  # held until close(): restarts find the port free
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: str | None = None

    def start(self) -> None:
        assert REDIS is not None
        self.dir = redis_dir()
        self.proc = subprocess.Popen(
            [REDIS, "--save", "", "--appendonly", "no", "--port", str(self.port), "--bind", "127.0.0.1",
             "--protected-mode", "no", "--dir", self.dir], cwd=self.dir,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                if redis_call(self.port, "PING") == b"PONG":
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def close(self) -> None:
        self.stop()
        self._hold.close()

    @property
    def url(self) -> str:
        # Fast heartbeats and reconnects keep the tests short. The TTL is not 3 heartbeats (the default): a
        # loaded machine may run a node's loop a second late, and the other node would split it off (its
        # users QUIT "*.net *.split") in the middle of a test about something else; the test of that split
        # sets its own.
        return f"redis://127.0.0.1:{self.port}?heartbeat=0.3&ttl=5&backoff_max=0.4"


@pytest.fixture(scope="module")
def redis() -> Any:
    if REDIS is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server); "
                    "the backplane tests need a real Redis on loopback")
    server = Redis()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> None:
    if "redis" in request.fixturenames:
        server = request.getfixturevalue("redis")
        if server.proc is None:  # a test that restarted it and failed half-way
            server.start()
        redis_call(server.port, "FLUSHALL")


# -- nodes and raw IRC clients ----------------------------------------------------------------------------
class Node:
    def __init__(self, service: ChatService) -> None:
        self.service = service
        self.port = service.servers[0].endpoints[0].port

    @property
    def core(self) -> Any:
        return self.service.core


@contextlib.asynccontextmanager
async def nodes(redis: Redis, count: int = 2, **config: Any) -> AsyncIterator[list[Node]]:
    started: list[ChatService] = []
    try:
        for i in range(count):
            svc = ChatService(ChatConfig(server_name=f"node{'ABC'[i]}.test", backplane=redis.url, sasl=False,
                                         **config))
            started.append(svc)
            await svc.start(["tcp://127.0.0.1:0"])
        yield [Node(s) for s in started]
    finally:
        for svc in started:
            await svc.aclose(drain=0)


class Client:
    def __init__(self, stream: Any, nick: str) -> None:
        self.stream = stream
        self.nick = nick
        self.seen: list[bytes] = []

    @classmethod
    async def open(cls, node: Node, nick: str, caps: str = "", *, register: bool = True) -> Client:
        stream = await connect(f"tcp://127.0.0.1:{node.port}", timeout=WAIT)
        c = cls(stream, nick)
        if register:
            await c.register(caps)
        return c

    async def send(self, line: str) -> None:
        await self.stream.send(line.encode() + b"\r\n")

    async def register(self, caps: str = "") -> Message:
        if caps:
            await self.send(f"CAP REQ :{caps}")
        await self.send(f"NICK {self.nick}")
        await self.send(f"USER {self.nick} 0 * :{self.nick} test")
        if caps:
            await self.send("CAP END")
        return await self.expect("001")

    async def expect(self, command: str, where: Any = None, timeout: float = WAIT) -> Message:
        """The next line with `command` whose params/source satisfy `where` (skipping everything else)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                tail = b"\n".join(self.seen[-15:]).decode(errors="replace")
                raise AssertionError(f"{self.nick}: no {command} within {timeout}s; last lines:\n{tail}")
            try:
                raw = await self.stream.receive_until(b"\r\n", timeout=left)
            except TimeoutError:
                continue
            self.seen.append(raw.rstrip())
            msg = parse(raw.rstrip(b"\r\n"))
            if msg.command == "PING":
                await self.send(f"PONG :{msg.params[0]}")
            if msg.command == command and (where is None or where(msg)):
                return msg

    async def names(self, channel: str) -> set[str]:
        await self.send(f"NAMES {channel}")
        found: set[str] = set()
        while True:
            msg = await self.expect_any(("353", "366"))
            if msg.command == "366":
                return found
            found.update(n.lstrip("@+") for n in msg.params[-1].split())

    async def expect_any(self, commands: tuple[str, ...]) -> Message:
        deadline = asyncio.get_running_loop().time() + WAIT
        while True:
            raw = await self.stream.receive_until(b"\r\n", timeout=deadline - asyncio.get_running_loop().time())
            self.seen.append(raw.rstrip())
            msg = parse(raw.rstrip(b"\r\n"))
            if msg.command in commands:
                return msg

    async def close(self) -> None:
        self.stream.abort()


def knows(node: Node, nick: str) -> bool:
    x = node.core.lookup_nick(nick)
    return x is not None and x.remote is not None


def channel_modes(node: Node, name: str) -> str:
    """The modes `node` holds for channel `name`; "" while it does not know the channel (yet)."""
    ch = node.core.lookup_channel(name)
    return "" if ch is None else "".join(ch.modes)


def bob_cid(node: Node) -> Any:
    return next(x.cid for x in node.core.clients.values() if x.nick == "bob")


async def join(c: Client, channel: str) -> None:
    await c.send(f"JOIN {channel}")
    await c.expect("366", lambda m: m.params[1] == channel)


async def both_join(a: Node, b: Node, alice: Client, bob: Client, channel: str) -> None:
    """alice (on node A) creates `channel`, bob (on B) joins it once B knows it, alice sees him join."""
    await join(alice, channel)
    await wait_for(lambda: b.core.lookup_channel(channel), what=f"node B learning of {channel}")
    await join(bob, channel)
    await alice.expect("JOIN", lambda m: m.source.startswith("bob!"))


# -- tests ----------------------------------------------------------------------------------------------
async def test_users_on_two_nodes_share_a_channel(redis: Redis) -> None:
    async with nodes(redis) as (a, b):
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob", caps="server-time message-tags")
        await join(alice, "#x")
        await wait_for(lambda: b.core.lookup_channel("#x"), what="node B learning of #x")
        await bob.send("JOIN #x")
        names = await bob.expect("353")
        assert {n.lstrip("@") for n in names.params[-1].split()} == {"alice", "bob"}
        joined = await alice.expect("JOIN", lambda m: m.source.startswith("bob!"))
        assert joined.source == "bob!~bob@127.0.0.1" and joined.params == ["#x"]
        assert await alice.names("#x") == {"alice", "bob"}

        await alice.send("PRIVMSG #x :hello from A")
        got = await bob.expect("PRIVMSG")
        assert got.source == "alice!~alice@127.0.0.1" and got.params == ["#x", "hello from A"]
        assert got.tags.get("msgid") and got.tags.get("time", "").endswith("Z")
        await bob.send("PRIVMSG #x :hello from B")
        back = await alice.expect("PRIVMSG")
        assert back.source == "bob!~bob@127.0.0.1" and back.params == ["#x", "hello from B"]

        await alice.send("TOPIC #x :shared topic")
        topic = await bob.expect("TOPIC")
        assert topic.source.startswith("alice!") and topic.params == ["#x", "shared topic"]

        await bob.send("PART #x :later")
        part = await alice.expect("PART")
        assert part.source.startswith("bob!") and part.params == ["#x", "later"]
        assert await alice.names("#x") == {"alice"}
        for c in (alice, bob):
            await c.close()


async def test_private_message_across_nodes(redis: Redis) -> None:
    async with nodes(redis) as (a, b):
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        await wait_for(lambda: knows(a, "bob") and knows(b, "alice"), what="both nodes knowing both users")
        await alice.send("PRIVMSG bob :psst")
        got = await bob.expect("PRIVMSG")
        assert got.source == "alice!~alice@127.0.0.1" and got.params == ["bob", "psst"]
        await bob.send("NOTICE alice :heard you")
        back = await alice.expect("NOTICE", lambda m: m.source.startswith("bob!"))
        assert back.params == ["alice", "heard you"]
        # A nick change on one node is seen by the other: messages follow the new nick.
        await bob.send("NICK robert")
        await bob.expect("NICK")
        await wait_for(lambda: knows(a, "robert") and not a.core.lookup_nick("bob"), what="A seeing the rename")
        await alice.send("PRIVMSG robert :new name")
        assert (await bob.expect("PRIVMSG")).params == ["robert", "new name"]
        await alice.send("PRIVMSG bob :old name")
        assert (await alice.expect("401")).params[1] == "bob"
        for c in (alice, bob):
            await c.close()


async def test_nick_taken_on_another_node_is_433(redis: Redis) -> None:
    async with nodes(redis) as (a, b):
        bob = await Client.open(b, "bob")
        await wait_for(lambda: knows(a, "bob"), what="node A knowing bob")
        other = await Client.open(a, "Bob", register=False)  # rfc1459 casemapping: the same nick
        await other.send("NICK Bob")
        assert (await other.expect("433")).params[1] == "Bob"
        carol = await Client.open(a, "carol")
        await carol.send("NICK BOB")
        assert (await carol.expect("433")).params[1] == "BOB"
        # The key in Redis names bob's node; a nick claimed there first wins over a local registration.
        assert redis_call(redis.port, "GET", "socketkit:chat:socketkit:nick:bob").startswith(
            b.service.backplane.node.encode())
        redis_call(redis.port, "SET", "socketkit:chat:socketkit:nick:dave", "ghost 1", "EX", 30)
        dave = await Client.open(a, "dave", register=False)
        await dave.send("NICK dave")
        await dave.send("USER dave 0 * :dave")
        err = await dave.expect("ERROR")
        assert "Nickname collision" in err.params[0]
        for c in (bob, other, carol, dave):
            await c.close()


async def test_quit_on_one_node_shows_on_the_other(redis: Redis) -> None:
    async with nodes(redis) as (a, b):
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        await both_join(a, b, alice, bob, "#x")
        await alice.send("QUIT :gone fishing")
        quit_ = await bob.expect("QUIT")
        assert quit_.source == "alice!~alice@127.0.0.1" and quit_.params == ["Quit: gone fishing"]
        assert await bob.names("#x") == {"bob"}
        await wait_for(lambda: b.core.lookup_nick("alice") is None, what="B forgetting alice")
        # The nick is free again, network-wide.
        await wait_for(lambda: redis_call(redis.port, "EXISTS", "socketkit:chat:socketkit:nick:alice") == 0,
                       what="alice's nick key released")
        alice2 = await Client.open(b, "alice")
        for c in (alice, alice2, bob):
            await c.close()


async def test_a_new_node_learns_who_is_where(redis: Redis) -> None:
    async with nodes(redis, 1) as (a,):
        alice = await Client.open(a, "alice")
        await join(alice, "#x")
        async with nodes(redis, 1) as (b,):
            # (start() returns after the first attempt to reach Redis, which a loaded machine may fail)
            await wait_for(lambda: b.service.backplane.connected.is_set(), what="B joining the network")
            assert knows(b, "alice")  # from the presence hash, before any live event
            assert {x.nick for x in b.core.lookup_channel("#x").members} == {"alice"}
            bob = await Client.open(b, "bob")
            await bob.send("JOIN #x")
            names = await bob.expect("353")
            assert {n.lstrip("@") for n in names.params[-1].split()} == {"alice", "bob"}
            await bob.close()
        # B shut down cleanly ("bye"): A drops its users at once.
        await wait_for(lambda: not a.core.lookup_nick("bob"), what="A forgetting bob")
        await alice.close()


async def test_a_silent_node_is_split_off_after_its_ttl(redis: Redis) -> None:
    async with nodes(redis, backplane_options={"ttl": 0.9}) as (a, b):  # 3 heartbeats
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        await join(alice, "#x")
        await wait_for(lambda: b.core.lookup_channel("#x"), what="node B learning of #x")
        await join(bob, "#x")
        # Node A "crashes": its backplane stops without a goodbye.
        bp = a.service.backplane
        bp._closing = True
        bp._task.cancel()
        quit_ = await bob.expect("QUIT")
        assert quit_.source.startswith("alice!") and quit_.params == ["*.net *.split"]
        a.service.backplane = None
        a.core.federated = False
        for c in (alice, bob):
            await c.close()


async def test_redis_restart_messages_flow_again(redis: Redis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "socketkit.chat.backplane")
    async with nodes(redis) as (a, b):
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        await both_join(a, b, alice, bob, "#x")

        redis.stop()
        await wait_for(lambda: a.service.backplane.conn is None and b.service.backplane.conn is None,
                       what="both nodes noticing redis is gone")
        await alice.send("PRIVMSG #x :into the void")  # local users keep being served meanwhile
        await alice.send("PING :still-here")
        await alice.expect("PONG")
        carol = await Client.open(a, "carol")
        await join(carol, "#x")
        assert (await alice.expect("JOIN", lambda m: m.source.startswith("carol!"))).params == ["#x"]
        redis.start()
        started = time.monotonic()
        await wait_for(lambda: a.service.backplane.connected.is_set() and b.service.backplane.connected.is_set(),
                       timeout=5, what="both nodes reconnecting")
        got = await first_across(alice, bob, "#x", "again", tries=50, what="after redis came back")
        assert got.params[1].startswith("again") and time.monotonic() - started < 8
        # Membership was resynchronized: B learned carol (joined during the outage), everyone kept alice.
        await wait_for(lambda: knows(b, "carol"), what="B learning carol after the resync")
        assert await bob.names("#x") == {"alice", "bob", "carol"}
        assert "redis connection lost" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        for c in (alice, bob, carol):
            await c.close()


async def test_a_slow_redis_drops_events_with_a_log_line(redis: Redis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "socketkit.chat.backplane")
    async with nodes(redis) as (a, b):
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        await both_join(a, b, alice, bob, "#x")
        a.service.backplane.max_pending = -1  # every write is "past the bound"
        await alice.send("PRIVMSG #x :dropped")
        with pytest.raises(AssertionError):
            await bob.expect("PRIVMSG", timeout=0.5)
        assert "redis is slow" in caplog.text and a.service.backplane.dropped >= 1
        a.service.backplane.max_pending = 100_000
        await alice.send("PRIVMSG #x :delivered")
        assert (await bob.expect("PRIVMSG")).params == ["#x", "delivered"]
        for c in (alice, bob):
            await c.close()


async def test_without_a_backplane_nothing_is_federated() -> None:
    svc = ChatService(ChatConfig(sasl=False))
    await svc.start(["tcp://127.0.0.1:0"])
    try:
        assert svc.backplane is None and svc.core.federated is False
        c = await Client.open(Node(svc), "solo")
        await join(c, "#x")
        await c.close()
    finally:
        await svc.aclose(drain=0)


async def test_kick_of_a_user_on_another_node(redis: Redis) -> None:
    async with nodes(redis) as (a, b):
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        await both_join(a, b, alice, bob, "#x")  # first on the network: operator
        await alice.send("KICK #x bob :out")
        kick = await bob.expect("KICK")
        assert kick.source.startswith("alice!") and kick.params == ["#x", "bob", "out"]
        assert await bob.names("#x") == {"alice"}
        key = f"socketkit:chat:socketkit:node:{b.service.backplane.node}:users"
        await wait_for(lambda: [json.loads(v) for v in redis_call(redis.port, "HVALS", key)] == [
            {"u": bob_cid(b), "i": ["bob", "~bob", "127.0.0.1", "bob test", None], "c": {}, "a": None}],
            what="B's presence: bob without #x, and no record of #x (no member there any more)")
        for c in (alice, bob):
            await c.close()


async def test_a_node_starts_while_redis_is_down_and_joins_later(redis: Redis) -> None:
    later = Redis()  # a port nobody listens on yet
    down = ChatService(ChatConfig(backplane=later.url, sasl=False))
    started = time.monotonic()
    await down.start(["tcp://127.0.0.1:0"])
    try:
        # It does not wait for Redis (which would take the 10 s of two connect timeouts).
        assert time.monotonic() - started < 5 and not down.backplane.connected.is_set()
        node = Node(down)
        solo = await Client.open(node, "solo")  # local users are served without Redis
        await join(solo, "#x")
        later.start()
        await wait_for(lambda: down.backplane.connected.is_set(), what="the node reaching redis once it is up")
        key = f"socketkit:chat:socketkit:node:{down.backplane.node}:users"
        assert [json.loads(v)["i"][0] for v in redis_call(later.port, "HVALS", key) if "u" in json.loads(v)] == ["solo"]
        await solo.close()
    finally:
        await down.aclose(drain=0)
        later.close()


# -- channel state shared between nodes -------------------------------------------------------------------
async def test_channel_modes_set_on_one_node_hold_on_the_other(redis: Redis) -> None:
    async with nodes(redis) as (a, b):
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        carol = await Client.open(b, "carol")
        await both_join(a, b, alice, bob, "#x")  # operator, on A
        # +i and +k set on A: carol, on B, is held to them by B
        await alice.send("MODE #x +ik sesame")
        mode = await bob.expect("MODE")
        assert mode.source.startswith("alice!") and mode.params == ["#x", "+ik", "sesame"]
        await carol.send("JOIN #x")
        assert (await carol.expect("473")).params[1] == "#x"  # invite only
        # an invite from A lets her in, on B (the key is still needed)
        await alice.send("INVITE carol #x")
        invite = await carol.expect("INVITE")
        assert invite.source.startswith("alice!") and invite.params == ["carol", "#x"]
        await carol.send("JOIN #x")
        assert (await carol.expect("475")).params[1] == "#x"  # bad key
        await carol.send("JOIN #x sesame")
        await carol.expect("366")
        # +o given on A to bob (on B): B's core lets bob act as an operator now
        await alice.send("MODE #x +o bob")
        assert (await bob.expect("MODE", lambda m: m.params[1] == "+o")).params == ["#x", "+o", "bob"]
        await bob.send("MODE #x -i+b evil!*@*")
        back = await alice.expect("MODE", lambda m: m.source.startswith("bob!"))
        assert back.params == ["#x", "-i+b", "evil!*@*"]
        ch = a.core.lookup_channel("#x")
        assert "i" not in ch.modes and [m for m, _, _ in ch.bans] == ["evil!*@*"]
        for c in (alice, bob, carol):
            await c.close()


async def test_a_node_starting_later_learns_topic_and_modes(redis: Redis) -> None:
    async with nodes(redis, 1) as (a,):
        alice = await Client.open(a, "alice", caps="away-notify")
        await join(alice, "#x")
        await alice.send("TOPIC #x :set before B existed")
        await alice.expect("TOPIC")
        await alice.send("MODE #x +mk secret")
        await alice.expect("MODE")
        await alice.send("AWAY :lunch")
        await alice.expect("306")
        async with nodes(redis, 1) as (b,):
            await wait_for(lambda: b.service.backplane.connected.is_set(), what="B joining the network")
            ch = b.core.lookup_channel("#x")  # from A's records: B has heard no event of it
            assert ch is not None and ch.topic == "set before B existed" and ch.topic_by == "alice"
            assert ch.modes == {"m", "n", "t"} and ch.key == "secret"
            bob = await Client.open(b, "bob")
            await bob.send("JOIN #x")
            assert (await bob.expect("475")).params[1] == "#x"
            await bob.send("JOIN #x secret")
            topic = await bob.expect("332")
            assert topic.params[1:] == ["#x", "set before B existed"]
            names = await bob.expect("353")
            assert "@alice" in names.params[-1].split() and "bob" in names.params[-1].split()  # not an op
            await bob.send("WHOIS alice")
            assert (await bob.expect("301")).params[1:] == ["alice", "lunch"]
            # moderated: bob (no voice) cannot speak, on his own node either
            await bob.send("PRIVMSG #x :hello?")
            assert (await bob.expect("404")).params[1] == "#x"
            # away-notify across nodes: alice comes back, and bob goes away
            await alice.send("AWAY")
            await wait_for(lambda: b.core.lookup_nick("alice").away is None, what="B seeing alice back")
            await bob.send("AWAY :brb")
            away = await alice.expect("AWAY", lambda m: m.source.startswith("bob!"))
            assert away.params == ["brb"]
            await bob.close()
        await alice.close()
