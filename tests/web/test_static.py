"""StaticFiles: path safety (with a hypothesis fuzzer), ranges, conditional requests, listings, both body
paths (zero-copy extension and threaded reads), and real sockets through uvicorn, httpx and curl."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import socket
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socketkit.web import static as static_mod
from socketkit.web import static_http, static_listing
from socketkit.web.static import MAX_PATH, StaticFiles
from socketkit.web.static_http import (
    MAX_RANGES,
    Validators,
    if_range_holds,
    parse_http_date,
    parse_range,
    precondition,
)

SECRET = b"TOPSECRET-CONTENT"
DATA = bytes(i % 251 for i in range(1000))
OLD_NS = 1_600_000_000 * 10**9 + 123_456_789  # Sun, 13 Sep 2020 12:26:40 GMT
OLD_DATE = "Sun, 13 Sep 2020 12:26:40 GMT"
CURL = "/usr/bin/curl"
WAIT = 10.0


def pin_wall_clock(monkeypatch: pytest.MonkeyPatch, now: float) -> None:
    """The wall clock StaticFiles compares mtimes with (Last-Modified, "changed within the last second"),
    fixed at `now`: a loaded machine's pause between a write and the request cannot turn a file that was
    "just changed" into an old one."""
    monkeypatch.setattr(static_http, "time", type("FixedTime", (), {"time": staticmethod(lambda: now)}))


@pytest.fixture
def www(tmp_path: Path) -> Path:
    """tmp/www is served; tmp/secret.txt and tmp/www-secret/ sit next to it and must never leak."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "www-secret").mkdir()
    (tmp_path / "www-secret" / "topsecret-name.txt").write_bytes(SECRET)
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello world\n")
    (root / "data.bin").write_bytes(DATA)
    (root / "empty.txt").write_bytes(b"")
    (root / ".hidden").write_bytes(b"dot file")
    (root / "old.bin").write_bytes(DATA)
    os.utime(root / "old.bin", ns=(OLD_NS, OLD_NS))
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_bytes(b"<h1>docs</h1>")
    (root / "evil.example").mkdir()
    plain = root / "plain"
    plain.mkdir()
    for name in ("<script>.txt", "a&b.txt", 'q"uote.txt', "javascript:alert(1)", "Bfile", "afile"):
        (plain / name).write_bytes(b"x")
    (plain / "zdir").mkdir()
    (plain / "Adir").mkdir()
    os.symlink("../hello.txt", plain / "link-in.txt")
    os.symlink("../../secret.txt", plain / "link-out.txt")
    os.symlink("hello.txt", root / "link-in.txt")
    os.symlink("../secret.txt", root / "link-out.txt")
    os.symlink("../www-secret", root / "link-outdir")
    os.symlink(str(tmp_path / "secret.txt"), root / "link-abs.txt")
    return root


class Response:
    def __init__(self, messages: list[dict]) -> None:
        self.messages = messages
        start = messages[0]
        assert start["type"] == "http.response.start"
        self.status = start["status"]
        self.header_list = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]]
        self.headers = dict(self.header_list)
        assert len(self.headers) == len(self.header_list), "a header was repeated"
        self.body = b"".join(m.get("body", b"") for m in messages[1:] if m["type"] == "http.response.body")
        self.complete = messages[-1].get("more_body", False) is False


async def call(
    app: StaticFiles,
    target: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | list[tuple[str, str]] = (),
    root_path: str = "",
    raw: bool = True,
    zerocopy: bool = False,
) -> Response:
    """Run one request through the app as a server would: raw_path as received, path percent-decoded."""
    raw_target, _, query = target.partition("?")
    items = headers.items() if isinstance(headers, dict) else headers
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_target),
        "query_string": query.encode(),
        "root_path": root_path,
        "headers": [(k.lower().encode("latin-1"), v.encode("utf-8")) for k, v in items],
        "extensions": {"http.response.zerocopysend": {}} if zerocopy else {},
    }
    if raw:
        scope["raw_path"] = raw_target.encode("utf-8", "surrogateescape")
    messages: list[dict] = []
    pieces: list[bytes] = []
    sent = asyncio.Event()

    async def receive():
        if not sent.is_set():
            sent.set()
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # no disconnect in these tests

    async def send(message):
        messages.append(message)
        if message["type"] == "http.response.zerocopysend":
            f = message["file"]
            assert not f.closed
            pieces.append(os.pread(f.fileno(), message["count"], message["offset"]))
        elif message["type"] == "http.response.body" and zerocopy:
            pieces.append(message.get("body", b""))

    await app(scope, receive, send)
    response = Response(messages)
    if zerocopy:
        response.body = b"".join(pieces)
    return response


