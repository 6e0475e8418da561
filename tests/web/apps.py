"""Small ASGI apps the web server tests run; `tests.web.apps:APP` is also what the CLI tests serve.

Each app is written against the bare ASGI spec (no framework), so a test failure points at the server.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

# -- helpers ----------------------------------------------------------------------------------------


async def read_body(receive: Any) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client went away while the body was read")
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body)


async def respond(send: Any, status: int = 200, body: bytes = b"", content_type: bytes = b"text/plain",
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body)),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def scope_summary(scope: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able parts of an http scope, as a test wants to compare them."""
    return {
        "type": scope["type"],
        "asgi": scope.get("asgi"),
        "http_version": scope["http_version"],
        "method": scope["method"],
        "scheme": scope["scheme"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
        "headers_are_bytes": all(isinstance(n, bytes) and isinstance(v, bytes) for n, v in scope["headers"]),
        "client": list(scope["client"]) if scope.get("client") else None,
        "server": list(scope["server"]) if scope.get("server") else None,
        "root_path": scope.get("root_path"),
        "state": {k: v for k, v in scope.get("state", {}).items() if isinstance(v, (str, int))}
        if "state" in scope else None,
        "extensions": sorted(scope.get("extensions") or {}),
    }


# -- scope and lifespan -----------------------------------------------------------------------------


class ScopeApp:
    """Answers every request with its scope as JSON; takes part in the lifespan (state["greeting"])."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.events.append("startup")
                    scope["state"]["greeting"] = "hello from lifespan"
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.events.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = await read_body(receive)
        summary = scope_summary(scope)
        summary["body_length"] = len(body)
        await respond(send, body=json.dumps(summary).encode(), content_type=b"application/json")


async def no_lifespan_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app that knows only http, as many hand-written apps do: it fails on the lifespan scope."""
    assert scope["type"] == "http", "only http is supported"
    await read_body(receive)
    await respond(send, body=b"no lifespan here")


async def failing_startup_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": "database is not reachable"})
        return
    await respond(send, body=b"should never be served")


async def raising_startup_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("startup exploded")
    await respond(send, body=b"should never be served")


# -- HTTP behaviour ---------------------------------------------------------------------------------


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Routes for behaviour tests:
    /echo      the body back (Content-Length framed)
    /digest    "<length> <sha256>" of the body, read piece by piece
    /chunks?n  n pieces with more_body=True and no Content-Length (chunked / close-delimited)
    /ignore    answers without reading the body (Expect: 100-continue must then not be answered)
    /head      a fixed body with Content-Length, to compare GET and HEAD
    anything   "ok"
    """
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/echo":
        body = await read_body(receive)
        await respond(send, body=body, content_type=b"application/octet-stream")
    elif path == "/digest":
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            digest.update(chunk)
            if not message.get("more_body", False):
                break
        await respond(send, body=f"{size} {digest.hexdigest()}".encode())
    elif path == "/chunks":
        await read_body(receive)
        n = int(scope["query_string"] or b"3")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(n):
            await send({"type": "http.response.body", "body": b"piece %d;" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/ignore":
        await respond(send, status=200, body=b"not reading your body")
    elif path == "/head":
        await read_body(receive)
        await respond(send, body=b"x" * 1234, headers=[(b"x-custom", b"yes")])
    else:
        await read_body(receive)
        await respond(send, body=b"ok " + path.encode())


async def raise_before_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/boom":
        raise ValueError("boom before the response")
    await respond(send, body=b"still alive")


async def raise_after_partial_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"first part;", "more_body": True})
    raise ValueError("boom in the middle of the body")


async def no_response_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/fine":
        await respond(send, body=b"fine")
    # otherwise: return without sending anything


async def double_start_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/fine":
        await respond(send, body=b"fine")
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"no"})


def zerocopy_app(path: Path):
    """GET /cl sends `path` with Content-Length through http.response.zerocopysend, /nocl without it
    (chunked on HTTP/1.1), /part?offset,count a slice of it (with Content-Length)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        assert "http.response.zerocopysend" in scope.get("extensions", {})
        size = path.stat().st_size
        with open(path, "rb") as f:
            if scope["path"] == "/cl":
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", b"%d" % size)]})
                await send({"type": "http.response.zerocopysend", "file": f})
            elif scope["path"] == "/nocl":
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.zerocopysend", "file": f})
            elif scope["path"] == "/part":
                offset, count = (int(x) for x in scope["query_string"].split(b","))
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", b"%d" % count)]})
                await send({"type": "http.response.zerocopysend", "file": f, "offset": offset, "count": count})
            else:
                await respond(send, status=404, body=b"no such file")

    return app


# -- the CLI app ------------------------------------------------------------------------------------


async def APP(scope: dict[str, Any], receive: Any, send: Any) -> None:  # noqa: N802 - the CLI's target
    """Served by the CLI tests: / -> "hello", /pid -> the worker's pid. With SOCKETKIT_TEST_MARKER set,
    lifespan startup and shutdown append "startup"/"shutdown" lines to that file."""
    if scope["type"] == "lifespan":
        marker = os.environ.get("SOCKETKIT_TEST_MARKER")
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]
            if marker:
                with open(marker, "a") as f:
                    f.write(kind + "\n")
            await send({"type": message["type"] + ".complete"})
            if kind == "shutdown":
                return
    body = await read_body(receive)
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]  # route on the path below the root, as frameworks do
    if path == "/pid":
        await respond(send, body=str(os.getpid()).encode())
    elif path == "/scope":
        await respond(send, body=json.dumps(scope_summary(scope)).encode(), content_type=b"application/json")
    else:
        await respond(send, body=b"hello" + (b" " + body if body else b""))


NOT_AN_APP = 42


