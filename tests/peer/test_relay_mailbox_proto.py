"""The mailbox server's sans-I/O machine (proto/wormhole_server.py + wormhole_channels.py): the reference
server's rules, the limits, expiry, the journal, and garbage that never makes it raise."""

from __future__ import annotations

import json
import random
import string
import weakref

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socketkit.peer.relay_store import RelayStore
from socketkit.proto.wormhole_channels import Channels, MailboxLimits
from socketkit.proto.wormhole_server import MailboxServer, Send

APP = "lothar.com/wormhole/text-or-file-xfer"
DOCUMENTED = {"welcome", "ack", "pong", "nameplates", "allocated", "claimed", "released", "message", "closed",
              "error"}


_INBOXES: weakref.WeakKeyDictionary[MailboxServer, dict[int, list[dict]]] = weakref.WeakKeyDictionary()


class Client:
    """One connection to the machine, with the messages it got decoded."""

    def __init__(self, server: MailboxServer, cid: int, address: str = "10.0.0.1", now: float = 1000.0):
        self.server, self.cid = server, cid
        # one inbox per server, shared by its clients: what one sends may be for another
        self.inbox: dict[int, list[dict]] = _INBOXES.setdefault(server, {})
        self.deliver(server.connect(cid, now, address, 5555))

    def deliver(self, out: list[Send]) -> None:
        for send in out:
            self.inbox.setdefault(send.cid, []).append(json.loads(send.text))

    def send(self, now: float = 1000.0, **msg) -> list[dict]:
        """Send one message; return what this connection got for it (the ack first)."""
        before = len(self.inbox.get(self.cid, []))
        self.deliver(self.server.receive(self.cid, json.dumps(msg), now))
        return self.inbox.get(self.cid, [])[before:]

    def bind(self, side: str, now: float = 1000.0) -> None:
        got = self.send(now, type="bind", appid=APP, side=side)
        assert [m["type"] for m in got] == ["ack"]


def one(got: list[dict], kind: str) -> dict:
    assert got[0]["type"] == "ack", got
    assert [m["type"] for m in got[1:]] == [kind], got
    return got[1]


def error(got: list[dict]) -> str:
    return one(got, "error")["error"]


@pytest.fixture
def server() -> MailboxServer:
    return MailboxServer(rng=random.Random(7))


# -- the conversation ---------------------------------------------------------------------------------
def test_welcome_carries_motd_and_the_clients_address():
    server = MailboxServer(welcome={"motd": "hi"})
    c = Client(server, 1, "127.0.0.1")
    welcome = c.inbox[1][0]
    assert welcome == {"type": "welcome", "server_tx": 1000.0,
                       "welcome": {"motd": "hi", "your-address": {"port": 5555, "ipv4": "127.0.0.1"}}}
    c6 = Client(server, 2, "::1")
    assert c6.inbox[2][0]["welcome"]["your-address"] == {"port": 5555, "ipv6": "::1"}
    mapped = Client(server, 3, "::ffff:10.1.2.3")
    assert mapped.inbox[3][0]["welcome"]["your-address"]["ipv4"] == "10.1.2.3"


def test_every_message_is_acked_with_its_id_and_ping_needs_no_bind(server):
    c = Client(server, 1)
    got = c.send(type="ping", ping=5, id="x1")
    assert got == [{"type": "ack", "id": "x1", "server_tx": 1000.0}, {"type": "pong", "pong": 5, "server_tx": 1000.0}]
    assert error(c.send(type="list")) == "must bind first"
    assert error(c.send(type="frobnicate")) == "must bind first"
    c.bind("aaa")
    assert error(c.send(type="frobnicate")) == "unknown type"
    assert error(c.send(type="bind", appid=APP, side="b")) == "already bound"