def parts(response: Response) -> list[tuple[str, str, bytes]]:
    """(content-type, content-range, data) of each part of a multipart/byteranges body."""
    match = re.fullmatch(r"multipart/byteranges; boundary=([0-9a-f]+)", response.headers["content-type"])
    assert match, response.headers["content-type"]
    delim = b"\r\n--" + match.group(1).encode()
    body = response.body
    assert body.endswith(delim + b"--\r\n")
    chunks = body[: -len(delim) - 4].split(delim)
    assert chunks[0] == b""
    result = []
    for chunk in chunks[1:]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if line)
        result.append((fields["Content-Type"], fields["Content-Range"], data))
    return result


# -- plain files ---------------------------------------------------------------------------------------


async def test_get_file(www):
    r = await call(StaticFiles(www), "/hello.txt")
    assert r.status == 200 and r.body == b"hello world\n" and r.complete
    h = r.headers
    assert h["content-type"] == "text/plain; charset=utf-8"
    assert h["content-length"] == "12"
    assert h["x-content-type-options"] == "nosniff"
    assert h["accept-ranges"] == "bytes"
    assert re.fullmatch(r'"[0-9a-f]{24}"', h["etag"])
    assert parse_http_date(h["last-modified"]) is not None


async def test_head_has_get_headers_and_no_body(www):
    app = StaticFiles(www)
    get, head = await call(app, "/data.bin"), await call(app, "/data.bin", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers == get.headers and head.headers["content-length"] == "1000"
    for path in ("/plain/", "/nope", "/docs"):
        g, h = await call(app, path), await call(app, path, method="HEAD")
        assert (h.status, h.headers, h.body) == (g.status, g.headers, b"")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"])
async def test_other_methods_405(www, method):
    r = await call(StaticFiles(www), "/hello.txt", method=method)
    assert r.status == 405 and r.headers["allow"] == "GET, HEAD"
    assert int(r.headers["content-length"]) == len(r.body)


@pytest.mark.parametrize(
    "name, ctype",
    [
        ("x.html", "text/html; charset=utf-8"),
        ("x.css", "text/css; charset=utf-8"),
        ("x.png", "image/png"),
        ("x.unknownext", "application/octet-stream"),
        ("noext", "application/octet-stream"),
        ("x.tar.gz", "application/gzip"),
    ],
)
async def test_content_type(www, name, ctype):
    (www / name).write_bytes(b"abc")
    r = await call(StaticFiles(www), "/" + name)
    assert r.headers["content-type"] == ctype and "content-encoding" not in r.headers


async def test_hidden_files_are_served(www):
    r = await call(StaticFiles(www), "/.hidden")
    assert r.status == 200 and r.body == b"dot file"


async def test_empty_file(www):
    r = await call(StaticFiles(www), "/empty.txt")
    assert r.status == 200 and r.body == b"" and r.headers["content-length"] == "0" and r.complete


# -- ranges ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, start, stop",
    [
        ("bytes=0-99", 0, 100),
        ("bytes=100-", 100, 1000),
        ("bytes=-100", 900, 1000),
        ("bytes=990-2000", 990, 1000),
        ("bytes=-5000", 0, 1000),
        ("bytes=5-5", 5, 6),
        ("BYTES=1-2", 1, 3),
        ("bytes= 1-2 ", 1, 3),
        ("bytes=0-9,5-19", 0, 20),  # overlapping: coalesced
        ("bytes=0-9,10-19", 0, 20),  # adjacent: coalesced
        ("bytes=0-9,2000-3000", 0, 10),  # the unsatisfiable spec is dropped
        ("bytes=0-" + "9" * 5000, 0, 1000),  # absurd number: clamped, no int() blowup
    ],
)
@pytest.mark.parametrize("zerocopy", [False, True])
async def test_single_range(www, spec, start, stop, zerocopy):
    r = await call(StaticFiles(www), "/data.bin", headers={"Range": spec}, zerocopy=zerocopy)
    assert r.status == 206
    assert r.body == DATA[start:stop]
    assert r.headers["content-range"] == f"bytes {start}-{stop - 1}/1000"
    assert r.headers["content-length"] == str(stop - start)
    assert r.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize("zerocopy", [False, True])
