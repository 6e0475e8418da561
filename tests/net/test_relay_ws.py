"""`socketkit relay` with WebSocket endpoints: ws:// (and wss://) listeners bridged to TCP, websockify-style,
and TCP listeners carried over a WebSocket to a ws:// server; backpressure both ways; websockify (PyPI) as the
reference for what a client sees."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys

import pytest
from helpers import WAIT, Spawned, cli_env, echo, running_server, wait_for, wait_stable
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from socketkit.net.connect import connect
from socketkit.net.limits import Limits
from socketkit.web import wsbridge


async def test_ws_listener_to_tcp_both_ways_and_binary_chosen():
    async with running_server(echo) as target, \
            running_server(wsbridge.ws_listener_handler(str(target.endpoints[0]))) as bridge:
        url = f"ws://127.0.0.1:{bridge.endpoints[0].port}/any/path"
        async with ws_connect(url, subprotocols=["binary", "base64"], max_size=None) as ws:
            assert ws.subprotocol == "binary"
            blob = os.urandom(3 << 20)
            await ws.send(blob)
            got = b""
            while len(got) < len(blob):
                got += await ws.recv()
            assert got == blob


async def test_ws_listener_refuses_what_is_not_its_websocket():
    async with running_server(echo) as target, running_server(
            wsbridge.ws_listener_handler(str(target.endpoints[0]), path="/vnc")) as bridge:
        port = bridge.endpoints[0].port
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(f"ws://127.0.0.1:{port}/other"):
                pass
        assert refused.value.response.status_code == 404
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /vnc HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 426")
        writer.close()


async def test_tcp_listener_to_a_ws_server():
    """relay tcp://... ws://...: each TCP connection over a new WebSocket (here to a ws listener + echo)."""
    async with running_server(echo) as target, \
            running_server(wsbridge.ws_listener_handler(str(target.endpoints[0]))) as ws_side, \
            running_server(wsbridge.ws_target_handler(f"ws://127.0.0.1:{ws_side.endpoints[0].port}/x")) as tcp_side:
        stream = await connect(str(tcp_side.endpoints[0]))
        blob = os.urandom(1 << 20)
        await stream.send(blob)
        got = await stream.receive_exactly(len(blob), timeout=WAIT)
        assert got == blob
        await stream.send_eof()
        assert await stream.receive(timeout=WAIT) == b""  # the end travels as a close frame and back
        await stream.aclose()


async def test_a_slow_websocket_reader_holds_back_the_tcp_server_with_bounded_buffers():
    produced = 0
    stalled = asyncio.Event()

    async def firehose(stream):
        nonlocal produced
        chunk = b"x" * 65536
        try:
            while produced < 256 << 20:
                await stream.send(chunk)
                produced += len(chunk)
        except Exception:  # noqa: BLE001 - the client goes away at the end
            pass
        stalled.set()

    limits = Limits(read_buffer=64 * 1024, write_buffer=64 * 1024)
    async with running_server(firehose) as target, running_server(
            wsbridge.ws_listener_handler(str(target.endpoints[0]), limits=limits), limits=limits) as bridge:
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.endpoints[0].port, limit=1 << 20)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        # Read nothing: the firehose must stall with only the kernel's and the bridge's bounded buffers
        # filled, far below what it could send.
        stuck = await wait_stable(lambda: produced, quiet=0.5, timeout=10, what="the producer to stall")
        assert stuck < 32 << 20, f"{stuck} bytes went out while nobody read"
        bridge_stream = next(iter(bridge.streams))
        assert bridge_stream.write_buffer_size <= 2 * 65536 + 65536
        # And it starts again once the browser reads.
        await reader.readexactly(4 << 20)
        await wait_for(lambda: produced > stuck + (2 << 20), what="the producer to move again")
        writer.close()


def _websockify_available() -> bool:
    return subprocess.run([sys.executable, "-c", "import websockify"], capture_output=True).returncode == 0


async def test_websockify_as_the_reference_the_same_client_works_against_both(tmp_path):
    """A websockets client, an echo behind: the same bytes through websockify and through `socketkit relay
    ws://...`; only the refusal differs (websockify has no token check on a plain run)."""
    if not _websockify_available():
        pytest.skip("websockify is not installed (pip install websockify): no reference run")
    async with running_server(echo) as target:
        tport = target.endpoints[0].port
        import socket

        # websockify gets its listening socket made here (--inetd: on stdin), so no other test can take the
        # port between a probe and websockify's own bind.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(16)
            wport = s.getsockname()[1]
            reference = subprocess.Popen([sys.executable, "-m", "websockify", "--inetd", f"127.0.0.1:{tport}"],
                                         stdin=s.fileno(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Spawned("relay", "ws://127.0.0.1:0/websockify", f"tcp://127.0.0.1:{tport}", env=cli_env()) as ours:
                sport = int((await asyncio.to_thread(ours.read_until, r"listening on tcp://127\.0\.0\.1:(\d+)")).group(1))

                async def roundtrip(port: int) -> tuple[str | None, bytes]:
                    async with ws_connect(f"ws://127.0.0.1:{port}/websockify", subprotocols=["binary"]) as ws:
                        await ws.send(b"\x00hello\xff" * 1000)
                        got = b""
                        while len(got) < 7000:
                            got += await ws.recv()
                        return ws.subprotocol, got

                async def reference_ready():
                    try:
                        await roundtrip(wport)
                        return True
                    except OSError:
                        return False

                await wait_for(reference_ready, timeout=10, what="websockify to listen")
                assert await roundtrip(sport) == await roundtrip(wport) == ("binary", b"\x00hello\xff" * 1000)
                ours.signal()
                assert (await asyncio.to_thread(ours.wait))[0] == 0
        finally:
            reference.kill()
            reference.wait()


async def test_relay_cli_one_line_errors():
    for args, text in ((("ws://127.0.0.1:0", "ws://127.0.0.1:1/x"), b"not both"),
                       (("ws://127.0.0.1:0", "bogus://x"), b"bogus")):
        with Spawned("relay", *args, env=cli_env()) as proc:   # killed if it does not exit in time
            done = await asyncio.to_thread(proc.wait)
        assert done[0] != 0 and text in done[2] and b"Traceback" not in done[2], done


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_wss_listener_with_the_development_certificate():
    from socketkit.net import certs
    from socketkit.web.wsclient import WebSocketClient

    ca_cert, _ = certs.ensure_ca()
    ep, path = wsbridge.listen_endpoint_of("wss://127.0.0.1:0/secure")
    assert ep.is_tls and path == "/secure"
    async with running_server(echo) as target, \
            running_server(wsbridge.ws_listener_handler(str(target.endpoints[0]), path=path), str(ep)) as bridge:
        ws = await WebSocketClient.connect(f"wss://127.0.0.1:{bridge.endpoints[0].port}/secure",
                                           tls_options={"ca": str(ca_cert)}, subprotocols=("binary",))
        try:
            assert ws.subprotocol == "binary"
            await ws.send_bytes(b"over tls")
            assert await ws.receive(timeout=WAIT) == b"over tls"
        finally:
            await ws.aclose()