def test_bad_input_gets_an_error_with_the_original(server):
    c = Client(server, 1)
    got = c.send(nothing="here")
    assert got == [{"type": "error", "error": "missing 'type'", "orig": {"nothing": "here"}, "server_tx": 1000.0}]
    c.deliver(server.receive(1, "{not json", 1000.0))
    assert c.inbox[1][-1]["error"] == "message is not JSON" and c.inbox[1][-1]["orig"] == "{not json"
    c.deliver(server.receive(1, b"\xff\xfe", 1000.0))
    assert c.inbox[1][-1]["error"] == "message is not UTF-8"
    c.deliver(server.receive(1, "[1, 2]", 1000.0))
    assert c.inbox[1][-1]["error"] == "message is not a JSON object"
    c.deliver(server.receive(1, '{"type": "ping", "ping": NaN}', 1000.0))
    assert c.inbox[1][-1]["error"] == "message is not JSON"
    assert error(c.send(type="bind", appid=APP)) == "bind requires 'side'"
    assert error(c.send(type="bind", side="a")) == "bind requires 'appid'"
    assert "string" in error(c.send(type="bind", appid=APP, side=7))
    assert "string" in error(c.send(type="bind", appid=APP, side="x" * 300))
    assert server.errors == 9 and server.refused == 0


def test_allocate_claim_open_add_and_both_sides_hear_every_message(server):
    a, b = Client(server, 1), Client(server, 2)
    a.bind("aaaa")
    b.bind("bbbb")
    name = one(a.send(type="allocate"), "allocated")["nameplate"]
    assert name in {str(i) for i in range(1, 10)}
    assert error(a.send(type="allocate")) == "you already allocated one, don't be greedy"
    assert one(b.send(type="list"), "nameplates")["nameplates"] == [{"id": name}]
    mailbox = one(a.send(type="claim", nameplate=name), "claimed")["mailbox"]
    assert one(b.send(type="claim", nameplate=name), "claimed")["mailbox"] == mailbox
    assert len(mailbox) == 13 and set(mailbox) <= set(string.ascii_lowercase + "234567")
    assert a.send(type="open", mailbox=mailbox)[1:] == []
    a.send(1001.0, type="add", phase="pake", body="abcd", id="m1")
    # b opens later: the stored message comes at once, then the live ones, to both listeners
    got = b.send(1002.0, type="open", mailbox=mailbox)
    assert got[1] == {"type": "message", "side": "aaaa", "phase": "pake", "body": "abcd", "server_rx": 1001.0,
                      "id": "m1", "server_tx": 1002.0}
    b.send(1003.0, type="add", phase="pake", body="ef01")
    for c in (a, b):
        assert c.inbox[c.cid][-1]["phase"] == "pake" and c.inbox[c.cid][-1]["side"] == "bbbb"
    # release frees the nameplate once both sides let go; the mailbox stays
    assert one(a.send(type="release"), "released") and one(b.send(type="release", nameplate=name), "released")
    assert one(b.send(type="list"), "nameplates")["nameplates"] == []
    assert server.stats()["mailboxes"] == 1
    assert one(a.send(type="close", mood="happy"), "closed")
    assert server.stats()["mailboxes"] == 1  # b still has it open
    assert one(b.send(type="close", mood="happy"), "closed")
    assert server.stats()["mailboxes"] == 0 and server.stats()["messages"] == 0
    usage = server.take_changes().usage
    assert {(u.kind, u.result) for u in usage} == {("nameplate", "happy"), ("mailbox", "happy")}


def test_per_connection_rules_as_the_reference(server):
    a = Client(server, 1)
    a.bind("aaaa")
    assert error(a.send(type="claim")) == "claim requires 'nameplate'"
    assert error(a.send(type="claim", nameplate="12x")) == "nameplate must be a string of 1 to 40 digits"
    assert error(a.send(type="release")) == "release without nameplate must follow claim"
    assert error(a.send(type="add", phase="p", body="00")) == "must open mailbox before adding"
    assert error(a.send(type="close")) == "close without mailbox must follow open"
    assert error(a.send(type="open")) == "open requires 'mailbox'"
    one(a.send(type="claim", nameplate="42"), "claimed")
    assert error(a.send(type="claim", nameplate="43")) == "only one claim per connection"
    assert error(a.send(type="release", nameplate="43")) == "release and claim must use same nameplate"
    one(a.send(type="release"), "released")
    assert error(a.send(type="release")) == "only one release per connection"
    a.send(type="open", mailbox="mb1")
    assert error(a.send(type="open", mailbox="mb1")) == "only one open per connection"
    assert error(a.send(type="add", body="00")) == "missing 'phase'"
    assert error(a.send(type="add", phase="p")) == "missing 'body'"
    assert error(a.send(type="add", phase="p", body="xyz")) == "add 'body' must be a string of hex digits"
    assert error(a.send(type="close", mailbox="mb2")) == "open and close must use same mailbox"
    one(a.send(type="close"), "closed")
    assert error(a.send(type="close")) == "only one close per connection"