async def test_multiple_ranges(www, zerocopy):
    app = StaticFiles(www)
    r = await call(app, "/data.bin", headers={"Range": "bytes=50-59,0-9,-10"}, zerocopy=zerocopy)
    assert r.status == 206 and "content-range" not in r.headers
    assert int(r.headers["content-length"]) == len(r.body)
    got = parts(r)
    assert got == [
        ("application/octet-stream", "bytes 0-9/1000", DATA[0:10]),
        ("application/octet-stream", "bytes 50-59/1000", DATA[50:60]),
        ("application/octet-stream", "bytes 990-999/1000", DATA[990:]),
    ]
    again = await call(app, "/data.bin", headers={"Range": "bytes=0-1,5-6"})
    assert again.headers["content-type"] != r.headers["content-type"], "boundary must be random"


@pytest.mark.parametrize("spec", ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=1000-1000,2000-"])
async def test_unsatisfiable_416(www, spec):
    r = await call(StaticFiles(www), "/data.bin", headers={"Range": spec})
    assert r.status == 416 and r.headers["content-range"] == "bytes */1000"
    assert int(r.headers["content-length"]) == len(r.body)


@pytest.mark.parametrize(
    "spec",
    [
        "bytes=abc", "bytes=5-1", "items=0-5", "bytes=", "bytes=-", "bytes=1-2-3", "bytes 0-5", "0-5",
        "bytes=\u0661-\u0665", "bytes=0x10-20", "bytes=+1-2", "bytes=1 -2", "bytes=0-5;q=1",
        ",".join(["bytes=0-0"] + [f"{i}-{i}" for i in range(2, 2 * MAX_RANGES + 1, 2)]),  # 17 ranges
    ],
)
async def test_ignored_range_gives_full_200(www, spec):
    r = await call(StaticFiles(www), "/data.bin", headers={"Range": spec})
    assert r.status == 200 and r.body == DATA and "content-range" not in r.headers


async def test_range_limits_and_repeats(www):
    app = StaticFiles(www)
    sixteen = "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 2 * MAX_RANGES, 2))
    r = await call(app, "/data.bin", headers={"Range": sixteen})
    assert r.status == 206 and len(parts(r)) == MAX_RANGES
    # A hundred copies of the same range, overlapping in every order, still costs one range.
    many = await call(app, "/data.bin", headers={"Range": "bytes=0-999," + ",".join(["0-999"] * 15)})
    assert many.status == 206 and many.body == DATA
    twice = await call(app, "/data.bin", headers=[("Range", "bytes=0-1"), ("Range", "bytes=2-3")])
    assert twice.status == 200 and twice.body == DATA


async def test_range_ignored_for_head_and_empty_files(www):
    app = StaticFiles(www)
    head = await call(app, "/data.bin", method="HEAD", headers={"Range": "bytes=0-9"})
    assert head.status == 200 and head.headers["content-length"] == "1000" and head.body == b""
    empty = await call(app, "/empty.txt", headers={"Range": "bytes=0-9"})
    assert empty.status == 200 and empty.body == b""


async def test_if_range(www, monkeypatch):
    app = StaticFiles(www, cache_valid=0)  # (data.bin changes below: every use checks the disk)
    etag = (await call(app, "/old.bin")).headers["etag"]
    rng = {"Range": "bytes=0-9"}
    cases = [
        (etag, 206),
        ('"other"', 200),
        ("W/" + etag, 200),  # weak tags never satisfy If-Range
        (OLD_DATE, 206),
        ("Sun, 13 Sep 2020 12:26:41 GMT", 200),  # must be an exact match, not "not modified since"
        ("garbage", 200),
    ]
    for value, status in cases:
        r = await call(app, "/old.bin", headers={**rng, "If-Range": value})
        assert r.status == status, value
        assert r.body == (DATA[:10] if status == 206 else DATA)
    # A file modified within the last second has a weak Last-Modified: a date cannot validate it.
    lm = (await call(app, "/data.bin")).headers["last-modified"]
    os.utime(www / "data.bin")
    pin_wall_clock(monkeypatch, (www / "data.bin").stat().st_mtime + 0.5)
    r = await call(app, "/data.bin", headers={**rng, "If-Range": lm})
    assert r.status == 200


# -- conditional requests -----------------------------------------------------------------------------


async def test_if_none_match(www):
    app = StaticFiles(www)
    first = await call(app, "/old.bin")
    etag = first.headers["etag"]
    for value in (etag, "*", f'"nope", W/{etag}', f'W/"x",{etag}'):
        for method in ("GET", "HEAD"):
            r = await call(app, "/old.bin", method=method, headers={"If-None-Match": value})
            assert r.status == 304 and r.body == b"", value
            assert r.headers["etag"] == etag and r.headers["last-modified"] == OLD_DATE
            assert "content-length" not in r.headers
    r = await call(app, "/old.bin", headers={"If-None-Match": '"nope"'})
    assert r.status == 200 and r.body == DATA
    # If-None-Match present: If-Modified-Since is ignored even though it alone would say 304.
    r = await call(app, "/old.bin", headers={"If-None-Match": '"nope"', "If-Modified-Since": OLD_DATE})
    assert r.status == 200


async def test_if_modified_since(www):
    app = StaticFiles(www)
    for value, status in [
        (OLD_DATE, 304),
        ("Mon, 14 Sep 2020 00:00:00 GMT", 304),
        ("Monday, 14-Sep-20 00:00:00 GMT", 304),  # RFC 850 form
        ("Mon Sep 14 00:00:00 2020", 304),  # asctime form
        ("Sun, 13 Sep 2020 12:26:39 GMT", 200),
        ("not a date", 200),
    ]:
        r = await call(app, "/old.bin", headers={"If-Modified-Since": value})
        assert r.status == status, value


async def test_if_match_and_unmodified_since(www):
    app = StaticFiles(www)
    etag = (await call(app, "/old.bin")).headers["etag"]
    assert (await call(app, "/old.bin", headers={"If-Match": '"nope"'})).status == 412
    assert (await call(app, "/old.bin", headers={"If-Match": "W/" + etag})).status == 412
    assert (await call(app, "/old.bin", headers={"If-Match": etag})).status == 200
    assert (await call(app, "/old.bin", headers={"If-Match": "*"})).status == 200
    early = "Sat, 12 Sep 2020 00:00:00 GMT"
    assert (await call(app, "/old.bin", headers={"If-Unmodified-Since": early})).status == 412
    assert (await call(app, "/old.bin", headers={"If-Unmodified-Since": OLD_DATE})).status == 200


async def test_etag_follows_content(www):
    app = StaticFiles(www, cache_valid=0)  # every use checks the disk (the cache's window: tests below)
    before = (await call(app, "/old.bin")).headers["etag"]
    (www / "old.bin").write_bytes(DATA + b"!")
    os.utime(www / "old.bin", ns=(OLD_NS, OLD_NS))
    after = await call(app, "/old.bin", headers={"If-None-Match": before})
    assert after.status == 200 and after.headers["etag"] != before


def test_validators_never_in_the_future():
    class St:
        st_ino, st_size, st_mtime_ns = 1, 2, 4_000_000_000 * 10**9

    v = Validators(St(), now=1_700_000_000.5)
    assert v.mtime == 1_700_000_000 and not v.strong_date


# -- directories ------------------------------------------------------------------------------------------


async def test_directory_redirect_keeps_query(www):
    app = StaticFiles(www)
    r = await call(app, "/docs")
    assert r.status == 301 and r.headers["location"] == "/docs/"
    r = await call(app, "/docs?a=1&b=%20x")
    assert r.headers["location"] == "/docs/?a=1&b=%20x"
    r = await call(app, "/static/docs", root_path="/static")  # mounted, path keeps the prefix
    assert r.headers["location"] == "/static/docs/"
    r = await call(app, "/docs", root_path="/static")  # mounted by a router that strips it
    assert r.headers["location"] == "/static/docs/"
    r = await call(app, "/static", root_path="/static")
    assert r.headers["location"] == "/static/"


async def test_redirect_is_never_protocol_relative(www):
    r = await call(StaticFiles(www), "//evil.example")
    assert r.status == 301 and r.headers["location"] == "/evil.example/"


async def test_index_and_listing(www):
    app = StaticFiles(www)
    r = await call(app, "/docs/")
    assert r.status == 200 and r.body == b"<h1>docs</h1>"
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    r = await call(app, "/plain/")
    assert r.status == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in r.headers["content-security-policy"]
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert int(r.headers["content-length"]) == len(r.body)
    page = r.body.decode()
    assert "<script>" not in page
    assert '<a href="%3Cscript%3E.txt">&lt;script&gt;.txt</a>' in page
    assert '<a href="a%26b.txt">a&amp;b.txt</a>' in page
    assert '<a href="q%22uote.txt">q&quot;uote.txt</a>' in page
    assert 'href="javascript%3Aalert%281%29"' in page
    assert '<a href="../">../</a>' in page
    assert "link-out" not in page and "link-in.txt" in page
    names = re.findall(r'<a href="([^"]+)">', page)
    assert names == [
        "../", "Adir/", "zdir/", "%3Cscript%3E.txt", "a%26b.txt", "afile", "Bfile",
        "javascript%3Aalert%281%29", "link-in.txt", "q%22uote.txt",
    ]
    root = (await call(app, "/")).body.decode()
    assert 'href="../"' not in root and "link-outdir" not in root and "secret" not in root
    assert 'href=".hidden"' in root


async def test_listing_disabled(www):
    app = StaticFiles(www, listing=False)
    assert (await call(app, "/plain/")).status == 404
    assert (await call(app, "/docs/")).status == 200
    assert (await call(app, "/hello.txt")).status == 200


async def test_custom_index_names(www):
    (www / "plain" / "default.htm").write_bytes(b"default")
    app = StaticFiles(www, index=("index.html", "default.htm"))
    assert (await call(app, "/plain/")).body == b"default"
    with pytest.raises(ValueError):
        StaticFiles(www, index=("../secret.txt",))
    with pytest.raises(NotADirectoryError):
        StaticFiles(www / "hello.txt")


# -- safety ---------------------------------------------------------------------------------------------


UNSAFE = [
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt",
    "/..%2fsecret.txt",
    "/%2e%2e%2fsecret.txt",
    "/plain/..%2f..%2fsecret.txt",
    "/plain/../../secret.txt",
    "/docs%2findex.html",  # an encoded slash is refused even when it would stay inside
    "/..\\secret.txt",
    "/%5c..%5csecret.txt",
    "/..%5csecret.txt",
    "/hello.txt%00",
    "/hello.txt%00.png",
    "/%00",
    "/./hello.txt",
    "/plain/../hello.txt",  # dot segments are refused even when they would stay inside
    "/plain/%2e%2e/hello.txt",
    "/%2e/hello.txt",
    "/%2fetc%2fpasswd",
    "//etc/passwd",
    "/" + "%2e%2e/" * 20 + "etc/passwd",
    "/link-out.txt",
    "/link-abs.txt",
    "/link-outdir/topsecret-name.txt",
    "/link-outdir/",
    "/link-outdir",
    "/plain/link-out.txt",
    "/../www-secret/topsecret-name.txt",
    "/hello.txt/",
    "/nonexistent",
    "/\udc80\udcff",
    "/%ed%a0%80",
]


@pytest.mark.parametrize("target", UNSAFE)
@pytest.mark.parametrize("raw", [True, False])
async def test_unsafe_paths_are_404(www, target, raw):
    r = await call(StaticFiles(www), target, raw=raw)
    if not raw and "%2f" in target.lower() and "%2e%2e" not in target.lower():
        # Without raw_path an encoded slash cannot be told from a real one; it must still stay inside.
        assert r.status in (200, 404)
    else:
        assert r.status == 404, target
    assert SECRET not in r.body and b"topsecret" not in r.body


async def test_lone_surrogate_path_is_404(www):
    app = StaticFiles(www)
    r = await call(app, "/\ud800.txt", raw=False)
    assert r.status == 404


async def test_in_tree_symlinks_served_and_follow_symlinks_opt_in(www):
    app = StaticFiles(www)
    assert (await call(app, "/link-in.txt")).body == b"hello world\n"
    assert (await call(app, "/plain/link-in.txt")).body == b"hello world\n"
    trusting = StaticFiles(www, follow_symlinks=True)
    assert (await call(trusting, "/link-out.txt")).body == SECRET
    assert (await call(trusting, "/../secret.txt")).status == 404  # `..` is refused regardless


async def test_served_directory_reached_through_a_symlink(www, tmp_path):
    os.symlink(www, tmp_path / "alias")
    app = StaticFiles(tmp_path / "alias")
    assert (await call(app, "/hello.txt")).status == 200
    assert (await call(app, "/link-out.txt")).status == 404


async def test_special_files_are_404(www):
    os.mkfifo(www / "fifo")
    async with asyncio.timeout(WAIT):
        r = await call(StaticFiles(www), "/fifo")
    assert r.status == 404
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(www / "sock"))
        assert (await call(StaticFiles(www), "/sock")).status == 404
        assert "sock" not in (await call(StaticFiles(www), "/")).body.decode()


