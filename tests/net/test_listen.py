"""Raw-socket listeners (socketkit.net.listen): the handler owns the accepted socket; the socket layer
keeps binding, the connection and per-address limits, counters and the stop."""

from __future__ import annotations

import asyncio
import socket

import pytest
from helpers import WAIT, wait_for

from socketkit.errors import ListenError
from socketkit.net.limits import Limits
from socketkit.net.listen import start_socket_server


async def _echo(sock: socket.socket, peer) -> None:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    while data := await loop.sock_recv(sock, 4096):
        await loop.sock_sendall(sock, data)


async def _client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def test_the_handler_gets_the_socket_and_the_counters_move():
    server = await start_socket_server("tcp://127.0.0.1:0", _echo, name="raw")
    try:
        port = server.endpoints[0].port
        r, w = await _client(port)
        w.write(b"ping")
        assert await asyncio.wait_for(r.readexactly(4), WAIT) == b"ping"
        assert server.stats.open == 1 and server.stats.accepted == 1
        w.close()
        await wait_for(lambda: server.stats.open == 0, what="the closed connection to be counted")
    finally:
        await server.aclose(drain=0)


async def test_per_address_and_total_limits_refuse_and_release_lifts_one():
    hold = asyncio.Event()
    seen: list[socket.socket] = []

    async def park(sock, peer):
        seen.append(sock)
        await hold.wait()

    server = await start_socket_server("tcp://127.0.0.1:0", park, per_address=2, name="raw")
    try:
        port = server.endpoints[0].port
        clients = [await _client(port) for _ in range(2)]
        await wait_for(lambda: len(seen) == 2, what="both connections to reach the handler")
        r, w = await _client(port)  # a third from the same address: closed at once
        assert await asyncio.wait_for(r.read(), WAIT) == b""
        assert server.stats.refused == 1
        server.release(seen[0])     # e.g. authenticated: no longer counted against the address
        r2, w2 = await _client(port)
        await wait_for(lambda: len(seen) == 3, what="the connection after the release to reach the handler")
        assert server.stats.refused == 1
        for _, cw in [*clients, (r2, w2)]:
            cw.close()
    finally:
        hold.set()
        await server.aclose(drain=1)


async def test_max_connections_and_drain_on_close():
    server = await start_socket_server("tcp://127.0.0.1:0", _echo, limits=Limits(max_connections=1))
    port = server.endpoints[0].port
    r, w = await _client(port)
    w.write(b"x")
    await asyncio.wait_for(r.readexactly(1), WAIT)
    r2, _ = await _client(port)
    assert await asyncio.wait_for(r2.read(), WAIT) == b""
    await server.aclose(drain=0)  # the open one is cancelled and its socket closed
    assert await asyncio.wait_for(r.read(), WAIT) == b""


async def test_a_port_in_use_is_a_listen_error():
    first = await start_socket_server("tcp://127.0.0.1:0", _echo)
    try:
        with pytest.raises(ListenError, match="cannot listen"):
            await start_socket_server(f"tcp://127.0.0.1:{first.endpoints[0].port}", _echo)
    finally:
        await first.aclose(drain=0)