def test_third_side_is_crowded_and_not_recorded(server):
    sides = [Client(server, i) for i in (1, 2, 3)]
    for c, side in zip(sides, ("a", "b", "c"), strict=True):
        c.bind(side)
    one(sides[0].send(type="claim", nameplate="5"), "claimed")
    one(sides[1].send(type="claim", nameplate="5"), "claimed")
    assert error(sides[2].send(type="claim", nameplate="5")) == "crowded"
    mailbox = server.channels.nameplates[(APP, "5")].mailbox
    assert error(sides[2].send(type="open", mailbox=mailbox)) == "crowded"
    assert set(server.channels.mailboxes[(APP, mailbox)].sides) == {"a", "b"}
    # the two real sides end it: nothing left behind by the crowder
    for c in sides[:2]:
        c.send(type="open", mailbox=mailbox)
        one(c.send(type="close", mood="happy"), "closed")
    assert server.stats()["mailboxes"] == 0 and server.stats()["nameplates"] == 0


def test_a_released_side_cannot_reclaim_and_a_freed_nameplate_is_reused(server):
    a = Client(server, 1)
    a.bind("a")
    one(a.send(type="claim", nameplate="9"), "claimed")
    b = Client(server, 2)
    b.bind("b")
    one(b.send(type="claim", nameplate="9"), "claimed")
    one(a.send(type="release"), "released")
    a2 = Client(server, 3)
    a2.bind("a")
    assert error(a2.send(type="claim", nameplate="9")) == "reclaimed"
    one(b.send(type="release"), "released")
    assert (APP, "9") not in server.channels.nameplates
    c = Client(server, 4)
    c.bind("c")
    one(c.send(type="claim", nameplate="9"), "claimed")  # free again


def test_allocation_takes_the_shortest_free_ids_first():
    channels = Channels(rng=random.Random(1))
    names = [channels.allocate(APP, f"side{i}", f"10.0.0.{i % 200}", 1.0) for i in range(12)]
    assert sorted(names[:9], key=int) == [str(i) for i in range(1, 10)]
    assert all(10 <= int(n) <= 99 for n in names[9:])
    assert len(set(names)) == 12
    # another app id has its own namespace
    assert channels.allocate("other", "s", "x", 1.0) in {str(i) for i in range(1, 10)}


def test_a_connection_that_reconnects_keeps_its_claim_and_gets_the_messages(server):
    a = Client(server, 1)
    a.bind("a")
    mailbox = one(a.send(type="claim", nameplate="3"), "claimed")["mailbox"]
    a.send(type="open", mailbox=mailbox)
    a.send(type="add", phase="0", body="aa")
    server.disconnect(1, 1001.0)
    again = Client(server, 2)
    again.bind("a")
    assert one(again.send(type="claim", nameplate="3"), "claimed")["mailbox"] == mailbox
    got = again.send(type="open", mailbox=mailbox)
    assert [m["body"] for m in got[1:]] == ["aa"]


# -- limits -------------------------------------------------------------------------------------------
def test_per_client_and_total_limits_refuse_new_channels():
    server = MailboxServer(MailboxLimits(max_nameplates_per_client=2, max_mailboxes_per_client=3,
                                         max_nameplates=3, max_mailboxes=10), rng=random.Random(2))
    clients = [Client(server, i, "10.0.0.1") for i in range(4)]
    for i, c in enumerate(clients):
        c.bind(f"s{i}")
    one(clients[0].send(type="allocate"), "allocated")
    one(clients[1].send(type="claim", nameplate="77"), "claimed")
    assert "too many nameplates from your address" in error(clients[2].send(type="allocate"))
    # the same address may still open a bare mailbox (one more), then no more
    clients[2].send(type="open", mailbox="bare")
    assert "too many mailboxes from your address" in error(clients[3].send(type="open", mailbox="bare2"))
    other = Client(server, 10, "10.0.0.2")
    other.bind("o")
    one(other.send(type="claim", nameplate="78"), "claimed")
    third = Client(server, 11, "10.0.0.3")
    third.bind("t")
    assert "too many nameplates in use" in error(third.send(type="claim", nameplate="79"))
    # joining an existing nameplate is not creating one (a new connection: a refused claim used this one's)
    fourth = Client(server, 12, "10.0.0.3")
    fourth.bind("t")
    one(fourth.send(type="claim", nameplate="78"), "claimed")
    assert server.refused == 3


