"""Endpoint URLs: round trips, canonical form, malformed input and the convenience API."""

from __future__ import annotations

import string
from urllib.parse import quote, quote_from_bytes

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from socketkit.errors import EndpointError
from socketkit.net import endpoint as endpoint_mod
from socketkit.net.endpoint import SCHEMES, Endpoint, parse

# -- strategies for Endpoint values as parse() produces them -------------------------------------

_NO_SURROGATES = st.characters(exclude_categories=("Cs",))

ipv4 = st.ip_addresses(v=4).map(str)

# Interface names are the usual zone ids; odd characters check that format() escapes the zone.
zone = st.one_of(
    st.from_regex(r"[a-z][a-z0-9]{0,7}|[0-9]{1,3}", fullmatch=True),
    st.text(_NO_SURROGATES, min_size=1, max_size=8),
    st.sampled_from(["eth0", "en0", "wlan0", "a]b", "a%b", "a/b", "a@b", "a?b#c&d", "é", "x y"]),
)
ipv6 = st.builds(
    lambda addr, z: addr if z is None else f"{addr}%{z}",
    st.ip_addresses(v=6).map(str),
    st.none() | zone,
)
label = st.from_regex(r"[a-z0-9_](?:[a-z0-9_-]{0,20}[a-z0-9_])?", fullmatch=True)
hostname = st.builds(
    lambda labels, dot: ".".join(labels) + ("." if dot else ""),
    st.lists(label, min_size=1, max_size=5),
    st.booleans(),
)
hosts = st.one_of(ipv4, ipv6, hostname, st.sampled_from(["localhost", "0.0.0.0", "::", "::1", "fe80::1%eth0"]))
ports = st.integers(0, 65535)

unix_paths = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), min_size=1).filter(
        lambda p: p != "@"
    ),
    st.builds(lambda name: "@" + name, st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"),
                                              min_size=1)),
    st.sampled_from([
        "/run/socketkit/web.sock", "/tmp/with space.sock", "/tmp/ünïcödé/☃.sock", "/tmp/q?.sock",
        "/tmp/hash#.sock", "/tmp/pct%41.sock", "/tmp/%", "relative.sock", "//double", "@abstract",
        "@abstract name", "@", "@@", "/a&b=c", "/tmp/+plus",
    ]).filter(lambda p: p != "@"),
)

_bool_value = st.sampled_from(["true", "false"])
_free_value = st.one_of(
    st.text(_NO_SURROGATES, min_size=1, max_size=30),
    st.sampled_from(["ca.pem", "/etc/ssl/c.pem", "h2,http/1.1", "example.org", "a&b=c", "100%", "sp ace",
                     "q?#", "true"]),
)
_pin_value = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())
_OPTION_VALUES = {
    "reuse_port": _bool_value,
    "nodelay": _bool_value,
    "broadcast": _bool_value,
    "verify": st.sampled_from(["true", "false", "optional"]),
    "cert": _free_value,
    "key": _free_value,
    "ca": _free_value,
    "sni": _free_value,
    "alpn": _free_value,
    "pin": _pin_value,
    "mode": st.from_regex(r"0?[0-7]{3}", fullmatch=True),
}


def options_for(scheme: str) -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    allowed = endpoint_mod._OPTIONS[scheme]
    return st.fixed_dictionaries({}, optional={k: _OPTION_VALUES[k] for k in allowed}).map(
        lambda d: tuple(sorted(d.items()))
    )


@st.composite
def endpoints(draw) -> Endpoint:
    scheme = draw(st.sampled_from(SCHEMES))
    options = draw(options_for(scheme))
    if scheme == "unix":
        return Endpoint("unix", path=draw(unix_paths), options=options)
    return Endpoint(scheme, host=draw(hosts), port=draw(ports), options=options)


def test_every_option_has_a_strategy():
    for scheme in SCHEMES:
        assert set(endpoint_mod._OPTIONS[scheme]) <= set(_OPTION_VALUES)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(endpoints())
