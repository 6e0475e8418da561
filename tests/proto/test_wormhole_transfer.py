"""proto/wormhole_transfer.py: offers, answers, transit hints and socketkit's extensions, read from what
magic-wormhole's own CLI builds and from anything a hostile peer could send (only PeerProtocolError, never
another exception); `safe_name` keeps a received name a single plain path component."""

from __future__ import annotations

import io
import json
import os
import unicodedata
from pathlib import PurePosixPath
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wormhole import _hints as whints
from wormhole import transit as wt
from wormhole.cli import cmd_send

from socketkit.errors import PeerProtocolError
from socketkit.proto.wormhole_transfer import (
    ABILITIES,
    FEATURES,
    MAX_HINTS,
    MAX_NAME_BYTES,
    MAX_TEXT,
    Answer,
    Hint,
    Offer,
    ack_record,
    answer_message,
    app_versions,
    decode,
    parse_ack,
    parse_answer,
    parse_offer,
    parse_start,
    parse_transit,
    safe_name,
    start_record,
    their_features,
    transit_message,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                         st.sampled_from([2**1100, -(2**1100), 1 << 62, (1 << 62) + 1, -1, 0, 65535, 65536,
                                          "ok", "zipfile/deflated", "secretbox", "aes256gcm-v1", "direct-tcp-v1",
                                          "relay-v1", "tor-tcp-v1", "..", "a/b", "\ud800", "a" * 64]))
KEYS = ["offer", "message", "file", "directory", "filename", "filesize", "dirname", "zipsize", "numbytes",
        "numfiles", "mode", "transit", "hints-v1", "abilities-v1", "type", "hostname", "port", "priority", "hints",
        "answer", "error", "message_ack", "file_ack", "socketkit", "offset", "sha256", "records", "record_size",
        "ack", "features"]
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), c, max_size=3),
    max_leaves=5)
json_objects = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), json_values, max_size=4)
# flat values for the fields the parsers look at: cheap to draw, so the examples go to the checks
flat = json_scalars | st.lists(json_scalars, max_size=2) | st.dictionaries(st.sampled_from(KEYS), json_scalars,
                                                                         max_size=2)


def fields(*names: str) -> st.SearchStrategy:
    return st.fixed_dictionaries({}, optional={n: flat for n in names})


def only_protocol_errors(fn, *args):
    try:
        return fn(*args)
    except PeerProtocolError:
        return None


# -- safe_name --------------------------------------------------------------------------------------------
REFUSED = ["", ".", "..", "a/b", "/", "/etc/passwd", "../x", "x/..", "a\\b", "..\\x", "\\", "\x00", "a\x00b",
           "\x01", "a\x1fb", "\n", "a\rb", "\t", "\x7f", "\x85", "a\u200bb", "\u202egnp.exe", "\u2028", "\u2029",
           "\ufeffbom", "a" * 256, "\u00e9" * 128, "\U0001f600" * 64, "e\u0301" * 128]


@pytest.mark.parametrize("name", REFUSED)
def test_safe_name_refuses(name):
    with pytest.raises(PeerProtocolError):
        safe_name(name)


@pytest.mark.parametrize("name", [None, 1, 1.5, True, b"file", ["a"], {"a": 1}])
def test_safe_name_refuses_non_strings(name):
    with pytest.raises(PeerProtocolError, match="not a string"):
        safe_name(name, "directory")


@pytest.mark.parametrize("name", ["\ud800", "a\udcffb", "\udfff"])
def test_safe_name_refuses_lone_surrogates(name):
    # JSON can carry them ("\ud800"); no file system name can be made of them (open() would raise
    # UnicodeEncodeError, or surrogateescape would turn one into a raw non-UTF-8 byte)
    with pytest.raises(PeerProtocolError):
        safe_name(name)


@pytest.mark.parametrize("name", ["a", "file.txt", ".hidden", "...", "a b", " lead", "-dash", "x..y", "\u00e9",
                                  "\u65e5\u672c\u8a9e.txt", "\U0001f600", "a" * 255, "\u00e9" * 127 + "a",
                                  "\U0001f600" * 63 + "abc", "\u05e9\u05dc\u05d5\u05dd", "\uff0f"])
