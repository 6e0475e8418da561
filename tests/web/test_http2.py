"""HTTP/2 on the web server: h2c with prior knowledge and h2 by ALPN, ASGI scopes, bodies both ways under flow
control, trailers, static files, and the limits against the known attacks (each answered as nginx answers it),
with our own h2 client, curl, nghttp/h2load and httpx."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import subprocess

import h2.events
import h2.settings
import httpx
import pytest
from apps import RawClient, port_of, read_body, respond, serving
from h2.errors import ErrorCodes
from h2client import F, H2Client, frame
from helpers import data_dir  # noqa: F401 - fixture
from hpack.hpack import encode_integer

from socketkit.net.limits import Limits
from socketkit.proto.http2 import H2Limits
from socketkit.web.static import StaticFiles

CURL = shutil.which("curl")
NGHTTP = shutil.which("nghttp")
H2LOAD = shutil.which("h2load")


async def scope_app(scope, receive, send):
    """Answers with what it saw; /stream streams its answer; /echo echoes the body as it arrives."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/echo":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"app/x")]})
        while True:
            message = await receive()
            await send({"type": "http.response.body", "body": message.get("body", b""), "more_body": True})
            if not message.get("more_body"):
                break
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(50):
            await send({"type": "http.response.body", "body": b"%05d" % i * 2000, "more_body": True})
        await send({"type": "http.response.body", "body": b"end"})
        return
    if path == "/trailers":
        assert "http.response.trailers" in scope["extensions"]
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"body", "more_body": False})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")],
                    "more_trailers": False})
        return
    if path == "/boom":
        raise ValueError("secret internal detail")
    if path == "/wait":
        await asyncio.sleep(3600)
    body = await read_body(receive)
    text = (f"{scope['http_version']} {scope['method']} {scope['scheme']} {scope['path']} "
            f"{scope['query_string'].decode()} {len(body)} {dict(scope['headers']).get(b'host', b'').decode()}")
    await respond(send, body=text.encode(), headers=[(b"x-test", b"yes"), (b"connection", b"keep-alive")])


# -- the basics -------------------------------------------------------------------------------------------


async def test_h2c_prior_knowledge_and_http1_on_one_port():
    async with serving(scope_app) as web:
        port = port_of(web)
        async with await H2Client.open(port) as c:
            headers, body, _ = await c.get("/a%20b?q=1")
            assert headers[b":status"] == b"200" and headers[b"x-test"] == b"yes"
            assert b"connection" not in headers  # hop-by-hop: dropped in HTTP/2
            assert body == b"2 GET http /a b q=1 0 test"
            # Several streams at once on the one connection.
            sids = [await c.request("POST", f"/n{i}", body=b"x" * i) for i in range(1, 6)]
            for i, sid in enumerate(sids, 1):
                assert (await c.response(sid))[1] == f"2 POST http /n{i}  {i} test".encode()
        async with await RawClient.open(port) as c:
            r = await c.request("GET", "/one")
            assert r.body.startswith(b"1.1 GET http /one")


