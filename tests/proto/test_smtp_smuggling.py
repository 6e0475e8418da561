"""The server's safety rules, one named case each: SMTP smuggling, line and size limits, error budget.

Every smuggling case ends with a genuine <CR><LF>.<CR><LF> and then QUIT, and must yield exactly one
refusal, no Message event and no second transaction: the smuggled MAIL/RCPT/DATA stay message text.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socketkit.proto.smtp import Close, MailFrom, Message, RcptTo, SMTPServerConnection

START = b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
SMUGGLED = b"MAIL FROM:<admin@bank.test>\r\nRCPT TO:<victim@d.test>\r\nDATA\r\nFrom: admin@bank.test\r\n\r\nPay!\r\n"
END = b"\r\n.\r\n"
BARE_LF = (550, "5.5.2 Error: bare <LF> received")
BARE_CR = (550, "5.5.2 Error: bare <CR> received")


def run(wire: bytes, chunk: int | None = None, **kw):
    conn = SMTPServerConnection("mx.test", **kw)
    events, out = [], bytearray()
    pieces = [wire] if chunk is None else [wire[i:i + chunk] for i in range(0, len(wire), chunk)]
    for piece in pieces:
        queue = conn.receive(piece)
        while queue:
            ev = queue.pop(0)
            events.append(ev)
            if isinstance(ev, RcptTo):
                queue += conn.accept_rcpt()
            elif isinstance(ev, Message):
                queue += conn.message_stored("Q")
        out += conn.data_to_send()
    replies = [(int(m[:3]), m[4:-2].decode()) for m in re.findall(rb"\d{3} [^\r\n]*\r\n", bytes(out))]
    return conn, events, replies


SMUGGLING = [
    # name, DATA-phase bytes (before the real END), expected reply after the end of data
    ("bare-lf-data", b"hello\nworld", BARE_LF),
    ("bare-cr-data", b"hello\rworld", BARE_CR),
    ("bare-lf-at-end", b"hello\n", BARE_LF),
    ("lf-dot-lf", b"hi\n.\n" + SMUGGLED, BARE_LF),
    ("cr-dot-cr", b"hi\r.\r" + SMUGGLED, BARE_CR),
    ("lf-dot-crlf", b"hi\n.\r\n" + SMUGGLED, BARE_LF),
    ("crlf-dot-lf", b"hi\r\n.\n" + SMUGGLED, BARE_LF),
    ("crlf-dot-cr", b"hi\r\n.\r" + SMUGGLED, BARE_CR),
    ("cr-dot-crlf", b"hi\r.\r\n" + SMUGGLED, BARE_CR),
    ("crlf-dot-crcrlf", b"hi\r\n.\r\r\n" + SMUGGLED, BARE_CR),
    ("dot-lf-first-line", b".\n" + SMUGGLED, BARE_LF),
    ("lf-only-message", b"a\nb\nc\n.\n" + SMUGGLED, BARE_LF),
    ("line-too-long-data", b"x" * 2000, (500, "5.5.6 Error: line too long")),
    ("line-too-long-then-lf-dot-crlf", b"x" * 2000 + b"\n.\r\n" + SMUGGLED, BARE_LF),
    ("line-too-long-then-cr-lf-split", b"x" * 1500 + b"\r", (500, "5.5.6 Error: line too long")),
    ("message-too-big", b"y" * 998 + b"\r\n" + (b"z" * 998 + b"\r\n") * 20, (552, "5.3.4 Error: message file too big")),
]


@pytest.mark.parametrize("name, body, reply", SMUGGLING, ids=[c[0] for c in SMUGGLING])
@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_smuggling_and_data_limits(name, body, reply, chunk):
    conn, events, replies = run(START + body + END + b"QUIT\r\n", chunk, max_size=10_000)
    assert replies[-2:] == [reply, (221, "2.0.0 Bye")], name
    assert not any(isinstance(e, Message) for e in events), "nothing may be delivered"
    assert sum(isinstance(e, MailFrom) for e in events) == 1, "the smuggled MAIL stayed message text"
    assert [code for code, _ in replies] == [250, 250, 250, 354, reply[0], 221]


def test_only_crlf_dot_crlf_ends_data():
    conn, events, replies = run(START + b"hi" + END)
    assert replies[-1] == (250, "2.0.0 Ok: queued as Q")
    assert [e.data for e in events if isinstance(e, Message)] == [b"hi\r\n"]


def test_clean_message_after_a_refused_one_is_delivered():
    wire = START + b"bad\n" + END + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\ngood" + END
    conn, events, replies = run(wire)
    assert [e.data for e in events if isinstance(e, Message)] == [b"good\r\n"]
    assert [code for code, _ in replies] == [250, 250, 250, 354, 550, 250, 250, 354, 250]


COMMAND_CASES = [
    ("bare-lf-command", b"NOOP\n", (500, "5.5.2 Error: bare <LF> received")),
    ("bare-cr-command", b"NO\rOP\r\n", (500, "5.5.2 Error: bare <CR> received")),
    ("cr-only-command", b"NOOP\rNOOP\r\n", (500, "5.5.2 Error: bare <CR> received")),
    ("line-too-long-command", b"NOOP " + b"x" * 994 + b"\r\n", (500, "5.5.6 Error: line too long")),
    ("line-max-command-ok", b"NOOP " + b"x" * 993 + b"\r\n", (250, "2.0.0 Ok")),
]


@pytest.mark.parametrize("name, line, reply", COMMAND_CASES, ids=[c[0] for c in COMMAND_CASES])
def test_command_line_rules(name, line, reply):
    conn, events, replies = run(b"EHLO client.test\r\n" + line + b"NOOP\r\n")
    assert replies[1:] == [reply, (250, "2.0.0 Ok")], name


def test_megabytes_without_crlf_answered_once_and_discarded():
    conn = SMTPServerConnection("mx.test")
    out = bytearray()
    for _ in range(100):
        conn.receive(b"A" * 65536)
        out += conn.data_to_send()
        assert conn.buffered_bytes < 1000
    conn.receive(b"still the same line\r\nNOOP\r\n")
    out += conn.data_to_send()
    assert bytes(out) == b"500 5.5.6 Error: line too long\r\n250 2.0.0 Ok\r\n"


def test_megabytes_without_crlf_in_data_never_buffered():
    conn = SMTPServerConnection("mx.test", max_size=100_000)
    conn.receive(START)
    conn.accept_rcpt()
    for _ in range(100):
        assert conn.receive(b"B" * 65536) == []
        assert conn.buffered_bytes < 1000
    assert conn.receive(END) == []
    assert conn.data_to_send().endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n500 5.5.6 Error: line too long\r\n")


def test_message_too_big_is_never_kept():
    conn = SMTPServerConnection("mx.test", max_size=10_000)
    conn.receive(START)
    conn.accept_rcpt()
    for _ in range(1000):
        conn.receive(b"z" * 998 + b"\r\n")
        assert conn.buffered_bytes <= 10_000 + 1000
    assert conn.receive(END) == []
    assert conn.data_to_send().endswith(b"552 5.3.4 Error: message file too big\r\n")


def test_too_many_errors():
    conn, events, replies = run(b"FROB\r\n" * 20, max_errors=10)
    assert [code for code, _ in replies] == [500] * 9 + [421]
    assert replies[-1] == (421, "4.7.0 mx.test Error: too many errors")
    assert isinstance(events[-1], Close) and conn.closed


def test_refused_messages_count_as_errors():
    conn, events, replies = run((START + b"x\n" + END) * 3, max_errors=3)
    assert [code for code, _ in replies][-1] == 421 and isinstance(events[-1], Close)


def test_starttls_injection_discarded():
    conn = SMTPServerConnection("mx.test", tls_available=True)
    conn.receive(b"EHLO x\r\nSTARTTLS\r\nRSET\r\n")
    conn.receive(b"MAIL FROM:<x@y.test>\r\n")
    conn.data_to_send()
    assert conn.tls_started() == [] and conn.data_to_send() == b""


@given(st.lists(st.sampled_from([b"\r", b"\n", b".", b"x", b"\r\n", SMUGGLED]), max_size=40),
       st.integers(1, 50))
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_lookalikes_never_deliver_bare_line_endings(parts, chunk):
    """Whatever mix of CR, LF and dots a client sends, a message comes out only at a genuine
    <CR><LF>.<CR><LF>, and never with a bare CR or LF in it."""
    body = b"".join(parts)
    conn, events, replies = run(START + body + END + b"QUIT\r\n", chunk, max_errors=1000)
    messages = [e for e in events if isinstance(e, Message)]
    assert len(messages) <= (b"\r\n" + body + END).count(b"\r\n.\r\n")
    for m in messages:
        assert b"\r" not in m.data.replace(b"\r\n", b"") and b"\n" not in m.data.replace(b"\r\n", b"")
    wire = b"\r\n" + body + END
    if wire.find(b"\r\n.\r\n") == len(wire) - 5 and (b"\r" in body.replace(b"\r\n", b"") or b"\n" in body.replace(b"\r\n", b"")):
        assert messages == [] and replies[-2][0] == 550