def test_safe_name_keeps_plain_names(name):
    assert safe_name(name) == name


def test_safe_name_normalises_to_nfc():
    assert safe_name("cafe\u0301.txt") == "caf\u00e9.txt"
    assert safe_name("A\u030a") == "\u00c5"
    # the length counts after normalisation: 127 decomposed e-acute are 381 bytes, 254 once composed
    assert safe_name("e\u0301" * 127) == "\u00e9" * 127


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_safe_name_any_text(name):
    try:
        out = safe_name(name)
    except PeerProtocolError:
        return
    assert out == unicodedata.normalize("NFC", name) == unicodedata.normalize("NFC", out)
    assert out not in ("", ".", "..") and not {"/", "\\", "\x00"} & set(out)
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in out)
    assert len(out.encode("utf-8")) <= MAX_NAME_BYTES  # strict UTF-8: no lone surrogates
    joined = PurePosixPath("/out") / out
    assert joined.parent == PurePosixPath("/out") and joined.name == out and os.path.basename(out) == out


# -- offers -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("offer", [
    Offer("text", text=""), Offer("text", text="hello \u00e9\n"), Offer("file", "a.txt", 0),
    Offer("file", "\u00e9t\u00e9.bin", 1 << 40),
    Offer("directory", "photos", size=1234, numbytes=99999, numfiles=7),
])
def test_offer_roundtrip(offer):
    msg = json.loads(json.dumps(offer.to_message()))
    assert parse_offer(msg["offer"]) == offer


def wormhole_offer(tmp_path, what: str | None = None, text: str | None = None) -> dict:
    args = SimpleNamespace(text=text, what=what, cwd=str(tmp_path), stderr=io.StringIO(), timing=None,
                           ignore_unsendable_files=False)
    offer, fd = cmd_send.Sender(args, None)._build_offer()
    if fd is not None and hasattr(fd, "close"):
        fd.close()
    return offer


def test_offers_built_by_wormholes_cli(tmp_path):
    (tmp_path / "r\u00e9sum\u00e9 final.txt").write_bytes(b"x" * 1000)
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    (d / "a.jpg").write_bytes(b"a" * 300)
    (d / "sub" / "b.jpg").write_bytes(b"b" * 200)

    assert parse_offer(wormhole_offer(tmp_path, text="hi there")) == Offer("text", text="hi there")
    assert parse_offer(wormhole_offer(tmp_path, "r\u00e9sum\u00e9 final.txt")) == \
        Offer("file", "r\u00e9sum\u00e9 final.txt", 1000)
    offer = wormhole_offer(tmp_path, "photos/")
    parsed = parse_offer(offer)
    assert parsed.kind == "directory" and parsed.name == "photos"
    assert (parsed.size, parsed.numbytes, parsed.numfiles) == (offer["directory"]["zipsize"], 500, 2)
    assert Offer("directory", "photos", parsed.size, 500, 2).to_message()["offer"] == offer


@pytest.mark.parametrize("offer, match", [
    (None, "not a JSON object"), ([], "not a JSON object"), ({}, "unknown offer"), ({"nope": 1}, "unknown offer"),
    ({"message": 5}, "text"), ({"message": "x" * (MAX_TEXT + 1)}, "text"),
    ({"file": "a"}, "file offer"), ({"file": {"filename": "a"}}, "filesize"),
    ({"file": {"filename": "a", "filesize": -1}}, "filesize"),
    ({"file": {"filename": "a", "filesize": True}}, "filesize"),
    ({"file": {"filename": "a", "filesize": 1.0}}, "filesize"),
    ({"file": {"filename": "a", "filesize": (1 << 62) + 1}}, "filesize"),
    ({"file": {"filename": "../a", "filesize": 1}}, "not a plain name"),
    ({"file": {"filesize": 1}}, "not a string"),
    ({"directory": []}, "directory offer"), ({"directory": {"mode": "tar"}}, "mode"),
    ({"directory": {"dirname": "d", "zipsize": 1, "numbytes": 1, "numfiles": 1}}, "mode"),
    ({"directory": {"mode": "zipfile/deflated", "dirname": "..", "zipsize": 1, "numbytes": 1, "numfiles": 1}},
     "not a plain name"),
    ({"directory": {"mode": "zipfile/deflated", "dirname": "d", "zipsize": 1, "numbytes": 1}}, "numfiles"),
    ({"directory": {"mode": "zipfile/deflated", "dirname": "d", "zipsize": 1, "numbytes": "1", "numfiles": 1}},
     "numbytes"),
])
def test_bad_offers(offer, match):
    with pytest.raises(PeerProtocolError, match=match):
        parse_offer(offer)