async def test_long_paths(www):
    app = StaticFiles(www)
    assert (await call(app, "/" + "a" * (MAX_PATH + 10))).status == 414
    assert (await call(app, "/" + "a" * 300)).status == 404
    assert (await call(app, "/" + "a/" * 2000)).status == 404


async def test_vanished_and_forbidden(www, monkeypatch):
    real_open = os.open
    target = str((www / "hello.txt").resolve())

    def failing(exc):
        def fake(path, *args, **kw):
            if os.fspath(path) == target:
                raise exc(13 if exc is PermissionError else 2, "fake", path)
            return real_open(path, *args, **kw)
        return fake

    app = StaticFiles(www)
    monkeypatch.setattr(static_mod.os, "open", failing(FileNotFoundError))
    assert (await call(app, "/hello.txt")).status == 404
    monkeypatch.setattr(static_mod.os, "open", failing(PermissionError))
    r = await call(app, "/hello.txt")
    assert r.status == 403 and int(r.headers["content-length"]) == len(r.body)
    monkeypatch.setattr(static_mod.os, "open", real_open)

    def no_scandir(path):
        raise PermissionError(13, "fake", path)

    monkeypatch.setattr(static_listing.os, "scandir", no_scandir)
    assert (await call(app, "/plain/")).status == 403


