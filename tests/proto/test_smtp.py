"""SMTP state machines: every command and reply code, pipelining, dot-stuffing, AUTH, STARTTLS, client."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socketkit.proto.smtp import (
    AuthRequest,
    Close,
    Hello,
    MailFrom,
    Message,
    Quit,
    RcptTo,
    Reply,
    SMTPClientConnection,
    SMTPReplyError,
    SMTPServerConnection,
    SMTPUsageError,
    StartTLS,
    parse_path,
)
from socketkit.proto.smtp_client import dot_stuff, normalize_message

HELLO = b"EHLO client.test\r\n"
ENVELOPE = HELLO + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
REPLY_LINE = re.compile(rb"\d{3}[ -][^\r\n]*\r\n")


class Driver:
    """Feeds a server and answers its decisions the way a simple mail service would."""

    def __init__(self, conn: SMTPServerConnection | None = None, *, rcpt=lambda a: True,
                 auth=lambda user, pw: pw == "secret", store=True, **kw) -> None:
        self.conn = conn or SMTPServerConnection("mx.test", **kw)
        self.rcpt, self.auth, self.store = rcpt, auth, store
        self.events: list = []
        self.out = bytearray()

    def feed(self, *chunks: bytes) -> Driver:
        for chunk in chunks:
            self._handle(self.conn.receive(chunk))
        return self

    def _handle(self, events) -> None:
        queue = list(events)
        while queue:
            ev = queue.pop(0)
            self.events.append(ev)
            if isinstance(ev, RcptTo):
                more = self.conn.accept_rcpt() if self.rcpt(ev.address) else self.conn.reject_rcpt()
            elif isinstance(ev, AuthRequest):
                more = self.conn.auth_result(self.auth(ev.username, ev.password))
            elif isinstance(ev, Message):
                n = len(self.messages) - 1
                more = self.conn.message_stored(f"Q{n}") if self.store else self.conn.message_failed()
            elif isinstance(ev, StartTLS):
                more = self.conn.tls_started(auth_allowed=True)
            else:
                more = []
            queue.extend(more)
        self.out += self.conn.data_to_send()

    @property
    def messages(self) -> list[Message]:
        return [e for e in self.events if isinstance(e, Message)]

    @property
    def replies(self) -> list[tuple[int, str]]:
        """(code, final line text) of every complete reply sent so far."""
        out = bytes(self.out)
        assert REPLY_LINE.fullmatch(out) or out == b"" or all(
            REPLY_LINE.fullmatch(m) for m in re.findall(rb"[^\n]*\n", out)), out
        return [(int(m[:3]), m[4:-2].decode()) for m in re.findall(rb"\d{3} [^\r\n]*\r\n", out)]

    @property
    def codes(self) -> list[int]:
        return [code for code, _ in self.replies]


def last(d: Driver) -> tuple[int, str]:
    return d.replies[-1]


def session(*chunks: bytes, **kw) -> Driver:
    return Driver(**kw).feed(*chunks)


# --- greeting, HELO/EHLO --------------------------------------------------------------------------------


def test_greeting():
    assert SMTPServerConnection("mx.test").greeting() == b"220 mx.test ESMTP socketkit\r\n"


def test_ehlo_keywords_plain():
    d = session(HELLO)
    assert d.out == (b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n250-8BITMIME\r\n"
                     b"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 HELP\r\n")
    assert d.events == [Hello("EHLO", "client.test")]


def test_ehlo_advertises_starttls_and_auth_only_when_allowed():
    d = session(HELLO, tls_available=True, auth_allowed=True, max_size=1000, smtputf8=False)
    assert b"250-STARTTLS\r\n" in d.out and b"250-AUTH PLAIN LOGIN\r\n" in d.out
    assert b"SIZE 1000" in d.out and b"SMTPUTF8" not in d.out


def test_helo():
    d = session(b"HELO client.test\r\n")
    assert d.out == b"250 mx.test\r\n" and d.events == [Hello("HELO", "client.test")]


@pytest.mark.parametrize("line", [b"HELO\r\n", b"EHLO\r\n", b"EHLO   \r\n"])
def test_helo_needs_a_name(line):
    assert last(session(line)) == (501, "5.5.4 Syntax: " + line[:4].decode() + " hostname")


# --- MAIL -----------------------------------------------------------------------------------------------


def test_mail_before_helo():
    assert last(session(b"MAIL FROM:<a@b.test>\r\n"))[0] == 503


def test_mail_ok_and_nested():
    d = session(HELLO + b"MAIL FROM:<a@b.test> SIZE=100 BODY=8BITMIME\r\nMAIL FROM:<a@b.test>\r\n")
    assert d.replies[-2:] == [(250, "2.1.0 Ok"), (503, "5.5.1 Error: nested MAIL command")]
    assert MailFrom("a@b.test", {"SIZE": "100", "BODY": "8BITMIME"}) in d.events


@pytest.mark.parametrize("line, code, enhanced", [
    (b"MAIL FROM:<>", 250, "2.1.0"),
    (b"MAIL FROM: <a@b.test>", 250, "2.1.0"),
    (b"mail from:<a@b.test>", 250, "2.1.0"),
    (b'MAIL FROM:<"john q. doe"@b.test>', 250, "2.1.0"),
    (b'MAIL FROM:<"a>b"@b.test>', 250, "2.1.0"),
    (b"MAIL FROM:<@relay.test,@r2.test:a@b.test>", 250, "2.1.0"),
    (b"MAIL FROM:<a@[192.0.2.1]>", 250, "2.1.0"),
    (b"MAIL FROM:<a@[IPv6:2001:db8::1]>", 250, "2.1.0"),
    (b"MAIL FROM:<a@b.test> BODY=7BIT AUTH=<>", 250, "2.1.0"),
    (b"MAIL FROM:<a@b.test> SIZE=10485761", 552, "5.3.4"),
    (b"MAIL FROM:<a@b.test> SIZE=big", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> SIZE", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> BODY=BINARYMIME", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> FOO=1", 555, "5.5.4"),
    (b"MAIL FROM:<a@b.test> SIZE=1 SIZE=2", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test>SIZE=1", 501, "5.5.4"),
    (b"MAIL TO:<a@b.test>", 501, "5.5.4"),
    (b"MAIL", 501, "5.5.4"),
    (b"MAIL FROM:a@b.test", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test", 501, "5.5.4"),
    (b"MAIL FROM:<a b@b.test>", 501, "5.1.7"),
    (b"MAIL FROM:<a..b@b.test>", 501, "5.1.7"),
    (b"MAIL FROM:<a@-b.test>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[300.0.0.1]>", 501, "5.1.7"),
    (b"MAIL FROM:<ab.test>", 501, "5.1.7"),
    (b"MAIL FROM:<" + b"x" * 65 + b"@b.test>", 501, "5.1.7"),
    ("MAIL FROM:<jörg@b.test>".encode(), 553, "5.6.7"),
    ("MAIL FROM:<jörg@b.test> SMTPUTF8".encode(), 250, "2.1.0"),
    ("MAIL FROM:<jörg@bücher.test> SMTPUTF8".encode(), 250, "2.1.0"),
    (b"MAIL FROM:<a@b.test> SMTPUTF8=yes", 555, "5.5.4"),
])
def test_mail_syntax(line, code, enhanced):
    d = session(HELLO + line + b"\r\n")
    assert d.replies[-1][0] == code and d.replies[-1][1].startswith(enhanced)


def test_mail_smtputf8_refused_when_disabled():
    assert last(session(HELLO + b"MAIL FROM:<a@b.test> SMTPUTF8\r\n", smtputf8=False))[0] == 555


def test_mail_requires_auth_when_configured():
    assert last(session(ENVELOPE, require_auth=True))[0] == 503  # RCPT after the refused MAIL
    assert session(ENVELOPE, require_auth=True).replies[1] == (530, "5.7.0 Authentication required")


# --- RCPT -----------------------------------------------------------------------------------------------


def test_rcpt_before_mail():
    assert last(session(HELLO + b"RCPT TO:<c@d.test>\r\n")) == (503, "5.5.1 Error: need MAIL command")


def test_rcpt_accept_and_reject_by_event():
    d = session(ENVELOPE + b"RCPT TO:<nobody@d.test>\r\n", rcpt=lambda a: a.startswith("c@"))
    assert d.replies[-2:] == [(250, "2.1.5 Ok"), (550, "5.1.1 Recipient address rejected: User unknown")]
    assert [e.address for e in d.events if isinstance(e, RcptTo)] == ["c@d.test", "nobody@d.test"]


def test_rcpt_custom_reject():
    conn = SMTPServerConnection("mx.test")
    conn.receive(ENVELOPE)
    assert conn.pending == "rcpt"
    conn.reject_rcpt(450, "4.2.0", "Greylisted, try again later")
    assert conn.data_to_send().endswith(b"450 4.2.0 Greylisted, try again later\r\n")
    with pytest.raises(SMTPUsageError):
        conn.accept_rcpt()


def test_rcpt_policy_callback():
    verdicts = {"c@d.test": None, "x@d.test": False, "y@d.test": (451, "4.3.0", "Try later")}
    d = session(HELLO + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<x@d.test>\r\n"
                b"RCPT TO:<y@d.test>\r\n", accept_recipient=lambda a, p: verdicts[a])
    assert d.codes[-3:] == [250, 550, 451]
    assert not any(isinstance(e, RcptTo) for e in d.events)


@pytest.mark.parametrize("line, code, enhanced", [
    (b"RCPT TO:<Postmaster>", 250, "2.1.5"),
    (b"RCPT TO:<>", 501, "5.1.3"),
    (b"RCPT TO:<c@>", 501, "5.1.3"),
    (b"RCPT TO:<c@d.test> NOTIFY=NEVER", 555, "5.5.4"),
    (b"RCPT FROM:<c@d.test>", 501, "5.5.4"),
    ("RCPT TO:<ü@d.test>".encode(), 553, "5.6.7"),
])
def test_rcpt_syntax(line, code, enhanced):
    d = session(HELLO + b"MAIL FROM:<a@b.test>\r\n" + line + b"\r\n")
    assert d.replies[-1][0] == code and d.replies[-1][1].startswith(enhanced)


def test_rcpt_utf8_with_smtputf8_transaction():
    d = session(HELLO + "MAIL FROM:<a@b.test> SMTPUTF8\r\nRCPT TO:<ü@d.test>\r\n".encode())
    assert d.codes[-1] == 250


def test_too_many_recipients():
    rcpts = b"".join(b"RCPT TO:<r%d@d.test>\r\n" % i for i in range(4))
    d = session(HELLO + b"MAIL FROM:<a@b.test>\r\n" + rcpts + b"DATA\r\nx\r\n.\r\n", max_recipients=3)
    assert d.codes[1:] == [250, 250, 250, 250, 452, 354, 250]
    assert d.replies[5] == (452, "4.5.3 Error: too many recipients")
    assert d.messages[0].rcpt_tos == ("r0@d.test", "r1@d.test", "r2@d.test")


# --- DATA and messages ----------------------------------------------------------------------------------


def test_data_sequence_errors():
    assert last(session(HELLO + b"DATA\r\n")) == (503, "5.5.1 Error: need MAIL command")
    assert last(session(HELLO + b"MAIL FROM:<a@b.test>\r\nDATA\r\n")) == (503, "5.5.1 Error: need RCPT command")
    assert last(session(ENVELOPE + b"DATA now\r\n")) == (501, "5.5.4 Syntax: DATA")
    assert last(session(ENVELOPE + b"DATA\r\n")) == (354, "End data with <CR><LF>.<CR><LF>")


def test_message_delivered_with_dots_undone():
    body = b"Subject: hi\r\n\r\n.leading dot\r\n..two\r\n.\r\n"
    d = session(ENVELOPE + b"DATA\r\n" + body)
    (msg,) = d.messages
    assert msg.data == b"Subject: hi\r\n\r\nleading dot\r\n.two\r\n"
    assert (msg.mail_from, msg.rcpt_tos, msg.helo, msg.utf8, msg.body8bit) == (
        "a@b.test", ("c@d.test",), "client.test", False, False)
    assert last(d) == (250, "2.0.0 Ok: queued as Q0")


def test_empty_message_and_flags():
    d = session(HELLO + b"MAIL FROM:<a@b.test> BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<c@d.test>\r\nDATA\r\n.\r\n")
    (msg,) = d.messages
    assert msg.data == b"" and msg.utf8 and msg.body8bit


def test_message_failed_is_451_and_transaction_reset():
    d = session(ENVELOPE + b"DATA\r\nhi\r\n.\r\nRCPT TO:<c@d.test>\r\n", store=False)
    assert d.replies[-2:] == [(451, "4.3.0 Error: queue file write error"), (503, "5.5.1 Error: need MAIL command")]


def test_message_too_big_is_552_and_not_kept():
    conn = SMTPServerConnection("mx.test", max_size=100)
    d = Driver(conn).feed(ENVELOPE + b"DATA\r\n")
    for _ in range(50):
        d.feed(b"x" * 60 + b"\r\n")
        assert conn.buffered_bytes <= 100 + 62
    d.feed(b".\r\n")
    assert last(d) == (552, "5.3.4 Error: message file too big") and d.messages == []


def test_message_exactly_max_size_is_accepted():
    d = session(ENVELOPE + b"DATA\r\n" + b"x" * 98 + b"\r\n.\r\n", max_size=100)
    assert len(d.messages[0].data) == 100


def test_usage_errors():
    conn = SMTPServerConnection("mx.test")
    for call in (conn.accept_rcpt, conn.reject_rcpt, lambda: conn.auth_result(True),
                 lambda: conn.message_stored("x"), conn.message_failed, conn.tls_started):
        with pytest.raises(SMTPUsageError):
            call()


# --- small commands -------------------------------------------------------------------------------------


@pytest.mark.parametrize("line, reply", [
    (b"NOOP", (250, "2.0.0 Ok")),
    (b"NOOP anything", (250, "2.0.0 Ok")),
    (b"RSET", (250, "2.0.0 Ok")),
    (b"RSET x", (501, "5.5.4 Syntax: RSET")),
    (b"VRFY root", (252, "2.5.2 Cannot VRFY user, but will accept message and attempt delivery")),
    (b"VRFY", (501, "5.5.4 Syntax: VRFY address")),
    (b"EXPN staff", (502, "5.5.1 Error: EXPN not implemented")),
    (b"HELP", (214, "2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH")),
    (b"FROB", (500, "5.5.2 Error: command not recognized")),
    (b"", (500, "5.5.2 Error: command not recognized")),
    (b"\xff\xfe", (500, "5.5.2 Error: invalid UTF-8 in command")),
    (b"NOOP\0", (500, "5.5.2 Error: NUL character received")),
])
def test_small_commands(line, reply):
    assert last(session(HELLO + line + b"\r\n")) == reply


def test_rset_ends_transaction():
    assert last(session(ENVELOPE + b"RSET\r\nDATA\r\n")) == (503, "5.5.1 Error: need MAIL command")


def test_quit_closes_and_ignores_the_rest():
    d = session(HELLO + b"QUIT\r\nNOOP\r\n")
    assert last(d) == (221, "2.0.0 Bye") and isinstance(d.events[-1], Quit) and d.conn.closed
    assert d.conn.receive(b"NOOP\r\n") == [] and d.conn.data_to_send() == b""


def test_abort_sends_421_once():
    conn = SMTPServerConnection("mx.test")
    assert conn.abort() == b"421 4.4.2 mx.test Error: timeout exceeded\r\n"
    assert conn.abort() == b"" and conn.closed


def test_too_many_errors_closes_with_421():
    d = session(HELLO + b"FROB\r\n" * 3 + b"NOOP\r\n", max_errors=3)
    assert d.codes == [250, 500, 500, 421]
    assert d.replies[-1] == (421, "4.7.0 mx.test Error: too many errors")
    assert d.events[-1] == Close("Error: too many errors") and d.conn.closed


def test_reply_text_cannot_inject_lines():
    conn = SMTPServerConnection("mx.test")
    conn.receive(ENVELOPE)
    conn.reject_rcpt(550, "5.1.1", "no\r\n250 2.0.0 fake")
    out = conn.data_to_send()
    assert out.endswith(b"550 5.1.1 no  250 2.0.0 fake\r\n") and out.count(b"\r\n") == 7 + 1 + 1


# --- STARTTLS ---------------------------------------------------------------------------------------------


def test_starttls_flow_resets_state():
    conn = SMTPServerConnection("mx.test", tls_available=True)
    events = conn.receive(HELLO + b"STARTTLS\r\nMAIL FROM:<injected@x.test>\r\n")
    assert events[-1] == StartTLS() and conn.pending == "tls"
    assert conn.data_to_send().endswith(b"220 2.0.0 Ready to start TLS\r\n")
    assert conn.receive(b"RCPT TO:<plaintext@x.test>\r\n") == []  # dropped: not part of the TLS session
    assert conn.tls_started(auth_allowed=True) == []
    assert conn.data_to_send() == b""  # the injected MAIL was never answered
    assert conn.tls and conn.helo is None
    conn.receive(b"MAIL FROM:<a@b.test>\r\n")
    assert conn.data_to_send() == b"503 5.5.1 Error: send HELO/EHLO first\r\n"
    conn.receive(HELLO)
    out = conn.data_to_send()
    assert b"STARTTLS" not in out and b"250-AUTH PLAIN LOGIN\r\n" in out


@pytest.mark.parametrize("before, kw, reply", [
    (HELLO, {}, (454, "4.7.0 TLS not available")),
    (b"", {"tls_available": True}, (503, "5.5.1 Error: send HELO/EHLO first")),
    (HELLO + b"MAIL FROM:<a@b.test>\r\n", {"tls_available": True}, (503, "5.5.1 Error: MAIL transaction in progress")),
])
def test_starttls_refused(before, kw, reply):
    assert last(session(before + b"STARTTLS\r\n", **kw)) == reply


def test_starttls_with_argument_and_twice():
    assert last(session(HELLO + b"STARTTLS now\r\n", tls_available=True)) == (501, "5.5.4 Syntax: STARTTLS")
    d = session(HELLO + b"STARTTLS\r\n", HELLO + b"STARTTLS\r\n", tls_available=True)
    assert last(d) == (503, "5.5.1 Error: TLS already active")


# --- AUTH -----------------------------------------------------------------------------------------------


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


PLAIN_OK = b"AUTH PLAIN " + b64("\0alice\0secret") + b"\r\n"


def test_auth_plain_initial_response():
    d = session(HELLO + PLAIN_OK + b"MAIL FROM:<a@b.test>\r\n", auth_allowed=True)
    assert AuthRequest("PLAIN", "alice", "secret") in d.events
    assert d.replies[-2:] == [(235, "2.7.0 Authentication successful"), (250, "2.1.0 Ok")]
    assert d.conn.auth_user == "alice"
    assert last(d.feed(PLAIN_OK)) == (503, "5.5.1 Error: already authenticated")


def test_auth_plain_with_challenge_and_failure():
    d = session(HELLO + b"AUTH PLAIN\r\n", auth_allowed=True)
    assert d.out.endswith(b"334 \r\n")
    d.feed(b64("\0alice\0wrong") + b"\r\n")
    assert last(d) == (535, "5.7.8 Authentication credentials invalid") and d.conn.auth_user is None


def test_auth_login_steps():
    d = session(HELLO + b"AUTH LOGIN\r\n", auth_allowed=True)
    assert d.out.endswith(b"334 VXNlcm5hbWU6\r\n")
    d.feed(b64("bob") + b"\r\n")
    assert d.out.endswith(b"334 UGFzc3dvcmQ6\r\n")
    d.feed(b64("secret") + b"\r\n")
    assert AuthRequest("LOGIN", "bob", "secret") in d.events and last(d)[0] == 235


def test_auth_login_initial_response():
    d = session(HELLO + b"AUTH LOGIN " + b64("bob") + b"\r\n" + b64("secret") + b"\r\n", auth_allowed=True)
    assert d.out.endswith(b"334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n")


@pytest.mark.parametrize("lines, reply", [
    ([b"AUTH LOGIN", b"*"], (501, "5.7.0 Authentication aborted")),
    ([b"AUTH PLAIN", b"*"], (501, "5.7.0 Authentication aborted")),
    ([b"AUTH PLAIN !!!"], (501, "5.5.2 Cannot decode response")),
    ([b"AUTH LOGIN", b"not base64"], (501, "5.5.2 Cannot decode response")),
    ([b"AUTH PLAIN " + b64("alice\0secret")], (501, "5.5.2 Invalid PLAIN response")),
    ([b"AUTH PLAIN ="], (501, "5.5.2 Invalid PLAIN response")),
    ([b"AUTH PLAIN " + b64("root\0alice\0secret")], (535, "5.7.8 Authentication credentials invalid")),
    ([b"AUTH CRAM-MD5"], (504, "5.5.4 Unrecognized authentication type")),
    ([b"AUTH"], (501, "5.5.4 Syntax: AUTH mechanism [initial-response]")),
    ([b"MAIL FROM:<a@b.test>", b"AUTH PLAIN"], (503, "5.5.1 Error: MAIL transaction in progress")),
])
def test_auth_errors(lines, reply):
    assert last(session(HELLO + b"".join(line + b"\r\n" for line in lines), auth_allowed=True)) == reply


def test_auth_not_allowed():
    assert last(session(HELLO + PLAIN_OK, tls_available=True)) == (530, "5.7.0 Must issue a STARTTLS command first")
    assert last(session(HELLO + PLAIN_OK)) == (502, "5.5.1 Error: authentication not enabled")
    assert last(session(PLAIN_OK, auth_allowed=True)) == (503, "5.5.1 Error: send HELO/EHLO first")


def test_auth_only_advertised_mechanisms():
    d = session(HELLO + b"AUTH LOGIN\r\n", auth_allowed=True, auth_mechanisms=("PLAIN",))
    assert b"250-AUTH PLAIN\r\n" in d.out and last(d)[0] == 504


def test_auth_then_submission():
    d = session(HELLO + PLAIN_OK + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nhi\r\n.\r\n",
                auth_allowed=True, require_auth=True)
    assert d.messages[0].auth_user == "alice"


# --- pipelining -----------------------------------------------------------------------------------------

TRANSACTION = (
    b"EHLO client.test\r\nMAIL FROM:<a@b.test> SIZE=40\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<no@d.test>\r\n"
    b"RCPT TO:<e@d.test>\r\nDATA\r\n"
    b"Subject: one\r\n\r\n.dot\r\n\r\n.\r\n"
    b"MAIL FROM:<>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n..\r\n.\r\n"
    b"RSET\r\nNOOP\r\nVRFY x\r\nFROB\r\nQUIT\r\n"
)


def pipelined(chunks) -> tuple[bytes, list[Message]]:
    d = Driver(rcpt=lambda a: not a.startswith("no@")).feed(*chunks)
    return bytes(d.out), d.messages


def test_pipelined_transaction_in_one_packet():
    out, messages = pipelined([TRANSACTION])
    d = Driver()
    d.out = bytearray(out)
    assert d.codes == [250, 250, 250, 550, 250, 354, 250, 250, 250, 354, 250, 250, 250, 252, 500, 221]
    assert [m.data for m in messages] == [b"Subject: one\r\n\r\ndot\r\n\r\n", b".\r\n"]
    assert messages[0].rcpt_tos == ("c@d.test", "e@d.test") and messages[1].mail_from == ""


def test_pipelining_split_at_every_byte_boundary():
    expected = pipelined([TRANSACTION])
    for i in range(len(TRANSACTION) + 1):
        assert pipelined([TRANSACTION[:i], TRANSACTION[i:]]) == expected, i
    assert pipelined([TRANSACTION[i:i + 1] for i in range(len(TRANSACTION))]) == expected


def test_replies_wait_for_pending_decision():
    conn = SMTPServerConnection("mx.test")
    events = conn.receive(ENVELOPE + b"NOOP\r\n")
    assert isinstance(events[-1], RcptTo)
    assert conn.data_to_send().count(b"\r\n") == 7 + 1  # EHLO + MAIL; NOOP waits behind RCPT
    conn.receive(b"NOOP\r\n")
    assert conn.data_to_send() == b""
    assert conn.accept_rcpt() == []
    assert conn.data_to_send() == b"250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"


def test_pending_input_is_bounded():
    conn = SMTPServerConnection("mx.test", max_pending=1000)
    conn.receive(ENVELOPE)
    events = conn.receive(b"NOOP\r\n" * 200)
    assert events == [Close("Error: too much pipelined input")] and conn.closed
    assert conn.data_to_send().endswith(b"421 4.7.0 mx.test Error: too much pipelined input\r\n")
    assert conn.accept_rcpt() == [] and conn.data_to_send() == b""  # a moot decision is ignored


# --- client -----------------------------------------------------------------------------------------------


def test_client_commands():
    c = SMTPClientConnection()
    assert c.ehlo("me.test") == b"EHLO me.test\r\n"
    assert c.helo("me.test") == b"HELO me.test\r\n"
    assert c.mail("a@b.test", size=10, utf8=True, body8=True) == b"MAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n"
    assert c.mail("") == b"MAIL FROM:<>\r\n"
    assert c.rcpt('"a b"@c.test') == b'RCPT TO:<"a b"@c.test>\r\n'
    assert [c.data(), c.rset(), c.noop(), c.quit(), c.starttls()] == [
        b"DATA\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"STARTTLS\r\n"]
    assert c.auth_plain("alice", "secret") == b"AUTH PLAIN " + b64("\0alice\0secret") + b"\r\n"
    assert c.auth_login() == b"AUTH LOGIN\r\n" and c.auth_response("bob") == b64("bob") + b"\r\n"
    assert c.auth_cancel() == b"*\r\n"
    for bad in ("a@b.test>\r\nRCPT TO:<x@y.test", "a b@c.test", "<a@b.test>"):
        with pytest.raises(ValueError):
            c.rcpt(bad)
    with pytest.raises(ValueError):
        c.ehlo("me\r\nMAIL FROM:<x@y.test>")


def test_client_parses_multiline_and_enhanced():
    c = SMTPClientConnection()
    c.ehlo("me")
    c.mail("a@b.test")
    replies = c.receive(b"220 mx ESMTP\r\n250-mx.test\r\n250-SIZE 1000\r\n250-auth PLAIN LOGIN\r\n250 8BITMIME\r\n"
                        b"550-5.1.1 no such\r\n550 5.1.1 user\r\n")
    assert replies == [
        Reply(220, ("mx ESMTP",), None, "GREETING"),
        Reply(250, ("mx.test", "SIZE 1000", "auth PLAIN LOGIN", "8BITMIME"), None, "EHLO"),
        Reply(550, ("no such", "user"), "5.1.1", "MAIL"),
    ]
    assert c.extensions == {"SIZE": "1000", "AUTH": "PLAIN LOGIN", "8BITMIME": ""}
    assert replies[2].text == "no such\nuser" and not replies[2].ok


def test_client_reply_split_anywhere():
    data = b"220 hi\r\n250-a\r\n250 2.0.0 b\r\n"
    for i in range(len(data)):
        c = SMTPClientConnection()
        assert c.receive(data[:i]) + c.receive(data[i:]) == SMTPClientConnection().receive(data)


@pytest.mark.parametrize("data", [b"hello\r\n", b"99 x\r\n", b"250x\r\n", b"250-a\r\n251 b\r\n", b"2" * 5000])
def test_client_rejects_garbage(data):
    with pytest.raises(SMTPReplyError):
        SMTPClientConnection().receive(data)


def test_dot_stuff():
    assert dot_stuff(b"") == b".\r\n"
    assert dot_stuff(b".a\n.\r..b\rc") == b"..a\r\n..\r\n...b\r\nc\r\n.\r\n"
    assert normalize_message(b"a\r\r\nb") == b"a\r\n\r\nb\r\n"


def test_parse_path_helpers():
    assert parse_path("@x.test:a@b.test") == "a@b.test"
    assert parse_path("", allow_null=True) == ""
    with pytest.raises(ValueError):
        parse_path("")


# --- properties -----------------------------------------------------------------------------------------


def deliver(body: bytes, chunk: int) -> Message:
    c = SMTPClientConnection()
    wire = c.ehlo("me") + c.mail("a@b.test") + c.rcpt("c@d.test") + c.data() + c.message(body) + c.quit()
    d = Driver(max_size=len(wire) + 10, max_line=len(wire) + 10)
    d.feed(*[wire[i:i + chunk] for i in range(0, len(wire), chunk)])
    assert d.codes[-2:] == [250, 221], d.out
    (msg,) = d.messages
    return msg


@given(st.binary(max_size=3000), st.integers(1, 500))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_dot_stuffing_round_trip(body, chunk):
    assert deliver(body, chunk).data == normalize_message(body)


@given(st.lists(st.sampled_from([b".", b"\r\n", b"\n", b"\r", b"a", b".\r\n.", b"\r\n.\r\n"]), max_size=60),
       st.integers(1, 7))
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_dot_stuffing_round_trip_tricky(parts, chunk):
    body = b"".join(parts)
    assert deliver(body, chunk).data == normalize_message(body)


PREFIXES = [b"", HELLO, ENVELOPE + b"DATA\r\n", HELLO + b"AUTH LOGIN\r\n",
            HELLO + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@d.test>\r\n"]


@given(st.sampled_from(PREFIXES), st.lists(st.binary(max_size=3000) | st.sampled_from(
    [b"\r\n", b"\n", b"\r\n.\r\n", b"NOOP\r\n", b"DATA\r\n", b"RSET\r\n", b"STARTTLS\r\n", b"x" * 1500]),
    max_size=30), st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_bytes_never_raise_and_buffer_is_bounded(prefix, chunks, decide_yes):
    max_size, max_line, max_pending = 2000, 200, 1000
    d = Driver(rcpt=lambda a: decide_yes, auth=lambda u, p: decide_yes, store=decide_yes, max_size=max_size,
               max_line=max_line, max_pending=max_pending, auth_allowed=True, tls_available=True, max_errors=50)
    d.feed(prefix)
    for chunk in chunks:
        d.feed(chunk)
        assert d.conn.buffered_bytes <= max_size + max(max_line, max_pending)
    for line in bytes(d.out).split(b"\r\n")[:-1]:
        assert re.fullmatch(rb"\d{3}([ -].*)?", line), line


def test_repeated_valueless_parameter_is_accepted_but_repeated_values_are_not():
    from socketkit.proto.smtp import AddressError, parse_params

    assert parse_params("SMTPUTF8 SMTPUTF8 BODY=8BITMIME") == {"SMTPUTF8": None, "BODY": "8BITMIME"}
    for text in ("SIZE=1 SIZE=1", "SIZE=1 SIZE", "SMTPUTF8 SMTPUTF8=x"):
        try:
            parse_params(text)
        except AddressError:
            continue
        raise AssertionError(f"{text!r} should be refused")