def test_format_then_parse_is_identity(e: Endpoint):
    text = e.format()
    assert parse(text) == e
    assert str(e) == text
    assert endpoint_mod.format(e) == text
    # What format() writes must survive the parser's own text checks.
    assert text == text.strip()
    assert not any(c in text for c in "\r\n\t\0 #")


# -- messy but valid strings: other spellings of the same endpoints ---------------------------------

_RAW_PATH_CHARS = string.ascii_letters + string.digits + "/._-~@!$'()*+,;=:[]éü☃"


@st.composite
def percent_mixed(draw, text: str, raw_ok: str) -> str:
    """Spell `text` with each character raw (when allowed) or percent-encoded."""
    out = []
    for ch in text:
        if ch in raw_ok and draw(st.booleans()):
            out.append(ch)
        else:
            encoded = quote(ch, safe="")
            out.append(encoded if draw(st.booleans()) else encoded.lower())
    return "".join(out)


def _random_case(draw, text: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c for c in text)


@st.composite
def messy_urls(draw) -> str:
    scheme = draw(st.sampled_from(SCHEMES))
    head = _random_case(draw, scheme) + "://"
    if scheme == "unix":
        path = draw(unix_paths)
        location = draw(percent_mixed(path, _RAW_PATH_CHARS))
    else:
        kind = draw(st.sampled_from(["v4", "v6", "name"]))
        if kind == "v4":
            host = draw(ipv4)
        elif kind == "name":
            host = _random_case(draw, draw(hostname))
        else:
            addr = _random_case(draw, draw(st.ip_addresses(v=6).map(lambda a: a.exploded if draw(st.booleans())
                                                                    else str(a))))
            z = draw(st.none() | zone)
            host = "[" + draw(percent_mixed(addr, addr)) + ("" if z is None else "%25" + quote(z, safe="")) + "]"
        port = draw(ports)
        location = f"{host}:{'0' * draw(st.integers(0, 3))}{port}"
    allowed = endpoint_mod._OPTIONS[scheme]
    keys = draw(st.lists(st.sampled_from(sorted(allowed)), unique=True, max_size=len(allowed)))
    items = []
    for key in keys:
        spelled_key = draw(percent_mixed(key, key))
        choices = allowed[key]
        if choices is not None:
            if choices is not endpoint_mod._BOOL and draw(st.booleans()):
                raw = _random_case(draw, "optional")
            else:
                alias = draw(st.sampled_from(sorted(endpoint_mod._BOOL)))
                if alias == "true" and draw(st.booleans()):
                    items.append(spelled_key)  # bare flag means true
                    continue
                raw = _random_case(draw, alias)
        elif key == "pin":
            digest = draw(st.binary(min_size=32, max_size=32))
            hex_text = (":" if draw(st.booleans()) else "").join(f"{b:02x}" for b in digest)
            raw = _random_case(draw, "sha256:" + hex_text)
        elif key == "mode":
            raw = draw(_OPTION_VALUES["mode"])
        else:
            raw = quote(draw(_free_value), safe=draw(st.sampled_from(["", "/:.,", "/:.,@!$'()*+,;"])))
        items.append(f"{spelled_key}={raw}")
    query = "?" + "&".join(items) if items or draw(st.booleans()) else ""
    return head + location + query


def _assert_canonical(text: str) -> None:
    first = parse(text)
    canonical = first.format()
    assert parse(canonical) == first
    assert parse(canonical).format() == canonical


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messy_urls())
def test_parse_format_parse_is_stable(text: str):
    _assert_canonical(text)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("TCP://LocalHost:0080", "tcp://localhost:80"),
        ("tcp://[::1]:8080", "tcp://[::1]:8080"),
        ("tcp://[fe80::1%25eth0]:1", "tcp://[fe80::1%25eth0]:1"),
        ("udp://0.0.0.0:5353?broadcast&reuse_port=ON", "udp://0.0.0.0:5353?broadcast=true&reuse_port=true"),
        ("tls://h:1?verify=Optional&sni=example.org", "tls://h:1?sni=example.org&verify=optional"),
        ("tls://h:1?pin=SHA256:" + ":".join(["AB"] * 32), "tls://h:1?pin=sha256:" + "ab" * 32),
        ("unix:///run/socketkit/web.sock", "unix:///run/socketkit/web.sock"),
        ("unix:///tmp/a%20b%3F%23%25.sock?mode=0660", "unix:///tmp/a%20b%3F%23%25.sock?mode=0660"),
        ("unix://@abstract-name", "unix://@abstract-name"),
        ("tcp://h:1?", "tcp://h:1"),
        ("tcp://h:" + "0" * 5000 + "1", "tcp://h:1"),
    ],
    ids=lambda v: ascii(v)[:40],
)
def test_canonical_spelling(text: str, canonical: str):
    assert parse(text).format() == canonical
    _assert_canonical(text)