def test_offer_limits_are_inclusive():
    assert parse_offer({"file": {"filename": "a", "filesize": 1 << 62}}).size == 1 << 62
    assert parse_offer({"message": "x" * MAX_TEXT}).text == "x" * MAX_TEXT


@given(st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "message": flat, "file": fields("filename", "filesize") | flat,
    "directory": fields("mode", "dirname", "zipsize", "numbytes", "numfiles") | flat})))
@SETTINGS
def test_parse_offer_anything(obj):
    out = only_protocol_errors(parse_offer, obj)
    if out is not None:
        assert out.kind in ("text", "file", "directory")
        if out.kind != "text":
            assert safe_name(out.name) == out.name and 0 <= out.size <= 1 << 62


# -- transit hints ----------------------------------------------------------------------------------------
def test_transit_message_roundtrip_and_wormhole_reads_ours():
    direct = [Hint("192.168.1.5", 4000, 0.0), Hint("fe80::1", 4001, 0.5)]
    relays = [Hint("relay.example.org", 4001, 0.0)]
    msg = json.loads(json.dumps(transit_message(direct, relays)))
    assert msg["transit"]["abilities-v1"] == ABILITIES
    assert parse_transit(msg["transit"]) == (direct, relays)
    owner = wt.TransitReceiver(None, no_listen=True, reactor=object())
    owner.add_connection_hints(msg["transit"]["hints-v1"])
    assert owner._their_direct_hints == [whints.DirectTCPV1Hint(h.host, h.port, h.priority) for h in direct]
    assert whints.RelayV1Hint((whints.DirectTCPV1Hint("relay.example.org", 4001, 0.0),)) in owner._our_relay_hints
    assert ABILITIES == owner.get_connection_abilities()
    assert transit_message([], [])["transit"]["hints-v1"] == []


def test_we_read_wormholes_hints():
    hints = [whints.encode_hint(whints.DirectTCPV1Hint("10.0.0.2", 5000, 0.25)),
             whints.encode_hint(whints.TorTCPV1Hint("abc.onion", 80, 0.0)),
             whints.encode_hint(whints.RelayV1Hint((whints.DirectTCPV1Hint("relay.example", 4001, 0.0),
                                                   whints.DirectTCPV1Hint("10.9.9.9", 4001, 1.0))))]
    direct, relays = parse_transit({"abilities-v1": ABILITIES, "hints-v1": hints})
    assert direct == [Hint("10.0.0.2", 5000, 0.25)]  # tor hints are not for us
    assert relays == [Hint("relay.example", 4001, 0.0), Hint("10.9.9.9", 4001, 1.0)]
    assert whints.parse_hint(Hint("h", 1, 2.0).to_json()) == whints.DirectTCPV1Hint("h", 1, 2.0)


def test_hostile_hints_are_skipped():
    def direct(**h):
        return parse_transit({"hints-v1": [{"type": "direct-tcp-v1", **h}]})[0]
    assert direct(hostname="h", port=1) == [Hint("h", 1, 0.0)]
    assert direct(hostname="h", port=65535, priority=3) == [Hint("h", 65535, 3.0)]
    for bad in [dict(hostname="h", port=0), dict(hostname="h", port=65536), dict(hostname="h", port=True),
                dict(hostname="h", port="80"), dict(hostname="h", port=80.0), dict(hostname="", port=80),
                dict(hostname="a b", port=80), dict(hostname="a\nb", port=80), dict(hostname="h" * 256, port=80),
                dict(hostname=5, port=80), dict(port=80), dict(hostname="h")]:
        assert direct(**bad) == [], bad
    for odd in [float("nan"), "high", True, None, [1]]:
        assert direct(hostname="h", port=1, priority=odd) == [Hint("h", 1, 0.0)], odd


