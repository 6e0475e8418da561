"""proto/transit.py: the transit handshakes and both record layers, byte for byte against magic-wormhole's own
transit code (its handshake builders and its Connection, driven without a reactor), and against hostile or
unlucky byte streams: any split, any flipped bit, records reordered, truncated or replayed."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.secret import SecretBox
from wormhole import transit as wt

from socketkit.errors import PeerError, PeerProtocolError
from socketkit.proto.transit import (
    MAX_RECORD,
    RECORD_LAYERS,
    AesGcmRecords,
    Handshake,
    HandshakeFailed,
    RecordReader,
    SecretBoxRecords,
    receiver_line,
    relay_line,
    sender_line,
)
from socketkit.proto.wormhole import hkdf

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = bytes(range(32))
keys = st.binary(min_size=32, max_size=32)
some_keys = st.sampled_from([KEY, bytes(32), b"\xff" * 32])  # where the key's value does not matter
sides = st.text(alphabet="0123456789abcdef", min_size=16, max_size=16)
LAYERS = [SecretBoxRecords, AesGcmRecords]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# -- handshake lines and wormhole's Connection ---------------------------------------------------------
@given(keys, sides)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_lines_equal_wormholes(key, side):
    assert sender_line(key) == wt.build_sender_handshake(key)
    assert receiver_line(key) == wt.build_receiver_handshake(key)
    assert relay_line(key, side) == wt.build_sided_relay_handshake(key, side)


class Wire:
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost = False

    def write(self, data: bytes) -> None:
        self.data += data

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        self.lost = True

    def take(self) -> bytes:
        out, self.data = bytes(self.data), bytearray()
        return out


def wormhole_owner(key: bytes, is_sender: bool):
    owner = (wt.TransitSender if is_sender else wt.TransitReceiver)(None, no_listen=True, reactor=object())
    owner.set_transit_key(key)
    return owner


def wormhole_connection(key: bytes, is_sender: bool, relay_side: str | None = None, owner=None):
    """magic-wormhole's transit Connection with its owner (TransitSender/TransitReceiver), without a reactor."""
    owner = owner or wormhole_owner(key, is_sender)
    relay = wt.build_sided_relay_handshake(key, relay_side) if relay_side else None
    conn = wt.Connection(owner, relay, 0, "test")
    conn.transport = Wire()
    conn.startNegotiation()
    return owner, conn


def run_against_wormhole(ours_is_sender: bool, relay: bool):
    key = os.urandom(32)
    ours = Handshake(key, ours_is_sender, "0123456789abcdef" if relay else None)
    owner, theirs = wormhole_connection(key, not ours_is_sender, "fedcba9876543210" if relay else None)
    to_them, to_us = ours.take(), theirs.transport.take()
    if relay:  # a relay saw both tokens (equal: same key) and said ok to each
        assert to_them.startswith(b"please relay ") and to_us.startswith(b"please relay ")
        assert to_them.split(b" for side")[0] == to_us.split(b" for side")[0]
        assert ours.state == "relay" and to_them.endswith(b"\n") and b"transit" not in to_them
        assert ours.feed(b"ok\n") == b""
        theirs.dataReceived(b"ok\n")
        to_them, to_us = ours.take(), theirs.transport.take()
    assert to_them == (sender_line(key) if ours_is_sender else receiver_line(key))
    assert to_us == (receiver_line(key) if ours_is_sender else sender_line(key))
    assert ours.feed(to_us) == b""
    theirs.dataReceived(to_them)
    if ours_is_sender:
        assert ours.state == "ready" and theirs.state == "wait-for-decision"
        ours.decide(True)
        theirs.dataReceived(ours.take())
    else:
        assert ours.state == "wait_go" and theirs.state == "records"  # wormhole's sender said go at once
        assert ours.feed(theirs.transport.take()) == b""
    assert ours.state == "done" and theirs.state == "records"
    return key, ours, theirs


