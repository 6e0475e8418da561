"""Round two of the keep-alive hot path: what each shortcut must keep of the long way.

- the scope is a copy of a per-connection base with every per-request key overwritten: nothing of one
  request (state, root_path, query) may show through in the next;
- the fast path builds its Request without the dataclass __init__ and makes the callbacks' state
  changes itself, also for a pipelined request that waits behind an unfinished response;
- `response()` frames a whole Content-Length body in one join, and falls back to the long way for every
  other body (shorter, longer, chunked, HEAD, 1xx); `response(..., None)` is `response_head`.
"""

from __future__ import annotations

import pytest
from apps import RawClient, port_of, serving

from socketkit.proto.http1 import END, LocalProtocolError, Request, ServerConnection

REQ = b"GET /a%20b?x=1?y HTTP/1.1\r\nHost: h\r\nX-One: 1\r\n\r\n"


def _both(data: bytes) -> tuple[list, list]:
    fast, slow = ServerConnection(), ServerConnection()
    slow.fast = False
    return fast.receive(data), slow.receive(data)


# -- sans-I/O: the fast path's Request ------------------------------------------------------------------


@pytest.mark.parametrize("target,raw_path,query", [
    (b"/", b"/", b""), (b"/?", b"/", b""), (b"/a?b?c", b"/a", b"b?c"), (b"/a%2Fb?", b"/a%2Fb", b""),
])
def test_fast_request_fields_equal_the_full_parsers(target: bytes, raw_path: bytes, query: bytes) -> None:
    fast, slow = _both(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % target)
    assert fast == slow
    request = fast[0]
    assert type(request) is Request and fast[1] is END
    assert (request.target, request.raw_path, request.query) == (target, raw_path, query)
    assert request.upgrade is None and request.expect_continue is False


def test_fast_request_without_headers_http10_and_ows_values() -> None:
    fast, slow = _both(b"GET / HTTP/1.0\r\n\r\n")
    assert fast == slow and fast[0].headers == [] and fast[0].keep_alive is False
    fast, slow = _both(b"GET / HTTP/1.1\r\nHost: h\r\nX:  a b \t\r\nY:\r\n\r\n")
    assert fast == slow and fast[0].headers == [(b"host", b"h"), (b"x", b"a b"), (b"y", b"")]


def test_pipelined_fast_requests_wait_in_order_and_close_wins() -> None:
    conn = ServerConnection()
    second = b"GET /2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    events = conn.receive(REQ + second + b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [type(e) for e in events] == [Request, type(END)] and events[0].path == "/a b"
    assert conn.receive(b"GET /4 HTTP/1.1\r\nHost: h\r\n\r\n") == []  # waits: the response is not done
    conn.response(200, [], b"1")
    events = conn.next_request()
    assert [type(e) for e in events] == [Request, type(END)]
    assert events[0].target == b"/2" and events[0].keep_alive is False
    conn.response(200, [], b"2")
    assert conn.next_request() is None  # Connection: close: /3 and /4 are never served


# -- sans-I/O: response() -----------------------------------------------------------------------------


def _answering(request: bytes = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") -> ServerConnection:
    conn = ServerConnection()
    conn.receive(request)
    return conn


def test_response_whole_body_of_its_content_length_keeps_alive() -> None:
    conn = _answering()
    out = conn.response(200, [(b"Content-Length", b"2")], b"hi", b"date: d\r\n")
    assert out == b"HTTP/1.1 200 OK\r\ndate: d\r\ncontent-length: 2\r\n\r\nhi"
    assert conn.keep_alive and conn.next_request() == []


def test_response_empty_body_still_framed() -> None:
    conn = _answering()
    assert conn.response(200, []) == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    assert conn.next_request() == []


def test_response_shorter_than_content_length_closes_longer_raises() -> None:
    conn = _answering()
    out = conn.response(200, [(b"content-length", b"5")], b"hi")
    assert out.endswith(b"\r\n\r\nhi") and not conn.keep_alive and conn.next_request() is None
    conn = _answering()
    with pytest.raises(LocalProtocolError):
        conn.response(200, [(b"content-length", b"1")], b"hi")


def test_response_to_head_and_chunked_and_none_body() -> None:
    conn = _answering(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert conn.response(200, [], b"hello") == b"HTTP/1.1 200 OK\r\n\r\n"
    assert conn.next_request() == []
    conn = _answering()
    out = conn.response(200, [(b"transfer-encoding", b"chunked")], b"hi")
    assert out == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    conn = _answering()
    head = conn.response(200, [(b"content-length", b"2")], None)
    assert head == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    assert conn.body(b"hi") == b"hi" and conn.end() == b"" and conn.keep_alive
    other = _answering()
    assert other.response_head(200, [(b"content-length", b"2")]) == head


def test_response_informational_with_body_is_refused_as_before() -> None:
    conn = _answering(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
    with pytest.raises(LocalProtocolError):
        conn.response(101, [(b"upgrade", b"websocket")], b"x")  # no body after 101


# -- over a real socket: the scope --------------------------------------------------------------------


async def test_scope_per_request_keys_and_state_do_not_leak() -> None:
    scopes = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        assert "seen" not in scope["state"], "a previous request's state copy showed through"
        scopes.append(dict(scope))
        scope["state"]["seen"] = scope["path"]  # must not reach the next request's copy
        scope["headers"].append((b"x-mutated", b"1"))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serving(app, root_path="/root") as web, await RawClient.open(port_of(web)) as c:
        await c.send(b"POST /p%20q?a=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        assert (await c.response("POST")).body == b"ok"
        await c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert (await c.response()).body == b"ok"
        await c.send(b"DELETE /d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert (await c.response("DELETE")).body == b"ok"
    assert [s["method"] for s in scopes] == ["POST", "GET", "DELETE"]
    assert [s["path"] for s in scopes] == ["/root/p q", "/root/", "/root/d"]
    assert [s["raw_path"] for s in scopes] == [b"/root/p%20q", b"/root/", b"/root/d"]
    assert [s["query_string"] for s in scopes] == [b"a=1", b"", b""]
    assert [s["http_version"] for s in scopes] == ["1.1", "1.0", "1.1"]
    assert [len(s["headers"]) for s in scopes] == [3, 2, 3]  # each its own list, plus our x-mutated
    assert all(s["root_path"] == "/root" and s["type"] == "http" for s in scopes)
    assert [s["state"]["seen"] for s in scopes] == [s["path"] for s in scopes]
    assert len({id(s["state"]) for s in scopes}) == 3
    keys = {"type", "asgi", "http_version", "scheme", "method", "path", "raw_path", "query_string",
            "root_path", "headers", "server", "client", "extensions", "state"}
    assert all(set(s) == keys for s in scopes)