def test_huge_integer_priority_is_no_crash():
    # JSON integers have no bound; float() of one past 1.8e308 raises OverflowError
    assert parse_transit({"hints-v1": [{"type": "direct-tcp-v1", "hostname": "h", "port": 1,
                                        "priority": 10**400}]})[0] in ([Hint("h", 1, 0.0)], [])
    text = '{"hints-v1": [{"type": "direct-tcp-v1", "hostname": "h", "port": 1, "priority": -1' + "0" * 400 + "}]}"
    only_protocol_errors(parse_transit, json.loads(text))


def test_hint_counts_are_bounded():
    many = [{"type": "direct-tcp-v1", "hostname": f"h{i}", "port": 1000 + i} for i in range(200)]
    direct, relays = parse_transit({"hints-v1": many + [{"type": "relay-v1", "hints": many}]})
    assert len(direct) == MAX_HINTS and relays == []  # only the first 2*MAX_HINTS entries are looked at
    direct, relays = parse_transit({"hints-v1": [{"type": "relay-v1", "hints": many}] * 10})
    assert direct == [] and len(relays) == MAX_HINTS
    assert parse_transit({}) == ([], [])
    for bad in [None, [], "x", 1]:
        with pytest.raises(PeerProtocolError):
            parse_transit(bad)
    with pytest.raises(PeerProtocolError):
        parse_transit({"hints-v1": {"type": "direct-tcp-v1"}})


hint_objects = st.fixed_dictionaries(
    {"type": st.sampled_from(["direct-tcp-v1", "relay-v1", "tor-tcp-v1"])},
    optional={"hostname": json_scalars, "port": json_scalars, "priority": json_scalars})


@given(st.one_of(json_values, st.fixed_dictionaries({}, optional={"hints-v1": flat | st.lists(
    hint_objects | flat | st.fixed_dictionaries({"type": st.just("relay-v1"), "hints": flat | st.lists(
        hint_objects | flat, max_size=3)}), max_size=4)})))
@SETTINGS
def test_parse_transit_anything(obj):
    out = only_protocol_errors(parse_transit, obj)
    if out is not None:
        for h in out[0] + out[1]:
            assert isinstance(h.host, str) and 0 < h.port < 65536 and isinstance(h.priority, float)
            assert h.priority == h.priority


# -- answers, start and ack records ---------------------------------------------------------------------
def test_answers():
    assert parse_answer(answer_message("text"), "text") == Answer(True)
    assert parse_answer(answer_message("file"), "file") == Answer(True)
    assert parse_answer(answer_message("directory"), "directory") == Answer(True)
    assert parse_answer({"answer": {"message_ack": "ok"}}, "file").ok is False  # wrong kind
    assert parse_answer({"answer": {"file_ack": "no"}}, "file").ok is False
    assert parse_answer({"error": "transfer rejected"}, "file") == Answer(False, error="transfer rejected")
    assert len(parse_answer({"error": "x" * 10_000}, "file").error) == 500
    assert parse_answer({"error": {"nested": [1]}}, "file").ok is False
    assert parse_answer({"transit": {}}, "file") is None
    with pytest.raises(PeerProtocolError):
        parse_answer({"answer": "ok"}, "file")
    digest = "AB" * 32
    resumed = parse_answer(answer_message("file", 1000, digest), "file")
    assert resumed == Answer(True, offset=1000, prefix_sha256=digest.lower())
    assert answer_message("file", 0, digest) == {"answer": {"file_ack": "ok"}}  # no extension for nothing kept
    for ext in [{"offset": -1, "sha256": digest}, {"offset": True, "sha256": digest}, {"offset": 5, "sha256": "ab"},
                {"offset": 5}, {"offset": "5", "sha256": digest}, "resume", None]:
        assert parse_answer({"answer": {"file_ack": "ok", "socketkit": ext}}, "file") == Answer(True), ext


