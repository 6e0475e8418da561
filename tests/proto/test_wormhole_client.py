"""proto/wormhole.py: the mailbox-client machine, its keys and its codes, checked against magic-wormhole itself
(its HKDF, phase keys, word list and SPAKE2 usage) and against a second `Wormhole` through a small in-test
mailbox server; hostile server texts may only ever raise PeerError."""

from __future__ import annotations

import copy
import json
import random
import re
from functools import lru_cache

import pytest
import spake2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wormhole import _key as wkey
from wormhole import _wordlist as wwords
from wormhole import util as wutil
from wormhole.cli import cmd_receive, cmd_send

from socketkit.errors import PeerError, PeerProtocolError, WrongCodeError
from socketkit.proto import wormhole_words
from socketkit.proto.wormhole import (
    APPID,
    MAX_MESSAGE_BYTES,
    MAX_PHASES,
    TRANSIT_KEY_PURPOSE,
    Closed,
    CodeAllocated,
    KeyEstablished,
    Message,
    Verified,
    Welcome,
    Wormhole,
    choose_words,
    derive_phase_key,
    hkdf,
    seal,
    unseal,
    validate_code,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXACT = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # equal-to-wormhole checks of branch-free functions
CODE = "4-purple-sausages"


# -- a mailbox server, just enough of it ------------------------------------------------------------------
class Client:
    """One connection to the fake server: what the server queued for it, and what its machine said."""

    def __init__(self, server: FakeMailboxServer, wh: Wormhole) -> None:
        self.server, self.wh = server, wh
        self.inbox: list[str] = []
        self.events: list[object] = []
        self.sent: list[dict] = []
        self.error: Exception | None = None
        self.side: str | None = None
        self.mailbox: str | None = None

    def deliver(self, msg: dict) -> None:
        self.inbox.append(json.dumps(msg))

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


class FakeMailboxServer:
    """welcome first; allocate/claim/open/add/release/close; every `add` is stored and broadcast as a
    `message` to every side that opened the mailbox, the sender included (as the real server does)."""

    def __init__(self) -> None:
        self.next_nameplate = 3
        self.nameplates: dict[str, str] = {}
        self.stored: dict[str, list[dict]] = {}
        self.opened: dict[str, list[Client]] = {}
        self.clients: list[Client] = []
        self.hold_messages = False  # when set, `message`s wait in `held` instead of the inboxes
        self.held: list[tuple[Client, dict]] = []

    def connect(self, wh: Wormhole) -> Client:
        c = Client(self, wh)
        c.deliver({"type": "welcome", "welcome": {"motd": "test server"}})
        self.clients.append(c)
        return c

    def handle(self, c: Client, text: str) -> None:
        m = json.loads(text)
        c.sent.append(m)
        kind = m["type"]
        c.deliver({"type": "ack", "id": m["id"]})
        if kind == "bind":
            assert m["appid"] == c.wh.appid and c.side is None
            c.side = m["side"]
        elif kind == "allocate":
            nameplate = str(self.next_nameplate)
            self.next_nameplate += 1
            self.nameplates[nameplate] = f"mailbox-{nameplate}"
            c.deliver({"type": "allocated", "nameplate": nameplate})
        elif kind == "claim":
            mailbox = self.nameplates.setdefault(m["nameplate"], f"mailbox-{m['nameplate']}")
            c.deliver({"type": "claimed", "mailbox": mailbox})
        elif kind == "open":
            c.mailbox = m["mailbox"]
            self.opened.setdefault(c.mailbox, []).append(c)
            for old in self.stored.get(c.mailbox, []):
                self._message(c, old)
        elif kind == "add":
            assert c.mailbox is not None, "add before open"
            msg = {"type": "message", "side": c.side, "phase": m["phase"], "body": m["body"],
                   "id": m["id"], "server_rx": 0}
            self.stored.setdefault(c.mailbox, []).append(msg)
            for other in self.opened[c.mailbox]:
                self._message(other, msg)
        elif kind == "release":
            c.deliver({"type": "released"})
        elif kind == "close":
            assert m["mailbox"] == c.mailbox
            self.opened[c.mailbox].remove(c)
            c.deliver({"type": "closed"})
        else:
            raise AssertionError(f"unexpected {kind}")

    def _message(self, c: Client, msg: dict) -> None:
        if self.hold_messages:
            self.held.append((c, msg))
        else:
            c.deliver(msg)

    def pump(self) -> None:
        """Until nothing moves: each client's outgoing to the server, the server's texts to each client.
        A client whose machine raised stops (as its I/O layer would hang up)."""
        moved = True
        while moved:
            moved = False
            for c in self.clients:
                if c.error is not None:
                    continue
                for text in c.wh.take_outgoing():
                    self.handle(c, text)
                    moved = True
                while c.inbox and c.error is None:
                    moved = True
                    try:
                        c.events += c.wh.receive(c.inbox.pop(0))
                    except PeerError as e:
                        c.error = e


def pair(code_a: str = CODE, code_b: str = CODE, **kw) -> tuple[FakeMailboxServer, Client, Client]:
    server = FakeMailboxServer()
    a = server.connect(Wormhole(app_versions={"who": "a"}, **kw))
    b = server.connect(Wormhole(app_versions={"who": "b"}, **kw))
    a.wh.start(code=code_a)
    b.wh.start(code=code_b)
    server.pump()
    return server, a, b


# -- two of our machines through the server -------------------------------------------------------------
def test_same_code_key_verified_and_messages_in_order():
    server, a, b = pair()
    for c, other in ((a, b), (b, a)):
        assert c.error is None
        assert isinstance(c.events[0], Welcome) and c.events[0].info == {"motd": "test server"}
        assert [type(e) for e in c.events] == [Welcome, KeyEstablished, Verified]
        assert c.of(Verified)[0].app_versions == other.wh.app_versions
        assert c.wh.verified and c.wh.their_side == other.wh.side
    assert a.wh.key == b.wh.key and len(a.wh.key) == 32
    assert a.of(Verified)[0].verifier == b.of(Verified)[0].verifier
    assert a.wh.derive_key(TRANSIT_KEY_PURPOSE) == b.wh.derive_key(TRANSIT_KEY_PURPOSE)

    for i in range(5):
        a.wh.send(f"a{i}".encode())
    b.wh.send_json({"hello": "from b"})
    server.pump()
    assert b.of(Message) == [Message(i, f"a{i}".encode()) for i in range(5)]
    assert a.of(Message) == [Message(0, b'{"hello": "from b"}')]


def test_messages_delivered_out_of_order_come_out_in_order():
    server, a, b = pair()
    server.hold_messages = True
    for i in range(8):
        a.wh.send(b"m%d" % i)
    server.pump()
    to_b = [msg for c, msg in server.held if c is b]
    to_a = [msg for c, msg in server.held if c is a]  # a's own echoes
    assert len(to_b) == 8 and len(to_a) == 8
    random.Random(7).shuffle(to_b)
    seen = []
    for msg in to_b + to_b[:3]:  # and a few resends: ignored
        seen += b.wh.receive(json.dumps(msg))
    for msg in to_a:
        assert a.wh.receive(json.dumps(msg)) == []
    assert seen == [Message(i, b"m%d" % i) for i in range(8)]


def test_different_codes_both_refuse_on_the_version_message():
    server, a, b = pair(code_b="4-purple-sausagez")
    for c in (a, b):
        assert isinstance(c.error, WrongCodeError), c.events
        assert "key confirmation failed" in str(c.error)
        assert c.of(KeyEstablished) and not c.of(Verified) and not c.of(Message)
        assert c.wh.mood == "scared"
    assert a.wh.key != b.wh.key


def test_different_codes_messages_sent_early_are_never_delivered():
    server = FakeMailboxServer()
    a = server.connect(Wormhole())
    b = server.connect(Wormhole())
    a.wh.start(code="7-a-b")
    b.wh.start(code="7-a-c")
    for _ in range(200):  # each sends the moment its key exists, before the other's version is checked
        for c in (a, b):
            if c.wh.key is not None and c.wh._next_tx == 0:
                c.wh.send(b"secret")
        if all(c.error for c in (a, b)):
            break
        # one step at a time so the sends above interleave with the exchange
        for c in (a, b):
            for text in c.wh.take_outgoing():
                server.handle(c, text)
            if c.inbox and c.error is None:
                try:
                    c.events += c.wh.receive(c.inbox.pop(0))
                except PeerError as e:
                    c.error = e
    for c in (a, b):
        assert isinstance(c.error, WrongCodeError)
        assert not c.of(Message) and not c.of(Verified)


def test_allocate_path():
    server = FakeMailboxServer()
    a = server.connect(Wormhole())
    a.wh.start(allocate=True, words=4)
    server.pump()
    (allocated,) = a.of(CodeAllocated)
    assert re.fullmatch(r"[0-9]+-[a-z]+-[a-z]+-[a-z]+-[a-z]+", allocated.code)
    nameplate, *words = allocated.code.split("-")
    assert nameplate == "3" and a.wh.code == allocated.code and a.wh.nameplate == "3"
    assert [w in wormhole_words.ODD for w in words] == [True, False, True, False]
    assert [w in wormhole_words.EVEN for w in words] == [False, True, False, True]
    assert [m["type"] for m in a.sent] == ["bind", "allocate", "claim", "open", "add"]

    b = server.connect(Wormhole())
    b.wh.start(code=allocated.code)
    server.pump()
    assert a.of(Verified) and b.of(Verified)
    assert a.of(Verified)[0].verifier == b.of(Verified)[0].verifier


def test_allocate_default_two_words_and_a_stray_allocated_is_ignored():
    wh = Wormhole()
    wh.start(allocate=True)
    assert [json.loads(t)["type"] for t in wh.take_outgoing()] == ["bind", "allocate"]
    (ev,) = wh.receive(sm("allocated", nameplate="12"))
    nameplate, odd, even = ev.code.split("-")
    assert nameplate == "12" and odd in wormhole_words.ODD and even in wormhole_words.EVEN
    assert wh.receive(sm("allocated", nameplate="13")) == []  # a second one changes nothing
    assert wh.code == ev.code
    fresh = Wormhole()
    fresh.start(code=CODE)
    assert fresh.receive(sm("allocated", nameplate="5")) == []  # not asked for


def test_third_side_in_the_mailbox_raises():
    server, a, b = pair()
    intruder = Wormhole()
    server.connect(intruder)
    intruder.start(code=CODE)
    server.pump()
    assert isinstance(a.error, WrongCodeError) and "third party" in str(a.error)
    assert isinstance(b.error, WrongCodeError)


def test_own_echoes_are_ignored():
    wh = keyed_machine()
    mine = [json.loads(t) for t in wh.take_outgoing()]
    for m in mine:
        if m["type"] == "add":
            assert wh.receive(sm("message", side=wh.side, phase=m["phase"], body=m["body"])) == []
    # even an echo that would not decrypt for us (it is under our side's key) is no error
    assert wh.receive(sm("message", side=wh.side, phase="0", body="00" * 40)) == []


def test_nameplate_released_after_the_other_sides_first_message():
    wh = Wormhole(side="a" * 10)
    wh.start(code=CODE)
    wh.receive(sm("welcome", welcome={}))
    assert "release" not in types(wh)
    wh.receive(sm("claimed", mailbox="mb1"))
    out = [json.loads(t) for t in wh.take_outgoing()]
    assert [m["type"] for m in out] == ["open", "add"] and out[1]["phase"] == "pake"
    wh.receive(sm("message", side=wh.side, phase="pake", body=out[1]["body"]))  # our echo
    assert "release" not in types(wh)
    peer = RefPeer(CODE)
    peer.finish(out[1]["body"])
    assert wh.receive(peer.message_pake()) == [KeyEstablished()]
    out = [json.loads(t) for t in wh.take_outgoing()]
    assert [m["type"] for m in out] == ["release", "add"]
    assert out[0]["nameplate"] == "4" and out[1]["phase"] == "version"
    wh.receive(peer.message("version", b'{"app_versions": {}}'))
    assert "release" not in types(wh)  # once only


def test_close_then_released_and_closed_gives_closed_and_done():
    server, a, b = pair()
    a.wh.close("happy")
    out = [json.loads(t) for t in a.wh.take_outgoing()]
    assert [m["type"] for m in out] == ["close"]  # the nameplate went back when b spoke
    assert out[0]["mailbox"] == a.wh.mailbox and out[0]["mood"] == "happy"
    assert not a.wh.done
    assert a.wh.receive(sm("released")) == []
    assert not a.wh.done
    assert a.wh.receive(sm("closed")) == [Closed("happy")]
    assert a.wh.done
    a.wh.close("errory")  # twice: nothing more, the first mood stays
    assert a.wh.take_outgoing() == [] and a.wh.mood == "happy"


def test_close_through_the_server_before_the_other_side_came():
    server = FakeMailboxServer()
    a = server.connect(Wormhole())
    a.wh.start(code=CODE)
    server.pump()
    a.wh.close("lonely")
    server.pump()
    assert [m["type"] for m in a.sent][-2:] == ["release", "close"]
    assert a.of(Closed) == [Closed("lonely")] and a.wh.done


def test_close_before_anything_is_done_at_once():
    wh = Wormhole()
    wh.start()
    wh.take_outgoing()
    wh.close("lonely")
    assert wh.take_outgoing() == [] and wh.done


def test_send_before_key_and_second_code_refused():
    wh = Wormhole()
    wh.start(code=CODE)
    with pytest.raises(PeerError):
        wh.send(b"x")
    with pytest.raises(PeerError):
        wh.derive_key(b"x")
    with pytest.raises(PeerError):
        wh.set_code("5-a-b")


def test_bind_and_claim_are_what_the_reference_client_sends():
    wh = Wormhole(side="0123456789")
    wh.start(code=" 4-purple-sausages ")
    bind, claim = (json.loads(t) for t in wh.take_outgoing())
    assert bind["type"] == "bind" and bind["appid"] == APPID and bind["side"] == "0123456789"
    assert bind["client_version"][0] == "socketkit"
    assert claim == {"type": "claim", "nameplate": "4", "id": claim["id"]}
    assert wh.code == CODE
    ids = {bind["id"], claim["id"]}
    assert all(re.fullmatch(r"[0-9a-f]{4}", i) for i in ids)


def test_server_errors_and_welcome_errors_raise_peer_error():
    wh = Wormhole()
    wh.start(code=CODE)
    with pytest.raises(PeerError, match="refuses us: go away"):
        wh.receive(sm("welcome", welcome={"error": "go away"}))
    with pytest.raises(PeerError, match=r"crowded.*claim"):
        wh.receive(sm("error", error="crowded", orig={"type": "claim"}))
    assert wh.receive(sm("ack", id="1234")) == [] and wh.receive(sm("pong", pong=1)) == []
    assert wh.receive(sm("something-new", x=1)) == []


# -- magic-wormhole's own crypto on the other side -------------------------------------------------------
class RefPeer:
    """The other side, built from magic-wormhole's own functions as its Key and Receive machines use them."""

    def __init__(self, code: str, appid: str = APPID, side: str = "feedfacecafe") -> None:
        self.side = side
        self.sp = spake2.SPAKE2_Symmetric(wutil.to_bytes(code), idSymmetric=wutil.to_bytes(appid))
        self.pake_body = wutil.dict_to_bytes({"pake_v1": wutil.bytes_to_hexstr(self.sp.start())})
        self.key: bytes | None = None

    def message_pake(self) -> str:
        return sm("message", side=self.side, phase="pake", body=self.pake_body.hex())

    def finish(self, our_pake_hex: str) -> bytes:
        theirs = wutil.hexstr_to_bytes(wutil.bytes_to_dict(bytes.fromhex(our_pake_hex))["pake_v1"])
        self.key = self.sp.finish(theirs)
        return self.key

    def message(self, phase: str, plaintext: bytes) -> str:
        assert self.key is not None
        body = wkey.encrypt_data(wkey.derive_phase_key(self.key, self.side, phase), plaintext)
        return sm("message", side=self.side, phase=phase, body=bytes(body).hex())

    def open(self, our_side: str, phase: str, body_hex: str) -> bytes:
        assert self.key is not None
        return wkey.decrypt_data(wkey.derive_phase_key(self.key, our_side, phase), bytes.fromhex(body_hex))


def test_against_wormholes_own_spake2_phase_keys_and_verifier():
    wh = Wormhole(app_versions={"mine": 1})
    wh.start(code=CODE)
    wh.receive(sm("welcome", welcome={}))
    wh.receive(sm("claimed", mailbox="mb"))
    adds = {m["phase"]: m for m in map(json.loads, wh.take_outgoing()) if m["type"] == "add"}
    peer = RefPeer(CODE)
    key = peer.finish(adds["pake"]["body"])

    assert wh.receive(peer.message_pake()) == [KeyEstablished()]
    assert wh.key == key
    adds = {m["phase"]: m for m in map(json.loads, wh.take_outgoing()) if m["type"] == "add"}
    ours = wutil.bytes_to_dict(peer.open(wh.side, "version", adds["version"]["body"]))
    assert ours == {"app_versions": {"mine": 1}}

    their_versions = {"app_versions": {"theirs": [1, 2]}, "can-dilate": ["1"]}
    (ev,) = wh.receive(peer.message("version", wutil.dict_to_bytes(their_versions)))
    assert ev == Verified(wkey.derive_key(key, b"wormhole:verifier"), {"theirs": [1, 2]})

    wh.send(b"to them")
    (add,) = [json.loads(t) for t in wh.take_outgoing()]
    assert add["phase"] == "0" and peer.open(wh.side, "0", add["body"]) == b"to them"
    assert wh.receive(peer.message("0", b"to us")) == [Message(0, b"to us")]
    assert wh.receive(peer.message("dilate-1", b"{}")) == []  # phases we do not speak
    # the transit key: as wormhole's CLI derives it (its BUG339 app id, whatever app id it runs with)
    assert APPID == cmd_send.APPID == cmd_receive.APPID
    assert wh.derive_key(TRANSIT_KEY_PURPOSE) == wkey.derive_key(key, wutil.to_bytes(cmd_send.APPID + "/transit-key"))


def test_other_app_id_gives_another_key():
    wh = Wormhole(appid="example.com/other")
    wh.start(code=CODE)
    wh.receive(sm("claimed", mailbox="mb"))
    pake = next(m for m in map(json.loads, wh.take_outgoing()) if m.get("phase") == "pake")
    same = RefPeer(CODE, appid="example.com/other")
    other = RefPeer(CODE)
    assert same.finish(pake["body"]) != other.finish(pake["body"])
    wh.receive(same.message_pake())
    assert wh.key == same.key


def test_wrong_code_against_wormholes_spake2():
    wh = keyed_machine(peer_code="4-purple-sausagez")
    peer = wh._test_peer
    with pytest.raises(WrongCodeError):
        wh.receive(peer.message("version", b'{"app_versions": {}}'))
    assert wh.mood == "scared"


@given(st.binary(min_size=32, max_size=32), st.text(alphabet="0123456789abcdef", min_size=1, max_size=20),
       st.text(st.characters(max_codepoint=127), max_size=12))
@EXACT
def test_derive_phase_key_equals_wormholes(key, side, phase):
    assert derive_phase_key(key, side, phase) == wkey.derive_phase_key(key, side, phase)


@given(st.binary(min_size=1, max_size=64), st.integers(1, 255), st.binary(max_size=80))
@EXACT
def test_hkdf_equals_wormholes(key, length, info):
    assert hkdf(key, length, info) == wutil.HKDF(key, length, CTXinfo=info)
    assert hkdf(key, length, info) == wkey.derive_key(key, info, length)


@given(st.binary(max_size=300))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_seal_unseal_and_wormholes_encrypt_decrypt(plaintext):
    key = bytes(range(32))
    assert unseal(key, bytes(wkey.encrypt_data(key, plaintext))) == plaintext
    assert wkey.decrypt_data(key, seal(key, plaintext)) == plaintext
    assert seal(key, plaintext, nonce=b"\x01" * 24)[:24] == b"\x01" * 24
    assert unseal(bytes(32), seal(key, plaintext)) is None
    assert unseal(key, b"") is None and unseal(key, b"short") is None


# -- words and codes ---------------------------------------------------------------------------------------
def test_word_lists_equal_wormholes():
    even = [wwords.byte_to_even_word[bytes([i])].lower() for i in range(256)]
    odd = [wwords.byte_to_odd_word[bytes([i])].lower() for i in range(256)]
    assert wormhole_words.EVEN == even
    assert wormhole_words.ODD == odd
    assert set(even) == wwords.even_words_lowercase and set(odd) == wwords.odd_words_lowercase


@given(st.integers(1, 8), st.binary(min_size=8, max_size=8))
@EXACT
def test_choose_words_alternates_odd_then_even(count, seed):
    stream = iter(seed)
    code = choose_words(count, rand=lambda n: bytes([next(stream)]))
    words = code.split("-")
    assert len(words) == count
    for i, w in enumerate(words):
        table = wormhole_words.ODD if i % 2 == 0 else wormhole_words.EVEN
        assert w == table[seed[i]]
    # wormhole's completer accepts what we choose, word by word
    lister = wwords.PGPWordList()
    for i in range(count):
        prefix = "-".join(words[:i] + [words[i][:2]])
        assert any(c.rstrip("-") == "-".join(words[: i + 1]) for c in lister.get_completions(prefix, count))


def test_validate_code():
    assert validate_code(" 4-purple-sausages\n") == CODE
    assert validate_code("123-a") == "123-a"
    assert validate_code("4-cafe\u0301") == "4-caf\u00e9"  # NFC, as both sides must agree on the bytes
    for bad in ["", "  ", "4", "4-", "-a-b", "a-b", "4 -a", "4-a b", "4-a\tb", "x4-a", "4x-a", "\u0664-a",
                "4-" + "a" * 255]:
        with pytest.raises(PeerError):
            validate_code(bad)


# -- robustness: hostile texts from the mailbox server ------------------------------------------------------
def sm(kind: str, **fields) -> str:
    return json.dumps({"type": kind, **fields})


def types(wh: Wormhole) -> list[str]:
    return [json.loads(t)["type"] for t in wh.take_outgoing()]


def keyed_machine(peer_code: str = CODE) -> Wormhole:
    """A machine that has the key (their pake arrived), not yet their version; `_test_peer` is the peer."""
    wh = Wormhole(side="5151515151")
    wh.start(code=CODE)
    wh.receive(sm("welcome", welcome={}))
    wh.receive(sm("claimed", mailbox="mb"))
    pake = next(m for m in map(json.loads, wh.take_outgoing()) if m.get("phase") == "pake")
    peer = RefPeer(peer_code)
    peer.finish(pake["body"])
    wh.receive(peer.message_pake())
    wh._test_peer = peer  # type: ignore[attr-defined]
    return wh


@lru_cache(maxsize=1)
def transcript() -> tuple[list[str], list[Wormhole]]:
    """A whole exchange as the server would send it to one side, and the machine before each text."""
    wh = Wormhole(side="5151515151", app_versions={"x": 1})
    wh.start(code=CODE)
    peer = RefPeer(CODE)
    texts = [sm("welcome", welcome={"motd": "hi"}), sm("ack", id="0000"), sm("claimed", mailbox="mb")]
    states = []
    for t in texts:
        states.append(copy.deepcopy(wh))
        wh.receive(t)
    pake = next(m for m in map(json.loads, wh.take_outgoing()) if m.get("phase") == "pake")
    peer.finish(pake["body"])
    more = [sm("message", side=wh.side, phase="pake", body=pake["body"]), peer.message_pake(),
            peer.message("version", b'{"app_versions": {"y": 2}}'), peer.message("1", b"one"),
            peer.message("0", b"zero"), peer.message("0", b"zero"), sm("released")]
    for t in more:
        states.append(copy.deepcopy(wh))
        wh.receive(t)
    wh.close("happy")
    states.append(copy.deepcopy(wh))
    texts += more + [sm("closed")]
    return texts, states


def test_transcript_is_valid():
    texts, states = transcript()
    wh = copy.deepcopy(states[0])
    events = [e for t in texts[:-1] for e in wh.receive(t)]
    wh.close("happy")
    events += wh.receive(texts[-1])
    assert [type(e) for e in events] == [Welcome, KeyEstablished, Verified, Message, Message, Closed]


def receive_only_peer_errors(wh: Wormhole, text: str | bytes) -> list[object] | None:
    try:
        events = wh.receive(text)
    except PeerError:
        return None
    assert isinstance(events, list)
    return events


def stage(i: int) -> Wormhole:
    texts, states = transcript()
    return copy.deepcopy(states[i % len(states)])


BEFORE_THEIR_PAKE = 4  # transcript(): the machine that has sent its own pake and awaits theirs


@given(st.integers(0, 20), st.one_of(st.text(max_size=200), st.binary(max_size=200)))
@FAST
def test_receive_arbitrary_text(at, text):
    receive_only_peer_errors(stage(at), text)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                         st.sampled_from(["pake", "version", "0", "1", "5151515151", "feedfacecafe", "mb", "4",
                                          "00" * 40, "zz", "\u00e9", "\u0661", "\ud800", 2**1100, -(2**70)]))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(
    st.sampled_from(["type", "side", "phase", "body", "mailbox", "nameplate", "welcome", "error", "orig"])
    | st.text(max_size=4), c, max_size=3), max_leaves=5)
