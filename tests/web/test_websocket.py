"""ASGI WebSocket on a real socketkit web server over loopback: the `websockets` client and raw sockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import struct
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus

import socketkit.web
from socketkit.web.websocket_handshake import accept_key

WAIT = 10.0


@contextlib.asynccontextmanager
async def serving(app, **config):
    web = await socketkit.web.start(app, ["tcp://127.0.0.1:0"], **config)
    try:
        yield web.server.endpoints[0].port
    finally:
        await web.aclose(drain=0)


def connect(port: int, path: str = "/", **options):
    options.setdefault("proxy", None)
    options.setdefault("open_timeout", WAIT)
    return ws_connect(f"ws://127.0.0.1:{port}{path}", **options)


async def echo_app(scope, receive, send):
    if scope["type"] == "lifespan":
        return
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


def recording_app(log: asyncio.Queue, *, accept: dict | None = None, then=None):
    """Accepts, puts every received message and the scope on `log`; `then(send)` runs after accept."""

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return
        await log.put(scope)
        await receive()
        await send(accept or {"type": "websocket.accept"})
        if then is not None:
            await then(receive, send)
            return
        while True:
            message = await receive()
            await log.put(message)
            if message["type"] == "websocket.disconnect":
                return

    return app


def assert_no_server_errors(caplog) -> None:
    for bad in ("handler failed", "Fatal error", "InvalidStateError", "reader failed"):
        assert bad not in caplog.text


# -- raw socket helpers -----------------------------------------------------------------------------
def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return b0 & 0x0F, await reader.readexactly(n)


def handshake(key: bytes | None = None, *, version: bytes = b"13", method: bytes = b"GET",
              extra: bytes = b"") -> bytes:
    lines = [method + b" /ws HTTP/1.1", b"Host: 127.0.0.1", b"Upgrade: websocket", b"Connection: Upgrade"]
    if key is not None:
        lines.append(b"Sec-WebSocket-Key: " + key)
    if version:
        lines.append(b"Sec-WebSocket-Version: " + version)
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


KEY = base64.b64encode(b"0123456789abcdef")


async def raw_open(port: int, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    return reader, writer, head


async def raw_response(port: int, request: bytes) -> tuple[bytes, bytes]:
    reader, writer, head = await raw_open(port, request)
    body = await asyncio.wait_for(reader.read(), WAIT)
    writer.close()
    return head, body


# -- echo and messages ------------------------------------------------------------------------------
async def test_echo_text_and_binary():
    async with serving(echo_app) as port, connect(port) as ws:
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\x01\xff")
        assert await ws.recv() == b"\x00\x01\xff"
        await ws.send("")
        assert await ws.recv() == ""


async def test_scope():
    log: asyncio.Queue = asyncio.Queue()
    async with serving(recording_app(log), root_path="/root") as port:
        async with connect(port, "/chat/r%C3%A9?x=1", additional_headers={"X-Test": "yes"}):
            scope = await asyncio.wait_for(log.get(), WAIT)
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/root/chat/ré"
    assert scope["raw_path"] == b"/root/chat/r%C3%A9"
    assert scope["query_string"] == b"x=1"
    assert scope["root_path"] == "/root"
    assert scope["asgi"]["spec_version"] == "2.4"
    assert scope["http_version"] == "1.1"
    assert (b"x-test", b"yes") in scope["headers"]
    assert scope["client"][0] == "127.0.0.1" and scope["server"][0] == "127.0.0.1"
    assert scope["subprotocols"] == []
    assert "websocket.http.response" in scope["extensions"]


async def test_fragmented_messages_are_reassembled():
    async with serving(echo_app) as port, connect(port, compression=None) as ws:
        await ws.send(["hel", "lo ", "world"])  # an iterable is sent as fragments
        assert await ws.recv() == "hello world"
        await ws.send([b"ab", b"cd", b""])
        assert await ws.recv() == b"abcd"


async def test_fragmented_with_ping_in_between_raw():
    async with serving(echo_app) as port:
        reader, writer, head = await raw_open(port, handshake(KEY))
        assert head.startswith(b"HTTP/1.1 101")
        writer.write(frame(0x1, b"ab", fin=False) + frame(0x9, b"p") + frame(0x0, b"cd"))
        assert await asyncio.wait_for(read_frame(reader), WAIT) == (0xA, b"p")
        assert await asyncio.wait_for(read_frame(reader), WAIT) == (0x1, b"abcd")
        writer.close()


async def test_message_up_to_the_limit_and_over_it():
    limit = 256 * 1024
    async with serving(echo_app, ws_max_size=limit) as port:
        async with connect(port, compression=None, max_size=None) as ws:
            await ws.send(b"x" * limit)
            assert await ws.recv() == b"x" * limit
            await ws.send("é" * (limit // 2))  # exactly `limit` bytes of UTF-8
            assert len(await ws.recv()) == limit // 2
            await ws.send(b"x" * (limit + 1))
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), WAIT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        async with connect(port, compression=None, max_size=None) as ws:  # over the limit in fragments
            await ws.send([b"x" * (limit // 2), b"y" * (limit // 2 + 1)])
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), WAIT)
            assert info.value.rcvd.code == 1009


async def test_disconnect_code_1009_reaches_the_app():
    log: asyncio.Queue = asyncio.Queue()
    async with serving(recording_app(log), ws_max_size=1000) as port:
        async with connect(port, compression=None) as ws:
            await log.get()
            await ws.send(b"x" * 1001)
            message = await asyncio.wait_for(log.get(), WAIT)
    assert message["type"] == "websocket.disconnect" and message["code"] == 1009


# -- permessage-deflate -----------------------------------------------------------------------------
async def test_permessage_deflate_negotiated():
    async with serving(echo_app) as port, connect(port) as ws:
        value = ws.response.headers["Sec-WebSocket-Extensions"]
        assert value.startswith("permessage-deflate")
        text = "compress me " * 1000
        await ws.send(text)
        assert await ws.recv() == text
        for i in range(20):  # context takeover across messages
            await ws.send(f"{i} {text}")
            assert await ws.recv() == f"{i} {text}"


async def test_permessage_deflate_off():
    async with serving(echo_app, ws_per_message_deflate=False) as port, connect(port) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        await ws.send("plain")
        assert await ws.recv() == "plain"


async def test_permessage_deflate_quoted_and_bad_offers():
    async with serving(echo_app) as port:
        ext = b'Sec-WebSocket-Extensions: permessage-deflate; unknown_param, ' \
              b'permessage-deflate; client_max_window_bits="10"\r\n'
        reader, writer, head = await raw_open(port, handshake(KEY, extra=ext))
        assert b"sec-websocket-extensions: permessage-deflate; client_max_window_bits=10\r\n" in head
        writer.close()


async def test_deflate_bomb_is_stopped_at_the_limit():
    async with serving(echo_app, ws_max_size=100_000) as port:
        async with connect(port, max_size=None) as ws:
            await ws.send(b"\x00" * 10_000_000)  # compresses to ~10 KB
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), WAIT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009


# -- ping / pong / keepalive ------------------------------------------------------------------------
async def test_client_ping_gets_pong():
    async with serving(echo_app) as port, connect(port) as ws:
        latency = await asyncio.wait_for(await ws.ping(b"abc"), WAIT)
        assert latency >= 0


async def test_server_pings_and_live_client_stays():
    # Client and server share this event loop: a pause of the whole process longer than the ping timeout
    # (a loaded machine) would drop the client whatever it answered, so the timeout is not tiny; the
    # pause below outlasts it, so a server that did not take the answers as signs of life would have
    # dropped the client by then.
    async with serving(echo_app, ws_ping_interval=0.05, ws_ping_timeout=1.0) as port:
        async with connect(port, ping_interval=None) as ws:  # the client answers pings on its own
            await asyncio.sleep(1.3)
            await ws.send("still here")
            assert await ws.recv() == "still here"


async def test_dead_peer_is_dropped():
    log: asyncio.Queue = asyncio.Queue()
    async with serving(recording_app(log), ws_ping_interval=0.05, ws_ping_timeout=0.1) as port:
        reader, writer, head = await raw_open(port, handshake(KEY))
        assert head.startswith(b"HTTP/1.1 101")
        opcode, payload = await asyncio.wait_for(read_frame(reader), WAIT)
        assert opcode == 0x9 and len(payload) == 4  # a ping, that we never answer
        await log.get()  # the scope
        message = await asyncio.wait_for(log.get(), WAIT)
        assert message == {"type": "websocket.disconnect", "code": 1006, "reason": "keepalive ping timeout"}
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await asyncio.wait_for(reader.read(1024), WAIT):
                pass
        writer.close()


async def test_pong_from_raw_client_keeps_it_alive():
    # (a ping timeout a process pause on a loaded machine does not reach: see the test above. Each ping
    # comes only once the one before it was answered, or after the whole timeout: five in less than
    # four timeouts were answered by our pongs)
    async with serving(echo_app, ws_ping_interval=0.05, ws_ping_timeout=1.0) as port:
        reader, writer, _ = await raw_open(port, handshake(KEY))
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(5):
            opcode, payload = await asyncio.wait_for(read_frame(reader), WAIT)
            assert opcode == 0x9
            writer.write(frame(0xA, payload))
        assert loop.time() - start < 4.0, "pings came only after their timeouts: the pongs were not seen"
        writer.write(frame(0x1, b"alive"))
        while True:
            opcode, payload = await asyncio.wait_for(read_frame(reader), WAIT)
            if opcode != 0x9:
                break
        assert (opcode, payload) == (0x1, b"alive")
        writer.close()


# -- closing ----------------------------------------------------------------------------------------
async def test_client_close_code_reaches_the_app_and_is_echoed():
    log: asyncio.Queue = asyncio.Queue()
    async with serving(recording_app(log)) as port:
        async with connect(port) as ws:
            await log.get()
            await ws.close(4000, "bye")
            assert ws.close_code == 4000 and ws.close_reason == "bye"  # the server's echo
        message = await asyncio.wait_for(log.get(), WAIT)
    assert message == {"type": "websocket.disconnect", "code": 4000, "reason": "bye"}


async def test_server_close_code_reaches_the_client():
    async def then(receive, send):
        await send({"type": "websocket.close", "code": 4001, "reason": "nope"})
        assert (await receive())["type"] == "websocket.disconnect"

    async with serving(recording_app(asyncio.Queue(), then=then)) as port, connect(port) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), WAIT)
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "nope")


async def test_app_returning_closes_with_1000():
    async def then(receive, send):
        await send({"type": "websocket.send", "text": "one"})

    async with serving(recording_app(asyncio.Queue(), then=then)) as port, connect(port) as ws:
        assert await ws.recv() == "one"
        with pytest.raises(ConnectionClosedOK) as info:
            await asyncio.wait_for(ws.recv(), WAIT)
        assert info.value.rcvd.code == 1000


async def test_send_after_close_raises_oserror():
    outcome: asyncio.Queue = asyncio.Queue()

    async def then(receive, send):
        message = await receive()
        await outcome.put(message)
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except OSError as e:
            await outcome.put(e)
        else:
            await outcome.put(None)
        await send({"type": "websocket.close"})  # closing what is closed is allowed

    async with serving(recording_app(asyncio.Queue(), then=then)) as port:
        async with connect(port) as ws:
            await ws.close()
        assert (await asyncio.wait_for(outcome.get(), WAIT))["type"] == "websocket.disconnect"
        assert isinstance(await asyncio.wait_for(outcome.get(), WAIT), OSError)


async def test_close_without_code_is_1005():
    log: asyncio.Queue = asyncio.Queue()
    async with serving(recording_app(log)) as port:
        reader, writer, _ = await raw_open(port, handshake(KEY))
        await log.get()
        writer.write(frame(0x8, b""))
        assert await asyncio.wait_for(read_frame(reader), WAIT) == (0x8, b"")  # echoed: no code either
        message = await asyncio.wait_for(log.get(), WAIT)
        writer.close()
    assert message["code"] == 1005


async def test_server_shutdown_ends_open_websockets(caplog):
    log: asyncio.Queue = asyncio.Queue()
    web = await socketkit.web.start(recording_app(log), ["tcp://127.0.0.1:0"])
    port = web.server.endpoints[0].port
    async with connect(port) as ws:
        await log.get()
        await asyncio.wait_for(web.aclose(drain=0), WAIT)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), WAIT)
    assert_no_server_errors(caplog)


async def test_a_stopping_server_says_going_away_at_once_instead_of_waiting_its_drain(caplog):
    """An open WebSocket owes nothing to finish: a stopping server starts the close handshake (1001) right
    away, the app sees websocket.disconnect, and the stop does not wait out a long drain."""
    log: asyncio.Queue = asyncio.Queue()
    web = await socketkit.web.start(recording_app(log), ["tcp://127.0.0.1:0"])
    port = web.server.endpoints[0].port
    stopping = None
    try:
        async with connect(port) as ws:
            await log.get()
            stopping = asyncio.create_task(web.aclose(drain=60))  # far longer than the test's waits
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), WAIT)
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "server shutting down")
            message = await asyncio.wait_for(log.get(), WAIT)
            assert message["type"] == "websocket.disconnect" and message["code"] == 1001
            await asyncio.wait_for(stopping, WAIT)
    finally:
        if stopping is None or not stopping.done():
            if stopping is not None:
                stopping.cancel()
            await web.aclose(drain=0)
    assert_no_server_errors(caplog)


async def test_lifespan_state_in_scope():
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            scope["state"]["greeting"] = "hi"
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": scope["state"]["greeting"]})

    async with serving(app) as port, connect(port) as ws:
        assert await ws.recv() == "hi"


async def test_client_vanishing_gives_1006():
    log: asyncio.Queue = asyncio.Queue()
    async with serving(recording_app(log)) as port:
        reader, writer, _ = await raw_open(port, handshake(KEY))
        await log.get()
        writer.transport.abort()
        message = await asyncio.wait_for(log.get(), WAIT)
    assert message["type"] == "websocket.disconnect" and message["code"] == 1006


async def test_invalid_utf8_closes_with_1007():
    log: asyncio.Queue = asyncio.Queue()
    async with serving(recording_app(log)) as port:
        reader, writer, _ = await raw_open(port, handshake(KEY))
        writer.write(frame(0x1, b"ok \xff\xfe"))
        opcode, payload = await asyncio.wait_for(read_frame(reader), WAIT)
        assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1007
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # and the server closed TCP
        await log.get()
        assert (await asyncio.wait_for(log.get(), WAIT))["code"] == 1007
        writer.close()


@pytest.mark.parametrize("bad", [
    frame(0x1, b"unmasked", mask=False),
    frame(0x3, b"reserved opcode"),
    frame(0x9, b"fragmented ping", fin=False),
    frame(0x0, b"continuation without a start"),
    frame(0x1, b"rsv bits", rsv=0x20),
], ids=["unmasked", "reserved-opcode", "fragmented-ping", "orphan-continuation", "rsv-bits"])
async def test_protocol_errors_close_with_1002(bad):
    async with serving(echo_app, ws_per_message_deflate=False) as port:
        reader, writer, _ = await raw_open(port, handshake(KEY))
        writer.write(bad)
        opcode, payload = await asyncio.wait_for(read_frame(reader), WAIT)
        assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1002
        writer.close()


async def test_close_handshake_raw():
    async with serving(echo_app) as port:
        reader, writer, _ = await raw_open(port, handshake(KEY))
        writer.write(frame(0x8, struct.pack("!H", 1001) + b"away"))
        assert await asyncio.wait_for(read_frame(reader), WAIT) == (0x8, struct.pack("!H", 1001) + b"away")
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        writer.close()


# -- handshake: subprotocols, rejection, denial, errors --------------------------------------------------
async def test_subprotocol_selection():
    log: asyncio.Queue = asyncio.Queue()

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        await log.put(scope["subprotocols"])
        await receive()
        await send({"type": "websocket.accept", "subprotocol": scope["subprotocols"][-1],
                    "headers": [(b"x-extra", b"1")]})
        await receive()

    async with serving(app) as port, connect(port, subprotocols=["chat", "superchat"]) as ws:
        assert ws.subprotocol == "superchat"
        assert ws.response.headers["x-extra"] == "1"
        assert await log.get() == ["chat", "superchat"]


async def test_reject_before_accept_is_403(caplog):
    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.close"})

    async with serving(app) as port:
        with pytest.raises(InvalidStatus) as info:
            async with connect(port):
                pass
        assert info.value.response.status_code == 403
    assert_no_server_errors(caplog)


async def test_denial_response():
    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.http.response.start", "status": 418,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "websocket.http.response.body", "body": b"tea", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"pot"})

    async with serving(app) as port:
        with pytest.raises(InvalidStatus) as info:
            async with connect(port):
                pass
        assert info.value.response.status_code == 418
        assert info.value.response.body == b"teapot"


async def test_app_exception_after_accept_is_1011(caplog):
    async def then(receive, send):
        raise ValueError("boom")

    async with serving(recording_app(asyncio.Queue(), then=then)) as port, connect(port) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), WAIT)
        assert info.value.rcvd.code == 1011
    assert "boom" in caplog.text


async def test_app_exception_before_accept_is_500():
    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        raise ValueError("boom")

    async with serving(app) as port:
        head, _ = await raw_response(port, handshake(KEY))
        assert head.startswith(b"HTTP/1.1 500")


async def test_app_returning_without_accept_is_500():
    async def app(scope, receive, send):
        return

    async with serving(app) as port:
        head, _ = await raw_response(port, handshake(KEY))
        assert head.startswith(b"HTTP/1.1 500")


@pytest.mark.parametrize(("request_bytes", "status"), [
    (handshake(None), b"400"),
    (handshake(b"c2hvcnQ="), b"400"),               # base64 of 5 bytes
    (handshake(b"not base64 at all!!"), b"400"),
    (handshake(KEY, version=b"8"), b"426"),
    (handshake(KEY, version=b""), b"426"),
    (handshake(KEY, method=b"POST", extra=b"Content-Length: 0\r\n"), b"400"),
])
async def test_invalid_handshakes(request_bytes, status, caplog):
    async with serving(echo_app) as port:
        head, _ = await raw_response(port, request_bytes)
        assert head.startswith(b"HTTP/1.1 " + status), head
        if status == b"426":
            assert b"sec-websocket-version: 13\r\n" in head.lower()
    assert_no_server_errors(caplog)


async def test_accept_header_and_frames_right_after_the_request():
    async with serving(echo_app) as port:
        # The first frame is sent in the same segment as the handshake: it must not be lost.
        reader, writer, head = await raw_open(port, handshake(KEY) + frame(0x1, b"early"))
        assert b"sec-websocket-accept: " + accept_key(KEY) + b"\r\n" in head
        assert await asyncio.wait_for(read_frame(reader), WAIT) == (0x1, b"early")
        writer.close()


# -- load and flow control ------------------------------------------------------------------------------
async def test_100_concurrent_connections():
    async with serving(echo_app) as port:
        async def client(i: int) -> None:
            async with connect(port) as ws:
                for j in range(5):
                    await ws.send(f"{i}-{j}")
                    assert await ws.recv() == f"{i}-{j}"

        await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(100))), 20)


async def test_flooding_client_is_slowed_and_control_frames_still_work():
    received = []
    release = asyncio.Event()

    async def then(receive, send):
        await release.wait()  # a busy app: nothing is received for a while
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            received.append(message["bytes"])
            if len(received) == 200:
                await send({"type": "websocket.send", "text": "done"})

    async with serving(recording_app(asyncio.Queue(), then=then)) as port:
        async with connect(port, compression=None, max_size=None, write_limit=2**16) as ws:
            chunk = b"z" * 65536

            async def flood():
                for _ in range(200):
                    await ws.send(chunk)

            sender = asyncio.create_task(flood())
            await asyncio.sleep(0.5)
            assert not sender.done()  # 13 MB cannot all be buffered: TCP pushed back
            release.set()
            await asyncio.wait_for(sender, WAIT)
            assert await asyncio.wait_for(ws.recv(), WAIT) == "done"
            latency = await asyncio.wait_for(await ws.ping(), WAIT)
            assert latency >= 0
    assert len(received) == 200 and all(r == chunk for r in received)


async def test_app_busy_sending_still_answers_pings():
    async def then(receive, send):
        for _ in range(200):
            await send({"type": "websocket.send", "bytes": b"y" * 65536})
        await receive()

    async with serving(recording_app(asyncio.Queue(), then=then)) as port:
        async with connect(port, compression=None, max_size=None, ping_interval=None) as ws:
            assert len(await ws.recv()) == 65536
            pong = await ws.ping(b"x")
            for _ in range(199):
                await ws.recv()
            await asyncio.wait_for(pong, WAIT)


# -- frameworks and browsers ------------------------------------------------------------------------
async def test_starlette_websocket_endpoint():
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    disconnects: asyncio.Queue = asyncio.Queue()

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol="v1")
        name = websocket.query_params.get("name", "?")
        try:
            while True:
                text = await websocket.receive_text()
                await websocket.send_json({"hello": name, "echo": text})
        except Exception as e:  # WebSocketDisconnect
            await disconnects.put(getattr(e, "code", None))

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    async with serving(app) as port:
        async with connect(port, "/ws?name=ann", subprotocols=["v1"]) as ws:
            assert ws.subprotocol == "v1"
            await ws.send("hi")
            assert await ws.recv() == '{"hello":"ann","echo":"hi"}'
        assert await asyncio.wait_for(disconnects.get(), WAIT) == 1000


CHROMIUM_PAGE = b"""<!doctype html><meta charset=utf-8><script>
const ws = new WebSocket(`ws://${location.host}/ws`);
const got = [];
ws.onopen = () => { ws.send("text from chromium"); ws.send(new Uint8Array([1, 2, 3])); };
ws.binaryType = "arraybuffer";
ws.onmessage = (e) => {
  got.push(typeof e.data === "string" ? e.data : Array.from(new Uint8Array(e.data)).join(","));
  if (got.length === 2) {
    ws.close(1000);
    fetch("/result", {method: "POST", body: JSON.stringify({got, ext: ws.extensions})});
  }
};
</script>"""


async def test_chromium(tmp_path):
    """Headless Chromium opens a WebSocket to the server, echoes text and binary, reports back."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium); browser interop not tested")
    results: asyncio.Queue[bytes] = asyncio.Queue()

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return
        if scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    return
                echo = {"type": "websocket.send"}
                if msg.get("text") is not None:
                    echo["text"] = "echo: " + msg["text"]
                else:
                    echo["bytes"] = msg["bytes"]
                await send(echo)
        body = b""
        if scope["path"] == "/result":
            while True:
                part = await receive()
                body += part.get("body", b"")
                if not part.get("more_body"):
                    break
            await results.put(body)
            page = b"ok"
        else:
            page = CHROMIUM_PAGE
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8")]})
        await send({"type": "http.response.body", "body": page})

    async with serving(app) as port:
        proc = await asyncio.create_subprocess_exec(
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0",
            f"http://127.0.0.1:{port}/",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
        )
        try:
            report = json.loads(await asyncio.wait_for(results.get(), 20))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the browser and every process it started
            await proc.wait()
    assert report["got"] == ["echo: text from chromium", "1,2,3"]
    assert "permessage-deflate" in report["ext"]