@pytest.mark.parametrize("relay", [False, True])
@pytest.mark.parametrize("ours_is_sender", [False, True])
def test_handshake_and_records_against_wormholes_connection(ours_is_sender, relay):
    key, ours, theirs = run_against_wormhole(ours_is_sender, relay)
    layer = SecretBoxRecords(key, ours_is_sender)
    # theirs -> ours
    for i in range(3):
        theirs.send_record(b"from wormhole %d" % i)
    reader = RecordReader()
    assert [layer.open(r) for r in reader.feed(theirs.transport.take())] == [b"from wormhole %d" % i
                                                                              for i in range(3)]
    # ours -> theirs
    got = []
    theirs.receive_record().addCallback(got.append)
    theirs.receive_record().addCallback(got.append)
    theirs.dataReceived(b"".join(layer.seal(b"from us 0") + layer.seal(b"")))
    assert got == [b"from us 0", b""]


def test_wormhole_sender_says_nevermind_to_a_second_connection():
    key = os.urandom(32)
    owner, first = wormhole_connection(key, True)
    first.dataReceived(receiver_line(key))  # the first wins
    assert first.state == "records"
    second = wormhole_connection(key, True, owner=owner)[1]
    ours = Handshake(key, False)
    second.dataReceived(ours.take())
    said = second.transport.take()
    assert said == sender_line(key) + b"nevermind\n"
    assert ours.feed(said[:-4]) == b"" and ours.state == "wait_go"
    with pytest.raises(HandshakeFailed, match="another connection"):
        ours.feed(said[-4:])


def test_wormhole_refuses_our_line_under_another_key():
    owner, theirs = wormhole_connection(os.urandom(32), False)
    theirs.dataReceived(sender_line(os.urandom(32)))
    assert theirs.state == "hung up" and theirs.transport.lost


# -- the handshake machine ---------------------------------------------------------------------------------
def incoming(key: bytes, is_sender: bool, relay: bool) -> bytes:
    """Everything the other end (and relay) sends up to the end of the handshake."""
    ok = b"ok\n" if relay else b""
    return ok + (receiver_line(key) if is_sender else sender_line(key) + b"go\n")


@given(some_keys, st.booleans(), st.booleans(), st.lists(st.integers(0, 200), max_size=8),
       st.binary(max_size=300), st.integers(0, 9000))
@FAST
def test_valid_handshake_split_anywhere(key, is_sender, relay, cuts, rest, big):
    rest += b"R" * big  # records right behind the handshake, in the same read: may be far over 4096
    hs = Handshake(key, is_sender, "0123456789abcdef" if relay else None)
    first = hs.take()
    assert first == (relay_line(key, "0123456789abcdef") if relay else
                     sender_line(key) if is_sender else receiver_line(key))
    returned = b""
    sent = b""
    for chunk in split(incoming(key, is_sender, relay) + rest, cuts):
        returned += hs.feed(chunk)
        sent += hs.take()
    assert hs.state == ("ready" if is_sender else "done")
    assert returned == rest
    assert sent == ((sender_line(key) if is_sender else receiver_line(key)) if relay else b"")
    if is_sender:
        hs.decide(True)
        assert hs.take() == b"go\n" and hs.state == "done"
        assert hs.feed(b"more") == b"more"


def test_handshake_then_records_in_one_large_read():
    # the I/O layer reads 4096 bytes at a time: a partial line already buffered plus one full read
    line = sender_line(KEY)
    hs = Handshake(KEY, False)
    assert hs.feed(line[:50]) == b""
    data = line[50:] + b"go\n" + b"x" * 4096
    assert hs.feed(data[:4096]) == data[len(line) - 50 + 3:4096]
    assert hs.state == "done"


@given(some_keys, st.booleans(), st.booleans(), st.integers(0, 200), st.binary(max_size=200),
       st.lists(st.integers(0, 400), max_size=6))
@FAST
def test_arbitrary_bytes_raise_only_handshake_failed(key, is_sender, relay, good, tail, cuts):
    expected = incoming(key, is_sender, relay)
    data = expected[:good] + tail  # a valid start (of any length), then anything
    hs = Handshake(key, is_sender, "0123456789abcdef" if relay else None)
    returned = b""
    try:
        for chunk in split(data, cuts):
            returned += hs.feed(chunk)
    except HandshakeFailed:
        # refused exactly when what came diverged from the expected lines
        assert not expected.startswith(data[: len(expected)])
        return
    assert expected.startswith(data[: len(expected)])
    if len(data) >= len(expected):
        assert hs.state == ("ready" if is_sender else "done") and returned == data[len(expected):]
    else:
        assert hs.state in ("relay", "mine", "wait_go") and returned == b""