@pytest.mark.skipif(CURL is None, reason="needs curl")
@pytest.mark.usefixtures("data_dir")
async def test_curl_http2_over_tls_by_alpn_and_prior_knowledge():
    async with serving(scope_app, ["tls://127.0.0.1:0", "tcp://127.0.0.1:0"]) as web:
        tls, plain = port_of(web, 0), port_of(web, 1)
        assert web.server.endpoints[0].option("alpn") == "h2,http/1.1"

        async def curl(*args):
            proc = await asyncio.create_subprocess_exec(
                CURL, "-sS", "--noproxy", "*", "--max-time", "10", "-w", " %{http_version}", *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == 0, err
            return out.decode()

        assert await curl("-k", "--http2", f"https://127.0.0.1:{tls}/x") == f"2 GET https /x  0 127.0.0.1:{tls} 2"
        assert (await curl("-k", "--http1.1", f"https://127.0.0.1:{tls}/x")).endswith(" 1.1")
        out = await curl("--http2-prior-knowledge", "--data-binary", "hello", f"http://127.0.0.1:{plain}/p")
        assert out == f"2 POST http /p  5 127.0.0.1:{plain} 2"
    async with serving(scope_app, ["tls://127.0.0.1:0?alpn=http/1.1"]) as web:
        assert (await curl("-k", "--http2", f"https://127.0.0.1:{port_of(web)}/x")).endswith(" 1.1")
    async with serving(scope_app, ["tls://127.0.0.1:0"], http2=False) as web:
        assert (await curl("-k", "--http2", f"https://127.0.0.1:{port_of(web)}/x")).endswith(" 1.1")


@pytest.mark.usefixtures("data_dir")
async def test_httpx_http2_over_tls_and_h2c():
    async with serving(scope_app, ["tls://127.0.0.1:0", "tcp://127.0.0.1:0"]) as web:
        async with httpx.AsyncClient(http2=True, verify=False, trust_env=False, timeout=10) as client:
            r = await client.post(f"https://127.0.0.1:{port_of(web, 0)}/t", content=b"abc")
            assert r.http_version == "HTTP/2" and r.text.startswith("2 POST https /t  3")
        async with httpx.AsyncClient(http1=False, http2=True, trust_env=False, timeout=10) as client:
            big = os.urandom(3 * 1024 * 1024 + 7)
            r = await client.post(f"http://127.0.0.1:{port_of(web, 1)}/echo", content=big)
            assert r.http_version == "HTTP/2" and hashlib.sha256(r.content).digest() == hashlib.sha256(big).digest()
            r = await client.get(f"http://127.0.0.1:{port_of(web, 1)}/stream")
            assert r.content == b"".join(b"%05d" % i * 2000 for i in range(50)) + b"end"


async def test_trailers_where_the_extension_is_asked_for():
    async with serving(scope_app) as web, await H2Client.open(port_of(web)) as c:
        headers, body, trailers = await c.get("/trailers")
        assert headers[b":status"] == b"200" and body == b"body" and trailers == {b"x-checksum": b"abc"}


async def test_an_app_failure_is_a_500_without_a_traceback_and_logged_with_its_request(caplog):
    caplog.set_level(logging.ERROR, "socketkit.web")
    async with serving(scope_app) as web, await H2Client.open(port_of(web)) as c:
        headers, body, _ = await c.get("/boom?x=1")
        assert headers[b":status"] == b"500" and b"secret" not in body and b"Traceback" not in body
        assert (await c.get("/fine"))[0][b":status"] == b"200"  # the connection lives on
    assert any('"GET /boom?x=1 HTTP/2"' in r.getMessage() for r in caplog.records)


async def test_static_files_over_http2_with_ranges(tmp_path):
    data = os.urandom(200_000)
    (tmp_path / "f.bin").write_bytes(data)
    os.utime(tmp_path / "f.bin", (1_600_000_000, 1_600_000_000))
    async with serving(StaticFiles(tmp_path)) as web, await H2Client.open(port_of(web)) as c:
        for _ in range(2):  # a lookup, then the cache
            headers, body, _ = await c.get("/f.bin")
            assert headers[b":status"] == b"200" and body == data
            headers, body, _ = await c.get("/f.bin", [("range", "bytes=1000-1999")])
            assert headers[b":status"] == b"206" and body == data[1000:2000]
            assert headers[b"content-range"] == b"bytes 1000-1999/200000"
        etag = headers[b"etag"].decode()
        headers, body, _ = await c.get("/f.bin", [("if-none-match", etag)])
        assert headers[b":status"] == b"304" and body == b""
        headers, body, _ = await c.response(await c.request("HEAD", "/f.bin"))
        assert headers[b"content-length"] == b"200000" and body == b""
        assert (await c.get("/%2e%2e/etc/passwd"))[0][b":status"] == b"404"


# -- flow control, both ways -----------------------------------------------------------------------------


async def test_request_bodies_are_held_at_most_a_window_deep():
    taken = asyncio.Event()
    gate = asyncio.Event()

    async def slow_reader(scope, receive, send):
        if scope["type"] != "http":
            return
        await gate.wait()
        body = await read_body(receive)
        taken.set()
        await respond(send, body=b"%d" % len(body))

    limits = H2Limits(initial_window_size=65535, connection_window_size=1 << 20)
    async with serving(slow_reader, h2_limits=limits) as web, await H2Client.open(port_of(web)) as c:
        sid = await c.request("POST", "/", end=False)
        conn = c.conn
        sent = 0
        chunk = b"x" * 16384
        while conn.local_flow_control_window(sid) > 0:
            n = min(len(chunk), conn.local_flow_control_window(sid))
            conn.send_data(sid, chunk[:n])
            sent += n
        await c.flush()
        assert sent == 65535  # the stream's window: not a byte more can be sent before the app reads
        await asyncio.sleep(0.2)
        assert conn.local_flow_control_window(sid) == 0
        gate.set()
        while sent < 300_000:  # the app reads: the window opens again as it does, and the rest follows
            if conn.local_flow_control_window(sid) == 0:
                await c.pump()
                continue
            n = min(16384, conn.local_flow_control_window(sid), 300_000 - sent)
            conn.send_data(sid, chunk[:n])
            sent += n
            await c.flush()
        conn.end_stream(sid)
        await c.flush()
        assert (await c.response(sid))[1] == b"%d" % sent


async def test_responses_wait_for_the_peers_window():
    done = asyncio.Event()
    big = os.urandom(300_000)

    async def big_app(scope, receive, send):
        if scope["type"] != "http":
            return
        await respond(send, body=big)
        done.set()

    async with serving(big_app) as web:
        c = await H2Client.open(port_of(web), settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
        async with c:
            assert (await c.get("/"))[1] == big  # (h2's stream; the next one is the fast lane's)
            done.clear()
            c.events.clear()
            sid = await c.request("GET", "/")
            got = bytearray()
            while len(got) < 1000:
                for event in await c.pump():
                    if isinstance(event, h2.events.DataReceived):
                        got += event.data
            await asyncio.sleep(0.2)
            assert len(got) == 1000 and not done.is_set()  # held back by our window, the app waits
            c.conn.increment_flow_control_window(len(big), sid)
            await c.flush()
            c.events.clear()
            _, rest, _ = await c.response(sid)
            assert bytes(got) + rest == big
            assert done.is_set()


# -- limits and attacks ----------------------------------------------------------------------------------


async def test_streams_past_the_concurrency_limit_are_refused_one_by_one():
    async with serving(scope_app, h2_limits=H2Limits(max_concurrent_streams=4)) as web:
        async with await H2Client.open(port_of(web)) as c:
            settings = await c.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
            assert settings.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 4
            c.conn.remote_settings.max_concurrent_streams = 100  # a client that ignores it
            c.conn.remote_settings.acknowledge()
            sids = [await c.request("GET", "/wait") for _ in range(6)]
            resets = []
            while len(resets) < 2:
                resets += [e for e in await c.pump() if isinstance(e, h2.events.StreamReset)]
            assert {e.stream_id for e in resets} == set(sids[4:])
            assert {e.error_code for e in resets} == {ErrorCodes.REFUSED_STREAM}
            c.conn.reset_stream(sids[0])
            await c.flush()
            await asyncio.sleep(0.05)
            headers, body, _ = await c.get("/after")  # the connection lives on, and a slot is free again
            assert headers[b":status"] == b"200"


async def test_rapid_reset_is_answered_with_goaway():
    limits = H2Limits(resets=(20, 1.0))
    async with serving(scope_app, h2_limits=limits) as web, await H2Client.open(port_of(web)) as c:
        for _ in range(40):
            sid = await c.request("GET", "/wait")
            c.conn.reset_stream(sid)
        await c.flush()
        event = await c.goaway()
        assert event.error_code == ErrorCodes.ENHANCE_YOUR_CALM


@pytest.mark.parametrize("flood", ["settings", "ping", "priority", "empty-data"])
async def test_control_frame_floods_are_answered_with_goaway(flood):
    async with serving(scope_app) as web, await H2Client.open(port_of(web)) as c:
        if flood == "settings":
            data = frame(F.SettingsFrame, settings={4: 65535}) * 200
        elif flood == "ping":
            data = frame(F.PingFrame, opaque_data=b"12345678") * 200
        elif flood == "priority":
            data = b"".join(frame(F.PriorityFrame, 2 * i + 1, depends_on=0, stream_weight=16)
                            for i in range(1, 3000))
        else:
            sid = await c.request("POST", "/wait", end=False)
            data = frame(F.DataFrame, sid, data=b"") * 200
        await c.raw(data)
        event = await c.goaway()
        assert event.error_code == ErrorCodes.ENHANCE_YOUR_CALM


async def test_continuation_flood_is_cut_off():
    async with serving(scope_app) as web, await H2Client.open(port_of(web)) as c:
        await c.until(lambda e: isinstance(e, h2.events.SettingsAcknowledged))
        block = c.conn.encoder.encode([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                                       (b":authority", b"t")])
        data = frame(F.HeadersFrame, 1, data=block)
        data += frame(F.ContinuationFrame, 1, data=b"\x40\x01a\x01b" * 2000) * 100
        await c.raw(data)
        event = await c.goaway()
        assert event.error_code in (ErrorCodes.PROTOCOL_ERROR, ErrorCodes.ENHANCE_YOUR_CALM)


async def test_a_header_block_that_never_ends_times_out():
    limits = Limits(request_timeout=0.3, idle_timeout=30)
    async with serving(scope_app, limits=limits) as web, await H2Client.open(port_of(web)) as c:
        await c.until(lambda e: isinstance(e, h2.events.SettingsAcknowledged))  # (the client's ACK is out)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await c.raw(frame(F.HeadersFrame, 1, data=b"\x82"))  # no END_HEADERS, and nothing after it
        event = await c.goaway()
        assert event.error_code == ErrorCodes.NO_ERROR and loop.time() - start >= 0.25


async def test_oversized_header_lists_and_hpack_tables_are_refused():
    async with serving(scope_app) as web, await H2Client.open(port_of(web)) as c:
        sid = await c.request("GET", "/", headers=[("x-big", "a" * 70_000)])
        event = await c.goaway()
        assert event.error_code == ErrorCodes.ENHANCE_YOUR_CALM and sid == 1
    async with serving(scope_app) as web, await H2Client.open(port_of(web)) as c:
        update = bytes([0x20 | encode_integer(1 << 20, 5)[0]]) + bytes(encode_integer(1 << 20, 5)[1:])
        await c.raw(frame(F.HeadersFrame, 1, flags=("END_HEADERS", "END_STREAM"), data=update + b"\x82\x84\x86"))
        event = await c.goaway()  # (h2 says PROTOCOL_ERROR for every HPACK error)
        assert event.error_code in (ErrorCodes.COMPRESSION_ERROR, ErrorCodes.PROTOCOL_ERROR)


async def test_idle_connections_get_goaway_and_slow_request_bodies_are_reset():
    async with serving(scope_app, limits=Limits(idle_timeout=0.3)) as web:
        async with await H2Client.open(port_of(web)) as c:
            await c.goaway()
    # (the connection's idle limit well above the request's: the server's idle sweep would end it first)
    async with serving(scope_app, limits=Limits(idle_timeout=5, request_timeout=0.3)) as web:
        async with await H2Client.open(port_of(web)) as c:
            sid = await c.request("POST", "/", body=b"part", end=False)  # the rest never comes
            event = await c.until(lambda e: isinstance(e, h2.events.StreamReset))
            assert event.stream_id == sid and event.error_code == ErrorCodes.CANCEL


async def test_a_length_promised_without_a_body_is_400():
    async with serving(scope_app) as web, await H2Client.open(port_of(web)) as c:
        for _ in range(2):  # h2's stream, then the fast lane's
            headers, _, _ = await c.response(await c.request("GET", "/", headers=[("content-length", "5")]))
            assert headers[b":status"] == b"400"


async def test_request_bodies_past_max_body_get_413():
    async with serving(scope_app, limits=Limits(max_body=1000)) as web, await H2Client.open(port_of(web)) as c:
        headers, _, _ = await c.response(await c.request("POST", "/", headers=[("content-length", "5000")]))
        assert headers[b":status"] == b"413"
        sid = await c.request("POST", "/", body=b"x" * 3000)
        headers = await c.until(lambda e: isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid)
        assert dict(headers.headers)[b":status"] == b"413"


# -- other clients ---------------------------------------------------------------------------------------


@pytest.mark.skipif(NGHTTP is None or H2LOAD is None, reason="needs nghttp2-client (nghttp, h2load)")
async def test_nghttp_and_h2load():
    async with serving(scope_app) as web:
        url = f"http://127.0.0.1:{port_of(web)}/x?y=1"

        def run(*argv):
            return subprocess.run(argv, capture_output=True, text=True, timeout=30)

        out = await asyncio.to_thread(run, NGHTTP, "-n", "-s", "-v", url)
        assert out.returncode == 0 and "recv DATA frame" in out.stdout and ":status: 200" in out.stdout
        out = await asyncio.to_thread(run, H2LOAD, "-n", "400", "-c", "4", "-m", "10", url)
        assert out.returncode == 0 and "400 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout
