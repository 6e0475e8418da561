"""ChatCore: flood control as an operator sets it (rate, burst, queue, exempt networks and accounts),
the output queues the service flushes, and the fast paths of the hot path against the general code."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_core_harness import Net, room

from socketkit.chat.core import _FAST_MESSAGE, ChatCore, ChatLimits
from socketkit.proto.irc import Message, parse


# -- ChatLimits ----------------------------------------------------------------------------------------
def test_flood_defaults_are_todays():
    lim = ChatLimits()
    assert (lim.flood_burst, lim.flood_rate, lim.flood_queue, lim.flood_exempt, lim.flood_exempt_accounts) == (
        10, 2.0, 50, (), ())


@pytest.mark.parametrize("bad, why", [
    ({"flood_rate": 0}, "flood_rate"), ({"flood_rate": float("inf")}, "flood_rate"),
    ({"flood_burst": 0}, "flood_burst"), ({"flood_burst": True}, "flood_burst"), ({"flood_queue": -1}, "flood_queue"),
    ({"flood_exempt": ("10.0.0/8",)}, "not an address or CIDR"), ({"flood_exempt": "10.0.0.0/8"}, "tuples"),
])
def test_flood_settings_are_checked(bad, why):
    with pytest.raises(ValueError, match=why):
        ChatLimits(**bad)


def test_rate_and_burst_as_set():
    net = Net(limits=ChatLimits(flood_burst=3, flood_rate=10, flood_queue=100))
    net.register(1, "a")
    net.clock.advance(10)
    net.send(1, *[f"PING :{i}" for i in range(8)])
    assert [m.params[-1] for m in net.take(1)] == ["0", "1", "2"]  # the burst
    net.clock.advance(0.25)  # 10 lines a second: 2.5 tokens
    net.tick()
    assert [m.params[-1] for m in net.take(1)] == ["3", "4"]
    net.clock.advance(1)
    net.tick()
    assert [m.params[-1] for m in net.take(1)] == ["5", "6", "7"]


def test_queue_bound_as_set():
    net = Net(limits=ChatLimits(flood_burst=3, flood_rate=1, flood_queue=3))
    net.register(1, "a")
    net.clock.advance(10)
    net.send(1, *["PING x"] * 6)  # 3 answered, 3 waiting: at the bound, still connected
    assert 1 not in net.closed and len(net.take(1)) == 3
    net.send(1, "PING x")
    assert net.closed[1] == "Excess Flood"


def test_exempt_network_and_account():
    limits = ChatLimits(flood_burst=2, flood_rate=1, flood_queue=2, flood_exempt=("10.1.0.0/16", "2001:db8::/32"),
                        flood_exempt_accounts=("Bridge",))
    net = Net(limits=limits, authenticate=lambda user, password: user if password == "pw" else None)
    net.register("lan", "lan", host="10.1.2.3")
    net.register("v6", "v6", host="2001:db8::7")
    net.register("mapped", "mapped", host="::ffff:10.1.9.9")
    net.register("other", "other", host="10.2.0.1")
    for cid in ("lan", "v6", "mapped"):
        net.send(cid, *[f"PING :{i}" for i in range(40)])
        assert len(net.take(cid)) == 40 and cid not in net.closed, cid
    net.send("other", *[f"PING :{i}" for i in range(40)])
    assert net.closed["other"] == "Excess Flood"
    # An account exempt once it logs in (SASL after registration; the account name is case-insensitive).
    net.register("bot", "bot", host="192.0.2.1")
    net.clock.advance(10)
    net.send("bot", "CAP REQ sasl", "AUTHENTICATE PLAIN", "AUTHENTICATE " + base64.b64encode(b"\0bridge\0pw").decode())
    net.clock.advance(5)
    net.tick()  # the last of those lines waited for a token
    assert net.core.lookup_nick("bot").exempt
    net.clock.advance(10)
    net.send("bot", *[f"PRIVMSG bot :{i}" for i in range(60)])
    assert "bot" not in net.closed


# -- output queues ------------------------------------------------------------------------------------
def test_queue_output_leaves_lines_with_the_clients():
    core = ChatCore(queue_output=True, limits=ChatLimits(flood_burst=100), motd=[])
    for cid, nick in ((1, "alice"), (2, "bob")):
        core.connect(cid)
        core.receive(cid, f"NICK {nick}".encode())
        assert core.receive(cid, f"USER {nick} 0 * :{nick}".encode()) == []  # lines stay queued
        core.receive(cid, b"JOIN #q")
    for c in core.take_pending():
        c.out.clear()
    out = core.receive(1, b"PRIVMSG #q :one")
    out += core.receive(1, b"PRIVMSG #q :two")
    assert out == []
    pending = core.take_pending()
    assert [c.nick for c in pending] == ["bob"]  # listed once, with both lines in order
    assert pending[0].out == [b":alice!~alice@127.0.0.1 PRIVMSG #q :one\r\n",
                              b":alice!~alice@127.0.0.1 PRIVMSG #q :two\r\n"]
    pending[0].out.clear()  # the taker writes and clears each queue (the service's _flush)
    # one bytes object shared by every recipient of a line
    core.connect(3)
    core.receive(3, b"NICK carol")
    core.receive(3, b"USER c 0 * :c")
    core.receive(3, b"JOIN #q")
    for c in core.take_pending():
        c.out.clear()
    core.receive(1, b"PRIVMSG #q :shared")
    lines = [c.out[-1] for c in core.take_pending()]
    assert len(lines) == 2 and lines[0] is lines[1]
    # Close comes as an item; the client's last lines (ERROR) are still in its queue
    out = core.receive(2, b"QUIT :bye")
    assert [type(o).__name__ for o in out] == ["Close"]


# -- fast paths against the general code ----------------------------------------------------------------
_targets = st.one_of(st.from_regex(r"#[a-z0-9_\-]{1,20}", fullmatch=True), st.from_regex(r"[a-z][a-z0-9]{0,15}",
                                                                                         fullmatch=True))
_texts = st.text(st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["PRIVMSG", "NOTICE"]), _targets, _texts)
def test_fast_message_parse_equals_parse(command, target, text):
    line = f"{command} {target} :{text}".encode()
    m = _FAST_MESSAGE.match(line)
    assert m is not None
    assert Message({}, None, m[1].decode(), [m[2].decode(), m[3].decode()]) == parse(line)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=80))
def test_fast_message_never_takes_what_parse_reads_differently(raw):
    line = b"PRIVMSG " + raw
    m = _FAST_MESSAGE.match(line)
    if m is None:
        return
    try:
        fast = Message({}, None, m[1].decode(), [m[2].decode(), m[3].decode()])
    except UnicodeDecodeError:
        return  # the core falls back to parse() then
    assert fast == parse(line)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_texts, st.sampled_from(["PRIVMSG", "NOTICE"]))
def test_relay_line_equals_message_format(text, command):
    net = Net()
    room(net, "#f", "alice", "bob")
    net.send("alice", f"{command} #f :{text}".encode())
    got = net.inbox["bob"]
    if not text and command == "PRIVMSG":
        assert got == [] and net.codes("alice") == ["412"]
        return
    if not text:
        assert got == []
        return
    assert got == [Message({}, "alice!~alice@127.0.0.1", command, ["#f", text]).format(trailing=True)]


def test_relay_refuses_line_breaks_from_another_node():
    net = Net()
    room(net, "#f", "alice", "bob")
    bob = net.core.lookup_nick("bob")
    with pytest.raises(Exception, match="CR, LF or NUL"):
        net.core.relay([bob], "x!y@z", "PRIVMSG", ["#f", "evil\r\nQUIT"])