@given(some_keys, st.booleans(), st.booleans(), st.integers(0, 10_000), st.integers(0, 7),
       st.lists(st.integers(0, 200), max_size=6))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_flipped_bit_in_the_handshake_is_refused(key, is_sender, relay, pos, bit, cuts):
    data = bytearray(incoming(key, is_sender, relay))
    pos %= len(data)
    data[pos] ^= 1 << bit
    hs = Handshake(key, is_sender, "0123456789abcdef" if relay else None)
    with pytest.raises(HandshakeFailed):
        for chunk in split(bytes(data), cuts):
            hs.feed(chunk)


def test_handshake_states_and_failures():
    other = os.urandom(32)
    with pytest.raises(HandshakeFailed):
        Handshake(KEY, True).feed(receiver_line(other))
    with pytest.raises(HandshakeFailed):  # the sender's line sent back to the sender (a reflection)
        Handshake(KEY, True).feed(sender_line(KEY))
    with pytest.raises(HandshakeFailed):
        Handshake(KEY, True, "0123456789abcdef").feed(b"no\n")
    with pytest.raises(HandshakeFailed):
        Handshake(KEY, False).feed(sender_line(KEY) + b"gone")
    with pytest.raises(HandshakeFailed, match="another connection"):
        Handshake(KEY, False).feed(sender_line(KEY) + b"nevermind\n")
    hs = Handshake(KEY, False)
    assert hs.feed(sender_line(KEY) + b"never") == b"" and hs.state == "wait_go"
    with pytest.raises(HandshakeFailed):
        hs.decide(True)  # only the sender decides
    hs = Handshake(KEY, True)
    assert hs.take() == sender_line(KEY)
    with pytest.raises(HandshakeFailed, match="decide"):
        hs.decide(True)  # too early
    hs.feed(receiver_line(KEY))
    hs.decide(False)
    assert hs.take() == b"nevermind\n" and hs.state == "abandoned"
    with pytest.raises(HandshakeFailed):
        hs.decide(True)
    assert hs.feed(b"x" * 100) == b""
    with pytest.raises(HandshakeFailed, match="4096"):
        hs.feed(b"x" * 4096)  # a loser that keeps talking is cut off


def test_relay_line_waits_for_ok():
    hs = Handshake(KEY, True, "0123456789abcdef")
    assert hs.take() == relay_line(KEY, "0123456789abcdef")
    assert hs.feed(b"o") == b"" and hs.take() == b"" and hs.state == "relay"
    assert hs.feed(b"k\n") == b"" and hs.take() == sender_line(KEY) and hs.state == "mine"


# -- records ----------------------------------------------------------------------------------------------
@given(st.lists(st.binary(max_size=200), max_size=6), st.booleans())
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_secretbox_frames_equal_wormholes_send_record(records, is_sender):
    key = os.urandom(32)
    ours = SecretBoxRecords(key, is_sender)
    theirs = wt.Connection(wormhole_owner(key, is_sender), None, 0, "test")
    theirs.transport = Wire()
    theirs._negotiationSuccessful()
    for i, r in enumerate(records):
        frame = b"".join(ours.seal(r))
        theirs.send_record(r)
        assert frame == theirs.transport.take()
        assert frame[:4] == (len(frame) - 4).to_bytes(4, "big")
        assert frame[4:28] == i.to_bytes(24, "big")  # the record number, as the nonce
    # and the other direction opens them: wormhole's peer role
    peer = SecretBoxRecords(key, not is_sender)
    ours2 = SecretBoxRecords(key, is_sender)
    assert [peer.open(f) for f in RecordReader().feed(b"".join(b"".join(ours2.seal(r)) for r in records))] \
        == records


