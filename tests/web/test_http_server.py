"""The web server's HTTP/1.1 behaviour over real loopback sockets: framing, keep-alive, limits, errors,
smuggling, proxy headers and zerocopysend. Raw bytes where the bytes matter; http.client and curl where
a real client's view matters.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import logging
import os
import shutil
import ssl
import time
from pathlib import Path

import pytest
from apps import (
    Incomplete,
    RawClient,
    ScopeApp,
    double_start_app,
    echo_app,
    no_response_app,
    port_of,
    raise_after_partial_app,
    raise_before_app,
    read_body,
    respond,
    serving,
    zerocopy_app,
)
from helpers import WAIT, data_dir, shrink_buffers, wait_for  # noqa: F401 - fixture

from socketkit.web.config import WEB_LIMITS

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")

_DRIVER_WAKE_BUG = (
    "net/driver.py: a handler that closes its own stream while data_received steps it inline makes "
    "Stream.close() call Driver.wake(), which resolves the park future under step_inline; when the handler "
    "then returns, step_inline's park.set_result raises InvalidStateError (asyncio 'Fatal error on "
    "transport', which aborts the transport and drops unsent bytes) and the Task re-sends into the "
    "finished coroutine ('cannot reuse already awaited coroutine'): logged as 'handler failed', counted in "
    "Stats.errors. Fix: Driver.wake() must do nothing while self.stepping is true")



# -- keep-alive and pipelining ----------------------------------------------------------------------


async def test_keep_alive_serves_several_requests_on_one_connection():
    async with serving(echo_app) as web, await RawClient.open(port_of(web)) as c:
        for i in range(5):
            r = await c.request("GET", f"/n{i}")
            assert (r.status, r.body) == (200, b"ok /n%d" % i)
            assert r.header("connection") is None  # HTTP/1.1 default: stays open
        r = await c.request("POST", "/echo", body=b"after five")
        assert r.body == b"after five"


async def test_pipelined_requests_are_answered_in_order():
    async with serving(echo_app) as web, await RawClient.open(port_of(web)) as c:
        await c.send(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nsecond"
                     b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n")
        bodies = [(await c.response()).body for _ in range(3)]
        assert bodies == [b"ok /first", b"second", b"ok /third"]
        r = await c.request("GET", "/fourth")  # the connection is still fine afterwards
        assert r.body == b"ok /fourth"


async def test_pipelined_requests_behind_a_slow_response_wait_their_turn():
    gate = asyncio.Event()
    order = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        order.append(scope["path"])
        if scope["path"] == "/slow":
            await gate.wait()
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    async with serving(app) as web, await RawClient.open(port_of(web)) as c:
        await c.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
        await wait_for(lambda: order, what="the app to get the first request")
        assert order == ["/slow"]  # the second request is not started while the first is answered
        gate.set()
        assert (await c.response()).body == b"/slow"
        assert (await c.response()).body == b"/fast"
        assert order == ["/slow", "/fast"]


# -- request bodies -------------------------------------------------------------------------------------


async def test_chunked_request_body_raw():
    data = b"hello, chunked world" * 10
    async with serving(echo_app) as web, await RawClient.open(port_of(web)) as c:
        pieces = [data[i:i + 37] for i in range(0, len(data), 37)]
        wire = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        await c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + wire)
        r = await c.response()
        assert r.body == data
        # trailers are accepted (and dropped), and the connection goes on
        await c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\nX-Trailer: yes\r\n\r\n")
        assert (await c.response()).body == b"abc"


def _http_client(port: int, method: str, path: str, body=None, headers=None, *, encode_chunked=False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=encode_chunked)
        resp = conn.getresponse()
        return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), resp.read()
    finally:
        conn.close()


async def test_chunked_request_body_from_http_client_generator():
    parts = [os.urandom(1000 + i) for i in range(20)]
    expected = b"".join(parts)

    def gen():
        yield from parts

    async with serving(echo_app) as web:
        status, _, body = await asyncio.to_thread(_http_client, port_of(web), "POST", "/digest", gen())
    assert status == 200
    assert body == f"{len(expected)} {hashlib.sha256(expected).hexdigest()}".encode()


async def test_large_upload_8_mib():
    payload = os.urandom(8 * 2**20)
    async with serving(echo_app) as web:
        status, _, body = await asyncio.to_thread(_http_client, port_of(web), "POST", "/digest", payload)
    assert status == 200
    assert body == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()


async def test_body_over_max_body_is_413():
    limits = WEB_LIMITS.replace(max_body=1024 * 1024)
    async with serving(echo_app, limits=limits) as web:
        async with await RawClient.open(port_of(web)) as c:  # announced by Content-Length
            await c.send(b"POST /digest HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (2 * 2**20))
            r = await c.response()
            assert r.status == 413
            assert await c.closed() == b""
        async with await RawClient.open(port_of(web)) as c:  # found out while reading a chunked body
            await c.send(b"POST /digest HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%b\r\n" % (65536, b"z" * 65536)
            r = None
            for _ in range(40):  # 2.5 MiB at most; the server answers once past 1 MiB
                try:
                    await c.send(chunk)
                except (ConnectionError, OSError):
                    break
            r = await c.response()
            assert r.status == 413
        async with await RawClient.open(port_of(web)) as c:  # at the limit is fine
            r = await c.request("POST", "/digest", body=b"a" * (1024 * 1024))
            assert r.status == 200 and r.body.startswith(b"1048576 ")


async def test_a_client_that_sends_its_whole_body_first_still_reads_the_413():
    """http.client (as requests and urllib do) sends all of an 8 MiB body before reading anything. The
    server refuses it after 1 MiB; closing then, with the rest unread, would make the kernel reset the
    connection and the client would see ConnectionResetError instead of the 413 (RFC 9112 9.6). The
    server half-closes and drops what still comes (bounded), so the answer arrives."""
    payload = os.urandom(8 * 2**20)

    def post(port: int) -> tuple[int, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        try:
            c.request("POST", "/digest", body=payload)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    limits = WEB_LIMITS.replace(max_body=1024 * 1024)
    async with serving(echo_app, limits=limits) as web:
        for _ in range(3):
            status, body = await asyncio.to_thread(post, port_of(web))
            assert status == 413, body
        async with await RawClient.open(port_of(web)) as c:  # and the server goes on serving
            r = await c.request("POST", "/digest", body=b"small")
            assert r.status == 200 and r.body.startswith(b"5 ")


# -- Expect: 100-continue -------------------------------------------------------------------------------


async def test_expect_100_continue_is_answered_when_the_app_reads_the_body():
    async with serving(echo_app) as web, await RawClient.open(port_of(web)) as c:
        await c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = await c.response()  # the client waits for this before sending the body
        assert interim.status == 100
        await c.send(b"hello")
        r = await c.response()
        assert (r.status, r.body) == (200, b"hello")


async def test_expect_100_continue_is_not_answered_when_the_app_ignores_the_body():
    async with serving(echo_app) as web, await RawClient.open(port_of(web)) as c:
        await c.send(b"POST /ignore HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        r = await c.response()
        assert r.status == 200  # straight to the final response: no 100 first
        assert r.body == b"not reading your body"
        # We cannot know whether the client will still send the body: the server must close.
        assert r.header("connection") == "close"
        assert await c.closed() == b""


# -- responses ------------------------------------------------------------------------------------------


async def test_chunked_response_from_more_body_pieces():
    async with serving(echo_app) as web, await RawClient.open(port_of(web)) as c:
        r = await c.request("GET", "/chunks?4")
        assert r.header("transfer-encoding") == "chunked"
        assert r.header("content-length") is None
        assert r.chunks == [b"piece 0;", b"piece 1;", b"piece 2;", b"piece 3;"]  # one chunk per send
        assert (await c.request("GET", "/after")).body == b"ok /after"


async def test_head_has_the_headers_of_get_and_no_body():
    async with serving(echo_app) as web, await RawClient.open(port_of(web)) as c:
        get = await c.request("GET", "/head")
        head = await c.request("HEAD", "/head")
        assert head.status == get.status == 200
        assert head.body == b""
        strip = {"date"}
        assert [h for h in head.headers if h[0] not in strip] == [h for h in get.headers if h[0] not in strip]
        assert head.header("content-length") == "1234"
        # No stray body bytes were sent: the next response parses cleanly.
        assert (await c.request("GET", "/next")).body == b"ok /next"


async def test_connection_close_is_honoured():
    async with serving(echo_app) as web, await RawClient.open(port_of(web)) as c:
        r = await c.request("GET", "/bye", headers={"Connection": "close"})
        assert r.body == b"ok /bye"
        assert r.header("connection") == "close"
        assert await c.closed() == b""


async def test_closing_after_a_later_keep_alive_request_is_not_a_handler_error(caplog):
    caplog.set_level(logging.ERROR)
    async with serving(echo_app) as web, await RawClient.open(port_of(web)) as c:
        assert (await c.request("GET", "/first")).status == 200
        # The handler is now parked waiting for the next request, so this one is handled inline.
        r = await c.request("GET", "/second", headers={"Connection": "close"})
        assert r.body == b"ok /second" and r.header("connection") == "close"
        assert await c.closed() == b""
        await wait_for(lambda: web.server.stats.open == 0, what="the server to finish with the connection")
        assert web.server.stats.errors == 0, caplog.text
    assert "handler failed" not in caplog.text
    assert "InvalidStateError" not in caplog.text


async def test_app_connection_close_header_closes_after_the_response():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serving(app) as web, await RawClient.open(port_of(web)) as c:
        r = await c.request("GET", "/")
        assert r.body == b"ok" and r.header("connection") == "close"
        assert await c.closed() == b""


async def test_http10_client_without_keep_alive_is_closed():
    async with serving(echo_app) as web, await RawClient.open(port_of(web)) as c:
        r = await c.request("GET", "/old", version="1.0")
        assert r.body == b"ok /old"
        assert r.header("connection") == "close"
        assert await c.closed() == b""


async def test_http10_keep_alive_when_asked():
    async with serving(echo_app) as web, await RawClient.open(port_of(web)) as c:
        for i in range(3):
            r = await c.request("GET", f"/k{i}", headers={"Connection": "keep-alive"}, version="1.0")
            assert r.body == b"ok /k%d" % i
            assert r.header("connection") == "keep-alive"


async def test_http10_streamed_body_is_close_delimited():
    async with serving(echo_app) as web, await RawClient.open(port_of(web)) as c:
        # Even when keep-alive is asked for: without a length the only framing 1.0 has is the close.
        r = await c.request("GET", "/chunks?3", headers={"Connection": "keep-alive"}, version="1.0")
        assert r.header("transfer-encoding") is None and r.header("content-length") is None
        assert r.header("connection") == "close"
        assert r.body == b"piece 0;piece 1;piece 2;"


# -- limits ---------------------------------------------------------------------------------------------


async def test_header_section_too_large_is_431():
    limits = WEB_LIMITS.replace(max_header_size=8192)
    async with serving(echo_app, limits=limits) as web:
        async with await RawClient.open(port_of(web)) as c:
            await c.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 16384 + b"\r\n\r\n")
            r = await c.response()
            assert r.status == 431
            assert await c.closed() == b""
        async with await RawClient.open(port_of(web)) as c:  # trickled in many reads: still counted
            await c.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
            try:
                for i in range(200):
                    await c.send(b"X-%d: %s\r\n" % (i, b"v" * 100))
            except (ConnectionError, OSError):
                pass
            r = await c.response()
            assert r.status == 431


async def test_too_many_headers_is_431():
    limits = WEB_LIMITS.replace(max_headers=20)
    async with serving(echo_app, limits=limits) as web, await RawClient.open(port_of(web)) as c:
        many = b"".join(b"X-%d: v\r\n" % i for i in range(50))
        await c.send(b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")
        r = await c.response()
        assert r.status == 431
        assert await c.closed() == b""


async def test_slowloris_head_trickled_byte_by_byte_is_cut_within_request_timeout():
    limits = WEB_LIMITS.replace(request_timeout=0.5)
    async with serving(echo_app, limits=limits) as web, await RawClient.open(port_of(web)) as c:
        start = time.monotonic()
        await c.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
        got = bytearray()
        ended = False
        # One byte every 50 ms keeps every single read well inside the timeout: only a deadline for the
        # whole head stops it. Without one the trickle would go on for ever: WAIT is the "never".
        while time.monotonic() - start < WAIT:
            try:
                await c.send(b"X")
            except (ConnectionError, OSError):
                ended = True
                break
            try:
                async with asyncio.timeout(0.05):
                    chunk = await c.reader.read(65536)
            except TimeoutError:
                continue
            except ConnectionError:
                ended = True
                break
            got += chunk
            if not chunk or b"\r\n\r\n" in got:
                ended = True
                break
        took = time.monotonic() - start
        assert ended, f"the server let a head trickle in for {WAIT} s (request_timeout=0.5)"
        assert took > 0.4, f"cut after {took:.2f}s, before request_timeout"
        assert got == b"" or got.startswith(b"HTTP/1.1 408 ")


async def test_slow_head_in_one_pause_gets_408():
    limits = WEB_LIMITS.replace(request_timeout=0.5)
    async with serving(echo_app, limits=limits) as web, await RawClient.open(port_of(web)) as c:
        start = time.monotonic()
        await c.send(b"GET / HTTP/1.1\r\nHost: a\r\n")  # and then nothing
        rest = await c.closed()  # (bounded by WAIT: the "never" of a server without the deadline)
        assert rest.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - start > 0.4


async def test_idle_keep_alive_connection_is_closed_after_idle_timeout():
    limits = WEB_LIMITS.replace(idle_timeout=0.5)
    async with serving(echo_app, limits=limits) as web, await RawClient.open(port_of(web)) as c:
        assert (await c.request("GET", "/")).status == 200
        start = time.monotonic()
        assert await c.closed() == b""  # (bounded by WAIT: the "never" of a server without idle_timeout)
        took = time.monotonic() - start
        assert took > 0.3, took


async def test_an_app_that_cancels_its_disconnect_watcher_leaves_the_connection_usable():
    """A streaming app (server-sent events, say) watches for http.disconnect in a task of its own, then
    cancels it and returns. The cancelled task's read must not count as a reader still there when the
    server reads the connection's next request ("another task is already receiving")."""
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass

        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        watcher = asyncio.ensure_future(watch())
        for _ in range(5):  # the watcher takes the (empty) body, then waits on the socket
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"streamed", "more_body": True})
        watcher.cancel()
        await send({"type": "http.response.body", "body": b""})

    async with serving(app) as web, await RawClient.open(port_of(web)) as c:
        for _ in range(3):
            r = await c.request("GET", "/events")
            assert (r.status, r.body) == (200, b"streamed")