SECRET_FRAGMENTS = [
    "..", ".", "/", "//", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", "%00", "%", "%25", "%252e", "?",
    "secret.txt", "www-secret", "topsecret-name.txt", "link-out.txt", "link-outdir", "link-abs.txt",
    "plain", "docs", "hello.txt", "..%2f", "%2e%2e", "%c0%ae", "\u2024", "\uff0e", "é", "~", ";", "#",
]


def test_fuzzed_paths_never_escape(www):
    app = StaticFiles(www)
    trusting_listing = StaticFiles(www, listing=True, index=())
    loop = asyncio.new_event_loop()
    fragment = st.one_of(st.sampled_from(SECRET_FRAGMENTS), st.text(max_size=3))

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(fragment, max_size=14).map("".join), st.booleans(), st.booleans())
    def check(path, raw, listing_app):
        target = "/" + path
        r = loop.run_until_complete(call(trusting_listing if listing_app else app, target, raw=raw))
        assert r.status in (200, 301, 404, 414), (target, r.status)
        assert SECRET not in r.body and b"topsecret" not in r.body.lower(), target
        if r.status == 301:
            assert r.headers["location"].startswith("/") and not r.headers["location"].startswith("//")

    try:
        check()
    finally:
        loop.close()


def test_fuzzed_ranges_match_a_model(www):
    app = StaticFiles(www)
    loop = asyncio.new_event_loop()
    spec = st.one_of(
        st.tuples(st.integers(0, 1100), st.none()),
        st.tuples(st.none(), st.integers(0, 1100)),
        st.tuples(st.integers(0, 1100), st.integers(0, 1100)).map(sorted).map(tuple),
    )

    @settings(max_examples=300, deadline=None)
    @given(st.lists(spec, min_size=1, max_size=MAX_RANGES + 2), st.booleans())
    def check(specs, zerocopy):
        text = "bytes=" + ",".join(f"{'' if a is None else a}-{'' if b is None else b}" for a, b in specs)
        r = loop.run_until_complete(call(app, "/data.bin", headers={"Range": text}, zerocopy=zerocopy))
        wanted: set[int] = set()
        for a, b in specs:
            if a is None:
                wanted.update(range(max(0, 1000 - b), 1000) if b else ())
            else:
                wanted.update(range(a, min(b + 1 if b is not None else 1000, 1000)))
        if len(specs) > MAX_RANGES:
            assert r.status == 200 and r.body == DATA
            return
        if not wanted:
            assert r.status == 416
            return
        assert r.status == 206
        if "content-range" in r.headers:
            got = [("", r.headers["content-range"], r.body)]
        else:
            got = parts(r)
            assert len(got) >= 2
        covered: list[int] = []
        for _, content_range, data in got:
            m = re.fullmatch(r"bytes (\d+)-(\d+)/1000", content_range)
            start, end = int(m.group(1)), int(m.group(2))
            assert data == DATA[start : end + 1]
            covered.extend(range(start, end + 1))
        assert covered == sorted(wanted), "parts must be sorted, disjoint, and cover exactly the request"

    try:
        check()
    finally:
        loop.close()


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60), st.integers(0, 2000))
def test_header_parsers_never_raise(value, size):
    ranges = parse_range(value, size)
    if ranges:
        assert all(0 <= a < b <= size for a, b in ranges)
        assert all(b1 < a2 for (_, b1), (a2, _) in zip(ranges, ranges[1:], strict=False))
    parse_http_date(value)

    class St:
        st_ino, st_size, st_mtime_ns = 7, size, OLD_NS

    v = Validators(St())
    for name in ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since"):
        assert precondition({name: [value]}, v) in (None, 304, 412)
    if_range_holds(value, v)