def test_secretbox_keys_are_wormholes():
    key = os.urandom(32)
    s, r = wormhole_owner(key, True), wormhole_owner(key, False)
    box = SecretBox(s._sender_record_key())
    assert SecretBoxRecords(key, False).open(bytes(box.encrypt(b"hi", bytes(24)))) == b"hi"
    box = SecretBox(r._sender_record_key())  # the receiver's sending key
    assert SecretBoxRecords(key, True).open(bytes(box.encrypt(b"back", bytes(24)))) == b"back"


def test_aesgcm_wire_format_and_directions():
    key = os.urandom(32)
    snd, rcv = AesGcmRecords(key, True), AesGcmRecords(key, False)
    k_s = hkdf(key, 32, b"socketkit/transit/aes256gcm/sender")
    k_r = hkdf(key, 32, b"socketkit/transit/aes256gcm/receiver")
    assert k_s != k_r
    length, box = frame_parts(snd.seal(b"hello"))
    assert length == (5 + 16).to_bytes(4, "big") and len(box) == 21
    assert AESGCM(k_s).decrypt(bytes(12), box, length) == b"hello"
    assert rcv.open(box) == b"hello"
    # the same plaintext under the same record number differs per direction
    back_len, back = frame_parts(rcv.seal(b"hello"))
    assert back != box and AESGCM(k_r).decrypt(bytes(12), back, back_len) == b"hello"
    # a record reflected back to its sender is refused
    with pytest.raises(PeerProtocolError):
        AesGcmRecords(key, True).open(box)
    with pytest.raises(PeerProtocolError):
        SecretBoxRecords(key, True).open(frame_parts(SecretBoxRecords(key, True).seal(b"x"))[1])
    assert RECORD_LAYERS == {"secretbox": SecretBoxRecords, "aes256gcm-v1": AesGcmRecords}


def frame_parts(parts: list) -> tuple[bytes, bytes]:
    """seal() gives buffers whose concatenation is the frame: (4-byte length, box)."""
    frame = b"".join(parts)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    return frame[:4], frame[4:]


def frames(layer_cls, records: list[bytes], key: bytes = KEY) -> list[bytes]:
    tx = layer_cls(key, True)
    return [b"".join(tx.seal(r)) for r in records]


def accept(layer_cls, stream: bytes, key: bytes = KEY) -> tuple[list[bytes], bool]:
    """What a receiver accepts from a byte stream before it stops; True when it stopped on an error."""
    rx, reader, got = layer_cls(key, False), RecordReader(), []
    try:
        for body in reader.feed(stream):
            got.append(rx.open(body))
    except PeerProtocolError:
        return got, True
    return got, False


records_st = st.lists(st.binary(max_size=100), min_size=1, max_size=5)


@pytest.mark.parametrize("layer", LAYERS)
@given(records=records_st, cuts=st.lists(st.integers(0, 2000), max_size=10))
@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_roundtrip_any_split(layer, records, cuts):
    stream = b"".join(frames(layer, records))
    reader, rx, got = RecordReader(), layer(KEY, False), []
    for chunk in split(stream, cuts):
        got += [rx.open(b) for b in reader.feed(chunk)]
    assert got == records and reader.pending == 0


