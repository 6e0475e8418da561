"""connect(): address ordering (RFC 8305), name resolution, refused ports, timeouts, bad schemes."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from helpers import WAIT, echo, ipv6_loopback_works, needs_ipv6, refused_port, running_server, url

import socketkit.net.connect as connect_module
from socketkit import connect
from socketkit.errors import ConnectError, DeadlineError, SocketkitError
from socketkit.net.connect import happy_eyeballs, interleave

V4, V6 = socket.AF_INET, socket.AF_INET6


def info(family, host, port=80):
    addr = (host, port) if family == V4 else (host, port, 0, 0)
    return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", addr)


def hosts(infos):
    return [i[4][0] for i in infos]


def test_interleave_alternates_families_starting_with_the_first():
    infos = [info(V6, "::a"), info(V6, "::b"), info(V6, "::c"), info(V4, "1.0.0.1"), info(V4, "1.0.0.2")]
    assert hosts(interleave(infos)) == ["::a", "1.0.0.1", "::b", "1.0.0.2", "::c"]
    infos = [info(V4, "1.0.0.1"), info(V6, "::a"), info(V4, "1.0.0.2"), info(V4, "1.0.0.3")]
    assert hosts(interleave(infos)) == ["1.0.0.1", "::a", "1.0.0.2", "1.0.0.3"]


def test_interleave_edge_cases():
    assert interleave([]) == []
    one = [info(V4, "1.0.0.1")]
    assert interleave(one) == one
    same = [info(V6, "::a"), info(V6, "::b")]
    assert interleave(same) == same
    # Order inside a family is kept (the resolver's preference), nothing is lost or duplicated.
    mixed = [info(V4, f"1.0.0.{i}") for i in range(5)] + [info(V6, f"::{i}") for i in range(1, 3)]
    out = interleave(mixed)
    assert sorted(hosts(out)) == sorted(hosts(mixed))
    assert hosts(out)[:4] == ["1.0.0.0", "::1", "1.0.0.1", "::2"]


async def test_happy_eyeballs_skips_a_refused_address_and_finds_the_listener():
    async with running_server(echo) as server:
        port = server.endpoints[0].port
        with refused_port() as dead:
            infos = [info(V4, "127.0.0.1", dead), info(V4, "127.0.0.1", port)]
            sock = await happy_eyeballs(asyncio.get_running_loop(), infos, delay=5)
            try:
                assert sock.getpeername() == ("127.0.0.1", port)
            finally:
                sock.close()


async def test_happy_eyeballs_reports_every_address_that_failed():
    with refused_port() as a, refused_port() as b:
        infos = [info(V4, "127.0.0.1", a), info(V4, "127.0.0.1", b)]
        with pytest.raises(ConnectError) as exc:
            await happy_eyeballs(asyncio.get_running_loop(), infos, delay=0.05)
    text = str(exc.value)
    assert f"127.0.0.1:{a}" in text and f"127.0.0.1:{b}" in text and "refused" in text.lower()


async def test_happy_eyeballs_starts_the_next_attempt_after_the_delay(monkeypatch):
    """A first address that hangs must not hold up the second one for longer than the attempt delay."""
    started: list[tuple[str, float]] = []
    real_open = connect_module._open_socket

    async def fake_open(loop, inf):
        started.append((inf[4][0], time.monotonic()))
        if inf[4][0] == "192.0.2.1":   # TEST-NET-1: never contacted, we hang here instead
            await asyncio.Event().wait()
        return await real_open(loop, inf)

    monkeypatch.setattr(connect_module, "_open_socket", fake_open)
    async with running_server(echo) as server:
        infos = [info(V4, "192.0.2.1", 9), info(V4, "127.0.0.1", server.endpoints[0].port)]
        t0 = time.monotonic()
        sock = await happy_eyeballs(asyncio.get_running_loop(), infos, delay=0.1)
        sock.close()
    assert [h for h, _ in started] == ["192.0.2.1", "127.0.0.1"]
    # Not before the delay; the upper bound only separates "after the delay" from "never" (a loaded CI
    # machine can be seconds late to run a 0.1 s timer).
    assert 0.08 <= started[1][1] - t0 < 6


async def test_connect_by_name_localhost():
    endpoints = ["tcp://127.0.0.1:0"]
    async with running_server(echo, endpoints) as server:
        port = server.endpoints[0].port
        # localhost may resolve to ::1 first, where nothing listens on this port: happy eyeballs moves on.
        async with await connect(f"tcp://localhost:{port}", timeout=WAIT) as s:
            await s.send(b"hi")
            assert await s.receive_exactly(2, timeout=WAIT) == b"hi"
            assert s.peer[:2] == ("127.0.0.1", port)


@needs_ipv6
async def test_connect_ipv6_literal():
    async with running_server(echo, "tcp://[::1]:0") as server, await connect(url(server)) as s:
        assert s.peer[0] == "::1"


async def test_refused_port_names_the_address():
    with refused_port() as port:
        start = time.monotonic()
        with pytest.raises(ConnectError) as exc:
            await connect(f"tcp://127.0.0.1:{port}", timeout=WAIT)
        # At once, not by running into the timeout (WAIT); the bound leaves room for a loaded machine.
        assert time.monotonic() - start < WAIT / 2
    err = exc.value
    assert isinstance(err, ConnectionError)
    assert f"127.0.0.1:{port}" in str(err)
    assert "refused" in str(err).lower()
    assert str(err.endpoint) == f"tcp://127.0.0.1:{port}"


@pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback")
async def test_refused_ipv6_port_names_the_address():
    with refused_port("::1") as port:
        with pytest.raises(ConnectError) as exc:
            await connect(f"tcp://[::1]:{port}", timeout=WAIT)
    assert f"[::1]:{port}" in str(exc.value)


async def test_unresolvable_name_is_a_connect_error():
    # The .invalid TLD is reserved (RFC 6761): it never resolves. A slow resolver is bounded by timeout.
    try:
        with pytest.raises(ConnectError) as exc:
            await connect("tcp://nohost.invalid:80", timeout=WAIT)
    except DeadlineError:
        pytest.skip("the resolver here does not answer for .invalid within the timeout")
    assert "nohost.invalid" in str(exc.value)
    assert "resolve" in str(exc.value)


async def test_timeout_is_a_deadline_error(monkeypatch):
    # Making a real connect hang needs a peer that drops SYNs; stand in for that one fault here.
    async def never(loop, infos, delay):
        await asyncio.Event().wait()

    monkeypatch.setattr(connect_module, "happy_eyeballs", never)
    start = time.monotonic()
    with pytest.raises(DeadlineError) as exc:
        await connect("tcp://127.0.0.1:9", timeout=0.2)
    took = time.monotonic() - start
    assert 0.15 <= took < 6   # the timeout fires (a loaded machine can be late), it does not hang
    err = exc.value
    assert isinstance(err, TimeoutError) and err.seconds == 0.2
    assert "127.0.0.1:9" in str(err)


async def test_udp_is_refused_with_a_hint():
    with pytest.raises(ConnectError) as exc:
        await connect("udp://127.0.0.1:53")
    assert "bind" in str(exc.value)


async def test_unix_connect_errors(tmp_path):
    with pytest.raises(ConnectError) as exc:
        await connect(f"unix://{tmp_path}/missing.sock", timeout=WAIT)
    assert "missing.sock" in str(exc.value)
    plain = tmp_path / "file"
    plain.write_text("not a socket")
    with pytest.raises(ConnectError):
        await connect(f"unix://{plain}", timeout=WAIT)


async def test_bad_endpoint_text_is_an_endpoint_error():
    with pytest.raises(SocketkitError):
        await connect("tcp://127.0.0.1")   # no port
    with pytest.raises(SocketkitError):
        await connect("ftp://127.0.0.1:21")