# -- body paths -------------------------------------------------------------------------------------------


async def test_zerocopy_messages(www):
    # Uncached: a cached small file is sent from memory, a cached large one stays open (test_static_cache.py)
    r = await call(StaticFiles(www, cache_entries=0), "/data.bin", zerocopy=True)
    assert r.status == 200 and r.body == DATA
    zc = [m for m in r.messages if m["type"] == "http.response.zerocopysend"]
    assert len(zc) == 1 and zc[0]["offset"] == 0 and zc[0]["count"] == 1000 and zc[0]["more_body"] is False
    assert zc[0]["file"].closed, "the app closes the file once the last send returned"
    assert not any(m["type"] == "http.response.body" for m in r.messages)
    head = await call(StaticFiles(www), "/data.bin", method="HEAD", zerocopy=True)
    assert not any(m["type"] == "http.response.zerocopysend" for m in head.messages)
    empty = await call(StaticFiles(www), "/empty.txt", zerocopy=True)
    assert empty.body == b"" and empty.complete


async def test_chunked_reads(www):
    r = await call(StaticFiles(www, chunk_size=7, cache_entries=0), "/data.bin")
    bodies = [m for m in r.messages if m["type"] == "http.response.body"]
    assert len(bodies) == 143 and all(len(m["body"]) <= 7 for m in bodies)
    assert r.body == DATA and r.complete
    assert [m["more_body"] for m in bodies] == [True] * 142 + [False]