@pytest.mark.parametrize("layer", LAYERS)
@given(records=records_st, data=st.data())
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_flipped_bit_is_refused(layer, records, data):
    stream = bytearray(b"".join(frames(layer, records)))
    bit = data.draw(st.integers(0, len(stream) * 8 - 1))
    stream[bit // 8] ^= 1 << (bit % 8)
    got, failed = accept(layer, bytes(stream))
    assert got == records[: len(got)]  # nothing altered was ever accepted
    starts = [0]
    for f in frames(layer, records):
        starts.append(starts[-1] + len(f))
    hit = max(i for i, s in enumerate(starts[:-1]) if s <= bit // 8)
    # the stream never completes: refused, or waiting for bytes that will not come (a length over
    # max_record is refused by the reader at once, dropping what it had cut in the same feed)
    assert len(got) <= hit < len(records)
    if bit // 8 >= starts[hit] + 4:  # the body, not the length prefix: refused outright
        assert failed and len(got) == hit


@pytest.mark.parametrize("layer", LAYERS)
@given(records=st.lists(st.binary(max_size=50), min_size=2, max_size=5), data=st.data())
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_reordered_replayed_truncated_are_refused(layer, records, data):
    fs = frames(layer, records)
    i = data.draw(st.integers(0, len(fs) - 2))
    j = data.draw(st.integers(i + 1, len(fs) - 1))
    swapped = fs[:i] + [fs[j]] + fs[i + 1:j] + [fs[i]] + fs[j + 1:]
    got, failed = accept(layer, b"".join(swapped))
    assert failed and got == records[:i]
    replayed = fs[: i + 1] + [fs[i]] + fs[i + 1:]
    got, failed = accept(layer, b"".join(replayed))
    assert failed and got == records[: i + 1]
    dropped = fs[:i] + fs[i + 1:]
    got, failed = accept(layer, b"".join(dropped))
    assert failed and got == records[:i]
    # a body cut short (with its length prefix made to match, as a forger would)
    body = fs[i][4:]
    cut = data.draw(st.integers(0, len(body) - 1))
    short = body[:cut]
    got, failed = accept(layer, b"".join(fs[:i]) + len(short).to_bytes(4, "big") + short)
    assert failed and got == records[:i]
    # a body with bytes added
    longer = body + data.draw(st.binary(min_size=1, max_size=8))
    got, failed = accept(layer, b"".join(fs[:i]) + len(longer).to_bytes(4, "big") + longer)
    assert failed and got == records[:i]


@pytest.mark.parametrize("layer", LAYERS)
def test_failed_open_keeps_the_counter(layer):
    tx, rx = layer(KEY, True), layer(KEY, False)
    good = frame_parts(tx.seal(b"one"))[1]
    bad = bytearray(good)
    bad[-1] ^= 1
    with pytest.raises(PeerProtocolError):
        rx.open(bytes(bad))
    assert rx.received == 0 and rx.open(good) == b"one" and rx.received == 1
    with pytest.raises(PeerProtocolError):
        rx.open(good)  # replayed
    with pytest.raises(PeerProtocolError):
        rx.open(b"")
    with pytest.raises(PeerProtocolError):
        rx.open(b"\x00" * (layer.overhead - 1))
    assert rx.open(frame_parts(tx.seal(b"two"))[1]) == b"two"


def test_other_transit_key_refused():
    for layer in LAYERS:
        with pytest.raises(PeerProtocolError):
            layer(os.urandom(32), False).open(frame_parts(layer(KEY, True).seal(b"x"))[1])


# -- the record reader -------------------------------------------------------------------------------------
@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(0, 3000), max_size=12))
@FAST
def test_reader_any_split_same_records(bodies, cuts):
    stream = b"".join(len(b).to_bytes(4, "big") + b for b in bodies)
    reader, got = RecordReader(), []
    for chunk in split(stream, cuts):
        got += reader.feed(chunk)
        assert all(isinstance(g, bytes) for g in got)
    assert got == bodies and reader.pending == 0


@given(st.integers(0, 5000), st.lists(st.integers(0, 8), max_size=3))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_reader_refuses_over_max_as_soon_as_the_length_arrives(size, cuts):
    reader = RecordReader(max_record=1000)
    header = size.to_bytes(4, "big")
    if size > 1000:
        with pytest.raises(PeerProtocolError, match="at most 1000"):
            for chunk in split(header, cuts):
                reader.feed(chunk)
    else:
        got = [r for chunk in split(header, cuts) for r in reader.feed(chunk)]
        got += reader.feed(b"z" * size)
        assert got == [b"z" * size] and reader.pending == 0


def test_reader_limits():
    assert RecordReader().max_record == MAX_RECORD >= (4 << 20) + SecretBoxRecords.overhead
    r = RecordReader(max_record=10)
    assert r.feed(b"\x00\x00\x00\x0a" + b"a" * 10 + b"\x00\x00") == [b"a" * 10] and r.pending == 2
    with pytest.raises(PeerProtocolError):
        r.feed(b"\x00\x0b")
    with pytest.raises(PeerProtocolError):
        RecordReader().feed(b"\xff\xff\xff\xff")
    assert issubclass(HandshakeFailed, PeerProtocolError) and issubclass(PeerProtocolError, PeerError)
