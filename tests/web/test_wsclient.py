"""socketkit.web.wsclient against real servers (socketkit's ASGI WebSocket server, the `websockets` package's
server), and the frame codec it stands on (socketkit.proto.wsframes) against hypothesis."""

from __future__ import annotations

import asyncio
import os

import pytest
from helpers import WAIT
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import serve as ws_serve

import socketkit.web
from socketkit.proto import wsframes as wf
from socketkit.web.wsclient import WebSocketClient, WebSocketError, WebSocketProtocolError, endpoint_of


async def echo_app(scope, receive, send):
    if scope["type"] != "websocket":
        return
    await receive()
    offered = scope["subprotocols"]
    await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "close please":
            await send({"type": "websocket.close", "code": 4001, "reason": "asked"})
            return
        await send({"type": "websocket.send", **{k: message[k] for k in ("text", "bytes") if message.get(k) is not None}})


async def socketkit_server(**config):
    return await socketkit.web.start(echo_app, ["tcp://127.0.0.1:0"], **config)


async def test_text_binary_subprotocol_and_close_code():
    web = await socketkit_server()
    try:
        port = web.server.endpoints[0].port
        ws = await WebSocketClient.connect(f"ws://127.0.0.1:{port}/", subprotocols=("v2.example",))
        assert ws.subprotocol == "v2.example"
        await ws.send_text("grüße ✓")
        assert await ws.receive(timeout=WAIT) == "grüße ✓"
        blob = os.urandom(300_000)
        await ws.send_bytes(blob)
        assert await ws.receive(timeout=WAIT) == blob
        await ws.send_text("close please")
        assert await ws.receive(timeout=WAIT) is None
        assert (ws.close_code, ws.close_reason) == (4001, "asked")
    finally:
        await web.aclose()


async def test_streaming_a_message_larger_than_max_message_in_pieces():
    async def big(ws):
        await ws.send(b"z" * (5 << 20))
        await ws.wait_closed()

    async with ws_serve(big, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await WebSocketClient.connect(f"ws://127.0.0.1:{port}/", max_message=10 << 20)
        total, last = 0, False
        while not last:
            piece, last = await ws.receive_some(timeout=WAIT)
            assert len(piece) <= 256 * 1024 + 16
            total += len(piece)
        assert total == 5 << 20
        await ws.aclose()
        # and a whole message past the bound is one readable error (1009 to the server)
        ws = await WebSocketClient.connect(f"ws://127.0.0.1:{port}/", max_message=1 << 20)
        with pytest.raises(WebSocketProtocolError, match="larger than 1048576 bytes"):
            await ws.receive(timeout=WAIT)


async def test_pings_are_answered_and_invalid_utf8_is_refused():
    async def pinger(ws):
        await ws.ping(b"are you there")  # websockets waits for our pong
        await ws.send(b"after ping")
        await ws.wait_closed()

    async with ws_serve(pinger, "127.0.0.1", 0, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await WebSocketClient.connect(f"ws://127.0.0.1:{port}/")
        assert await ws.receive(timeout=WAIT) == b"after ping"
        await ws.aclose()

    async def bad_text(reader, writer):  # a server whose text frame is not UTF-8
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b": ", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key"))
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + wf.accept_for(key) + b"\r\n\r\n\x81\x02\xff\xfe")
        await reader.read()
        writer.close()

    server = await asyncio.start_server(bad_text, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        ws = await WebSocketClient.connect(f"ws://127.0.0.1:{port}/")
        with pytest.raises(WebSocketProtocolError, match="not UTF-8"):
            await ws.receive(timeout=WAIT)


async def test_refusals_and_bad_urls_are_one_line():
    with pytest.raises(WebSocketError, match="bad WebSocket URL"):
        await WebSocketClient.connect("http://example.org/")
    web = await socketkit_server()
    try:
        port = web.server.endpoints[0].port
        reader_writer = await asyncio.open_connection("127.0.0.1", port)
        reader_writer[1].close()
        with pytest.raises(WebSocketError, match="not a WebSocket server|refused"):
            # a plain HTTP port's answer to something that is not an upgrade it serves
            await WebSocketClient.connect(f"ws://127.0.0.1:{port}/", headers=(("Sec-WebSocket-Version", "8"),))
    finally:
        await web.aclose()


def test_endpoint_of():
    assert endpoint_of("ws://example.org/chat?x=1") == ("tcp://example.org:80", "example.org", "/chat?x=1")
    assert endpoint_of("wss://[::1]:8443/") == ("tls://[::1]:8443", "[::1]:8443", "/")
    assert endpoint_of("wss://h.example/", {"ca": "ca.pem"})[0] == "tls://h.example:443?ca=ca.pem&sni=h.example"


# -- the frame codec ---------------------------------------------------------------------------------------
def naive_mask(data: bytes, key: bytes, phase: int = 0) -> bytes:
    return bytes(b ^ key[(i + phase) % 4] for i, b in enumerate(data))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000), st.binary(min_size=4, max_size=4), st.integers(0, 3))
