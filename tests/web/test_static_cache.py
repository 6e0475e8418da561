"""StaticFiles' file cache (static_cache.py) and the server's answer for cached files: the same responses as
without it, bounded in entries and bytes, a change on disk noticed after the check window without a stat per
request, and refusals that never depend on what is cached."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from apps import RawClient, port_of, serving
from helpers import WAIT, wait_for
from test_static import OLD_NS, call, pin_wall_clock

from socketkit.web import static_cache
from socketkit.web.static import StaticFiles

SMALL = bytes(range(256)) * 16  # 4 KiB
BIG = os.urandom(300 * 1024)  # past cache_file_max: kept as an open file, sent from it


def _old(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(OLD_NS, OLD_NS))  # older than a second: may be cached


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    _old(root / "small.bin", SMALL)
    _old(root / "big.bin", BIG)
    _old(root / "sub" / "index.html", b"<p>index</p>")
    _old(root / "a.txt", b"a")
    (tmp_path / "outside.txt").write_bytes(b"SECRET")
    return root


REQUESTS = [
    ("GET", "/small.bin", {}),
    ("HEAD", "/small.bin", {}),
    ("GET", "/small.bin", {"Range": "bytes=10-19"}),
    ("GET", "/small.bin", {"Range": "bytes=0-1,100-101"}),
    ("GET", "/small.bin", {"Range": "bytes=9000-"}),
    ("GET", "/small.bin", {"If-Modified-Since": "Sun, 13 Sep 2020 12:26:40 GMT"}),
    ("GET", "/small.bin", {"If-Match": '"nope"'}),
    ("GET", "/big.bin", {}),
    ("HEAD", "/big.bin", {}),
    ("GET", "/big.bin", {"Range": "bytes=-100"}),
    ("GET", "/sub/", {}),
    ("GET", "/sub", {}),
    ("GET", "/", {}),
    ("GET", "/nope", {}),
    ("GET", "/small.bin/", {}),
]


@pytest.mark.parametrize("zerocopy", [False, True])
async def test_cached_answers_are_the_uncached_answers(site, zerocopy):
    cached, uncached = StaticFiles(site), StaticFiles(site, cache_entries=0)
    for _ in range(3):  # the first time fills the cache, then hits
        for method, target, headers in REQUESTS:
            a = await call(cached, target, method=method, headers=headers, zerocopy=zerocopy)
            b = await call(uncached, target, method=method, headers=headers, zerocopy=zerocopy)
            for r in (a, b):  # multipart bodies have a random boundary
                boundary = r.headers.get("content-type", "").partition("boundary=")[2]
                if boundary:
                    r.body = r.body.replace(boundary.encode(), b"B")
                    r.headers["content-type"] = r.headers["content-type"].replace(boundary, "B")
            assert (a.status, a.body, a.complete) == (b.status, b.body, b.complete), target
            assert a.headers == b.headers, (method, target, headers)
    assert set(cached.cache.entries) == {"/small.bin", "/big.bin", "/sub/"}
    assert cached.cache.entries["/small.bin"].body == SMALL and cached.cache.entries["/small.bin"].file is None
    assert cached.cache.entries["/big.bin"].body is None and not cached.cache.entries["/big.bin"].file.closed
    assert cached.cache.hits >= 2 * 9


class Clock:
    """static_cache's clock, moved by hand: the check window is tested without sleeping or racing."""

    def __init__(self, monkeypatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(static_cache, "_monotonic", lambda: self.now)


async def test_no_stat_per_request_and_a_change_noticed_after_the_window(site, monkeypatch):
    clock = Clock(monkeypatch)
    app = StaticFiles(site, cache_valid=1.0)
    assert (await call(app, "/small.bin")).body == SMALL
    stats = []
    real_stat = os.stat
    inside = os.path.realpath(site)

    def counting(path, *a, **k):
        # (os.stat is patched for the whole process: count only the site's files, not what another
        # thread of this test process happens to stat meanwhile)
        if str(path).startswith(inside):
            stats.append(path)
        return real_stat(path, *a, **k)

    monkeypatch.setattr(static_cache.os, "stat", counting)
    for _ in range(200):
        clock.now += 0.001
        assert (await call(app, "/small.bin")).body == SMALL
    assert stats == []  # no stat in the window, not 200
    _old(site / "small.bin", b"changed in place")  # same inode, other size
    early = await call(app, "/small.bin")
    assert early.body == SMALL and early.headers["content-length"] == str(len(SMALL))  # old version, whole
    clock.now += 1.0
    late = await call(app, "/small.bin")
    assert len(stats) == 1
    assert late.body == b"changed in place" and late.headers["etag"] != early.headers["etag"]


async def test_a_file_replaced_by_rename_and_a_new_mtime_are_noticed(site, monkeypatch):
    clock = Clock(monkeypatch)
    app = StaticFiles(site, cache_valid=0.1)
    before = await call(app, "/big.bin")
    new = site / "big.new"
    _old(new, b"x" * len(BIG))  # same size and mtime: only the inode tells
    os.replace(new, site / "big.bin")
    assert (await call(app, "/big.bin")).body == BIG  # inside the window: the old open file, whole
    clock.now += 0.2
    after = await call(app, "/big.bin")
    assert after.body == b"x" * len(BIG) and after.headers["etag"] != before.headers["etag"]
    assert (await call(app, "/a.txt")).headers["last-modified"] == "Sun, 13 Sep 2020 12:26:40 GMT"
    os.utime(site / "a.txt", ns=(OLD_NS + 10**9, OLD_NS + 10**9))
    clock.now += 0.2
    assert (await call(app, "/a.txt")).headers["last-modified"] == "Sun, 13 Sep 2020 12:26:41 GMT"


async def test_a_file_changed_within_the_last_second_is_never_cached(site, monkeypatch):
    app = StaticFiles(site)
    (site / "fresh.txt").write_bytes(b"new")
    # "Now" is half a second after the write, however long this machine takes to get to the request.
    pin_wall_clock(monkeypatch, (site / "fresh.txt").stat().st_mtime + 0.5)
    assert (await call(app, "/fresh.txt")).body == b"new"
    assert "/fresh.txt" not in app.cache.entries
    (site / "fresh.txt").write_bytes(b"newer")  # same second, maybe same mtime: must still show
    pin_wall_clock(monkeypatch, (site / "fresh.txt").stat().st_mtime + 0.5)
    assert (await call(app, "/fresh.txt")).body == b"newer"


async def test_bounded_in_entries_and_bytes(site):
    for i in range(20):
        _old(site / f"f{i}.bin", bytes([i]) * 1000)
    app = StaticFiles(site, cache_entries=5, cache_bytes=3500, cache_file_max=2000)
    for i in range(20):
        assert (await call(app, f"/f{i}.bin")).body == bytes([i]) * 1000
        assert len(app.cache.entries) <= 5 and app.cache.bytes <= 3500
    assert app.cache.bytes == sum(len(e.body) for e in app.cache.entries.values()) == 3000
    assert list(app.cache.entries) == ["/f17.bin", "/f18.bin", "/f19.bin"]  # the oldest went first


async def test_an_open_file_in_use_is_closed_only_after_its_last_user(site):
    app = StaticFiles(site, cache_entries=1)
    assert (await call(app, "/big.bin")).body == BIG
    entry = app.cache.entries["/big.bin"]
    gate = asyncio.Event()
    sent = []

    async def slow_send(message):
        sent.append(message)
        if message["type"] == "http.response.start":
            await gate.wait()

    scope = {"type": "http", "method": "GET", "path": "/big.bin", "raw_path": b"/big.bin", "headers": [],
             "query_string": b"",
             "extensions": {"http.response.zerocopysend": {}}}
    task = asyncio.create_task(app(scope, lambda: asyncio.sleep(3600), slow_send))
    await wait_for(lambda: sent, what="the task to hold big.bin (its response started)")
    await call(app, "/a.txt")  # evicts big.bin while the task holds it
    assert "/big.bin" not in app.cache.entries and entry.dead and not entry.file.closed
    gate.set()
    await task
    assert sent[-1]["type"] == "http.response.zerocopysend" and entry.file.closed


async def test_refusals_never_depend_on_the_cache(site, tmp_path):
    app = StaticFiles(site, cache_valid=0.05)
    assert (await call(app, "/sub/")).status == 200
    for target in ("/sub%2f", "/sub%2F", "/%2e%2e/outside.txt", "/sub/%2e%2e/%2e%2e/outside.txt"):
        assert (await call(app, target)).status == 404, target
    assert (await call(app, "/sub/", root_path="/mnt")).status == 200  # another mount: its own lookup
    # A file swapped for a link leading out of the tree: refused once the window has passed.
    assert (await call(app, "/a.txt")).body == b"a"
    (site / "a.txt").unlink()
    os.symlink(tmp_path / "outside.txt", site / "a.txt")
    await asyncio.sleep(0.1)
    r = await call(app, "/a.txt")
    assert r.status == 404 and b"SECRET" not in r.body


# -- through the server --------------------------------------------------------------------------------


async def test_the_server_answers_cached_files_as_the_app_would(site):
    app = StaticFiles(site)
    async with serving(app) as web, await RawClient.open(port_of(web)) as c:
        for method in ("GET", "HEAD", "GET"):
            r = await c.request(method, "/small.bin")
            assert r.status == 200 and r.body == (SMALL if method == "GET" else b"")
            assert r.header("content-length") == str(len(SMALL)) and r.header("etag")
        assert app.cache.hits >= 2
        fast = await c.request("GET", "/small.bin")
        r = await c.request("GET", "/small.bin", headers={"If-None-Match": fast.header("etag")})
        assert r.status == 304 and r.body == b""
        r = await c.request("GET", "/small.bin", headers={"Range": "bytes=1-2"})
        assert r.status == 206 and r.body == SMALL[1:3]
        r = await c.request("GET", "/small.bin", version="1.0")
        assert r.body == SMALL and r.header("connection") == "close"
    async with serving(StaticFiles(site, cache_entries=0)) as web, await RawClient.open(port_of(web)) as c:
        slow = await c.request("GET", "/small.bin")
    drop = {"date"}
    assert [h for h in fast.headers if h[0] not in drop] == [h for h in slow.headers if h[0] not in drop]


async def test_the_server_pipelines_cached_answers_in_order(site):
    async with serving(StaticFiles(site)) as web, await RawClient.open(port_of(web)) as c:
        await c.request("GET", "/a.txt")
        await c.send(b"".join(b"GET /%s HTTP/1.1\r\nhost: t\r\n\r\n" % name
                              for name in (b"a.txt", b"small.bin", b"nope", b"a.txt")))
        got = [await c.response() for _ in range(4)]
        assert [(r.status, r.body[:1]) for r in got] == [(200, b"a"), (200, SMALL[:1]), (404, b"4"), (200, b"a")]


def test_lookups_per_second_do_not_stat(site, monkeypatch):
    """The cache's own bookkeeping: a hit is a dict lookup and a clock read."""
    cache = StaticFiles(site).cache
    entry = static_cache.Entry()
    entry.path, entry.raw_path, entry.key = "/x", b"/x", (1,)
    cache.add(entry)
    monkeypatch.setattr(static_cache.os, "stat", lambda *a, **k: pytest.fail("stat on a fresh hit"))
    t = time.perf_counter()
    for _ in range(10000):
        assert cache.get("/x", b"/x", "") is entry
    assert cache.get("/x", b"/X", "") is None and cache.get("/x", b"/x", "/mnt") is None
    assert time.perf_counter() - t < WAIT  # (microseconds each; a stat per hit fails above, not here)


async def test_cached_files_are_answered_while_the_handler_waits(site, monkeypatch):
    """A request for a small cached file that arrives while the connection's handler waits between requests
    is answered inside data_received (web/http.py's quick()), the handler left parked: the same bytes, and
    everything else still goes through the handler, in order."""
    from socketkit.net import driver

    resumed = 0
    step = driver.Driver.step_inline

    def counting(self):
        nonlocal resumed
        resumed += 1
        step(self)

    monkeypatch.setattr(driver.Driver, "step_inline", counting)
    app = StaticFiles(site)
    async with serving(app) as web, await RawClient.open(port_of(web)) as c:
        first = await c.request("GET", "/small.bin")  # (the first request starts the handler)
        before = resumed
        for _ in range(50):
            r = await c.request("GET", "/small.bin")
            assert r.status == 200 and r.body == SMALL and r.header("etag") == first.header("etag")
        assert resumed - before < 5, "the handler was resumed for requests it did not need to see"
        # what the quick answer leaves to the handler, between quick answers
        assert (await c.request("GET", "/nope")).status == 404
        assert (await c.request("GET", "/small.bin", headers={"Range": "bytes=0-1"})).body == SMALL[:2]
        assert (await c.request("HEAD", "/small.bin")).body == b""
        assert (await c.request("GET", "/big.bin")).body == BIG
        await c.send(b"GET /small.bin HT")  # a head in two reads
        await asyncio.sleep(0.05)
        await c.send(b"TP/1.1\r\nhost: t\r\n\r\n")
        assert (await c.response()).body == SMALL
        await c.send(b"GET /a.txt HTTP/1.1\r\nhost: t\r\n\r\nGET /small.bin HTTP/1.1\r\nhost: t\r\n\r\n")
        assert [(await c.response()).body for _ in range(2)] == [b"a", SMALL]
        assert (await c.request("GET", "/small.bin")).body == SMALL  # quick again after all that
        r = await c.request("GET", "/small.bin", headers={"Connection": "close"})
        assert r.body == SMALL and r.header("connection") == "close"
        async with asyncio.timeout(WAIT):
            assert await c.reader.read() == b""  # and the connection ends after it


async def test_a_client_that_never_reads_cannot_queue_answers_without_bound(site):
    """Requests one read at a time, answers never read: the quick path stops once the connection's write
    buffer is full and the handler waits for the client, so what the server holds stays bounded."""
    mid = os.urandom(200 * 1024)  # cached as bytes (under 256 KiB): answered by the quick path
    _old(site / "mid.bin", mid)
    async with serving(StaticFiles(site)) as web, await RawClient.open(port_of(web)) as c:
        assert (await c.request("GET", "/mid.bin")).body == mid
        stream = web.server.streams[0]
        limit = stream.limits.write_buffer + 2 * len(mid)
        request = b"GET /mid.bin HTTP/1.1\r\nhost: t\r\n\r\n"
        worst = 0
        for _ in range(120):  # 24 MB of answers: far past what the kernel's socket buffers take
            c.writer.write(request)
            await asyncio.sleep(0.003)  # one request per read on the server
            worst = max(worst, stream.write_buffer_size)
        assert worst <= limit, worst
        async with asyncio.timeout(30):
            for _ in range(120):
                assert (await c.response()).body == mid


async def test_larger_cached_files_from_the_quick_path_reach_a_slow_reader_whole(site, monkeypatch):
    """A larger cached file answered where its request arrived goes out by sendfile as far as the socket
    takes it; the handler sends the rest once the slow client has made room: every body whole, in order."""
    import socket as socket_mod

    from helpers import shrink_buffers

    from socketkit.web import http as web_http

    rests = 0
    real_send_file = web_http.send_file

    async def counting(*args, **kwargs):
        nonlocal rests
        rests += 1
        return await real_send_file(*args, **kwargs)

    monkeypatch.setattr(web_http, "send_file", counting)
    async with serving(StaticFiles(site)) as web:
        sock = socket_mod.socket()
        sock.setsockopt(socket_mod.SOL_SOCKET, socket_mod.SO_RCVBUF, 16 * 1024)
        sock.connect(("127.0.0.1", port_of(web)))
        reader, writer = await asyncio.open_connection(sock=sock)
        c = RawClient(reader, writer)
        try:
            assert (await c.request("GET", "/small.bin")).body == SMALL
            shrink_buffers(web.server.streams[0], snd=32 * 1024)  # 300 KiB never fit at once
            for i in range(12):
                await c.send(b"GET /big.bin HTTP/1.1\r\nhost: t\r\n\r\n")
                if i % 3 == 0:
                    await asyncio.sleep(0.05)  # the server's socket fills while nobody reads
                r = await c.response()
                assert r.status == 200 and r.body == BIG
            assert (await c.request("GET", "/small.bin")).body == SMALL
        finally:
            writer.close()
    assert rests >= 6  # the rest of a file, sent by the handler once the socket had room