def test_parsed_fields():
    assert parse("tcp://127.0.0.1:8080") == Endpoint("tcp", host="127.0.0.1", port=8080)
    assert parse("tcp://[::1]:8080") == Endpoint("tcp", host="::1", port=8080)
    assert parse("tcp://[fe80::1%25eth0]:9") == Endpoint("tcp", host="fe80::1%eth0", port=9)
    assert parse("unix:///run/x%20y.sock") == Endpoint("unix", path="/run/x y.sock")
    assert parse("unix://@name") == Endpoint("unix", path="@name")
    assert parse("tls://example.org:443?ca=ca.pem&sni=example.org") == Endpoint(
        "tls", host="example.org", port=443, options=(("ca", "ca.pem"), ("sni", "example.org"))
    )


# -- malformed endpoints ---------------------------------------------------------------------------

_PIN = "sha256:" + "ab" * 32

MALFORMED = [
    # scheme
    ("127.0.0.1:8080", "scheme"),
    ("tcp:/h:1", "scheme"),
    ("", "scheme"),
    ("http://h:80", "scheme"),
    ("://h:80", "scheme"),
    # host
    ("tcp://:80", "host"),
    ("udp://:0", "host"),
    ("tcp://::1:80", "host"),
    ("tcp://fe80::1%eth0:80", "host"),
    ("tcp://[::1:80", "host"),
    ("tcp://[::1", "host"),
    ("tcp://[zz::1]:80", "host"),
    ("tcp://[1.2.3.4]:80", "host"),
    ("tcp://[]:80", "host"),
    ("tcp://[fe80::1%25]:80", "host"),
    ("tcp://-bad:80", "host"),
    ("tcp://bad-:80", "host"),
    ("tcp://b!d:80", "host"),
    ("tcp://b%41d:80", "host"),
    ("tcp://" + "a" * 254 + ":80", "host"),
    ("tcp://user@h:80", "host"),
    ("tls://user:pw@h:443", "host"),
    ("tcp://h:80/path", "host"),
    ("tcp://h:80/", "host"),
    # port
    ("tcp://h", "port"),
    ("tcp://h:", "port"),
    ("tcp://h:http", "port"),
    ("tcp://h:-1", "port"),
    ("tcp://h:+1", "port"),
    ("tcp://h:1.5", "port"),
    ("tcp://h:0x10", "port"),
    ("tcp://h:\u0663", "port"),
    ("tcp://h:\u00b2", "port"),
    ("tcp://h:65536", "port"),
    ("tcp://h:99999999999999999999", "port"),
    ("tcp://h:" + "9" * 5000, "port"),
    ("tcp://[::1]", "port"),
    ("tcp://[::1]80", "port"),
    ("tcp://[::1]:", "port"),
    ("tcp://[::1]:70000", "port"),
    # unknown options
    ("tcp://h:1?cert=c.pem", "option 'cert'"),
    ("tcp://h:1?broadcast", "option 'broadcast'"),
    ("udp://h:1?nodelay=1", "option 'nodelay'"),
    ("udp://h:1?verify=true", "option 'verify'"),
    ("unix:///a?reuse_port=1", "option 'reuse_port'"),
    ("tls://h:1?bogus=1", "option 'bogus'"),
    ("tls://h:1?CA=x", "option 'CA'"),
    ("tcp://h:1?&", "option ''"),
    ("tcp://h:1?=1", "option ''"),
    # duplicate options
    ("tcp://h:1?nodelay=1&nodelay=0", "option 'nodelay'"),
    ("tcp://h:1?nodelay&nodelay", "option 'nodelay'"),
    ("tls://h:1?ca=a&ca=a", "option 'ca'"),
    ("tcp://h:1?nodelay=1&%6Eodelay=1", "option 'nodelay'"),
    # bad values
    ("tls://h:1?verify=maybe", "option 'verify'"),
    ("tls://h:1?verify=", "option 'verify'"),
    ("tcp://h:1?nodelay=2", "option 'nodelay'"),
    ("udp://h:1?broadcast=", "option 'broadcast'"),
    ("tls://h:1?ca=", "option 'ca'"),
    ("tls://h:1?pin=abc", "option 'pin'"),
    ("tls://h:1?pin=" + "ab" * 32, "option 'pin'"),
    ("tls://h:1?pin=sha256:" + "ab" * 31, "option 'pin'"),
    ("tls://h:1?pin=sha256:" + "ab" * 33, "option 'pin'"),
    ("tls://h:1?pin=sha256:" + "zz" * 32, "option 'pin'"),
    ("tls://h:1?pin=md5:" + "ab" * 32, "option 'pin'"),
    ("tls://h:1?pin=" + _PIN + "%0A", "option 'pin'"),
    ("tls://h:1?pin=", "option 'pin'"),
    ("tls://h:1?pin", "option 'pin'"),
    ("unix:///a?mode=999", "option 'mode'"),
    ("unix:///a?mode=rw", "option 'mode'"),
    ("unix:///a?mode=66", "option 'mode'"),
    ("unix:///a?mode=06600", "option 'mode'"),
    ("unix:///a?mode=660%0A", "option 'mode'"),
    ("unix:///a?mode=", "option 'mode'"),
    ("unix:///a?mode", "option 'mode'"),
    # whitespace and control characters
    (" tcp://h:1", "text"),
    ("tcp://h:1 ", "text"),
    ("tcp://h :1", "text"),
    ("tcp://h:1\n", "text"),
    ("tcp://h:1\r\n", "text"),
    ("tcp://\th:1", "text"),
    ("unix:///a b.sock", "text"),
    ("unix:///a\0b", "text"),
    ("tcp://h:1\u3000", "text"),
    ("tls://h:1?ca=\ud800", "text"),
    ("unix:///\udcff", "text"),
    # unix paths
    ("unix:///a%00b", "path"),
    ("unix://%00", "path"),
    ("unix://", "path"),
    ("unix://@", "path"),
    ("unix://?mode=660", "path"),
    ("unix://%40", "path"),
    # fragments
    ("tcp://h:1#frag", "fragment"),
    ("tcp://h:1?nodelay#x", "fragment"),
    ("unix:///a#b", "fragment"),
    ("tls://h:1#", "fragment"),
]