def test_message_limits_hold():
    limits = MailboxLimits(max_body=8, max_messages=3, max_mailbox_bytes=12, max_stored_bytes=20)
    server = MailboxServer(limits)
    a = Client(server, 1)
    a.bind("a")
    a.send(type="open", mailbox="m")
    assert "message body too large" in error(a.send(type="add", phase="0", body="00" * 5))
    for body in ("0000", "1111", "2222"):
        assert a.send(type="add", phase="0", body=body)[1]["type"] == "message"
    assert "mailbox is full: 3 messages" in error(a.send(type="add", phase="0", body="33"))
    b = Client(server, 2)
    b.bind("b")
    b.send(type="open", mailbox="n")
    b.send(type="add", phase="0", body="00000000")
    assert "no room for more messages" in error(b.send(type="add", phase="0", body="11"))
    c = Client(server, 3)
    c.bind("c")
    c.send(type="open", mailbox="n")
    assert server.channels.stored == 20
    limits2 = MailboxLimits(max_mailbox_bytes=6)
    s2 = MailboxServer(limits2)
    d = Client(s2, 1)
    d.bind("d")
    d.send(type="open", mailbox="m")
    d.send(type="add", phase="0", body="0000")
    assert "mailbox is full: 8 characters" in error(d.send(type="add", phase="0", body="0000"))


def test_big_refused_messages_are_not_echoed_whole():
    server = MailboxServer(MailboxLimits(max_body=10))
    a = Client(server, 1)
    a.bind("a")
    a.send(type="open", mailbox="m")
    got = a.send(type="add", phase="0", body="00" * 5000, id="big")
    assert got[1]["orig"] == {"type": "add", "id": "big"}


# -- expiry and persistence ---------------------------------------------------------------------------
def test_idle_channels_expire_unless_someone_listens():
    server = MailboxServer(MailboxLimits(expiry=600), rng=random.Random(3))
    a = Client(server, 1)
    a.bind("a")
    quiet = one(a.send(type="claim", nameplate="1"), "claimed")["mailbox"]
    b = Client(server, 2)
    b.bind("b")
    listened = one(b.send(type="claim", nameplate="2"), "claimed")["mailbox"]
    b.send(type="open", mailbox=listened)
    server.prune(1500.0)
    assert (APP, quiet) in server.channels.mailboxes
    server.prune(1700.0)  # 700 s after the last activity
    assert (APP, quiet) not in server.channels.mailboxes and (APP, "1") not in server.channels.nameplates
    assert (APP, listened) in server.channels.mailboxes
    server.disconnect(2, 1700.0)
    server.prune(2299.0)
    assert (APP, listened) in server.channels.mailboxes  # it was in use at 1700
    server.prune(2301.0)
    assert not server.channels.mailboxes
    results = [u.result for u in server.take_changes().usage]
    assert results.count("pruney") == 4


