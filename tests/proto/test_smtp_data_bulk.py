"""DATA in bulk (`SMTPServerConnection._data_bulk`) against the line-by-line path it short-cuts.

The bulk path must be invisible: for any input, fed in any pieces, the events (message bytes
included), the reply bytes and the session state are the same with `conn.bulk` on and off.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socketkit.proto.smtp import Message, RcptTo, SMTPServerConnection

START = b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
AGAIN = b"MAIL FROM:<e@f.test>\r\nRCPT TO:<g@h.test>\r\nDATA\r\n"
END = b"\r\n.\r\n"


def drive(wire: bytes, pieces: list[int] | None, *, bulk: bool, **kw):
    """Feed `wire` cut at the given piece sizes (None: whole; [1]: byte by byte; the sizes repeat)."""
    conn = SMTPServerConnection("mx.test", **kw)
    conn.bulk = bulk
    events, out, states = [], bytearray(), []
    if pieces is None:
        chunks = [wire]
    else:
        chunks, i, k = [], 0, 0
        while i < len(wire):
            n = pieces[k % len(pieces)]
            chunks.append(wire[i:i + n])
            i, k = i + n, k + 1
    for chunk in chunks:
        queue = conn.receive(chunk)
        while queue:
            ev = queue.pop(0)
            events.append(ev)
            if isinstance(ev, RcptTo):
                queue += conn.accept_rcpt()
            elif isinstance(ev, Message):
                queue += conn.message_stored(f"Q{len(events)}")
        out += conn.data_to_send()
        assert conn.buffered_bytes <= len(chunk) + conn.max_size + conn.max_line + 5
    states.append((conn.closed, conn.errors, conn.pending, conn._mode, len(conn._buf)))
    return events, bytes(out), states


def same_both_ways(wire: bytes, pieces: list[int] | None, **kw):
    on = drive(wire, pieces, bulk=True, **kw)
    off = drive(wire, pieces, bulk=False, **kw)
    assert on[1] == off[1], "replies differ"
    assert on[0] == off[0], "events differ"
    assert [e.data for e in on[0] if isinstance(e, Message)] == [e.data for e in off[0] if isinstance(e, Message)]
    assert on[2] == off[2], "state differs"
    return on


# --- the grammar of DATA bodies ---------------------------------------------------------------------

TEXT = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"r").replace(b"\n", b"n"))
LOOKALIKES = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n", b"\r\n.\r\r\n", b".\n", b".\r"]


@st.composite
def line(draw, max_line: int) -> bytes:
    kind = draw(st.sampled_from(
        ["text", "text", "text", "dot", "dotdot", "lone-dot", "empty", "lookalike", "bare-cr", "bare-lf",
         "near-max", "long", "very-long", "end", "cr-tail"]))
    text = draw(TEXT)
    if kind == "text":
        return text + b"\r\n"
    if kind == "dot":
        return b"." + text + b"\r\n"
    if kind == "dotdot":
        return b".." + text + b"\r\n"
    if kind == "lone-dot":  # a "." line: the end of data only after a real CRLF
        return b".\r\n"
    if kind == "empty":
        return b"\r\n"
    if kind == "lookalike":
        return text + draw(st.sampled_from(LOOKALIKES))
    if kind == "bare-cr":
        return text + b"\r" + draw(TEXT) + b"\r\n"
    if kind == "bare-lf":
        return text + b"\n" + draw(TEXT) + b"\r\n"
    if kind == "near-max":  # max_line octets with the CRLF, give or take two
        n = max_line - 2 + draw(st.integers(-2, 2))
        return draw(st.sampled_from([b"x", b".", b"\r"])) + b"y" * max(0, n - 1) + draw(
            st.sampled_from([b"\r\n", b"\n", b"\r\n", b"\r\n"]))
    if kind == "long":
        return b"z" * draw(st.integers(max_line, 2 * max_line + 3)) + draw(st.sampled_from([b"\r\n", b"\n", b"\r", b""]))
    if kind == "very-long":
        return b"w" * (3 * max_line + draw(st.integers(0, 50))) + b"\r\n"
    if kind == "end":  # a genuine end of data in the middle: what follows is read as commands
        return END
    return text + b"\r"  # joins the next line into a bare CR


@st.composite
def session(draw):
    max_line = draw(st.sampled_from([24, 32, 64, 1000]))  # the commands fit in 24
    max_size = draw(st.sampled_from([0, 20, 300, 10**6]))
    body = b"".join(draw(st.lists(line(max_line), max_size=25)))
    if draw(st.booleans()):  # multi-KiB
        body += b"".join(b"Line %05d " % i + b"abcdefg" * draw(st.integers(0, 9)) + b"\r\n"
                         for i in range(draw(st.integers(50, 400))))
    tail = draw(st.sampled_from([
        END + b"QUIT\r\n",
        END + AGAIN + b"second\r\n..stuffed\r\n" + END + b"NOOP\r\nQUIT\r\n",  # pipelined after the end
        END + b"NOOP\r\n",
        b"\r\n.",  # no end yet
        b"",
    ]))
    wire = START + body + tail
    pieces = draw(st.one_of(st.none(), st.just([1]), st.lists(st.integers(1, 3000), min_size=1, max_size=8)))
    return wire, pieces, dict(max_line=max_line, max_size=max_size, max_errors=1000)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(session())
def test_bulk_equals_line_path(case):
    wire, pieces, kw = case
    same_both_ways(wire, pieces, **kw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([b"\r", b"\n", b".", b"x", b"\r\n", b".\r\n", END, b"y" * 9]), max_size=60),
       st.one_of(st.none(), st.integers(1, 40).map(lambda n: [n])),
       st.sampled_from([24, 30, 1000]))
def test_bulk_equals_line_path_byte_soup(parts, pieces, max_line):
    """Raw CR, LF, dots and ends in any order, lines just over a small max_line."""
    wire = START + b"".join(parts) + END + AGAIN + b"".join(reversed(parts)) + END + b"QUIT\r\n"
    same_both_ways(wire, pieces, max_line=max_line, max_size=200, max_errors=1000)


# --- named cases, each checked both ways and for its result -----------------------------------------


def messages(wire: bytes, pieces=None, **kw) -> tuple[list[bytes], bytes]:
    events, out, _ = same_both_ways(wire, pieces, **kw)
    return [e.data for e in events if isinstance(e, Message)], out


@pytest.mark.parametrize("pieces", [None, [1], [7], [4096]])
def test_dot_stuffing_undone(pieces):
    body = b".first\r\nplain\r\n..two\r\n...three\r\n. \r\nlast"
    data, _ = messages(START + body + END, pieces)
    assert data == [b"first\r\nplain\r\n.two\r\n..three\r\n \r\nlast\r\n"]


@pytest.mark.parametrize("pieces", [None, [1], [5]])
def test_multi_kib_message_and_pipelined_next(pieces):
    body = b"".join(b"line %04d " % i + b"x" * 70 + b"\r\n" for i in range(130))
    data, out = messages(START + body + b".\r\n" + AGAIN + b"b" + END + b"QUIT\r\n", pieces)
    assert data == [body, b"b\r\n"]
    assert out.count(b"250 2.0.0 Ok: queued as") == 2 and out.endswith(b"221 2.0.0 Bye\r\n")


@pytest.mark.parametrize("extra, reply", [(0, b"250 2.0.0 Ok: queued"), (1, b"500 5.5.6 Error: line too long")])
@pytest.mark.parametrize("pieces", [None, [1], [3]])
def test_max_line_boundary(extra, reply, pieces):
    max_line = 40
    long = b"a" * (max_line - 2 + extra) + b"\r\n"
    body = b"short\r\n" * 3 + long + b"short\r\n"
    _, out = messages(START + body + b".\r\n" + b"QUIT\r\n", pieces, max_line=max_line)
    assert reply in out


@pytest.mark.parametrize("slack, reply", [(0, b"250 2.0.0 Ok: queued"), (-1, b"552 5.3.4")])
def test_max_size_boundary_counts_unstuffed_bytes(slack, reply):
    body = b"..a\r\n" * 100  # 500 octets on the wire, 400 in the message
    _, out = messages(START + body + b".\r\n", None, max_size=400 + slack)
    assert reply in out


def test_too_big_then_long_line_is_long_line():
    body = b"x" * 30 + b"\r\n" + b"y" * 100 + b"\r\n"
    _, out = messages(START + body + b".\r\n", None, max_size=10, max_line=64)
    assert out.endswith(b"500 5.5.6 Error: line too long\r\n")


def test_bare_cr_then_bare_lf_reports_lf():
    body = b"a\rb\r\n" + b"c\r\n" * 50 + b"d\ne\r\n"
    _, out = messages(START + body + b".\r\n", None)
    assert out.endswith(b"550 5.5.2 Error: bare <LF> received\r\n")


def test_long_line_ending_right_before_end():
    body = b"x" * 3000 + END + b"NOOP\r\n"
    _, out = messages(START + body, None)
    assert out.endswith(b"500 5.5.6 Error: line too long\r\n250 2.0.0 Ok\r\n")


def test_bulk_keeps_buffering_bounded():
    conn = SMTPServerConnection("mx.test", max_size=10_000)
    conn.receive(START)
    conn.accept_rcpt()
    for _ in range(200):
        conn.receive((b"z" * 98 + b"\r\n") * 10)
        assert conn.buffered_bytes <= 10_000 + 1000
    assert conn.receive(END) == []
    assert conn.data_to_send().endswith(b"552 5.3.4 Error: message file too big\r\n")