FIELDS = ["side", "phase", "body", "mailbox", "nameplate", "welcome", "error", "orig", "id", "pake_v1"]
# flat (non-recursive) field values: far cheaper to draw, and what the handlers look at
field_values = json_scalars | st.lists(json_scalars, max_size=2) | st.dictionaries(
    st.sampled_from(["type", "error", "motd", "pake_v1"]), json_scalars, max_size=2)
server_objects = st.fixed_dictionaries(
    {"type": st.sampled_from(["welcome", "message", "claimed", "allocated", "released", "closed", "error",
                              "ack", "pong", "nameplates", "__class__", "_rx_message", ""])},
    optional={f: field_values for f in FIELDS})


@given(st.integers(0, 20), st.one_of(json_values, server_objects))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_receive_arbitrary_json(at, obj):
    receive_only_peer_errors(stage(at), json.dumps(obj))


def mutate(data: st.DataObject, text: str) -> str:
    how = data.draw(st.sampled_from(["field", "drop", "chars", "body-bit", "side", "phase"]))
    msg = json.loads(text)
    if how == "field":
        msg[data.draw(st.sampled_from(sorted(msg) + FIELDS))] = data.draw(json_values)
    elif how == "drop":
        msg.pop(data.draw(st.sampled_from(sorted(msg))))
    elif how == "body-bit" and isinstance(msg.get("body"), str) and msg["body"]:
        body = bytearray.fromhex(msg["body"])
        bit = data.draw(st.integers(0, len(body) * 8 - 1))
        body[bit // 8] ^= 1 << (bit % 8)
        msg["body"] = body.hex()
    elif how == "side":
        msg["side"] = data.draw(st.sampled_from(["5151515151", "feedfacecafe", "0ther", "\u00e9", ""]))
    elif how == "phase":
        msg["phase"] = data.draw(st.sampled_from(["pake", "version", "0", "00", "1", "99", "-1", "\u0661",
                                                  "\u00b2", "1" * 12, "\u00e9"]))
    else:
        chars = list(text)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(chars) - 1))
            chars[i] = data.draw(st.characters(codec="utf-8"))
        return "".join(chars)
    return json.dumps(msg)


