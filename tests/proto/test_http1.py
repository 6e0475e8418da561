"""socketkit.proto.http1: requests in, responses out, pipelining, keep-alive, upgrade; property tests."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socketkit.proto.http1 import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    Error,
    LocalProtocolError,
    Request,
    ServerConnection,
    error_response,
)

END = EndOfMessage()


def serve(chunks, respond=None):
    """Drive a connection like a server would: answer each request when it is complete, in order.

    Returns (events, wire): every event seen and every byte written. `respond(conn, request, body)`
    returns the response bytes; the default echoes the body with Content-Length.
    """
    conn = ServerConnection()
    events, wire = [], []
    state = {"req": None, "body": b""}

    def handle(batch):
        while batch:
            more = []
            for event in batch:
                events.append(event)
                if type(event) is Request:
                    state["req"], state["body"] = event, b""
                elif type(event) is Data:
                    state["body"] += event.chunk
                elif type(event) is EndOfMessage:
                    fn = respond or (lambda c, r, b: c.response(200, [], b))
                    wire.append(fn(conn, state["req"], state["body"]))
                    if not conn.keep_alive:
                        return False
                    more = conn.start_next()
                elif type(event) in (Error, ConnectionClosed):
                    return False
            batch = more
        return True

    for chunk in chunks:
        if not handle(conn.receive(chunk)):
            break
    return events, b"".join(wire)


def req(method=b"GET", target=b"/", version="1.1", headers=(), keep_alive=True, **kw):
    raw_path, _, query = target.partition(b"?")
    hdrs = [(b"host", b"a")] if version == "1.1" else []
    return Request(method, target, raw_path.decode(), raw_path, query, version, hdrs + list(headers),
                   keep_alive, kw.pop("expect_continue", False), kw.pop("upgrade", None))


# ---- parsing ------------------------------------------------------------------------------------

def test_simple_get() -> None:
    conn = ServerConnection()
    events = conn.receive(b"GET /a%20b/c?x=1&y HTTP/1.1\r\nHost: example.org\r\nAccept:  */* \r\n\r\n")
    assert events == [
        Request(b"GET", b"/a%20b/c?x=1&y", "/a b/c", b"/a%20b/c", b"x=1&y", "1.1",
                [(b"host", b"example.org"), (b"accept", b"*/*")], True, False, None),
        END,
    ]
    assert conn.paused and conn.request is events[0]


def test_absolute_form_and_options_star() -> None:
    conn = ServerConnection()
    (r, _) = conn.receive(b"GET http://example.org:8080/p/q?z HTTP/1.1\r\nHost: example.org\r\n\r\n")
    assert (r.target, r.raw_path, r.path, r.query) == (b"http://example.org:8080/p/q?z", b"/p/q", "/p/q", b"z")
    conn = ServerConnection()
    (r, _) = conn.receive(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (r.path, r.raw_path) == ("*", b"*")


def test_post_content_length_body() -> None:
    conn = ServerConnection()
    events = conn.receive(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhe")
    assert events[1:] == [Data(b"he")]
    assert conn.receive(b"llo") == [Data(b"llo"), END]


def test_post_chunked_body_with_extensions_and_trailers() -> None:
    conn = ServerConnection()
    raw = (b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    events = conn.receive(raw)
    assert b"".join(e.chunk for e in events if type(e) is Data) == b"hello world"
    assert events[-1] == END
    assert (b"x-trailer", b"t") not in events[0].headers  # trailers are not merged into the head


def test_expect_continue() -> None:
    conn = ServerConnection()
    (r,) = conn.receive(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert r.expect_continue
    assert conn.continue_response() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert conn.continue_response() == b""  # once
    assert conn.receive(b"ok") == [Data(b"ok"), END]
    conn.response(200, [], b"")
    assert conn.keep_alive


def test_response_while_client_waits_for_continue_closes() -> None:
    conn = ServerConnection()
    conn.receive(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    out = conn.response(413, [], b"")
    assert b"connection: close\r\n" in out and not conn.keep_alive


def test_expect_continue_ignored_for_http10() -> None:
    conn = ServerConnection()
    (r, *_) = conn.receive(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n")
    assert not r.expect_continue and conn.continue_response() == b""


# ---- keep-alive ---------------------------------------------------------------------------------

@pytest.mark.parametrize("head, client_keep, response_keep, conn_header", [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True, True, None),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False, False, b"close"),
    (b"GET / HTTP/1.0\r\n\r\n", False, False, b"close"),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True, True, b"keep-alive"),
])
def test_keep_alive_rules(head, client_keep, response_keep, conn_header) -> None:
    conn = ServerConnection()
    (r, _) = conn.receive(head)
    assert r.keep_alive is client_keep
    out = conn.response(200, [], b"x")
    assert conn.keep_alive is response_keep
    found = [line.split(b": ")[1] for line in out.split(b"\r\n") if line.startswith(b"connection:")]
    assert found == ([conn_header] if conn_header else [])


def test_http10_keep_alive_without_length_is_close_delimited() -> None:
    conn = ServerConnection()
    conn.receive(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head = conn.response_head(200, [])
    assert b"transfer-encoding" not in head and b"connection: close" in head
    assert conn.body(b"raw") == b"raw" and conn.end() == b""
    assert not conn.keep_alive
    with pytest.raises(LocalProtocolError):
        conn.start_next()


def test_application_connection_close_wins() -> None:
    conn = ServerConnection()
    conn.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    out = conn.response(200, [(b"Connection", b"close")], b"")
    assert out.count(b"onnection") == 1 and not conn.keep_alive


def test_bytes_after_connection_close_are_ignored() -> None:
    conn = ServerConnection()
    events = conn.receive(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n")
    assert [type(e) for e in events] == [Request, EndOfMessage]
    assert conn.receive(b"garbage") == []


# ---- response framing ---------------------------------------------------------------------------

def test_chunked_response_for_http11() -> None:
    conn = ServerConnection()
    conn.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    out = conn.response_head(200, [(b"Content-Type", b"text/plain")])
    assert out == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
    assert conn.body(b"hello") == b"5\r\nhello\r\n"
    assert conn.body(b"") == b""  # an empty chunk would end the body
    assert conn.end() == b"0\r\n\r\n"
    assert conn.keep_alive


def test_content_length_response_is_enforced() -> None:
    conn = ServerConnection()
    conn.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.response_head(200, [(b"content-length", b"3")])
    assert conn.body(b"ab") == b"ab"
    with pytest.raises(LocalProtocolError):
        conn.body(b"cd")
    conn.end()
    assert not conn.keep_alive  # one byte short: the client would wait, so the connection closes


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status) -> None:
    conn = ServerConnection()
    conn.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    out = conn.response_head(status, [(b"content-length", b"10")] if status == 304 else [])
    assert b"transfer-encoding" not in out
    assert (b"content-length: 10" in out) is (status == 304)
    assert conn.body(b"ignored") == b"" and conn.end() == b""
    assert conn.keep_alive


def test_head_response_has_no_body() -> None:
    events, wire = serve(
        [b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"],
        respond=lambda c, r, b: c.response_head(200, [(b"content-length", b"5")]) + c.body(b"hello") + c.end(),
    )
    assert wire == (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")


def test_informational_responses() -> None:
    conn = ServerConnection()
    conn.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.response_head(103, [(b"link", b"</s.css>")]) == b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n"
    assert conn.response(200, [], b"ok").endswith(b"\r\n\r\nok")
    conn = ServerConnection()
    conn.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(LocalProtocolError):
        conn.response_head(101, [])  # not an upgrade request


@pytest.mark.parametrize("header", [
    (b"x", b"a\r\nSet-Cookie: evil"), (b"x", b"a\nb"), (b"x", b"a\x00"), (b"bad name", b"v"), (b"x:y", b"v"),
])
def test_response_splitting_refused(header) -> None:
    conn = ServerConnection()
    conn.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(LocalProtocolError):
        conn.response_head(200, [header])


def test_error_response() -> None:
    assert error_response(400, "missing Host header") == (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: 20\r\nconnection: close\r\n\r\nmissing Host header\n"
    )


def test_misuse_is_loud() -> None:
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError):
        conn.response_head(200, [])  # no request yet
    conn.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(LocalProtocolError):
        conn.start_next()  # response not sent
    conn.response_head(200, [])
    with pytest.raises(LocalProtocolError):
        conn.response_head(200, [])


# ---- pipelining, draining, EOF --------------------------------------------------------------------

PIPELINE = (
    b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
    b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    b"POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    b"HEAD /4 HTTP/1.1\r\nHost: a\r\n\r\n"
    b"GET /5 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
)


def summary(events):
    """Events with Data merged per message (how the body is cut depends on how bytes arrive)."""
    out = []
    for e in events:
        if type(e) is Data and out and type(out[-1]) is Data:
            out[-1] = Data(out[-1].chunk + e.chunk)
        else:
            out.append(e)
    return out


def test_pipelined_requests_answered_in_order() -> None:
    events, wire = serve([PIPELINE], respond=lambda c, r, b: c.response(200, [], r.path.encode() + b"=" + b))
    assert [e.path for e in events if type(e) is Request] == ["/1", "/2", "/3", "/4", "/5"]
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in wire.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"/1=", b"/2=hello", b"/3=abcde", b"", b"/5="]


def test_pipelining_same_at_every_split() -> None:
    expected = summary(serve([PIPELINE])[0])
    for i in range(1, len(PIPELINE)):
        assert summary(serve([PIPELINE[:i], PIPELINE[i:]])[0]) == expected, i
    assert summary(serve([PIPELINE[i : i + 1] for i in range(len(PIPELINE))])[0]) == expected


def test_next_request_waits_for_the_response() -> None:
    conn = ServerConnection()
    first = conn.receive(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3")
    assert [e.path for e in first if type(e) is Request] == ["/1"] and conn.paused
    assert conn.receive(b" HTTP/1.1\r\nHost: a\r\n\r\n") == []  # buffered, not parsed
    conn.response(200, [], b"")
    second = conn.start_next()
    assert [type(e) for e in second] == [Request, EndOfMessage] and second[0].path == "/2"
    conn.response(200, [], b"")
    third = conn.start_next()
    assert third[0].path == "/3" and third[-1] == END


def test_unread_body_is_discarded_before_next_request() -> None:
    conn = ServerConnection()
    events = conn.receive(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n1234")
    assert events[1:] == [Data(b"1234")]
    conn.response(404, [], b"")
    assert conn.keep_alive and conn.start_next() == []
    events = conn.receive(b"567890GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [type(e) for e in events] == [Request, EndOfMessage] and events[0].path == "/next"


def test_eof_when_idle_and_mid_request() -> None:
    conn = ServerConnection()
    assert conn.receive(b"") == [ConnectionClosed()]
    conn = ServerConnection()
    conn.receive(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12")
    assert conn.receive(b"") == [ConnectionClosed()] and conn.eof


def test_eof_after_pipelined_requests_comes_last() -> None:
    conn = ServerConnection()
    conn.receive(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.receive(b"") == []  # half-close: the client still waits for its answers
    conn.response(200, [], b"")
    assert [type(e) for e in conn.start_next()] == [Request, EndOfMessage]
    conn.response(200, [], b"")
    assert conn.start_next() == [ConnectionClosed()]


def test_error_in_pipelined_request_comes_after_earlier_responses() -> None:
    conn = ServerConnection()
    events = conn.receive(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")
    assert [type(e) for e in events] == [Request, EndOfMessage]
    conn.response(200, [], b"")
    assert conn.start_next() == [Error(400, "missing Host header")]


# ---- upgrade ------------------------------------------------------------------------------------

WS = b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\n\r\n"


def test_websocket_upgrade_switches_and_hands_over_bytes() -> None:
    conn = ServerConnection()
    events = conn.receive(WS + b"\x81\x05")
    assert events[0].upgrade == b"websocket" and events[1] == END
    assert conn.receive(b"hello") == []
    head = conn.response_head(101, [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")])
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert conn.switched and not conn.keep_alive
    assert conn.trailing_data == b"\x81\x05hello"


def test_declined_upgrade_continues_as_http() -> None:
    conn = ServerConnection()
    events = conn.receive(WS)
    conn.response(404, [], b"")
    assert conn.keep_alive and conn.start_next() == []
    events = conn.receive(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
    assert events[0].path == "/after" and events[0].upgrade is None


def test_declined_upgrade_with_body_keeps_the_body() -> None:
    raw = (b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
           b"abcGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    events, wire = serve([raw], respond=lambda c, r, b: c.response(200, [], b))
    assert summary(events)[1:3] == [Data(b"abc"), END]
    assert [e.path for e in events if type(e) is Request] == ["/h", "/next"]
    for i in range(1, len(raw)):
        assert summary(serve([raw[:i], raw[i:]])[0]) == summary(events), i


def test_upgrade_header_without_connection_upgrade_is_plain() -> None:
    conn = ServerConnection()
    (r, _) = conn.receive(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
    assert r.upgrade is None


# ---- properties ---------------------------------------------------------------------------------

EVENT_TYPES = (Request, Data, EndOfMessage, Error, ConnectionClosed)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
def test_arbitrary_bytes_never_raise(chunks, eof) -> None:
    for prefix in (b"", b"GET / HTTP/1.1\r\nHost: a\r\n", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"):
        chunks = [c for c in (prefix, *chunks) if c]  # b"" means EOF, sent only at the end
        events, _ = serve([*chunks, *([b""] if eof else [])])
        assert all(isinstance(e, EVENT_TYPES) for e in events)
        errors = [e for e in events if type(e) is Error]
        assert len(errors) <= 1 and (not errors or events[-1] is errors[0])


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=200))
def test_arbitrary_bytes_with_every_status_in_range(junk) -> None:
    conn = ServerConnection()
    for e in conn.receive(junk):
        if type(e) is Error:
            assert e.status in (400, 413, 414, 417, 431, 501, 505)


TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
names = st.text(TCHAR, min_size=1, max_size=12).filter(
    lambda n: n.lower() not in ("content-length", "transfer-encoding", "host", "expect", "upgrade", "connection")
)
values = st.binary(max_size=20).map(lambda b: bytes(c for c in b if c == 9 or 32 <= c < 127 or c >= 128))
values = values.map(lambda v: v.strip(b" \t"))
segments = st.text("abcxyz019-._~%20!$&'()*+,;=:@", max_size=8).map(lambda s: s.replace("%", "%25"))


@st.composite
def requests(draw):
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"PROPFIND"]))
    path = "/" + "/".join(draw(st.lists(segments, max_size=4)))
    query = draw(st.one_of(st.none(), st.text("abc=&%20", max_size=10).map(lambda s: s.replace("%", "%25"))))
    target = path.encode() + (b"?" + query.encode() if query is not None else b"")
    headers = [(b"host", b"example.org")] + [
        (n.encode(), v) for n, v in draw(st.lists(st.tuples(names, values), max_size=6))
    ]
    body = draw(st.binary(max_size=300))
    chunked = draw(st.booleans())
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        headers.append((b"content-length", b"%d" % len(body)))
        framed = body
    raw = b"%s %s HTTP/1.1\r\n" % (method, target) + b"".join(b"%s: %s\r\n" % h for h in headers) + b"\r\n" + framed
    return method, target, headers, body, raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=1, max_size=3), st.data())
def test_valid_requests_round_trip_however_chunked(reqs, data) -> None:
    stream = b"".join(r[-1] for r in reqs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True) if b > a]  # b"" is EOF
    events, _ = serve(chunks)
    got = []
    for e in events:
        if type(e) is Request:
            got.append([e, b""])
        elif type(e) is Data:
            got[-1][1] += e.chunk
    assert len(got) == len(reqs)
    for (r, body), (method, target, headers, want_body, _) in zip(got, reqs, strict=True):
        assert (r.method, r.target, body) == (method, target, want_body)
        assert r.headers == [(n.lower(), v) for n, v in headers]
