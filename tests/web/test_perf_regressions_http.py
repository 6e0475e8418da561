"""The shortcuts of the HTTP/1.1 hot path keep the rules of the long way round.

Each shortcut (a cache, a state update written out, a plain attribute instead of a property) has a test
here that would fail if it ever stood for something the long way would refuse or compute differently.
"""

from __future__ import annotations

from socketkit.proto import http1_fast
from socketkit.proto.http1 import Data, EndOfMessage, Error, Request, ServerConnection

GET = b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n"


def test_valid_host_cache_never_lets_an_invalid_host_through() -> None:
    for host in (b"a.example", b"127.0.0.1:8080", b"[::1]:80"):
        assert type(ServerConnection().receive(GET % host)[0]) is Request
    assert b"127.0.0.1:8080" in http1_fast._GOOD_HOSTS
    for bad in (b"bad host", b"a/b", b"a@b:x"):
        events = ServerConnection().receive(GET % bad)
        assert [type(e) for e in events] == [Error]
        assert bad not in http1_fast._GOOD_HOSTS


def test_valid_host_cache_is_bounded() -> None:
    for i in range(600):
        conn = ServerConnection()
        assert type(conn.receive(GET % b"h%d.example" % i)[0]) is Request
    assert len(http1_fast._GOOD_HOSTS) <= 256


def test_request_pending_follows_the_head_through_split_reads() -> None:
    conn = ServerConnection()
    conn.fast = False
    assert not conn.request_pending
    assert conn.receive(b"POST / HTTP/1.1\r\nHost: a\r\n") == []
    assert conn.request_pending  # part of a head: the request deadline applies
    events = conn.receive(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    assert [type(e) for e in events] == [Request, Data]
    assert not conn.request_pending  # in the body now
    assert [type(e) for e in conn.receive(b"0\r\n\r\n")] == [EndOfMessage]
    assert not conn.request_pending
    conn.response(200, [], b"ok")
    assert conn.next_request() == []
    assert conn.receive(b"GET / HTTP/1.1\r\n") == []
    assert conn.request_pending


def test_next_request_gives_pipelined_events_or_none_when_closing() -> None:
    conn = ServerConnection()
    events = conn.receive(GET % b"a" + GET % b"b")
    assert events[0].headers == [(b"host", b"a")]
    conn.response(200, [], b"1")
    events = conn.next_request()
    assert events is not None and events[0].headers == [(b"host", b"b")]
    conn.response(200, [(b"connection", b"close")], b"2")
    assert conn.next_request() is None


def test_whole_response_short_body_closes_and_long_body_is_refused() -> None:
    conn = ServerConnection()
    conn.receive(GET % b"a")
    out = conn.response(200, [(b"content-length", b"5")], b"abc")
    assert out.endswith(b"content-length: 5\r\n\r\nabc") and not conn.keep_alive
    conn = ServerConnection()
    conn.receive(GET % b"a")
    try:
        conn.response(200, [(b"content-length", b"2")], b"abc")
    except Exception as exc:  # noqa: BLE001
        assert "longer than Content-Length" in str(exc)
    else:
        raise AssertionError("a body longer than Content-Length was sent")


def test_date_line_follows_a_clock_that_steps_back(monkeypatch) -> None:
    from socketkit.web import http_cycle

    clock = http_cycle._Clock()
    now = [1_700_000_000.5]
    monkeypatch.setattr(http_cycle, "_time", lambda: now[0])
    first = clock.extra(True)
    now[0] -= 3600  # NTP stepped the clock back an hour
    second = clock.extra(True)
    assert first != second and second.startswith(b"date: ") and second.endswith(b"server: socketkit\r\n")
    assert clock.extra(False) == second.replace(b"server: socketkit\r\n", b"")


def test_connection_close_anywhere_wins_on_the_fast_path_as_in_llhttp():
    from socketkit.proto.http1 import Request, ServerConnection

    for fast in (True, False):
        conn = ServerConnection()
        conn.fast = fast
        events = conn.receive(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n")
        request = next(e for e in events if isinstance(e, Request))
        assert request.keep_alive is False, fast