def test_wormholes_answers_are_accepted():
    # as cmd_receive writes them
    assert parse_answer({"answer": {"message_ack": "ok"}}, "text").ok
    assert parse_answer({"answer": {"file_ack": "ok"}}, "file").ok
    assert parse_answer({"error": "transfer rejected"}, "file").error == "transfer rejected"


@given(json_objects | st.fixed_dictionaries({}, optional={
    "error": flat, "answer": flat | fields("message_ack", "file_ack") | st.fixed_dictionaries(
        {"file_ack": st.just("ok"), "socketkit": flat | fields("offset", "sha256")})}),
    st.sampled_from(["text", "file", "directory"]))
@SETTINGS
def test_parse_answer_anything(msg, kind):
    out = only_protocol_errors(parse_answer, msg, kind)
    if out is not None:
        assert isinstance(out, Answer) and out.offset >= 0 and len(out.error) <= 500


def test_start_record():
    for args in [(0, "secretbox", 0), (123, "aes256gcm-v1", 1 << 20), (5, "secretbox", 4 << 20)]:
        assert parse_start(start_record(*args)) == args
    assert parse_start(b'{"socketkit": {}}') == (0, "secretbox", 0)
    for bad in [b"", b"nope", b"[]", b"{}", b'{"socketkit": 1}', b'{"socketkit": {"offset": -1}}',
                b'{"socketkit": {"offset": true}}', b'{"socketkit": {"records": "rot13"}}',
                b'{"socketkit": {"records": ["secretbox"]}}', b'{"socketkit": {"record_size": 4194305}}',
                b'{"socketkit": {"record_size": -1}}', b'{"socketkit": {"record_size": 1.5}}', b"\xff\xfe"]:
        with pytest.raises(PeerProtocolError):
            parse_start(bad)


def test_ack_record():
    digest = "ab" * 32
    assert parse_ack(ack_record(digest)) == digest
    assert parse_ack(ack_record(digest.upper())) == digest
    assert parse_ack(b'{"ack": "ok"}') == ""  # wormhole's receiver sends only this
    assert parse_ack(b'{"ack": "ok", "sha256": 5}') == ""
    for bad in [b'{"ack": "no"}', b"{}", b"[]", b"ok", b'"ok"', b""]:
        with pytest.raises(PeerProtocolError):
            parse_ack(bad)


@given(st.one_of(st.binary(max_size=100), json_values.map(lambda v: json.dumps(v).encode()),
                 fields("offset", "records", "record_size", "ack", "sha256").map(
                     lambda v: json.dumps({"socketkit": v, **v}).encode())))
@SETTINGS
def test_parse_start_and_ack_anything(record):
    start = only_protocol_errors(parse_start, record)
    if start is not None:
        offset, records, size = start
        assert offset >= 0 and records in ("secretbox", "aes256gcm-v1") and 0 <= size <= 4 << 20
    ack = only_protocol_errors(parse_ack, record)
    assert ack is None or isinstance(ack, str)


def test_deeply_nested_records_are_protocol_errors():
    # json.loads raises RecursionError, not ValueError, on deep nesting
    deep = b"[" * 100_000 + b"]" * 100_000
    for fn in (decode, parse_start, parse_ack):
        with pytest.raises(PeerProtocolError):
            fn(deep)
    with pytest.raises(PeerProtocolError):
        decode(b'{"a": ' + deep + b"}")


def test_decode():
    assert decode(b'{"offer": {}}') == {"offer": {}}
    for bad in [b"", b"[1]", b"1", b"\xff", b'"x"', b"{"]:
        with pytest.raises(PeerProtocolError):
            decode(bad)


# -- features ---------------------------------------------------------------------------------------------
def test_features():
    assert their_features(app_versions()) == set(FEATURES)
    assert their_features(app_versions(("resume-v1",))) == {"resume-v1"}
    assert their_features({}) == set()  # a plain wormhole peer
    assert their_features({"socketkit": {"features": ["resume-v1", "teleport-v9", 5]}}) == {"resume-v1"}
    for odd in [{"socketkit": None}, {"socketkit": {"features": "resume-v1"}}, {"socketkit": []}]:
        assert their_features(odd) == set()
    assert json.loads(json.dumps(app_versions())) == app_versions()
