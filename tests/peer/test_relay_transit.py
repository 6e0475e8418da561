"""socketkit's transit relay on real sockets: pairing, the relay's answers, deadlines, per-address limits,
bounded buffering (backpressure) and the counters; and `serve_relay` as a process that stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest
from helpers import WAIT, cli_env, shrink_buffers, wait_for, wait_stable

from socketkit.errors import IncompleteReadError
from socketkit.net.connect import connect
from socketkit.peer.relay import RelayConfig, RelayLimits, TransitLimits, start_relay

LOCAL = ["tcp://127.0.0.1:0"]
TOKEN = os.urandom(32).hex().encode()


def hello(side: bytes, token: bytes = TOKEN) -> bytes:
    return b"please relay " + token + b" for side " + side + b"\n"


def config(**limits) -> RelayConfig:
    return RelayConfig([], LOCAL, db_path=":memory:", limits=RelayLimits(**limits))


async def pair(relay, token: bytes = TOKEN):
    a = await connect(relay.transit_url, timeout=WAIT)
    b = await connect(relay.transit_url, timeout=WAIT)
    await a.send(hello(b"a" * 16, token))
    await wait_for(lambda: relay.stats()["transit_waiting"] == 1)
    await b.send(hello(b"b" * 16, token))
    assert await a.receive_exactly(3, timeout=WAIT) == b"ok\n"
    assert await b.receive_exactly(3, timeout=WAIT) == b"ok\n"
    return a, b


async def test_a_pair_relays_both_ways_until_both_are_done():
    async with await start_relay(config()) as relay:
        assert relay.transit_url.startswith("tcp://127.0.0.1:") and relay.mailbox_url is None
        a, b = await pair(relay)
        assert relay.stats()["transit_paired"] == 2
        await a.send(b"x" * 100_000)
        assert await b.receive_exactly(100_000, timeout=WAIT) == b"x" * 100_000
        await b.send(b"reply")
        assert await a.receive_exactly(5, timeout=WAIT) == b"reply"
        # a half-close travels: b still talks to a after a said it is done sending
        await a.send_eof()
        assert await b.receive(10, timeout=WAIT) == b""
        await b.send(b"last words")
        assert await a.receive_exactly(10, timeout=WAIT) == b"last words"
        await b.aclose()
        assert await a.receive(10, timeout=WAIT) == b""
        await a.aclose()
        await wait_for(lambda: relay.stats()["transit_paired"] == 0)
        stats = relay.stats()
        assert stats["bytes_relayed"] == 100_015 and stats["transit_pairs"] == 1 and stats["errors"] == 0


async def test_the_second_side_may_send_right_behind_its_handshake():
    async with await start_relay(config()) as relay:
        a = await connect(relay.transit_url, timeout=WAIT)
        await a.send(hello(b"a" * 16))
        await wait_for(lambda: relay.stats()["transit_waiting"] == 1)
        b = await connect(relay.transit_url, timeout=WAIT)
        await b.send(hello(b"b" * 16) + b"pipelined")
        assert await a.receive_exactly(3 + 9, timeout=WAIT) == b"ok\npipelined"
        assert await b.receive_exactly(3, timeout=WAIT) == b"ok\n"
        await a.aclose()
        assert await b.receive(10, timeout=WAIT) == b""
        await b.aclose()


async def test_garbage_impatience_and_old_style_handshakes():
    async with await start_relay(config()) as relay:
        bad = await connect(relay.transit_url, timeout=WAIT)
        await bad.send(b"GET / HTTP/1.1\r\n")
        assert await bad.receive_exactly(14, timeout=WAIT) == b"bad handshake\n"
        assert await bad.receive(10, timeout=WAIT) == b""
        impatient = await connect(relay.transit_url, timeout=WAIT)
        await impatient.send(hello(b"c" * 16))
        await wait_for(lambda: relay.stats()["transit_waiting"] == 1)
        await impatient.send(b"hurry")
        assert await impatient.receive_exactly(10, timeout=WAIT) == b"impatient\n"
        assert await impatient.receive(10, timeout=WAIT) == b""
        old = [await connect(relay.transit_url, timeout=WAIT) for _ in range(2)]
        token = os.urandom(32).hex().encode()
        await old[0].send(b"please relay " + token + b"\n")
        await wait_for(lambda: relay.stats()["transit_waiting"] == 1)
        await old[1].send(b"please relay " + token + b"\n")
        assert [await s.receive_exactly(3, timeout=WAIT) for s in old] == [b"ok\n", b"ok\n"]
        for s in (bad, impatient, *old):
            await s.aclose()
        assert relay.stats()["errors"] == 2   # one bad handshake, one impatient


async def test_deadlines_and_the_per_address_limit():
    # The fourth connection must find the first three still open: the deadlines are long next to the moment
    # four local connects take, even on a loaded machine (a shorter one would let `silent` go first).
    limits = TransitLimits(handshake_timeout=2.0, wait_timeout=3.0, max_per_address=3)
    async with await start_relay(config(transit=limits)) as relay:
        silent = await connect(relay.transit_url, timeout=WAIT)
        lonely = await connect(relay.transit_url, timeout=WAIT)
        await lonely.send(hello(b"d" * 16))
        third = await connect(relay.transit_url, timeout=WAIT)
        fourth = await connect(relay.transit_url, timeout=WAIT)
        assert (await fourth.receive(100, timeout=WAIT)).startswith(b"too many connections")
        assert await fourth.receive(100, timeout=WAIT) == b""
        for stream in (silent, third):
            with pytest.raises(IncompleteReadError):
                await stream.receive_exactly(1, timeout=WAIT)   # closed, nothing said
        with pytest.raises(IncompleteReadError):
            await lonely.receive_exactly(1, timeout=WAIT)
        transit = relay.stats()["transit"]
        assert transit["handshake_timeouts"] == 2 and transit["lonely"] == 1 and transit["refused"] == 1
        for s in (silent, lonely, third, fourth):
            await s.aclose()


async def test_a_fast_sender_is_held_back_by_a_slow_receiver():
    buffer = 64 * 1024
    async with await start_relay(config(transit_buffer=buffer)) as relay:
        a, b = await pair(relay)
        shrink_buffers(a, snd=32 * 1024)
        shrink_buffers(b, rcv=32 * 1024)
        for s in relay.transit_servers[0].streams:
            shrink_buffers(s, rcv=32 * 1024, snd=32 * 1024)
        chunk = os.urandom(64 * 1024)

        async def flood() -> None:
            while True:
                await a.send(chunk)

        sender = asyncio.get_running_loop().create_task(flood())
        try:
            await wait_stable(lambda: a.bytes_out, quiet=0.3, what="the sender to be held back")
            # what the relay holds for this pair: unread in the sender's stream + unsent to the receiver
            held = sum(len(s._buf) + s.write_buffer_size for s in relay.transit_servers[0].streams)
            assert held <= 2 * buffer + 256 * 1024, held   # read buffer, write buffer, one read in flight
            assert a.bytes_out < 8 * 1024 * 1024          # and the whole path is bounded, not just us
            # the receiver reads again: everything comes through, in order
            sender.cancel()
            total = a.bytes_out - len(hello(b"a" * 16))
            got = 0
            while got < total:
                data = await b.receive(1 << 20, timeout=WAIT)
                assert data
                got += len(data)
            assert got == total
        finally:
            sender.cancel()
            await a.aclose()
            await b.aclose()


def test_serve_relay_prints_its_urls_and_stops_on_sigterm(tmp_path):
    script = ("import asyncio\nfrom socketkit.peer.relay import RelayConfig, serve_relay\n"
              "asyncio.run(serve_relay(RelayConfig(['tcp://127.0.0.1:0'], ['tcp://127.0.0.1:0'])))\n")
    env = cli_env(SOCKETKIT_DATA=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stderr.readline() for _ in range(2)]
        assert lines[0].startswith("peer mailbox listening on ws://127.0.0.1:") and lines[0].rstrip().endswith("/v1")
        assert lines[1].startswith("peer transit relay listening on tcp://127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, proc.stderr.read()
        assert (tmp_path / "peer-relay.db").exists()
    finally:
        proc.kill()
        proc.wait(WAIT)
        proc.stderr.close()