@pytest.mark.parametrize(("text", "part"), MALFORMED, ids=lambda v: ascii(v)[:40])
def test_malformed_endpoint(text: str, part: str):
    with pytest.raises(EndpointError) as info:
        parse(text)
    err = info.value
    assert err.part == part
    assert err.text == text
    assert err.why
    assert part in str(err)
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("value", [None, 8080, b"tcp://h:1", ("tcp", "h", 1)])
def test_non_string_is_rejected(value: object):
    with pytest.raises(EndpointError) as info:
        parse(value)  # type: ignore[arg-type]
    assert info.value.part == "type"


# -- fuzz: arbitrary text fails only with EndpointError ---------------------------------------------

_ANY_CHAR = st.one_of(st.characters(), st.characters(categories=["Cs"]), st.sampled_from(":/[]%@?#&=.0123456789"))
_fuzz_text = st.one_of(
    st.text(_ANY_CHAR),
    st.builds(lambda head, tail: head + tail,
              st.sampled_from([f"{s}://" for s in SCHEMES] + ["TLS://", "unix://@", "tcp://[", "tcp://h:"]),
              st.text(_ANY_CHAR)),
    st.builds(lambda head, raw: head + quote_from_bytes(raw, safe=""),
              st.sampled_from(["unix:///", "tcp://[fe80::1%25", "tls://h:1?ca=", "tls://h:1?pin=sha256:"]),
              st.binary()),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fuzz_text)
