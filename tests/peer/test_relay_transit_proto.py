"""The transit relay's sans-I/O machine (proto/transit_relay.py): handshakes, pairing, deadlines, limits."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socketkit.proto.transit_relay import (
    BAD,
    IMPATIENT,
    OK,
    Close,
    Relay,
    Send,
    TransitLimits,
    TransitRelay,
)

TOKEN = b"a1" * 32
OTHER = b"b2" * 32


def hello(token: bytes = TOKEN, side: bytes | None = b"0123456789abcdef") -> bytes:
    return b"please relay " + token + (b" for side " + side if side is not None else b"") + b"\n"


def test_two_sides_with_one_token_are_paired_and_both_told_ok():
    relay = TransitRelay()
    assert relay.connect(1, 0.0, "10.0.0.1") == []
    assert relay.receive(1, hello(side=b"1" * 16), 0.0) == []
    assert relay.state(1) == "waiting"
    relay.connect(2, 1.0, "10.0.0.2")
    out = relay.receive(2, hello(side=b"2" * 16), 1.0)
    assert out == [Send(1, OK), Relay(1, 2), Send(2, OK), Relay(2, 1, b"")]
    assert relay.state(1) == relay.state(2) == "relaying"
    assert relay.stats()["relaying"] == 2 and relay.stats()["pairs"] == 1
    # bytes after pairing are the I/O layer's business
    assert relay.receive(1, b"data", 2.0) == []
    # one side leaving ends the pair
    assert relay.lost(1, 3.0) == [Close(1, "lost"), Close(2, "partner left")]
    assert relay.conns == {}


def test_the_handshake_may_come_in_pieces_and_the_old_form_pairs_with_anything():
    relay = TransitRelay()
    relay.connect(1, 0.0)
    line = hello(side=None)
    for i in range(len(line) - 1):
        assert relay.receive(1, line[i:i + 1], 0.0) == []
    assert relay.receive(1, line[-1:], 0.0) == []
    assert relay.state(1) == "waiting"
    relay.connect(2, 0.0)
    assert Send(2, OK) in relay.receive(2, hello(side=b"f" * 16), 0.0)


def test_same_side_does_not_pair_with_itself_and_redundant_ones_are_dropped():
    relay = TransitRelay()
    for cid in (1, 2):
        relay.connect(cid, 0.0)
        assert relay.receive(cid, hello(side=b"1" * 16), 0.0) == []
    relay.connect(3, 0.0)
    relay.receive(3, hello(OTHER, side=b"1" * 16), 0.0)   # another token: untouched
    relay.connect(4, 0.0)
    out = relay.receive(4, hello(side=b"2" * 16), 0.0)
    assert out == [Close(2, "redundant"), Send(1, OK), Relay(1, 4), Send(4, OK), Relay(4, 1, b"")]
    assert relay.state(3) == "waiting" and relay.stats()["redundant"] == 1


def test_garbage_gets_bad_handshake_and_a_close():
    for line in (b"hello\n", b"please relay short\n", hello(b"g" * 63 + b"!"), b"please relay " + TOKEN + b" \n",
                 hello()[:-1] + b"x\n", b"\xff" * 20 + b"\n"):
        relay = TransitRelay()
        relay.connect(1, 0.0)
        assert relay.receive(1, line, 0.0) == [Send(1, BAD), Close(1, "bad handshake")], line
    relay = TransitRelay()
    relay.connect(1, 0.0)
    assert relay.receive(1, b"x" * 1024, 0.0) == []
    assert relay.receive(1, b"x", 0.0) == [Send(1, BAD), Close(1, "bad handshake")]
    assert relay.stats()["bad_handshakes"] == 1


def test_bytes_before_ok_are_impatient_unless_the_partner_is_there():
    relay = TransitRelay()
    relay.connect(1, 0.0)
    assert relay.receive(1, hello() + b"too soon", 0.0) == [Send(1, IMPATIENT), Close(1, "impatient")]
    relay.connect(2, 0.0)
    relay.receive(2, hello(side=b"1" * 16), 0.0)
    assert relay.receive(2, b"x", 0.0) == [Send(2, IMPATIENT), Close(2, "impatient")]
    assert relay.stats()["waiting"] == 0
    # the second side's pipelined bytes go to the partner first (as the reference relays them)
    relay.connect(3, 0.0)
    relay.receive(3, hello(side=b"1" * 16), 0.0)
    relay.connect(4, 0.0)
    assert relay.receive(4, hello(side=b"2" * 16) + b"early", 0.0)[-1] == Relay(4, 3, b"early")


def test_deadlines_close_silent_and_lonely_connections():
    relay = TransitRelay(TransitLimits(handshake_timeout=5, wait_timeout=20))
    relay.connect(1, 0.0)
    relay.connect(2, 0.0)
    relay.receive(2, hello(), 3.0)
    relay.connect(3, 0.0)
    relay.receive(3, b"please", 1.0)
    assert relay.tick(4.9) == []
    assert relay.tick(5.0) == [Close(1, "handshake timeout"), Close(3, "handshake timeout")]
    assert relay.tick(22.9) == []
    assert relay.tick(23.0) == [Close(2, "no partner came")]
    relay.connect(4, 30.0)
    relay.receive(4, hello(), 30.0)  # the token is free again: 4 waits, it does not pair with a ghost
    assert relay.state(4) == "waiting"
    assert relay.stats()["handshake_timeouts"] == 2 and relay.stats()["lonely"] == 1


def test_connections_per_address_are_bounded():
    relay = TransitRelay(TransitLimits(max_per_address=2))
    assert relay.connect(1, 0.0, "10.0.0.1") == []
    assert relay.connect(2, 0.0, "10.0.0.1") == []
    out = relay.connect(3, 0.0, "10.0.0.1")
    assert out[-1] == Close(3, "max_per_address") and isinstance(out[0], Send)
    assert relay.connect(4, 0.0, "10.0.0.2") == []
    relay.lost(1, 1.0)
    assert relay.connect(5, 1.0, "10.0.0.1") == []
    assert relay.stats()["refused"] == 1


chunks = st.lists(st.one_of(st.binary(max_size=40), st.sampled_from([hello(), hello(side=None), hello(OTHER),
                                                                     hello(side=b"9" * 16), b"\n", b"please relay "])),
                  max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["connect", "data", "lost", "tick"]), chunks,
                          st.floats(0, 50)), max_size=40))
def test_any_input_gives_only_documented_events_and_the_books_balance(steps):
    limits = TransitLimits(max_per_address=3, handshake_timeout=10, wait_timeout=30)
    relay = TransitRelay(limits)
    now = 0.0
    live: set[int] = set()
    for cid, action, data, step in steps:
        now += step
        if action == "connect" and cid not in relay.conns:
            out = relay.connect(cid, now, f"10.0.0.{cid % 2}")
        elif action == "data":
            out = [event for chunk in data for event in relay.receive(cid, chunk, now)]
        elif action == "lost":
            out = relay.lost(cid, now)
        else:
            out = relay.tick(now)
        for event in out:
            assert type(event) in (Send, Close, Relay)
            if type(event) is Send:
                assert event.data in (OK, BAD, IMPATIENT) or event.data.startswith(b"too many")
        closed = {e.cid for e in out if type(e) is Close}
        live = set(relay.conns)
        assert not (closed & live)
        # every pair is mutual; every waiting one is registered under its token
        for cid_, conn in relay.conns.items():
            if conn.state == "relaying":
                assert relay.conns[conn.partner].partner == cid_
            if conn.state == "waiting":
                assert cid_ in relay._pending[conn.token]
            if conn.state == "handshake":
                assert now - conn.since < limits.handshake_timeout or action != "tick"
        counts: dict[str, int] = {}
        for conn in relay.conns.values():
            counts[conn.address] = counts.get(conn.address, 0) + 1
        assert counts == relay._per_address
        assert all(n <= limits.max_per_address for n in counts.values())
        assert sum(len(v) for v in relay._pending.values()) == relay.stats()["waiting"]
    assert live == set(relay.conns)