def test_mask_matches_the_definition(data, key, phase):
    assert bytes(wf.mask(data, key, phase)) == naive_mask(data, key, phase)
    out = bytearray(len(data) + 5)
    wf.mask_into(out, 5, data, key, phase)
    assert bytes(out[5:]) == naive_mask(data, key, phase)


def test_mask_without_numpy(monkeypatch):
    monkeypatch.setattr(wf, "_np", None)
    data, key = os.urandom(1000), os.urandom(4)
    assert bytes(wf.mask(data, key, 3)) == naive_mask(data, key, 3)


frames_st = st.lists(st.tuples(st.binary(max_size=70_000), st.booleans()), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(frames_st, st.data())
def test_parser_returns_every_payload_byte_whatever_the_cuts(messages, data):
    """Masked client frames, fragmented, with pings between them, cut at random points: the bridge's parser
    hands on exactly the payload bytes, and answers every ping."""
    wire = b""
    expected = b""
    for payload, fragmented in messages:
        key = os.urandom(4)
        if fragmented and len(payload) > 1:
            half = len(payload) // 2
            wire += wf.header(half, wf.BINARY, fin=False, mask_key=key) + wf.mask(payload[:half], key)
            wire += wf.frame(wf.PING, b"p", client=True)
            wire += wf.header(len(payload) - half, wf.CONTINUATION, mask_key=key) + wf.mask(payload[half:], key)
        else:
            wire += wf.header(len(payload), mask_key=key) + wf.mask(payload, key)
        expected += payload
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    parser = wf.FrameParser(masked=True)
    got, pings, at = bytearray(), 0, 0
    for cut in [*cuts, len(wire)]:
        buf = bytearray(cut - at)
        filled, events = parser.feed_into(wire[at:cut], buf)
        got += buf[:filled]
        pings += sum(isinstance(e, wf.Ping) for e in events)
        at = cut
    assert bytes(got) == expected
    assert pings == sum(1 for p, f in messages if f and len(p) > 1)


@pytest.mark.parametrize("wire, code", [
    (b"\x82\x05hello", 1002),                                 # a client frame without a mask
    (b"\x81\x80abcd", 1003),                                  # text, on a binary bridge
    (b"\xc2\x80abcd", 1002),                                  # RSV1 without an extension
    (b"\x80\x80abcd", 1002),                                  # continuation of nothing
    (b"\x09\x80abcd", 1002),                                  # a fragmented ping
    (b"\x89\xfe\x00\x7eabcd", 1002),                          # a ping longer than 125 bytes
    (b"\x82\xfe\x00\x05abcd", 1002),                          # a length not in its shortest form
    (b"\x83\x80abcd", 1002),                                  # an unknown opcode
    (b"\x88\x81abcd" + wf.mask(b"\x03", b"abcd"), 1002),      # a one-byte close payload
])
def test_parser_refuses_protocol_errors(wire, code):
    with pytest.raises(wf.FrameError) as error:
        wf.FrameParser(masked=True).feed(wire)
    assert error.value.code == code


def test_close_frame_and_what_follows_it():
    parser = wf.FrameParser(masked=True)
    close = wf.frame(wf.CLOSE, wf.close_payload(1001, "bye"), client=True)
    events = parser.feed(close + wf.frame(wf.BINARY, b"late", client=True))
    assert events == [wf.Close(1001, "bye")] and parser.closed


def test_client_handshake_checks():
    key = wf.new_key()
    good = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + wf.accept_for(key))
    assert wf.check_response(good, key) is None
    assert wf.check_response(good + b"\r\nSec-WebSocket-Protocol: b", key, ("a", "b")) == "b"
    for bad in (good.replace(b"101", b"200"), good.replace(wf.accept_for(key), b"x"),
                good + b"\r\nSec-WebSocket-Protocol: c", good + b"\r\nSec-WebSocket-Extensions: permessage-deflate"):
        with pytest.raises(wf.HandshakeRefused):
            wf.check_response(bad, key, ("a", "b"))
