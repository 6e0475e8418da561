"""relay_handler: forwarding tcp->tcp, tcp->unix, tls->tcp; many at once; half-close; backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import pytest
from helpers import (  # noqa: F401
    WAIT,
    data_dir,
    echo,
    refused_port,
    running_server,
    url,
    wait_for,
    wait_stable,
)

import socketkit.net.relay as relay_module
from socketkit import connect
from socketkit.net.limits import Limits
from socketkit.net.relay import relay_handler
from socketkit.net.stream import Stream

CHUNK = 256 * 1024   # the most one data_received hands over (asyncio and uvloop)
PUMP = 65536         # relay.pump's receive size


@contextlib.asynccontextmanager
async def relay_to(target: str, listen: str = "tcp://127.0.0.1:0", **options):
    async with running_server(relay_handler(target, **options), listen, limits=options.get("limits")) as relay:
        yield relay


@pytest.mark.parametrize("kind", ["tcp->tcp", "tcp->unix", "tls->tcp"])
async def test_relay_forwards(kind, tmp_path, data_dir):  # noqa: F811
    target_ep = f"unix://{tmp_path}/up.sock" if kind == "tcp->unix" else "tcp://127.0.0.1:0"
    listen = "tls://127.0.0.1:0" if kind.startswith("tls") else "tcp://127.0.0.1:0"
    async with running_server(echo, target_ep) as upstream:
        async with relay_to(url(upstream), listen) as relay:
            async with await connect(url(relay), timeout=WAIT) as s:
                for i in range(3):
                    msg = b"message %d through %s\n" % (i, kind.encode())
                    await s.send(msg)
                    assert await s.receive_until(b"\n", timeout=WAIT) == msg
                if kind.startswith("tls"):
                    assert s.tls is not None
            await wait_for(lambda: relay.stats.open == 0 and upstream.stats.open == 0)
            assert upstream.stats.accepted == 1 and relay.stats.errors == 0


async def test_relay_fifty_connections_at_once():
    async with running_server(echo) as upstream, relay_to(url(upstream)) as relay:
        async def one(i: int) -> bytes:
            async with await connect(url(relay), timeout=WAIT) as s:
                payload = hashlib.sha256(b"%d" % i).digest() * 512   # 16 KiB each, distinct
                await s.send(payload)
                return await s.receive_exactly(len(payload), timeout=WAIT) == payload

        results = await asyncio.gather(*(one(i) for i in range(50)))
        assert all(results)
        assert upstream.stats.accepted == 50 and relay.stats.accepted == 50
        await wait_for(lambda: relay.stats.open == 0 and upstream.stats.open == 0)


async def test_relay_half_close_propagates():
    async def count_then_answer(stream: Stream) -> None:
        total = 0
        async for chunk in stream:   # until the client's EOF arrives through the relay
            total += len(chunk)
        await stream.send(b"received %d bytes\n" % total)

    async with running_server(count_then_answer) as upstream, relay_to(url(upstream)) as relay:
        async with await connect(url(relay), timeout=WAIT) as s:
            await s.send(b"x" * 300_000)
            await s.send_eof()
            assert await s.receive_until(b"\n", timeout=WAIT) == b"received 300000 bytes\n"
            assert await s.receive(timeout=WAIT) == b""   # and the upstream's close comes through too


async def test_relay_target_down_closes_the_client():
    # A port held bound but not listening: a closed server's port could be taken by another test meanwhile.
    with refused_port() as port:
        async with relay_to(f"tcp://127.0.0.1:{port}", connect_timeout=2) as relay:
            async with await connect(url(relay), timeout=WAIT) as s:
                assert await s.receive(timeout=WAIT) == b""
            await wait_for(lambda: relay.stats.open == 0)
            assert relay.stats.errors == 0


def _record_upstreams(monkeypatch) -> list[Stream]:
    """Instrument the relay's connect() so the test can look at the relay's upstream streams."""
    made: list[Stream] = []
    real = relay_module.connect

    async def recording(*args, **kwargs):
        stream = await real(*args, **kwargs)
        made.append(stream)
        return stream

    monkeypatch.setattr(relay_module, "connect", recording)
    return made


async def test_relay_backpressure_downstream_slow_reader(monkeypatch):
    """Upstream sends fast, the client through the relay does not read: the relay holds bounded memory."""
    upstreams = _record_upstreams(monkeypatch)
    limits = Limits(read_buffer=64 * 1024, write_buffer=64 * 1024)
    stop = asyncio.Event()
    produced = {"n": 0}

    async def firehose(stream: Stream) -> None:
        block = b"u" * 65536
        while not stop.is_set():
            await stream.send(block)
            produced["n"] += len(block)

    async with running_server(firehose) as upstream, relay_to(url(upstream), limits=limits) as relay:
        s = await connect(url(relay), timeout=WAIT)
        try:
            stalled = await wait_stable(lambda: produced["n"], what="the upstream to stall", timeout=WAIT * 2)
            up = upstreams[0]
            down = relay.streams[0]
            # What the relay holds: unread bytes from upstream + bytes queued towards the client.
            held_in = up.bytes_in - down.bytes_out
            assert held_in <= limits.read_buffer + CHUNK + PUMP
            assert down.write_buffer_size <= limits.write_buffer + PUMP
            assert stalled < 256 * 1024 * 1024
            # Reading releases the whole chain.
            got = 0
            while got < stalled:
                got += len(await s.receive(timeout=WAIT))
            await wait_for(lambda: produced["n"] > stalled)
            stop.set()
        finally:
            await s.aclose()


async def test_relay_backpressure_upstream_slow_reader(monkeypatch):
    """The client sends fast, the upstream does not read: the client's sends stall, relay memory bounded."""
    upstreams = _record_upstreams(monkeypatch)
    limits = Limits(read_buffer=64 * 1024, write_buffer=64 * 1024)
    release = asyncio.Event()
    digest = asyncio.get_running_loop().create_future()

    async def sink(stream: Stream) -> None:
        await release.wait()
        h, n = hashlib.sha256(), 0
        async for chunk in stream:
            h.update(chunk)
            n += len(chunk)
        digest.set_result((n, h.hexdigest()))

    block = bytes(range(256)) * 256   # 64 KiB
    count = 600                      # 37.5 MiB: more than kernel buffers on the way hold
    async with running_server(sink) as upstream, relay_to(url(upstream), limits=limits) as relay:
        s = await connect(url(relay), timeout=WAIT, limits=Limits(write_buffer=64 * 1024))
        sent = {"n": 0}

        async def blast() -> None:
            for _ in range(count):
                await s.send(block)
                sent["n"] += len(block)
            await s.send_eof()

        task = asyncio.ensure_future(blast())
        try:
            stalled = await wait_stable(lambda: sent["n"], what="the client to stall", timeout=WAIT * 2)
            assert stalled < count * len(block), "the sends never stalled"
            up = upstreams[0]
            down = relay.streams[0]
            assert down.bytes_in - up.bytes_out <= limits.read_buffer + CHUNK + PUMP
            assert up.write_buffer_size <= limits.write_buffer + PUMP
            release.set()
            await asyncio.wait_for(task, WAIT * 2)
            n, hexdigest = await asyncio.wait_for(digest, WAIT * 2)
            assert n == count * len(block)
            assert hexdigest == hashlib.sha256(block * count).hexdigest()
        finally:
            task.cancel()
            await s.aclose()


async def test_a_client_reset_through_the_relay_is_not_a_relay_error(caplog):
    import socket
    import struct

    async with running_server(echo) as upstream, relay_to(url(upstream)) as relay:
        raw = socket.create_connection(("127.0.0.1", relay.endpoints[0].port))
        raw.sendall(b"hello")
        await wait_for(lambda: upstream.stats.bytes_in == 5)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
        await wait_for(lambda: relay.stats.open == 0 and upstream.stats.open == 0)
        assert relay.stats.errors == 0
        assert "Traceback" not in caplog.text