# -- stopping -------------------------------------------------------------------------------------------


async def test_stopping_closes_idle_connections_at_once_and_lets_a_busy_one_finish():
    """A keep-alive connection between requests owes nothing: a stopping server closes it at once (an idle
    HTTP/2 connection gets a GOAWAY first) instead of holding its whole drain time for it, as browsers keep
    such connections open for minutes. A request in progress still gets its answer."""
    from h2client import H2Client

    import socketkit.web

    entered, release = asyncio.Event(), asyncio.Event()

    async def app(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/slow":
            entered.set()
            await release.wait()
            await respond(send, body=b"late")
            return
        await echo_app(scope, receive, send)

    web = await socketkit.web.start(app, ["tcp://127.0.0.1:0"])
    stopping = None
    try:
        idle = await RawClient.open(port_of(web))
        h2c = await H2Client.open(port_of(web))
        busy = await RawClient.open(port_of(web))
        async with idle, h2c, busy:
            assert (await idle.request("GET", "/a")).status == 200
            assert (await h2c.get("/a"))[0][b":status"] == b"200"
            await busy.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            async with asyncio.timeout(WAIT):
                await entered.wait()
            stopping = asyncio.create_task(web.aclose(drain=60))  # a drain far longer than the test's waits
            assert await idle.closed() == b""
            terminated = await h2c.goaway()
            assert terminated.error_code == 0  # NO_ERROR
            assert not stopping.done()  # the busy connection holds the stop
            release.set()
            r = await busy.response()
            assert (r.status, r.body) == (200, b"late")
            assert await busy.closed() == b""
            await asyncio.wait_for(stopping, WAIT)
    finally:
        release.set()
        if stopping is None:
            await web.aclose(drain=0)
        elif not stopping.done():
            stopping.cancel()
            await web.aclose(drain=0)


# -- application errors ---------------------------------------------------------------------------------


async def test_app_exception_before_response_is_500_and_logged(caplog):
    caplog.set_level(logging.ERROR, logger="socketkit.web")
    async with serving(raise_before_app) as web:
        async with await RawClient.open(port_of(web)) as c:
            r = await c.request("GET", "/boom?x=%0d%0a1")
            assert r.status == 500
            assert r.header("connection") == "close"
            assert await c.closed() == b""
        # The page names the request that failed (control characters escaped), never the traceback.
        assert r.body.startswith(b"Internal Server Error\n\nGET /boom?x=%0d%0a1 HTTP/1.1 failed")
        assert b"boom before" not in r.body and b"Traceback" not in r.body
        assert r.header("x-content-type-options") == "nosniff"
        records = [rec for rec in caplog.records if rec.name == "socketkit.web" and rec.exc_info]
        assert records, caplog.text
        assert '"GET /boom?x=%0d%0a1 HTTP/1.1" from 127.0.0.1:' in records[0].getMessage()
        assert "boom before the response" in caplog.text
        assert "Traceback" in caplog.text
        async with await RawClient.open(port_of(web)) as c:  # the server keeps serving
            r = await c.request("GET", "/ok")
            assert (r.status, r.body) == (200, b"still alive")


async def test_a_request_line_without_a_version_is_400():
    async with serving(raise_before_app) as web, await RawClient.open(port_of(web)) as c:
        await c.send(b"GET /\r\n\r\n")
        r = await c.response()
        assert r.status == 400 and b"without an HTTP version" in r.body


async def test_app_exception_in_the_middle_of_a_body_cuts_the_connection(caplog):
    caplog.set_level(logging.ERROR, logger="socketkit.web")
    async with serving(raise_after_partial_app) as web, await RawClient.open(port_of(web)) as c:
        with pytest.raises(Incomplete) as info:
            await c.request("GET", "/")
        assert b"first part;" in info.value.partial
        assert "boom in the middle of the body" in caplog.text


def _small_server_send_buffers(web) -> None:
    """Keep a response in the server's user-space write buffer (the kernel takes only a few KiB), so a
    connection that is aborted instead of closed visibly loses the end of it."""
    for stream in list(web.server._streams):
        shrink_buffers(stream, snd=4096)


async def test_app_exception_after_a_complete_response_does_not_truncate_it(caplog):
    size = 200 * 1024

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await read_body(receive)
        await asyncio.sleep(0)  # leave the inline step (see the xfail test below for that path)
        _small_server_send_buffers(web)
        await respond(send, body=b"y" * size)
        raise RuntimeError("a background task failed after the response")  # as Starlette re-raises

    caplog.set_level(logging.ERROR, logger="socketkit.web")
    async with serving(app) as web, await RawClient.open(port_of(web)) as c:
        r = await c.request("GET", "/")
        assert len(r.body) == size  # whole, although the app raised afterwards
        assert await c.closed() == b""  # and then the connection is closed, as uvicorn does
    assert "a background task failed" in caplog.text


async def test_connection_close_response_on_a_later_request_arrives_whole():
    size = 200 * 1024

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await read_body(receive)
        _small_server_send_buffers(web)
        await respond(send, body=b"y" * size)

    async with serving(app) as web, await RawClient.open(port_of(web)) as c:
        assert len((await c.request("GET", "/")).body) == size
        # The handler is parked waiting for the next request now, so this one is handled inline.
        r = await c.request("GET", "/", headers={"Connection": "close"})
        assert len(r.body) == size


async def test_app_returning_without_a_response_is_500(caplog):
    caplog.set_level(logging.ERROR, logger="socketkit.web")
    async with serving(no_response_app) as web:
        async with await RawClient.open(port_of(web)) as c:
            r = await c.request("GET", "/nothing")
            assert r.status == 500
        assert "without starting a response" in caplog.text
        async with await RawClient.open(port_of(web)) as c:
            assert (await c.request("GET", "/fine")).body == b"fine"


async def test_app_sending_response_start_twice_is_logged_and_does_not_hang(caplog):
    caplog.set_level(logging.ERROR, logger="socketkit.web")
    async with serving(double_start_app) as web:
        async with await RawClient.open(port_of(web)) as c:
            await c.send(b"GET /twice HTTP/1.1\r\nHost: a\r\n\r\n")
            rest = await c.closed()  # whatever came, the connection ends (bounded)
            assert rest == b"" or rest.startswith(b"HTTP/1.1 500 ")
        assert "http.response.start sent twice" in caplog.text
        async with await RawClient.open(port_of(web)) as c:
            assert (await c.request("GET", "/fine")).body == b"fine"


async def test_app_sending_more_than_content_length_is_cut(caplog):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"abcdef"})

    caplog.set_level(logging.ERROR, logger="socketkit.web")
    async with serving(app) as web, await RawClient.open(port_of(web)) as c:
        await c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        rest = await c.closed()
        assert b"abcdef" not in rest
        assert "Content-Length" in caplog.text