@example("tcp://h:" + "0" * 5000 + "1")
@example("tls://h:1?ca=\ud800")
@example("tcp://[fe80::1%25a%5Db]:1")
def test_parse_raises_only_endpoint_error(text: str):
    try:
        e = parse(text)
    except EndpointError as err:
        assert err.part
        return
    # Whatever parses must format to text that parses back to the same endpoint.
    _assert_canonical(text)
    assert isinstance(e, Endpoint)


# -- the convenience API ----------------------------------------------------------------------------

def test_scheme_predicates():
    assert parse("tls://h:1").is_tls and not parse("tcp://h:1").is_tls
    assert parse("unix:///a").is_unix and not parse("udp://h:1").is_unix
    assert parse("udp://h:1").is_datagram and not parse("tcp://h:1").is_datagram
    assert parse("unix://@x").is_abstract
    assert not parse("unix:///x").is_abstract
    assert not parse("tcp://h:1").is_abstract


def test_socket_path():
    assert parse("unix:///run/web.sock").socket_path == "/run/web.sock"
    assert parse("unix://@name").socket_path == "\0name"
    assert parse("unix://@with%20space").socket_path == "\0with space"


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("tcp://127.0.0.1:1", 4),
        ("tcp://0.0.0.0:1", 4),
        ("tcp://[::1]:1", 6),
        ("tcp://[::]:1", 6),
        ("tcp://[fe80::1%25eth0]:1", 6),
        ("tcp://[::ffff:1.2.3.4]:1", 6),
        ("tcp://localhost:1", None),
        ("tcp://999.1.1.1:1", None),
        ("unix:///a", None),
    ],
)
def test_ip_version(text: str, version: int | None):
    assert parse(text).ip_version == version


def test_option_and_flag():
    e = parse("tls://h:1?ca=ca.pem&nodelay&reuse_port=off&verify=optional")
    assert e.option("ca") == "ca.pem"
    assert e.option("cert") is None
    assert e.option("cert", "default.pem") == "default.pem"
    assert e.flag("nodelay") is True
    assert e.flag("reuse_port") is False
    assert e.flag("reuse_port", default=True) is False
    assert e.flag("broadcast") is False
    assert e.flag("broadcast", default=True) is True
    assert e.flag("verify") is False  # "optional" is not "true"


def test_with_port():
    e = parse("tcp://[::1]:0?nodelay")
    moved = e.with_port(4242)
    assert moved.port == 4242 and moved.host == "::1" and moved.options == e.options
    assert e.port == 0  # unchanged: Endpoint is immutable
    assert parse(moved.format()) == moved


def test_with_options():
    e = parse("tls://h:1?sni=a&ca=c")
    changed = e.with_options(verify="false", ca=None, alpn="h2")
    assert changed.options == (("alpn", "h2"), ("sni", "a"), ("verify", "false"))
    assert changed.options == tuple(sorted(changed.options))
    assert parse(changed.format()) == changed
    assert e.with_options() == e
    assert e.with_options(cert=None) == e


def test_endpoint_is_frozen_and_hashable():
    e = parse("tcp://h:1")
    with pytest.raises(AttributeError):
        e.port = 2  # type: ignore[misc]
    assert hash(e) == hash(parse("TCP://H:001"))
    assert {e, parse("tcp://h:1")} == {e}


def test_parse_accepts_an_endpoint():
    e = parse("udp://h:1")
    assert parse(e) is e


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(endpoints(), ports)
def test_with_port_round_trips(e: Endpoint, port: int):
    if e.is_unix:
        return
    assert parse(e.with_port(port).format()) == e.with_port(port)