def test_the_journal_restores_the_same_state(tmp_path):
    server = MailboxServer(rng=random.Random(4))
    store = RelayStore(tmp_path / "r.db")
    a, b = Client(server, 1, "10.0.0.1"), Client(server, 2, "10.0.0.2")
    a.bind("a")
    b.bind("b")
    name = one(a.send(type="allocate"), "allocated")["nameplate"]
    mailbox = one(a.send(type="claim", nameplate=name), "claimed")["mailbox"]
    one(b.send(type="claim", nameplate=name), "claimed")
    a.send(type="open", mailbox=mailbox)
    a.send(type="add", phase="pake", body="00ff", id={"n": 1})
    a.send(type="add", phase="version", body="")
    b.send(type="open", mailbox="lonely")
    b.send(type="close", mood="scary")    # a whole mailbox life in the journal: created and deleted
    store.apply(server.take_changes())
    store.close()

    again = MailboxServer()
    store = RelayStore(tmp_path / "r.db")
    again.restore(*store.load())
    store.close()
    for attr in ("nameplates", "mailboxes"):
        assert set(getattr(again.channels, attr)) == set(getattr(server.channels, attr))
    mb, mb2 = server.channels.mailboxes[(APP, mailbox)], again.channels.mailboxes[(APP, mailbox)]
    assert mb2.messages == mb.messages and mb2.sides == mb.sides and mb2.size == mb.size
    assert again.channels.stored == server.channels.stored == 4
    c = Client(again, 1)
    c.bind("a")
    got = c.send(type="open", mailbox=mailbox)
    assert [(m["phase"], m["body"], m["id"]) for m in got[1:]] == [("pake", "00ff", {"n": 1}), ("version", "", None)]
    # owners came back too: the per-client count still holds
    assert again.channels._owned_nameplates == {"10.0.0.1": 1}


# -- properties ---------------------------------------------------------------------------------------
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                      max_size=3),
                           max_leaves=8)
commands = st.fixed_dictionaries(
    {"type": st.sampled_from(["ping", "bind", "list", "allocate", "claim", "release", "open", "add", "close",
                              "nonsense"])},
    optional={"appid": st.sampled_from([APP, "other"]) | json_values, "side": st.sampled_from(["a", "b", "c"]),
              "nameplate": st.sampled_from(["1", "2", "33"]) | json_values,
              "mailbox": st.sampled_from(["m1", "m2"]) | json_values, "phase": st.sampled_from(["0", "pake"]),
              "body": st.sampled_from(["", "00", "abcdef", "zz"]) | json_values, "mood": json_values,
              "id": json_values, "ping": json_values})
garbage = st.one_of(st.binary(max_size=64), st.text(max_size=64), commands.map(json.dumps),
                    json_values.map(json.dumps), st.integers(0, 80).map(lambda n: "[" * n + "]" * n),
                    st.just('{"type": "ping", "ping": ' + "[" * 5000 + "]" * 5000 + "}"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans(), garbage | commands.map(json.dumps)), max_size=40))
def test_any_input_gets_only_documented_answers_and_limits_hold(steps):
    limits = MailboxLimits(max_nameplates=3, max_mailboxes=4, max_nameplates_per_client=2,
                           max_mailboxes_per_client=3, max_body=4, max_messages=3, max_mailbox_bytes=8,
                           max_stored_bytes=12)
    server = MailboxServer(limits, rng=random.Random(0))
    connected: set[int] = set()
    now = 1000.0
    for cid, reconnect, text in steps:
        now += 1
        if cid not in connected or reconnect:
            if cid in connected:
                assert server.disconnect(cid, now) == []
            out = server.connect(cid, now, f"10.0.0.{cid % 2}")
            connected.add(cid)
        else:
            out = server.receive(cid, text, now)
        for send in out:
            assert send.cid in connected
            msg = json.loads(send.text)
            assert msg["type"] in DOCUMENTED and msg["server_tx"] == now
        channels = server.channels
        assert len(channels.nameplates) <= limits.max_nameplates
        assert len(channels.mailboxes) <= limits.max_mailboxes
        assert all(n <= limits.max_nameplates_per_client for n in channels._owned_nameplates.values())
        assert all(n <= limits.max_mailboxes_per_client for n in channels._owned_mailboxes.values())
        assert channels.stored == sum(mb.size for mb in channels.mailboxes.values()) <= limits.max_stored_bytes
        for mb in channels.mailboxes.values():
            assert len(mb.messages) <= limits.max_messages and mb.size <= limits.max_mailbox_bytes
            assert len(mb.sides) <= 2
        for np in channels.nameplates.values():
            assert (np.app, np.mailbox) in channels.mailboxes and len(np.sides) <= 2
    server.prune(now + 10_000)
    assert not server.channels.mailboxes or all(mb.listeners for mb in server.channels.mailboxes.values())