# -- the client side: a strict little raw HTTP/1.1 reader for tests that must see the bytes --------
# (here rather than in a test module so both test modules can share it)

import asyncio  # noqa: E402
import contextlib  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

WAIT = 10.0


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    http_version: str = "1.1"
    chunks: list[bytes] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name.lower()]
        return ", ".join(values) if values else None


class Incomplete(Exception):
    """The server ended the connection in the middle of a response."""

    def __init__(self, what: str, partial: bytes) -> None:
        super().__init__(f"{what} (got {partial[:200]!r})")
        self.partial = partial


class RawClient:
    """One connection, spoken to byte for byte; every wait bounded by `timeout`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float = WAIT):
        self.reader = reader
        self.writer = writer
        self.timeout = timeout

    @classmethod
    async def open(cls, port: int | None = None, host: str = "127.0.0.1", *, unix: str | None = None,
                   ssl: Any = None, timeout: float = WAIT) -> RawClient:
        async with asyncio.timeout(timeout):
            if unix is not None:
                reader, writer = await asyncio.open_unix_connection(unix)
            else:
                reader, writer = await asyncio.open_connection(host, port, ssl=ssl,
                                                               server_hostname=host if ssl else None)
        return cls(reader, writer, timeout)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()

    async def request(self, method: str = "GET", target: str = "/", headers: dict[str, str] | None = None,
                      body: bytes = b"", version: str = "1.1") -> Response:
        head = {"host": "test"} if version == "1.1" else {}
        head.update(headers or {})
        if body and "content-length" not in {k.lower() for k in head} and \
                "transfer-encoding" not in {k.lower() for k in head}:
            head["content-length"] = str(len(body))
        lines = [f"{method} {target} HTTP/{version}"] + [f"{k}: {v}" for k, v in head.items()]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return await self.response(method)

    async def response(self, method: str = "GET") -> Response:
        async with asyncio.timeout(self.timeout):
            return await self._response(method)

    def _reset_as_eof(self, exc: BaseException) -> bool:
        """A server that closes with bytes of ours still unread makes its kernel send RST, not FIN, right
        behind its last response. asyncio's reader then raises ConnectionResetError before handing out
        what had already arrived, depending on when this task runs. Keep those bytes: the reset becomes
        the end of the stream after them. True if it was such a reset."""
        if not isinstance(exc, ConnectionResetError) or self.reader.exception() is not exc:
            return False
        self.reader._exception = None  # (StreamReader has no public way to take an exception back)
        self.reader.feed_eof()
        return True

    async def _io(self, op: Any, *args: Any) -> Any:
        """`await op(*args)` on the reader, where a reset after the last bytes is the end of the stream."""
        try:
            return await op(*args)
        except ConnectionResetError as e:
            if not self._reset_as_eof(e):
                raise
            return await op(*args)

    async def _head(self) -> bytes:
        try:
            return await self._io(self.reader.readuntil, b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            raise Incomplete("connection ended inside a response head", e.partial) from None

    async def _response(self, method: str) -> Response:
        head = await self._head()
        status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        version, status, reason = (status_line.split(" ", 2) + [""])[:3]
        assert version.startswith("HTTP/1."), status_line
        headers = []
        for line in lines:
            name, _, value = line.partition(":")
            assert name and name == name.strip(), f"bad header line {line!r}"
            headers.append((name.lower(), value.strip()))
        response = Response(int(status), reason, headers, http_version=version[5:])
        if response.status < 200 or method == "HEAD" or response.status in (204, 304):
            return response
        te = response.header("transfer-encoding")
        cl = response.header("content-length")
        body = bytearray()
        try:
            if te is not None:
                assert te.lower() == "chunked", te
                assert cl is None, "both Content-Length and Transfer-Encoding in a response"
                while True:
                    size_line = await self._io(self.reader.readuntil, b"\r\n")
                    size = int(size_line.split(b";")[0], 16)
                    if size == 0:
                        assert await self._io(self.reader.readuntil, b"\r\n") == b"\r\n", "trailers not expected"
                        break
                    chunk = await self._io(self.reader.readexactly, size)
                    assert await self._io(self.reader.readexactly, 2) == b"\r\n"
                    response.chunks.append(chunk)
                    body += chunk
            elif cl is not None:
                body += await self._io(self.reader.readexactly, int(cl))
            else:
                body += await self._io(self.reader.read)  # delimited by the end of the connection
                while chunk := await self._io(self.reader.read, 65536):
                    body += chunk
        except asyncio.IncompleteReadError as e:
            raise Incomplete("connection ended inside a response body", bytes(body) + e.partial) from None
        except ConnectionResetError:
            raise Incomplete("connection reset inside a response body", bytes(body)) from None
        response.body = bytes(body)
        return response

    async def closed(self, timeout: float | None = None) -> bytes:
        """Wait (bounded) for the server to end the connection; returns what arrived before the end."""
        got = bytearray()
        async with asyncio.timeout(timeout or self.timeout):
            while True:
                try:
                    chunk = await self._io(self.reader.read, 65536)
                except ConnectionResetError:
                    return bytes(got)
                if not chunk:
                    return bytes(got)
                got += chunk

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout):
                await self.writer.wait_closed()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@contextlib.asynccontextmanager
async def serving(app: Any, listen: str | list[str] = "tcp://127.0.0.1:0", **config: Any):
    """socketkit.web.start() for the length of a block; stopped without drain afterwards."""
    import socketkit.web

    web = await socketkit.web.start(app, [listen] if isinstance(listen, str) else listen, **config)
    try:
        yield web
    finally:
        await web.aclose(drain=0)


def port_of(web: Any, index: int = 0) -> int:
    return web.server.endpoints[index].port