async def test_stops_when_client_disconnects(www):
    app = StaticFiles(www, chunk_size=10, cache_entries=0)  # (the threaded-read path, never memory)
    calls = 0

    async def receive():
        nonlocal calls
        calls += 1
        return {"type": "http.request", "body": b""} if calls == 1 else {"type": "http.disconnect"}

    messages = []

    async def send(message):
        messages.append(message)
        await asyncio.sleep(0)

    scope = {"type": "http", "method": "GET", "path": "/data.bin", "headers": [], "query_string": b""}
    await app(scope, receive, send)
    assert 1 < len(messages) < 20 and messages[-1].get("more_body") is True


async def test_file_shrinking_mid_send_ends_early(www, monkeypatch):
    app = StaticFiles(www, chunk_size=100, cache_entries=0)
    real_pread = os.pread
    monkeypatch.setattr(static_mod.os, "pread", lambda fd, n, off: b"" if off >= 300 else real_pread(fd, n, off))
    r = await call(app, "/data.bin")
    assert r.body == DATA[:300] and not r.complete


async def test_lifespan_and_websocket(www):
    app = StaticFiles(www)
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    out = []

    async def receive():
        return inbox.pop(0)

    async def send(message):
        out.append(message["type"])

    await app({"type": "lifespan"}, receive, send)
    assert out == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    out.clear()
    await app({"type": "websocket", "path": "/"}, receive, send)
    assert out == ["websocket.close"]


