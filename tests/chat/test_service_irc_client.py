"""The chat service with a real third-party IRC client: the `irc` package from PyPI.

Its asyncio reactor runs on the test's own loop next to the server; its classic select() reactor runs
in a thread (with a deadline) and connects over TLS through its connection factory's ssl wrapper.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers import WAIT, data_dir, wait_for  # noqa: F401 - data_dir is a fixture
from test_service import chat_service, port_of

irc_client = pytest.importorskip("irc.client")
irc_aio = pytest.importorskip("irc.client_aio")
irc_connection = pytest.importorskip("irc.connection")
irc_events = pytest.importorskip("irc.events")


def code(numeric: str) -> str:
    """The irc package's event type name for a numeric (e.g. 332 -> 'currenttopic')."""
    return str(irc_events.Command.lookup(numeric))


class Recorder:
    """Every event one irc-package connection sees, and a bounded wait for one of them."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.lock = threading.Lock()

    def __call__(self, connection: Any, event: Any) -> None:
        with self.lock:
            self.events.append(event)

    def find(self, type_: str, where: Callable[[Any], Any] | None = None) -> Any:
        with self.lock:
            return next((e for e in self.events if e.type == type_ and (where is None or where(e))), None)

    async def wait(self, type_: str, where: Callable[[Any], Any] | None = None, timeout: float = WAIT) -> Any:
        try:
            return await wait_for(lambda: self.find(type_, where), timeout)
        except AssertionError:
            with self.lock:
                seen = [(e.type, e.source, e.target, e.arguments) for e in self.events[-20:]]
            raise AssertionError(f"no {type_} event within {timeout}s; saw {seen}") from None


# -- the asyncio reactor on the test's loop -----------------------------------------------------------
async def aio_client(port: int, nick: str) -> tuple[Any, Recorder]:
    reactor = irc_aio.AioReactor(loop=asyncio.get_running_loop())
    rec = Recorder()
    conn = reactor.server()
    # Registered on the connection before connecting, so the welcome burst is recorded too.
    reactor.add_global_handler("all_events", rec)
    await asyncio.wait_for(conn.connect("127.0.0.1", port, nick, username=nick, ircname=f"Real {nick}"), WAIT)
    await rec.wait("welcome")
    return conn, rec


async def test_two_irc_package_clients_chat():
    async with chat_service() as svc:
        alice, arec = await aio_client(port_of(svc), "alice")
        bob, brec = await aio_client(port_of(svc), "bob")
        try:
            assert (await arec.wait("welcome")).target == "alice"
            alice.join("#irc")
            await arec.wait("endofnames")
            alice.topic("#irc", "talking through the irc package")
            await arec.wait("topic")
            bob.join("#irc")
            names = await brec.wait("namreply")
            assert names.arguments[1] == "#irc" and sorted(names.arguments[2].split()) == ["@alice", "bob"]
            topic = await brec.wait("currenttopic")
            assert topic.arguments == ["#irc", "talking through the irc package"]
            who = await brec.wait("topicinfo")
            assert who.arguments[1].startswith("alice")
            await arec.wait("join", lambda e: e.source.nick == "bob")

            alice.privmsg("#irc", "hello bob")
            said = await brec.wait("pubmsg")
            assert said.source.nick == "alice" and said.target == "#irc" and said.arguments == ["hello bob"]
            bob.privmsg("alice", "hello alice, privately")
            private = await arec.wait("privmsg")
            assert private.source.nick == "bob" and private.arguments == ["hello alice, privately"]
            bob.notice("#irc", "a notice")
            notice = await arec.wait("pubnotice")
            assert notice.arguments == ["a notice"]

            alice.names(["#irc"])
            await wait_for(lambda: len([e for e in arec.events if e.type == "namreply"]) >= 2)
            alice.privmsg("nobody", "anyone?")
            assert (await arec.wait("nosuchnick")).arguments[0] == "nobody"

            bob.quit("see you")
            gone = await arec.wait("quit", lambda e: e.source.nick == "bob")
            assert gone.arguments == ["Quit: see you"]
        finally:
            for conn in (alice, bob):
                if conn.connected:
                    conn.disconnect()


async def test_irc_package_nick_in_use():
    async with chat_service() as svc:
        first, _ = await aio_client(port_of(svc), "same")
        reactor = irc_aio.AioReactor(loop=asyncio.get_running_loop())
        rec = Recorder()
        reactor.add_global_handler("all_events", rec)
        second = reactor.server()
        try:
            await asyncio.wait_for(second.connect("127.0.0.1", port_of(svc), "same"), WAIT)
            taken = await rec.wait("nicknameinuse")
            assert taken.arguments[0] == "same"
            second.nick("other")
            assert (await rec.wait("welcome")).target == "other"
        finally:
            for conn in (first, second):
                if conn.connected:
                    conn.disconnect()


# -- the threaded select() reactor, over TLS ------------------------------------------------------------
class ThreadedClient:
    """irc.client.Reactor in a thread of its own. Commands are queued to that thread (an SSL socket
    must not be written from one thread while another reads it); the thread stops at a deadline."""

    def __init__(self, port: int, nick: str, factory: Any, *, password: str | None = None,
                 sasl_login: str | None = None, deadline: float = 20.0) -> None:
        self.port, self.nick, self.factory = port, nick, factory
        self.password, self.sasl_login = password, sasl_login
        self.rec = Recorder()
        self.todo: queue.SimpleQueue[Callable[[Any], None]] = queue.SimpleQueue()
        self.stop = threading.Event()
        self.deadline = time.monotonic() + deadline
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"irc client {nick}", daemon=True)

    def _run(self) -> None:
        reactor = irc_client.Reactor()
        reactor.add_global_handler("all_events", self.rec)
        conn = reactor.server()
        try:
            conn.connect("127.0.0.1", self.port, self.nick, password=self.password, username=self.nick,
                         ircname=self.nick, connect_factory=self.factory, sasl_login=self.sasl_login)
            while not self.stop.is_set() and time.monotonic() < self.deadline and conn.is_connected():
                while not self.todo.empty():
                    self.todo.get()(conn)
                reactor.process_once(0.02)
                sock = conn.socket
                # select() cannot see TLS records OpenSSL has already read off the socket.
                while conn.is_connected() and isinstance(sock, ssl.SSLSocket) and sock.pending():
                    conn.process_data()
        except BaseException as exc:  # noqa: BLE001 - reported to the test by close()
            self.error = exc
        finally:
            if conn.is_connected():
                conn.disconnect("bye")

    def start(self) -> ThreadedClient:
        self.thread.start()
        return self

    def do(self, action: Callable[[Any], None]) -> None:
        self.todo.put(action)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.to_thread(self.thread.join, WAIT)
        assert not self.thread.is_alive(), "the irc client thread did not stop"
        if self.error is not None:
            raise self.error


def tls_factory() -> Any:
    from socketkit.net import certs

    ctx = ssl.create_default_context(cafile=str(certs.dev_ca_certificate()))
    return irc_connection.Factory(wrapper=functools.partial(ctx.wrap_socket, server_hostname="localhost"))


async def test_irc_package_over_tls(data_dir):  # noqa: F811 - the fixture
    async with chat_service(listen="tls://127.0.0.1:0") as svc:
        assert svc.servers[0].endpoints[0].scheme == "tls"
        factory = tls_factory()
        alice = ThreadedClient(port_of(svc), "alice", factory).start()
        bob = ThreadedClient(port_of(svc), "bob", factory).start()
        try:
            await alice.rec.wait("welcome")
            await bob.rec.wait("welcome")
            assert all(c.tls for c in svc.core.clients.values())
            alice.do(lambda c: c.join("#tls"))
            await alice.rec.wait("endofnames")
            alice.do(lambda c: c.topic("#tls", "encrypted"))
            await alice.rec.wait("topic")
            bob.do(lambda c: c.join("#tls"))
            names = await bob.rec.wait("namreply")
            assert sorted(names.arguments[2].split()) == ["@alice", "bob"]
            assert (await bob.rec.wait("currenttopic")).arguments == ["#tls", "encrypted"]
            await alice.rec.wait("join", lambda e: e.source.nick == "bob")
            alice.do(lambda c: c.privmsg("#tls", "over TLS"))
            said = await bob.rec.wait("pubmsg")
            assert said.source.nick == "alice" and said.arguments == ["over TLS"]
            bob.do(lambda c: c.privmsg("alice", "right back"))
            assert (await alice.rec.wait("privmsg")).arguments == ["right back"]
            bob.do(lambda c: c.whois("bob"))
            secure = await bob.rec.wait("671")
            assert secure.arguments[0] == "bob"
        finally:
            await alice.close()
            await bob.close()


async def test_irc_package_sasl_over_tls(data_dir, tmp_path):  # noqa: F811 - the fixture
    from socketkit.accounts import AccountStore

    store = AccountStore(tmp_path / "accounts.db")
    store.add("carol", "a long enough secret")
    try:
        async with chat_service(listen="tls://127.0.0.1:0", accounts=store) as svc:
            good = ThreadedClient(port_of(svc), "carol", tls_factory(), password="a long enough secret",
                                  sasl_login="carol").start()
            bad = ThreadedClient(port_of(svc), "eve", tls_factory(), password="not the secret",
                                 sasl_login="carol").start()
            try:
                assert (await good.rec.wait("loggedin")).arguments[1] == "carol"
                await good.rec.wait("saslsuccess")
                await good.rec.wait("welcome")
                await bad.rec.wait("saslfail")
                await bad.rec.wait("login_failed")
                await bad.rec.wait("welcome")  # the client goes on without an account (CAP END)
                good.do(lambda c: c.whois("carol"))
                assert (await good.rec.wait("whoisaccount")).arguments[:2] == ["carol", "carol"]
                assert {c.nick: c.account for c in svc.core.clients.values()} == {"carol": "carol", "eve": None}
            finally:
                await good.close()
                await bad.close()
    finally:
        store.close()


# -- IRCv3 through the irc package ------------------------------------------------------------------------
def tags_of(event: Any) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in (event.tags or [])}


async def test_irc_package_sees_tags_whox_monitor_and_labels():
    async with chat_service() as svc:
        alice, arec = await aio_client(port_of(svc), "alice")
        bot, brec = await aio_client(port_of(svc), "helper")
        try:
            alice.cap("REQ", "server-time", "message-tags", "labeled-response", "batch")
            await arec.wait("cap", lambda e: "ACK" in e.arguments)
            bot.mode("helper", "+B")
            await brec.wait("umode", lambda e: e.arguments == ["+B"])
            for conn, rec in ((alice, arec), (bot, brec)):
                conn.join("#v3")
                await rec.wait("endofnames")
            bot.privmsg("#v3", "beep boop")
            said = await arec.wait("pubmsg", lambda e: e.source.nick == "helper")
            tags = tags_of(said)
            assert said.arguments == ["beep boop"] and tags["time"].endswith("Z") and tags["msgid"]
            assert "bot" in tags  # IRCv3 bot mode: messages from a +B user carry the bot tag

            alice.send_raw("WHO #v3 %tcnaf,42")
            await wait_for(lambda: len([e for e in arec.events if e.type == "whospcrpl"]) == 2)
            rows = sorted(e.arguments for e in arec.events if e.type == "whospcrpl")
            assert rows == [["42", "#v3", "alice", "H@", "0"], ["42", "#v3", "helper", "HB", "0"]]  # t c n f a

            alice.send_raw("MONITOR + carol")
            assert (await arec.wait(code("731"))).arguments == ["carol"]
            carol, crec = await aio_client(port_of(svc), "carol")
            try:
                online = await arec.wait(code("730"))
                assert online.arguments == ["carol!~carol@127.0.0.1"]
            finally:
                carol.disconnect()

            alice.send_raw("@label=L1 PING :labelled")
            pong = await arec.wait("pong", lambda e: tags_of(e).get("label") == "L1")
            assert pong.arguments[-1] == "labelled"
        finally:
            for conn in (alice, bot):
                if conn.connected:
                    conn.disconnect()
