"""The IRCv3 additions and the conformance fixes through the real service, on raw sockets: what a client
sends and reads on the wire (the core-level checks, spec by spec, are in test_core_ircv3.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from test_service import IRC, chat_service, clients, nick_of, port_of

from socketkit.chat import core_monitor


async def test_who_nick_prefix_names_and_whox_on_the_wire():
    async with chat_service() as svc, clients(svc, "coolNick", "otherNick") as (cool, other):
        await cool.join("#chan")
        await other.join("#chan")
        await other.send("WHO coolNick")
        reply = await other.numeric("352")
        assert reply.params[1] == "#chan" and reply.params[6] == "H@"
        await other.expect("315")
        await other.send("WHO #chan %tcnf,123")
        rows = [await other.numeric("354"), await other.numeric("354")]
        assert sorted(r.params[1:] for r in rows) == [["123", "#chan", "coolNick", "H@"],
                                                      ["123", "#chan", "otherNick", "H"]]
        await other.expect("315")


async def test_userhost_in_names_extended_join_and_secret_names():
    async with chat_service() as svc, clients(svc, "alice") as (alice,):
        await alice.join("#n")
        await alice.send("MODE #n +s")
        await alice.expect("MODE")
        bob = await IRC.open(port_of(svc), "bob")
        try:
            await bob.register("bob", "userhost-in-names extended-join")
            await bob.send("JOIN #n")
            join = await bob.expect("JOIN")
            assert join.params == ["#n", "*", "Real bob"]  # extended-join: account ('*': none) and realname
            names = await bob.numeric("353")
            assert names.params[1] == "@"  # a secret channel
            assert sorted(names.params[-1].split()) == ["@alice!~alice@127.0.0.1", "bob!~bob@127.0.0.1"]
        finally:
            bob.close()


async def test_user_edge_cases_are_answered():
    async with chat_service() as svc:
        c = await IRC.open(port_of(svc), "edge")
        try:
            await c.send("NICK foo", "USER username * * :")
            assert (await c.numeric("461")).params[1] == "USER"
            await c.send("USER \U0001f60a\U0001f60a * * :realname")
            await c.numeric("468")
            c.sock.sendall(b"USER \xe8rc\xe9 * * :realname\r\n")
            fail = await c.expect("FAIL")
            assert fail.params[:2] == ["USER", "INVALID_UTF8"]
            await c.send("USER username * * :Real Name")
            await c.numeric("001")
        finally:
            c.close()


async def test_two_kicks_in_one_command_and_tag_length():
    async with chat_service() as svc, clients(svc, "foo", "bar", "baz", "qux") as (foo, bar, baz, qux):
        for x in (foo, bar, baz, qux):
            await x.join("#chan")
        await foo.send("KICK #chan,#chan bar,baz :bye")
        kicks = [await qux.expect("KICK"), await qux.expect("KICK")]
        assert [k.params for k in kicks] == [["#chan", "bar", "bye"], ["#chan", "baz", "bye"]]
        await foo.send("CAP REQ :message-tags")
        await foo.expect("CAP")
        await foo.send("@+baz={} TAGMSG #chan".format("a" * 4089))  # '@' + 4094 octets + ' ': at the limit
        await foo.send("@+baz={} TAGMSG #chan".format("a" * 4090))
        too_long = await foo.numeric("417")
        assert too_long.params[-1] == "Input line was too long"


async def test_labeled_response_standard_replies_and_server_time():
    async with chat_service() as svc:
        c = await IRC.open(port_of(svc), "lab")
        try:
            await c.register("lab", "labeled-response batch server-time setname")
            await c.send("@label=one PING tok")
            pong = await c.expect("PONG")
            assert pong.tags["label"] == "one" and pong.tags["time"].endswith("Z")
            await c.send("@label=two WHOIS lab")
            start = await c.expect("BATCH")
            assert start.tags["label"] == "two" and start.params[1] == "labeled-response"
            await c.expect("318", where=lambda m: m.tags.get("batch") == start.params[0][1:])
            await c.expect("BATCH", where=lambda m: m.params[0] == "-" + start.params[0][1:])
            await c.send("@label=three PONG nothing")
            ack = await c.expect("ACK")
            assert ack.tags["label"] == "three"
            await c.send("@label=four SETNAME :" + "x" * 300)
            fail = await c.expect("FAIL")
            assert fail.params[:2] == ["SETNAME", "INVALID_REALNAME"] and fail.tags["label"] == "four"
            await c.send("LUSERS")
            assert (await c.numeric("251")).tags["time"].endswith("Z")  # numerics carry server-time too
        finally:
            c.close()


async def test_setname_chghost_invite_notify_bot_and_utf8only():
    async with chat_service() as svc, clients(svc, "alice", "bob", "carol",
                                              caps="setname chghost invite-notify message-tags") as (alice, bob, carol):
        await alice.join("#x")
        await bob.join("#x")
        await bob.send("SETNAME :Robert Tables")
        assert (await alice.expect("SETNAME")).params == ["Robert Tables"]
        core_monitor.change_host(svc.core, svc.core.lookup_nick("bob"), "~bob", "cloak.example")
        svc.dispatch([])
        chg = await alice.expect("CHGHOST")
        assert nick_of(chg) == "bob" and chg.params == ["~bob", "cloak.example"]
        await alice.send("INVITE carol #x")
        assert (await bob.expect("INVITE")).params == ["carol", "#x"]  # invite-notify for the member
        await carol.expect("INVITE")
        await bob.send("MODE bob +B")
        await bob.expect("MODE")
        await bob.send("PRIVMSG #x :beep")
        assert "bot" in (await alice.expect("PRIVMSG")).tags
        bob.sock.sendall(b"PRIVMSG #x :not utf-8 \xff\r\n")
        fail = await bob.expect("FAIL")
        assert fail.params[:2] == ["PRIVMSG", "INVALID_UTF8"]
        await alice.quiet("PRIVMSG")


async def test_monitor_on_the_wire():
    async with chat_service() as svc, clients(svc, "watcher") as (watcher,):
        await watcher.send("MONITOR + friend")
        assert (await watcher.numeric("731")).params[-1] == "friend"
        friend = await IRC.open(port_of(svc), "friend")
        try:
            await friend.register("friend")
            assert (await watcher.numeric("730")).params[-1] == "friend!~friend@127.0.0.1"
            await friend.send("QUIT :later")
            assert (await watcher.numeric("731")).params[-1] == "friend"
        finally:
            friend.close()


@pytest.fixture
def accounts(tmp_path: Path):
    from socketkit.accounts import AccountStore

    store = AccountStore(tmp_path / "accounts.db")
    store.add("late", "a long enough secret")
    yield store
    store.close()


async def test_account_notify_on_a_login_after_registration(accounts):
    async with chat_service(accounts=accounts) as svc, clients(svc, "watch", caps="account-notify") as (watch,):
        late = await IRC.open(port_of(svc), "late")
        try:
            await late.register("late")
            await watch.join("#a")
            await late.join("#a")
            await late.send("CAP REQ :sasl", "AUTHENTICATE PLAIN")
            await late.expect("AUTHENTICATE")
            await late.send("AUTHENTICATE " + base64.b64encode(b"\0late\0a long enough secret").decode())
            await late.numeric("903")
            acct = await watch.expect("ACCOUNT")
            assert nick_of(acct) == "late" and acct.params == ["late"]
        finally:
            late.close()