# -- request smuggling over real sockets ----------------------------------------------------------------

H = b"Host: a\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
SMUGGLING = [
    ("cl-and-te", b"POST /digest HTTP/1.1\r\n" + H + b"Content-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n" + SMUGGLED),
    ("te-and-cl", b"POST /digest HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
     b"0\r\n\r\n" + SMUGGLED),
    ("duplicate-cl", b"POST /digest HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 40\r\n\r\n"
     b"hello" + SMUGGLED),
    ("bad-chunk-size", b"POST /digest HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"zz\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-size-0x", b"POST /digest HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n" + SMUGGLED),
    ("bare-lf", b"GET / HTTP/1.1\nHost: a\n\n" + SMUGGLED),
    ("space-before-colon", b"POST /digest HTTP/1.1\r\n" + H + b"Content-Length : 5\r\n\r\nhello" + SMUGGLED),
    ("te-in-http10", b"POST /digest HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED),
    ("te-not-chunked-last", b"POST /digest HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n"
     b"0\r\n\r\n" + SMUGGLED),
    ("two-hosts", b"GET / HTTP/1.1\r\n" + H + b"Host: b\r\n\r\n" + SMUGGLED),
    ("no-host-http11", b"GET / HTTP/1.1\r\n\r\n" + SMUGGLED),
    ("nul-in-value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n" + SMUGGLED),
]


@pytest.mark.parametrize("name,raw", SMUGGLING, ids=[c[0] for c in SMUGGLING])
async def test_smuggling_attempt_is_400_and_closed(name, raw):
    async with serving(echo_app) as web, await RawClient.open(port_of(web)) as c:
        await c.send(raw)
        received = await c.closed()
    assert received.startswith(b"HTTP/1.1 400 "), received[:200]
    assert received.count(b"HTTP/1.1 ") == 1, received  # nothing answered after the rejection
    assert b"/smuggled" not in received


@pytest.mark.parametrize("split", [1, 7])
async def test_smuggling_verdict_does_not_depend_on_packet_boundaries(split):
    raw = dict(SMUGGLING)["cl-and-te"]
    async with serving(echo_app) as web, await RawClient.open(port_of(web)) as c:
        for i in range(0, len(raw), split):
            try:
                await c.send(raw[i:i + split])
            except (ConnectionError, OSError):
                break
        received = await c.closed()
    assert received.startswith(b"HTTP/1.1 400 ")
    assert b"/smuggled" not in received


# -- proxy headers --------------------------------------------------------------------------------------


async def _scope_via(port: int, headers: dict[str, str]) -> dict:
    import json

    async with await RawClient.open(port) as c:
        r = await c.request("GET", "/", headers=headers)
        assert r.status == 200
        return json.loads(r.body)


async def test_proxy_headers_from_a_trusted_proxy_set_client_and_scheme():
    fwd = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    async with serving(ScopeApp(), proxy_headers=True, forwarded_allow_ips=["127.0.0.1"]) as web:
        scope = await _scope_via(port_of(web), fwd)
        assert scope["client"][0] == "203.0.113.7"
        assert scope["scheme"] == "https"
        # A chain: the nearest untrusted hop is the client.
        scope = await _scope_via(port_of(web), {"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 127.0.0.1"})
        assert scope["client"][0] == "203.0.113.9"
        assert scope["scheme"] == "http"


async def test_proxy_headers_from_an_untrusted_peer_are_ignored():
    fwd = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    async with serving(ScopeApp(), proxy_headers=True, forwarded_allow_ips=["10.9.8.7"]) as web:
        scope = await _scope_via(port_of(web), fwd)
        assert scope["client"][0] == "127.0.0.1"
        assert scope["scheme"] == "http"
    async with serving(ScopeApp()) as web:  # proxy_headers off: ignored even from 127.0.0.1
        scope = await _scope_via(port_of(web), fwd)
        assert scope["client"][0] == "127.0.0.1"
        assert scope["scheme"] == "http"


# -- zerocopysend ---------------------------------------------------------------------------------------


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(3 * 2**20 + 12345))
    return path


@pytest.mark.parametrize("route", ["/cl", "/nocl"])
async def test_zerocopysend_delivers_the_file(big_file, route):
    data = big_file.read_bytes()
    async with serving(zerocopy_app(big_file)) as web, await RawClient.open(port_of(web)) as c:
        r = await c.request("GET", route)
        assert r.status == 200
        assert len(r.body) == len(data) and r.body == data
        if route == "/cl":
            assert r.header("content-length") == str(len(data))
        else:
            assert r.header("transfer-encoding") == "chunked"
        r = await c.request("GET", "/part?1000,5000")  # offset and count; connection still in step
        assert r.body == data[1000:6000]


async def test_zerocopysend_to_http10_is_close_delimited(big_file):
    data = big_file.read_bytes()
    async with serving(zerocopy_app(big_file)) as web, await RawClient.open(port_of(web)) as c:
        r = await c.request("GET", "/nocl", version="1.0")
        assert r.body == data


async def test_zerocopysend_head_sends_no_body(big_file):
    async with serving(zerocopy_app(big_file)) as web, await RawClient.open(port_of(web)) as c:
        r = await c.request("HEAD", "/cl")
        assert r.header("content-length") == str(big_file.stat().st_size)
        assert (await c.request("GET", "/part?0,10")).body == big_file.read_bytes()[:10]


@pytest.mark.parametrize("route", ["/cl", "/nocl"])
async def test_zerocopysend_over_tls_falls_back_to_copying(data_dir, big_file, route):  # noqa: F811
    from socketkit.net import certs

    data = big_file.read_bytes()
    async with serving(zerocopy_app(big_file), "tls://127.0.0.1:0") as web:
        ctx = ssl.create_default_context(cafile=str(certs.dev_ca_certificate()))
        async with await RawClient.open(port_of(web), ssl=ctx) as c:
            r = await c.request("GET", route)
            assert r.body == data
            assert (await c.request("GET", "/part?7,70000")).body == data[7:70007]


# -- curl ------------------------------------------------------------------------------------------------


async def _curl(*args: str, timeout: float = WAIT + 5) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(CURL, "-sS", "--max-time", str(WAIT), *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out, err


@needs_curl
async def test_curl_upload_with_data_from_file(tmp_path):
    payload = os.urandom(2 * 2**20)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(payload)
    async with serving(echo_app) as web:
        code, out, err = await _curl("--http1.1", "--data-binary", f"@{upload}",
                                     f"http://127.0.0.1:{port_of(web)}/digest")
        assert code == 0, err
        assert out == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()
        # curl -d @file strips newlines; with a text file it still arrives whole
        text = tmp_path / "form.txt"
        text.write_text("a=1&b=2")
        code, out, err = await _curl("--http1.1", "-d", f"@{text}", f"http://127.0.0.1:{port_of(web)}/echo")
        assert (code, out) == (0, b"a=1&b=2"), err


@needs_curl
async def test_curl_head_and_chunked():
    async with serving(echo_app) as web:
        base = f"http://127.0.0.1:{port_of(web)}"
        code, out, err = await _curl("-I", f"{base}/head")
        assert code == 0, err
        head = out.decode().lower()
        assert head.startswith("http/1.1 200")
        assert "content-length: 1234" in head and "x-custom: yes" in head
        code, out, err = await _curl(f"{base}/chunks?5")
        assert (code, out) == (0, b"piece 0;piece 1;piece 2;piece 3;piece 4;"), err
        # several URLs: curl reuses the connection (keep-alive)
        code, out, err = await _curl("-v", f"{base}/a", f"{base}/b")
        assert code == 0 and out == b"ok /aok /b"
        assert b"Re-using existing" in err or b"Reusing existing" in err or b"left intact" in err