# -- real sockets (uvicorn as the server) --------------------------------------------------------------


@contextlib.asynccontextmanager
async def uvicorn_serving(app):
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(WAIT):
            while not server.started:
                assert not task.done(), "uvicorn stopped before it started"
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_large_file_over_a_real_socket(www):
    big = os.urandom(5 * 1024 * 1024 + 123)
    (www / "big.bin").write_bytes(big)
    async with uvicorn_serving(StaticFiles(www)) as base:
        async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=10) as client:
            r = await client.get("/big.bin")
            assert r.status_code == 200 and int(r.headers["content-length"]) == len(big)
            assert hashlib.sha256(r.content).digest() == hashlib.sha256(big).digest()
            r = await client.get("/big.bin", headers={"Range": "bytes=1000000-1999999"})
            assert r.status_code == 206 and r.content == big[1_000_000:2_000_000]
            r = await client.head("/big.bin")
            assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == str(len(big))
            etag = r.headers["etag"]
            r = await client.get("/big.bin", headers={"If-None-Match": etag})
            assert r.status_code == 304 and r.content == b""
            r = await client.get("/plain/")
            assert r.status_code == 200 and "&lt;script&gt;.txt" in r.text
            r = await client.get("/%2e%2e/secret.txt")
            assert r.status_code == 404
            r = await client.get("/docs", follow_redirects=True)
            assert r.status_code == 200 and r.text == "<h1>docs</h1>"


@pytest.mark.skipif(not os.path.exists(CURL), reason="needs /usr/bin/curl")
async def test_curl_fetches_ranges(www, tmp_path):
    async with uvicorn_serving(StaticFiles(www)) as base:

        async def curl(*args):
            proc = await asyncio.create_subprocess_exec(
                CURL, "-sS", "--noproxy", "*", "--max-time", "10", *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err
            return out

        out = tmp_path / "part"
        code = await curl("-r", "100-199", "-o", str(out), "-w", "%{http_code}", base + "/data.bin")
        assert code == b"206" and out.read_bytes() == DATA[100:200]
        code = await curl("-r", "-10", "-o", str(out), "-w", "%{http_code}", base + "/data.bin")
        assert code == b"206" and out.read_bytes() == DATA[-10:]
        headers = await curl("-I", base + "/data.bin")
        assert b"content-length: 1000" in headers.lower() and b"accept-ranges: bytes" in headers.lower()
        body = await curl("--path-as-is", base + "/../secret.txt")
        assert SECRET not in body
        assert shutil.which(CURL)