@given(st.data())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_receive_mutated_transcript(data):
    texts, states = transcript()
    i = data.draw(st.integers(0, len(texts) - 1))
    wh = copy.deepcopy(states[i])
    for text in [mutate(data, texts[i])] + texts[i + 1:]:
        if receive_only_peer_errors(wh, text) is None:
            break


def test_deeply_nested_json_from_the_server_is_a_protocol_error():
    # json.loads raises RecursionError (not a ValueError) on deep nesting well inside MAX_MESSAGE_BYTES
    wh = Wormhole()
    wh.start(code=CODE)
    with pytest.raises(PeerProtocolError):
        wh.receive("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PeerProtocolError):
        wh.receive('{"type": "welcome", "welcome": ' + "[" * 100_000 + "]" * 100_000 + "}")


def test_deeply_nested_pake_or_version_body_is_a_peer_error():
    wh = stage(BEFORE_THEIR_PAKE)
    assert wh.key is None and wh._spake is not None
    body = ("[" * 50_000 + "]" * 50_000).encode()
    with pytest.raises(PeerProtocolError):
        wh.receive(sm("message", side="feedfacecafe", phase="pake", body=body.hex()))
    wh = keyed_machine()
    with pytest.raises(PeerProtocolError):
        wh.receive(wh._test_peer.message("version", body))


def test_non_ascii_side_or_phase_is_a_protocol_error():
    # the phase key hashes side and phase as ASCII (as wormhole does); anything else is no wormhole peer
    wh = keyed_machine()
    with pytest.raises(PeerProtocolError):
        wh.receive(sm("message", side=wh._test_peer.side, phase="\u00e9", body="00" * 40))
    wh = keyed_machine()
    with pytest.raises(PeerProtocolError):
        wh.receive(sm("message", side=wh._test_peer.side, phase="\u0661", body="00" * 40))
    wh = stage(BEFORE_THEIR_PAKE)
    with pytest.raises(PeerError):
        wh.receive(sm("message", side="\u00e9t\u00e9", phase="pake", body=RefPeer(CODE).pake_body.hex()))
        wh.receive(sm("message", side="\u00e9t\u00e9", phase="version", body="00" * 40))


def test_hostile_messages_each_named():
    wh = keyed_machine()
    peer = wh._test_peer
    with pytest.raises(PeerProtocolError, match="before its version"):
        copy.deepcopy(wh).receive(peer.message("0", b"early"))
    assert copy.deepcopy(wh).receive(sm("message", side=peer.side, phase="pake", body="00")) == []  # seen
    waiting = Wormhole()
    waiting.start(allocate=True)
    with pytest.raises(PeerProtocolError, match="unexpected PAKE"):
        waiting.receive(sm("message", side=peer.side, phase="pake", body=peer.pake_body.hex()))
    with pytest.raises(PeerProtocolError, match="malformed"):
        copy.deepcopy(wh).receive(sm("message", side=peer.side, phase="0", body="abc"))
    with pytest.raises(PeerProtocolError, match="not a JSON object"):
        copy.deepcopy(wh).receive(peer.message("version", b"[1]"))
    with pytest.raises(PeerProtocolError, match="bytes"):
        wh.receive("x" * (MAX_MESSAGE_BYTES + 1))
    fresh = Wormhole()
    fresh.start(code=CODE)
    with pytest.raises(PeerProtocolError):
        fresh.receive(sm("claimed"))
    wh2 = Wormhole()
    wh2.start(allocate=True)
    for bad in ["", "x", "1x", "\u0661", None, 7]:
        with pytest.raises(PeerProtocolError):
            copy.deepcopy(wh2).receive(sm("allocated", nameplate=bad))
    pre = stage(BEFORE_THEIR_PAKE)
    with pytest.raises(PeerProtocolError):
        copy.deepcopy(pre).receive(sm("message", side="feedfacecafe", phase="pake", body=b"{}".hex()))
    with pytest.raises(WrongCodeError):
        copy.deepcopy(pre).receive(sm("message", side="feedfacecafe", phase="pake",
                                      body=json.dumps({"pake_v1": "00" * 33}).encode().hex()))
    with pytest.raises(PeerProtocolError, match="before the key"):
        copy.deepcopy(pre).receive(sm("message", side="feedfacecafe", phase="version", body="00" * 40))


def test_too_many_messages_out_of_order():
    wh = keyed_machine()
    peer = wh._test_peer
    wh.receive(peer.message("version", b"{}"))
    for i in range(1, MAX_PHASES + 1):
        assert wh.receive(peer.message(str(i), b"x")) == []
    with pytest.raises(PeerProtocolError, match="out of order"):
        wh.receive(peer.message(str(MAX_PHASES + 1), b"x"))
