"""ASGI apps under socketkit.web, seen from real clients: the scope an app gets (TCP, TLS, Unix, IPv6,
root_path), the lifespan protocol, httpx / http.client / curl, and a Starlette app end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import importlib.util
import json
import os
import shutil
import ssl
from pathlib import Path

import pytest
from apps import (
    RawClient,
    ScopeApp,
    echo_app,
    failing_startup_app,
    no_lifespan_app,
    port_of,
    raising_startup_app,
    serving,
)
from helpers import WAIT, data_dir, needs_ipv6  # noqa: F401 - fixture

import socketkit.web
from socketkit.errors import SocketkitError

try:
    import httpx
except ImportError:  # pragma: no cover - httpx is a test dependency
    httpx = None

needs_httpx = pytest.mark.skipif(httpx is None, reason="httpx is not installed")
needs_starlette = pytest.mark.skipif(importlib.util.find_spec("starlette") is None,
                                     reason="starlette is not installed")
CURL = shutil.which("curl")


def _dev_ca_context() -> ssl.SSLContext:
    from socketkit.net import certs

    return ssl.create_default_context(cafile=str(certs.dev_ca_certificate()))


# -- the scope --------------------------------------------------------------------------------------


@needs_httpx
async def test_scope_over_tcp():
    app = ScopeApp()
    async with serving(app) as web, httpx.AsyncClient(timeout=WAIT) as client:
        port = port_of(web)
        r = await client.get(f"http://127.0.0.1:{port}/caf%C3%A9/a%20b%2Fc?q=a%20b&x=1&x=2",
                             headers={"X-Custom-Header": "Some Value"})
        assert r.status_code == 200
        scope = r.json()
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/café/a b/c"  # percent-decoded (UTF-8), %2F included, as uvicorn does
    assert scope["raw_path"] == "/caf%C3%A9/a%20b%2Fc"  # exactly as sent
    assert scope["query_string"] == "q=a%20b&x=1&x=2"  # raw, undecoded
    assert scope["headers_are_bytes"]
    headers = dict(scope["headers"])
    assert headers["x-custom-header"] == "Some Value"  # names lowercased, values kept
    assert headers["host"] == f"127.0.0.1:{port}"
    assert all(name == name.lower() for name, _ in scope["headers"])
    assert scope["client"][0] == "127.0.0.1" and isinstance(scope["client"][1], int)
    assert scope["server"] == ["127.0.0.1", port]
    assert scope["root_path"] == ""
    assert scope["state"] == {"greeting": "hello from lifespan"}
    assert "http.response.zerocopysend" in scope["extensions"]


async def test_scope_client_port_is_the_peer_port_and_methods_pass_through():
    async with serving(ScopeApp()) as web, await RawClient.open(port_of(web)) as c:
        local_port = c.writer.get_extra_info("sockname")[1]
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"):
            r = await c.request(method, "/m", body=b"x" if method in ("POST", "PUT", "PATCH") else b"")
            scope = json.loads(r.body)
            assert scope["method"] == method
            assert scope["client"] == ["127.0.0.1", local_port]
        r = await c.request("GET", "/old", version="1.0", headers={"Connection": "keep-alive"})
        assert json.loads(r.body)["http_version"] == "1.0"


async def test_scope_state_is_a_copy_per_request():
    seen = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"]["counter"] = 0
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        seen.append(scope["state"]["counter"])
        scope["state"]["counter"] += 1  # must not leak into the next request
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serving(app) as web, await RawClient.open(port_of(web)) as c:
        for _ in range(3):
            assert (await c.request("GET", "/")).status == 204
    assert seen == [0, 0, 0]


@needs_httpx
async def test_scope_https_on_a_tls_listener(data_dir):  # noqa: F811
    async with serving(ScopeApp(), "tls://127.0.0.1:0") as web:
        async with httpx.AsyncClient(verify=_dev_ca_context(), timeout=WAIT) as client:
            r = await client.get(f"https://127.0.0.1:{port_of(web)}/secure?a=1")
    scope = r.json()
    assert scope["scheme"] == "https"
    assert scope["path"] == "/secure" and scope["query_string"] == "a=1"
    assert scope["state"] == {"greeting": "hello from lifespan"}


@needs_httpx
async def test_root_path_is_in_scope_and_prefixes_path():
    async with serving(ScopeApp(), root_path="/api/") as web, httpx.AsyncClient(timeout=WAIT) as client:
        r = await client.get(f"http://127.0.0.1:{port_of(web)}/items/7?x=1")
    scope = r.json()
    # uvicorn >= 0.26: the full path (prefix included) is in `path`, the prefix in `root_path`.
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/items/7"
    assert scope["raw_path"] == "/api/items/7"
    assert scope["query_string"] == "x=1"


@needs_httpx
async def test_unix_socket_listener(tmp_path):
    sock = tmp_path / "web.sock"
    async with serving(ScopeApp(), f"unix://{sock}") as web:
        assert sock.exists()
        transport = httpx.AsyncHTTPTransport(uds=str(sock))
        async with httpx.AsyncClient(transport=transport, timeout=WAIT) as client:
            for i in range(3):  # keep-alive over the Unix socket too
                r = await client.post(f"http://localhost/unix/{i}", content=b"abc")
                scope = r.json()
                assert scope["path"] == f"/unix/{i}" and scope["body_length"] == 3
        assert scope["client"] is None  # no (host, port) for a Unix peer
        assert scope["scheme"] == "http"
        assert web.server is not None
    assert not sock.exists()  # removed on close


@needs_ipv6
@needs_httpx
async def test_ipv6_loopback_listener():
    async with serving(ScopeApp(), "tcp://[::1]:0") as web, httpx.AsyncClient(timeout=WAIT) as client:
        port = port_of(web)
        r = await client.get(f"http://[::1]:{port}/six")
    scope = r.json()
    assert scope["client"][0] == "::1"
    assert scope["server"] == ["::1", port]
    assert dict(scope["headers"])["host"] == f"[::1]:{port}"


# -- lifespan -----------------------------------------------------------------------------------------


async def test_lifespan_startup_and_shutdown_run():
    app = ScopeApp()
    web = await socketkit.web.start(app, ["tcp://127.0.0.1:0"])
    try:
        assert app.events == ["startup"]  # before the first connection can be served
        async with await RawClient.open(port_of(web)) as c:
            assert json.loads((await c.request("GET", "/")).body)["state"]["greeting"] == "hello from lifespan"
    finally:
        await web.aclose()
    assert app.events == ["startup", "shutdown"]


async def test_lifespan_off_never_calls_the_lifespan_scope():
    app = ScopeApp()
    async with serving(app, lifespan="off") as web, await RawClient.open(port_of(web)) as c:
        scope = json.loads((await c.request("GET", "/")).body)
        assert scope["state"] is None
    assert app.events == []


async def test_lifespan_startup_failure_makes_start_raise():
    with pytest.raises(SocketkitError, match="startup failed.*database is not reachable"):
        await socketkit.web.start(failing_startup_app, ["tcp://127.0.0.1:0"])


async def test_lifespan_on_with_an_app_that_raises_makes_start_raise(caplog):
    with pytest.raises(SocketkitError, match="startup failed.*startup exploded"):
        await socketkit.web.start(raising_startup_app, ["tcp://127.0.0.1:0"], lifespan="on")


async def test_lifespan_auto_serves_an_app_without_lifespan_support():
    async with serving(no_lifespan_app) as web, await RawClient.open(port_of(web)) as c:
        r = await c.request("GET", "/")
        assert (r.status, r.body) == (200, b"no lifespan here")
        assert web.lifespan.supported is False


async def test_lifespan_bad_mode_is_refused():
    with pytest.raises(SocketkitError, match="lifespan must be"):
        await socketkit.web.start(echo_app, ["tcp://127.0.0.1:0"], lifespan="sometimes")


# -- clients ---------------------------------------------------------------------------------------------


@needs_httpx
async def test_httpx_async_client_concurrent_requests():
    async with serving(echo_app) as web, httpx.AsyncClient(timeout=WAIT) as client:
        base = f"http://127.0.0.1:{port_of(web)}"
        results = await asyncio.gather(*(client.post(f"{base}/echo", content=b"n=%d" % i) for i in range(40)))
        assert [r.content for r in results] == [b"n=%d" % i for i in range(40)]
        async with client.stream("GET", f"{base}/chunks?6") as r:
            pieces = [p async for p in r.aiter_raw()]
        assert b"".join(pieces) == b"".join(b"piece %d;" % i for i in range(6))


@needs_httpx
async def test_httpx_sync_client_in_a_thread():
    def run(base: str) -> list[tuple[int, bytes]]:
        out = []
        with httpx.Client(timeout=WAIT) as client:
            for i in range(5):
                r = client.get(f"{base}/sync{i}")
                out.append((r.status_code, r.content))
            r = client.post(f"{base}/echo", content=b"x" * 100_000)
            out.append((r.status_code, r.content[:3] + b"%d" % len(r.content)))
            r = client.head(f"{base}/head")
            out.append((r.status_code, r.headers["content-length"].encode()))
        return out

    async with serving(echo_app) as web:
        out = await asyncio.to_thread(run, f"http://127.0.0.1:{port_of(web)}")
    assert out == [*((200, b"ok /sync%d" % i) for i in range(5)), (200, b"xxx100000"), (200, b"1234")]


async def test_http_client_keep_alive_and_post():
    def run(port: int) -> list:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        out = []
        try:
            for i in range(3):
                conn.request("GET", f"/hc{i}")
                r = conn.getresponse()
                out.append((r.status, r.read()))
            sock_before = conn.sock
            conn.request("POST", "/echo", body=b"posted", headers={"Content-Type": "text/plain"})
            r = conn.getresponse()
            out.append((r.status, r.read()))
            out.append(conn.sock is sock_before)  # still the same connection
        finally:
            conn.close()
        return out

    async with serving(echo_app) as web:
        out = await asyncio.to_thread(run, port_of(web))
    assert out == [(200, b"ok /hc0"), (200, b"ok /hc1"), (200, b"ok /hc2"), (200, b"posted"), True]


# -- Starlette end to end ------------------------------------------------------------------------------


def _starlette_app(background_done: asyncio.Event, log: list[str]):
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(app):
        log.append("startup")
        yield {"db": "connected"}
        log.append("shutdown")

    async def hello(request: Request):
        return PlainTextResponse(f"hello {request.path_params['name']} ({request.state.db})")

    async def echo_json(request: Request):
        data = await request.json()
        return JSONResponse({"got": data, "query": dict(request.query_params)}, status_code=201)

    async def upload(request: Request):
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        return JSONResponse({"size": size, "sha256": digest.hexdigest(),
                             "type": request.headers.get("content-type")})

    async def form(request: Request):
        async with request.form() as data:
            upload = data["file"]
            content = await upload.read()
            return JSONResponse({"name": data["name"], "filename": upload.filename, "size": len(content),
                                 "sha256": hashlib.sha256(content).hexdigest()})

    async def stream(request: Request):
        async def numbers():
            for i in range(5):
                yield f"line {i}\n".encode()
                await asyncio.sleep(0)

        return StreamingResponse(numbers(), media_type="text/plain")

    async def record():
        log.append("background")
        background_done.set()

    async def with_background(request: Request):
        return PlainTextResponse("response first", background=BackgroundTask(record))

    async def fail(request: Request):
        raise RuntimeError("starlette route exploded")

    return Starlette(routes=[
        Route("/hello/{name}", hello),
        Route("/json", echo_json, methods=["POST"]),
        Route("/upload", upload, methods=["POST"]),
        Route("/form", form, methods=["POST"]),
        Route("/stream", stream),
        Route("/background", with_background),
        Route("/fail", fail),
    ], lifespan=lifespan)


@needs_httpx
@needs_starlette
async def test_starlette_app_end_to_end(tmp_path):
    done = asyncio.Event()
    log: list[str] = []
    app = _starlette_app(done, log)
    async with serving(app) as web, httpx.AsyncClient(timeout=WAIT) as client:
        base = f"http://127.0.0.1:{port_of(web)}"
        assert log == ["startup"]

        r = await client.get(f"{base}/hello/w%C3%B6rld")
        assert (r.status_code, r.text) == (200, "hello wörld (connected)")

        r = await client.post(f"{base}/json?page=2", json={"a": [1, 2, 3], "b": None})
        assert r.status_code == 201
        assert r.json() == {"got": {"a": [1, 2, 3], "b": None}, "query": {"page": "2"}}

        payload = os.urandom(3 * 2**20 + 7)
        r = await client.post(f"{base}/upload", content=payload, headers={"content-type": "application/x-blob"})
        assert r.json() == {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
                            "type": "application/x-blob"}

        async def chunked_body():
            for i in range(10):
                yield b"%d" % i * 1000

        r = await client.post(f"{base}/upload", content=chunked_body())  # httpx sends it chunked
        expected = b"".join(b"%d" % i * 1000 for i in range(10))
        assert r.json()["size"] == len(expected)

        async with client.stream("GET", f"{base}/stream") as r:
            assert r.headers["transfer-encoding"] == "chunked"
            lines = [line async for line in r.aiter_lines()]
        assert lines == [f"line {i}" for i in range(5)]

        r = await client.get(f"{base}/background")
        assert r.text == "response first"
        async with asyncio.timeout(WAIT):
            await done.wait()
        assert log[-1] == "background"

        r = await client.get(f"{base}/nowhere")
        assert r.status_code == 404
        r = await client.post(f"{base}/hello/x")
        assert r.status_code == 405

        r = await client.get(f"{base}/fail")
        assert r.status_code == 500
        r = await client.get(f"{base}/hello/again")  # still serving after the app's error
        assert r.text == "hello again (connected)"
    assert log[-1] == "shutdown"


@needs_httpx
@needs_starlette
async def test_starlette_form_upload(tmp_path):
    pytest.importorskip("python_multipart", reason="Starlette's form parsing needs python-multipart")
    app = _starlette_app(asyncio.Event(), [])
    content = os.urandom(200_000)
    async with serving(app) as web, httpx.AsyncClient(timeout=WAIT) as client:
        r = await client.post(f"http://127.0.0.1:{port_of(web)}/form", data={"name": "report"},
                              files={"file": ("report.bin", content, "application/octet-stream")})
    assert r.json() == {"name": "report", "filename": "report.bin", "size": len(content),
                        "sha256": hashlib.sha256(content).hexdigest()}


@needs_starlette
@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_starlette_with_curl(tmp_path):
    app = _starlette_app(asyncio.Event(), [])
    upload = tmp_path / "data.bin"
    payload = os.urandom(1_000_000)
    upload.write_bytes(payload)
    async with serving(app) as web:
        base = f"http://127.0.0.1:{port_of(web)}"

        async def curl(*args: str) -> bytes:
            proc = await asyncio.create_subprocess_exec(
                CURL, "-sS", "--fail", "--max-time", str(WAIT), "--http1.1", *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                async with asyncio.timeout(WAIT + 5):
                    out, err = await proc.communicate()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == 0, err
            return out

        assert await curl(f"{base}/hello/curl") == b"hello curl (connected)"
        body = json.loads(await curl("--data-binary", f"@{upload}", "-H", "Content-Type: application/x-blob",
                                     f"{base}/upload"))
        assert body["size"] == len(payload) and body["sha256"] == hashlib.sha256(payload).hexdigest()
        head = (await curl("-I", f"{base}/hello/h")).decode().lower()
        assert head.startswith("http/1.1 ")  # Starlette routes GET to HEAD too
        assert await curl(f"{base}/stream") == b"".join(b"line %d\n" % i for i in range(5))


def test_apps_module_is_importable_by_its_cli_name():
    # The CLI tests serve "tests.web.apps:APP" from the repository root.
    root = Path(__file__).resolve().parents[2]
    assert (root / "tests" / "web" / "apps.py").is_file()


async def test_app_waiting_on_receive_gets_http_disconnect_when_the_client_goes():
    got: asyncio.Queue[dict] = asyncio.Queue()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        first = await receive()
        assert first["type"] == "http.request" and not first.get("more_body")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"streaming...", "more_body": True})
        await got.put(await receive())  # a long poll / SSE endpoint waits here for the client to leave

    async with serving(app) as web:
        c = await RawClient.open(port_of(web))
        await c.send(b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n")
        async with asyncio.timeout(WAIT):
            await c.reader.readuntil(b"streaming...")
        await c.aclose()
        async with asyncio.timeout(WAIT):
            message = await got.get()
        assert message == {"type": "http.disconnect"}
