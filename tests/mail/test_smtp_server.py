"""The SMTP receiver over real sockets: Python's smtplib (and swaks when installed) against our server."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from email.message import EmailMessage
from email.policy import SMTPUTF8
from pathlib import Path

import pytest
from helpers import WAIT
from mail_support import RECEIVED, mail_server

from socketkit.mail.maildir import Maildir, MailStore
from socketkit.mail.server import MailConfig, MailServer
from socketkit.net import certs
from socketkit.proto.smtp import Message


def port_of(mail: MailServer) -> int:
    return mail.endpoints[0].port


def delivered(tmp_path: Path, mailbox: str = "bob@example.org") -> list[bytes]:
    new = tmp_path / "mail" / mailbox / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def all_new(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "mail").glob("**/new/*"))


def split_received(raw: bytes) -> tuple[bytes, bytes]:
    m = RECEIVED.match(raw)
    assert m, raw[:300]
    return m.group(), raw[m.end():]


def dev_ca_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs.dev_ca_certificate()))


def smtp(mail: MailServer, timeout: float = WAIT) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port_of(mail), local_hostname="client.test", timeout=timeout)


def raw_session(port: int, payload: bytes, *, wait_for: bytes = b"221", timeout: float = WAIT) -> bytes:
    """Send everything at once (pipelining), read until a reply with code `wait_for` has come whole (a
    line of its own: the digits may also be in a queue id) or the server closes."""
    final = re.compile(rb"(?m)^" + re.escape(wait_for) + rb" [^\r\n]*\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        received = s.recv(4096)
        s.sendall(payload)
        while not final.search(received):
            chunk = s.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def read_to_end(s: socket.socket, data: bytes = b"") -> bytes:
    """Everything the server sends until it closes. A server that closes with bytes of ours unread makes
    its kernel answer with RST: what had arrived before it is still read, the reset is the end."""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except ConnectionResetError:
        try:  # the error is reported once; what is still queued comes next
            while chunk := s.recv(4096):
                data += chunk
        except OSError:
            pass
    return data


def codes(transcript: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"^(\d{3}) ", transcript, re.M)]


MESSAGE = (b"From: Alice <alice@sender.test>\r\nTo: bob@example.org\r\nSubject: hello\r\n\r\n"
           b"Hi Bob,\r\n.a line starting with a dot\r\n..two dots\r\nbye\r\n")


# --- EHLO and plain delivery ---------------------------------------------------------------------------


async def test_ehlo_features(tmp_path: Path):
    async with mail_server(tmp_path, max_size=12345) as mail:
        def client():
            with smtp(mail) as s:
                code, banner = s.ehlo()
                assert code == 250 and banner.startswith(b"mx.test")
                for feature in ("pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes", "starttls"):
                    assert s.has_extn(feature), feature
                assert s.esmtp_features["size"] == "12345"
                assert not s.has_extn("auth")  # never offered in plaintext
                s.starttls(context=dev_ca_context())
                s.ehlo()
                assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
                assert not s.has_extn("starttls")

        await asyncio.to_thread(client)


async def test_plain_delivery_is_byte_for_byte(tmp_path: Path):
    async with mail_server(tmp_path) as mail:
        def client():
            with smtp(mail) as s:
                assert s.sendmail("alice@sender.test", ["bob@example.org"], MESSAGE) == {}

        await asyncio.to_thread(client)
    [raw] = delivered(tmp_path)
    header, body = split_received(raw)
    assert body == MESSAGE
    text = header.decode()
    assert text.startswith("Received: from client.test ([127.0.0.1])\r\n")
    assert "\tby mx.test (socketkit) with ESMTP id " in text
    assert re.search(r"\tfor <bob@example.org>; \w{3}, \d{1,2} \w{3} \d{4} ", text)
    assert mail.accepted == 1


async def test_multiple_recipients_get_a_copy_each(tmp_path: Path):
    async with mail_server(tmp_path) as mail:
        def client():
            with smtp(mail) as s:
                s.sendmail("alice@sender.test", ["bob@example.org", "Carol@example.org", "bob@example.org"],
                           MESSAGE)

        await asyncio.to_thread(client)
    bob, carol = delivered(tmp_path), delivered(tmp_path, "carol@example.org")
    assert len(bob) == 1 and len(carol) == 1
    assert b"for <bob@example.org>" in bob[0] and b"for <Carol@example.org>" in carol[0]
    assert split_received(bob[0])[1] == split_received(carol[0])[1] == MESSAGE


async def test_catch_all_keeps_one_copy_without_naming_recipients(tmp_path: Path):
    async with mail_server(tmp_path, catch_all=True, accept_all=True) as mail:
        def client():
            with smtp(mail) as s:
                s.sendmail("a@sender.test", ["x@one.test", "y@two.test"], MESSAGE)

        await asyncio.to_thread(client)
    files = list((tmp_path / "mail" / "new").iterdir())
    assert len(files) == 1
    header, body = split_received(files[0].read_bytes())
    assert body == MESSAGE and b" for <" not in header  # a FOR clause could reveal Bcc recipients


async def test_helo_client_gets_smtp_in_received(tmp_path: Path):
    async with mail_server(tmp_path) as mail:
        def client():
            with smtp(mail) as s:
                s.helo("old.test")
                s.sendmail("a@sender.test", ["bob@example.org"], MESSAGE)

        await asyncio.to_thread(client)
    assert b" with SMTP id " in delivered(tmp_path)[0]


async def test_postmaster_is_always_accepted(tmp_path: Path):
    async with mail_server(tmp_path) as mail:
        def client():
            with smtp(mail) as s:
                s.ehlo()
                s.mail("a@sender.test")
                assert s.docmd("RCPT TO:<postmaster>")[0] == 250
                assert s.data(MESSAGE)[0] == 250

        await asyncio.to_thread(client)
    assert len(delivered(tmp_path, "postmaster@example.org")) == 1


# --- STARTTLS and AUTH -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_starttls_then_auth(tmp_path: Path, mechanism: str):
    async with mail_server(tmp_path) as mail:
        def client():
            with smtp(mail) as s:
                s.starttls(context=dev_ca_context())
                s.ehlo()
                s.user, s.password = "alice", "secret"
                method = s.auth_plain if mechanism == "PLAIN" else s.auth_login
                assert s.auth(mechanism, method, initial_response_ok=mechanism == "PLAIN")[0] == 235
                s.sendmail("alice@example.org", ["bob@example.org"], MESSAGE)

        await asyncio.to_thread(client)
    header, body = split_received(delivered(tmp_path)[0])
    assert b" with ESMTPSA id " in header and body == MESSAGE


async def test_starttls_without_auth_is_esmtps(tmp_path: Path):
    async with mail_server(tmp_path) as mail:
        def client():
            with smtp(mail) as s:
                s.starttls(context=dev_ca_context())
                s.sendmail("a@sender.test", ["bob@example.org"], MESSAGE)

        await asyncio.to_thread(client)
    assert b" with ESMTPS id " in delivered(tmp_path)[0]


async def test_wrong_password_is_535(tmp_path: Path):
    async with mail_server(tmp_path) as mail:
        def client():
            with smtp(mail) as s:
                s.starttls(context=dev_ca_context())
                s.ehlo()
                with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                    s.login("alice", "wrong")
                assert info.value.smtp_code == 535

        await asyncio.to_thread(client)


async def test_default_authenticator_uses_the_account_store(tmp_path: Path):
    from socketkit import accounts

    with accounts.AccountStore() as store:  # under the test's private SOCKETKIT_DATA
        store.add("carol", "correct horse battery")
    async with mail_server(tmp_path, authenticator=None, insecure_auth=True) as mail:
        def client():
            with smtp(mail) as s:
                s.ehlo()
                with pytest.raises(smtplib.SMTPAuthenticationError):
                    s.login("carol", "wrong")
                assert s.login("carol", "correct horse battery")[0] == 235

        await asyncio.to_thread(client)


async def test_login_limiter_stops_guessing(tmp_path: Path):
    from socketkit.accounts import LoginLimiter

    tried: list[str] = []

    async def record(user: str, password: str) -> bool:
        tried.append(password)
        return password == "secret"

    async with mail_server(tmp_path, insecure_auth=True, authenticator=record, max_errors=20,
                           login_limiter=LoginLimiter(max_failures=2, per_seconds=3600)) as mail:
        def client():
            with smtp(mail) as s:
                s.ehlo()
                for guess in ("a", "b", "c", "secret"):
                    s.user, s.password = "alice", guess
                    with pytest.raises(smtplib.SMTPAuthenticationError):
                        s.auth("PLAIN", s.auth_plain)

        await asyncio.to_thread(client)
    assert tried == ["a", "b"]  # past the limit the authenticator is not even asked


async def test_auth_refused_before_starttls(tmp_path: Path):
    token = base64.b64encode(b"\0alice\0secret").decode()
    async with mail_server(tmp_path) as mail:
        def client():
            with smtp(mail) as s:
                s.ehlo()
                code, text = s.docmd("AUTH", f"PLAIN {token}")
                assert (code, text) == (530, b"5.7.0 Must issue a STARTTLS command first")

        await asyncio.to_thread(client)


async def test_insecure_auth_allows_plaintext_login(tmp_path: Path):
    async with mail_server(tmp_path, insecure_auth=True) as mail:
        def client():
            with smtp(mail) as s:
                s.ehlo()
                assert s.has_extn("auth")
                assert s.login("alice", "secret")[0] == 235

        await asyncio.to_thread(client)


async def test_without_tls_or_authenticator_nothing_is_offered(tmp_path: Path, monkeypatch):
    import socketkit.mail.server as server_module

    monkeypatch.setattr(server_module, "accounts_authenticator", lambda: None)
    async with mail_server(tmp_path, starttls=False, authenticator=None, insecure_auth=True) as mail:
        def client():
            with smtp(mail) as s:
                s.ehlo()
                assert not s.has_extn("starttls") and not s.has_extn("auth")
                assert s.docmd("STARTTLS")[0] == 454

        await asyncio.to_thread(client)


# --- pipelining and SMTPUTF8 -------------------------------------------------------------------------------


async def test_pipelined_transaction_in_one_write(tmp_path: Path):
    payload = (b"EHLO raw.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.org>\r\n"
               b"RCPT TO:<x@elsewhere.test>\r\nDATA\r\n" + MESSAGE.replace(b"\r\n.", b"\r\n..")
               + b".\r\nMAIL FROM:<b@sender.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
               b"Subject: second\r\n\r\n2\r\n.\r\nQUIT\r\n")
    async with mail_server(tmp_path) as mail:
        transcript = await asyncio.to_thread(raw_session, port_of(mail), payload)
    assert codes(transcript) == [220, 250, 250, 250, 550, 354, 250, 250, 250, 354, 250, 221]
    bodies = [split_received(raw)[1] for raw in delivered(tmp_path)]
    assert sorted(bodies) == sorted([MESSAGE, b"Subject: second\r\n\r\n2\r\n"])


async def test_smtputf8(tmp_path: Path):
    msg = EmailMessage()
    msg["From"] = "jörg@sender.test"
    msg["To"] = "zoë@example.org"
    msg["Subject"] = "grüße"
    msg.set_content("Schöne Grüße\n")
    async with mail_server(tmp_path) as mail:
        def client():
            with smtp(mail) as s:
                # send_message adds SMTPUTF8 itself for a message with UTF-8 addresses; passing
                # mail_options=["SMTPUTF8"] as well makes it send the parameter twice, which the
                # protocol machine refuses (501) as a duplicate parameter.
                s.send_message(msg)
                s.sendmail("jörg@sender.test", ["zoë@example.org"], msg.as_bytes(policy=SMTPUTF8),
                           mail_options=["SMTPUTF8"])

        await asyncio.to_thread(client)
    for raw in delivered(tmp_path, "zoë@example.org"):
        header, body = split_received(raw)
        assert b" with UTF8SMTP id " in header and "for <zoë@example.org>".encode() in header
        assert "Subject: grüße".encode() in body
    assert len(delivered(tmp_path, "zoë@example.org")) == 2


# --- limits and refusals --------------------------------------------------------------------------------


async def test_size_limit_is_552(tmp_path: Path):
    big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 30
    async with mail_server(tmp_path, max_size=1000) as mail:
        def client():
            with smtp(mail) as s:
                with pytest.raises(smtplib.SMTPSenderRefused) as info:  # SIZE=... refused at MAIL
                    s.sendmail("a@sender.test", ["bob@example.org"], big)
                assert info.value.smtp_code == 552
                s.rset()
                s.mail("a@sender.test")  # no SIZE: refused at the end of DATA instead
                s.rcpt("bob@example.org")
                code, text = s.data(big)
                assert code == 552 and text.startswith(b"5.3.4")

        await asyncio.to_thread(client)
    assert all_new(tmp_path) == []


async def test_too_many_recipients_is_452(tmp_path: Path):
    async with mail_server(tmp_path, max_recipients=2) as mail:
        def client():
            with smtp(mail) as s:
                s.ehlo()
                s.mail("a@sender.test")
                assert s.rcpt("r1@example.org")[0] == 250
                assert s.rcpt("r2@example.org")[0] == 250
                assert s.rcpt("r3@example.org") == (452, b"4.5.3 Error: too many recipients")
                assert s.data(MESSAGE)[0] == 250

        await asyncio.to_thread(client)
    assert [p.parent.parent.name for p in all_new(tmp_path)] == ["r1@example.org", "r2@example.org"]


async def test_relay_denied(tmp_path: Path):
    async with mail_server(tmp_path) as mail:
        def client():
            with smtp(mail) as s:
                with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
                    s.sendmail("a@sender.test", ["victim@elsewhere.test"], MESSAGE)
                assert info.value.recipients == {"victim@elsewhere.test": (550, b"5.7.1 relay denied")}
                s.ehlo()
                s.mail("a@sender.test")
                assert s.rcpt("x@[127.0.0.1]")[0] == 550

        await asyncio.to_thread(client)
    assert all_new(tmp_path) == []


async def test_accept_all_takes_any_domain(tmp_path: Path):
    async with mail_server(tmp_path, domains=(), accept_all=True) as mail:
        def client():
            with smtp(mail) as s:
                assert s.sendmail("a@sender.test", ["someone@anywhere.test"], MESSAGE) == {}

        await asyncio.to_thread(client)
    assert len(delivered(tmp_path, "someone@anywhere.test")) == 1


async def test_default_domains_are_localhost_and_hostname(tmp_path: Path):
    async with mail_server(tmp_path, domains=()) as mail:
        def client():
            with smtp(mail) as s:
                assert s.sendmail("a@sender.test", ["me@localhost", "me@MX.test"], MESSAGE) == {}
                with pytest.raises(smtplib.SMTPRecipientsRefused):
                    s.sendmail("a@sender.test", ["me@example.org"], MESSAGE)

        await asyncio.to_thread(client)


@pytest.mark.parametrize("smuggled", [
    b"Subject: a\r\n\r\nhello\n.\nMAIL FROM:<evil@sender.test>\nRCPT TO:<bob@example.org>\nDATA\nevil\n",
    b"Subject: a\r\n\r\nhello\r\n.\nMAIL FROM:<evil@sender.test>\r\n",
    b"Subject: a\r\n\r\nhello\n.\r\nsmuggled\r\n",
    b"Subject: a\r\n\r\nbare\rcarriage return\r\n",
])
async def test_smuggling_is_refused_and_nothing_is_stored(tmp_path: Path, smuggled: bytes):
    payload = (b"EHLO raw.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
               + smuggled + b"\r\n.\r\nQUIT\r\n")
    async with mail_server(tmp_path) as mail:
        transcript = await asyncio.to_thread(raw_session, port_of(mail), payload)
    assert codes(transcript)[-2] == 550 and b"5.5.2 Error: bare" in transcript, transcript
    assert codes(transcript)[-1] == 221
    assert all_new(tmp_path) == []


async def test_line_too_long_is_500(tmp_path: Path):
    async with mail_server(tmp_path) as mail:
        def client():
            with smtp(mail) as s:
                s.ehlo()
                code, text = s.docmd("NOOP", "x" * 3000)
                assert (code, text) == (500, b"5.5.6 Error: line too long")
                assert s.noop()[0] == 250  # the session goes on

        await asyncio.to_thread(client)


async def test_too_many_errors_close_the_session(tmp_path: Path):
    async with mail_server(tmp_path, max_errors=3) as mail:
        transcript = await asyncio.to_thread(raw_session, port_of(mail), b"BOGUS\r\n" * 5, wait_for=b"421")
    assert codes(transcript) == [220, 500, 500, 421]


async def test_stopping_says_421_to_an_idle_client_at_once_and_lets_a_message_in_progress_finish(tmp_path):
    """A stopping server ends a session waiting between commands with a 421 right away (RFC 5321 3.8)
    instead of holding its drain for it; a client inside DATA still gets its message accepted, then the
    421."""

    def open_session(port: int) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        s.recv(4096)  # the greeting
        s.sendall(b"EHLO client.test\r\n")
        got = b""
        while not re.search(rb"(?m)^250 ", got):
            got += s.recv(4096)
        return s

    def read_until(s: socket.socket, code: bytes) -> bytes:
        got = b""
        while not re.search(rb"(?m)^" + code + rb" [^\r\n]*\r\n", got):
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        return got

    async with mail_server(tmp_path) as mail:
        port = port_of(mail)
        idle = await asyncio.to_thread(open_session, port)
        busy = await asyncio.to_thread(open_session, port)
        try:
            busy.sendall(b"MAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
            await asyncio.to_thread(read_until, busy, b"354")
            stopping = asyncio.create_task(mail.aclose(drain=60))  # far longer than the test's waits
            idle_end = await asyncio.to_thread(read_to_end, idle)
            assert re.match(rb"421 4\.4\.2 \S+ Service shutting down\r\n$", idle_end), idle_end
            assert not stopping.done()  # the message in progress holds the stop
            busy.sendall(MESSAGE + b".\r\n")
            busy_end = await asyncio.to_thread(read_to_end, busy)
            assert codes(busy_end) == [250, 421], busy_end
            await asyncio.wait_for(stopping, WAIT)
        finally:
            idle.close()
            busy.close()
    assert len(delivered(tmp_path)) == 1


async def test_command_timeout_closes_with_421(tmp_path: Path):
    async with mail_server(tmp_path, command_timeout=0.3) as mail:
        def client():
            with socket.create_connection(("127.0.0.1", port_of(mail)), timeout=WAIT) as s:
                assert s.recv(4096).startswith(b"220 ")
                # (on a loaded machine the EHLO may come after the timeout, and then be unread at close)
                s.sendall(b"EHLO slow.test\r\n")
                return read_to_end(s)

        transcript = await asyncio.to_thread(client)
    assert transcript.splitlines()[-1].startswith(b"421 4.4.2 mx.test Error: timeout exceeded")


async def test_data_timeout_bounds_the_whole_message(tmp_path: Path):
    async with mail_server(tmp_path, command_timeout=WAIT, data_timeout=0.5) as mail:
        def client():
            with socket.create_connection(("127.0.0.1", port_of(mail)), timeout=WAIT) as s:
                s.recv(4096)
                s.sendall(b"EHLO slow.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
                data = b""
                deadline = time.monotonic() + WAIT  # without a DATA deadline the trickle goes on for ever
                try:
                    while time.monotonic() < deadline:  # a trickle keeps the connection busy, not the message moving
                        s.sendall(b"x\r\n")
                        if select_ready(s, 0.05):
                            chunk = s.recv(4096)
                            if not chunk:
                                break
                            data += chunk
                        if b"421" in data:
                            break
                except OSError:  # the server closed with our trickle unread (RST): what came before still counts
                    data = read_to_end(s, data)
                return data

        transcript = await asyncio.to_thread(client)
    assert b"421 4.4.2" in transcript
    assert all_new(tmp_path) == []


def select_ready(sock: socket.socket, timeout: float) -> bool:
    import select

    return bool(select.select([sock], [], [], timeout)[0])


async def test_max_connections_refused_with_421(tmp_path: Path):
    async with mail_server(tmp_path, max_connections=1) as mail:
        def client():
            with smtp(mail) as first:
                first.ehlo()
                with socket.create_connection(("127.0.0.1", port_of(mail)), timeout=WAIT) as second:
                    data = b""
                    while chunk := second.recv(4096):
                        data += chunk
                    assert data == b"421 4.3.2 too busy\r\n"
                assert first.noop()[0] == 250

        await asyncio.to_thread(client)
        assert mail.server.stats.refused == 1


async def test_a_storage_failure_is_451_and_nothing_is_half_stored(tmp_path: Path, monkeypatch):
    real = Maildir._write_tmp

    def fail_for_carol(self: Maildir, data: bytes):
        if self.root.name.startswith("carol"):
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Maildir, "_write_tmp", fail_for_carol)
    async with mail_server(tmp_path) as mail:
        def client():
            with smtp(mail) as s:
                s.ehlo()
                s.mail("a@sender.test")
                s.rcpt("bob@example.org")
                s.rcpt("carol@example.org")
                assert s.data(MESSAGE) == (451, b"4.3.0 Error: queue file write error")
                assert s.noop()[0] == 250

        await asyncio.to_thread(client)
        assert (mail.accepted, mail.failed) == (0, 1)
    assert all_new(tmp_path) == []


async def test_hooks_see_deliveries_live(tmp_path: Path):
    async with mail_server(tmp_path) as mail:
        seen: list[tuple[str, str]] = []
        mail.store.on_delivery.append(lambda name, mid: seen.append((name, mid)))

        def client():
            with smtp(mail) as s:
                s.sendmail("a@sender.test", ["bob@example.org"], MESSAGE)

        await asyncio.to_thread(client)
        assert [name for name, _ in seen] == ["bob@example.org"]
        assert split_received(mail.store.mailbox("bob@example.org").get(seen[0][1]))[1] == MESSAGE


def test_config_checks():
    with pytest.raises(Exception, match="max_size"):
        MailConfig(max_size=0)
    with pytest.raises(Exception, match="max_line"):
        MailConfig(max_line=100)
    assert MailConfig(domains=[" Example.ORG. "]).domains == ("example.org",)


def test_received_header_sanitises_client_text(tmp_path: Path):
    from socketkit.mail.server import received_header

    msg = Message(mail_from="a@b.test", rcpt_tos=("c@d.test",), data=b"", helo="evil(\u00e9)\\name", tls=True)
    header = received_header(msg, hostname="mx.test", peer="[10.0.0.1]", queue_id="ABC",
                             recipient="c@d.test", when=0)
    assert header.startswith(b"Received: from evil????name ([10.0.0.1])\r\n\tby mx.test (socketkit) with ESMTPS")
    assert header.endswith(b"\r\n") and header.count(b"\r\n") == 3


async def test_up_registers_the_mail_sink(tmp_path: Path):
    from socketkit import up

    ctx = up.UpContext(overrides={"mail": ["tcp://127.0.0.1:0"]})
    await up.start_all(ctx, only={"mail"})
    try:
        [running] = ctx.running
        port = running.servers[0].endpoints[0].port

        def client():
            with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as s:
                s.sendmail("a@sender.test", ["anyone@anywhere.test"], MESSAGE)

        await asyncio.to_thread(client)
    finally:
        await up.stop_all(ctx, drain=0)
    store = MailStore(certs.data_dir() / "mail")
    assert len(store.mailbox("anyone@anywhere.test").list()) == 1


# --- swaks -----------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (apt-get install swaks)")
async def test_swaks_starttls_auth(tmp_path: Path):
    async with mail_server(tmp_path) as mail:
        result = await asyncio.to_thread(
            subprocess.run,
            ["swaks", "--server", f"127.0.0.1:{port_of(mail)}", "--from", "alice@example.org",
             "--to", "bob@example.org", "--tls", "--auth", "PLAIN", "--auth-user", "alice",
             "--auth-password", "secret", "--header", "Subject: from swaks", "--body", "swaks body"],
            capture_output=True, timeout=20)
    assert result.returncode == 0, result.stdout.decode(errors="replace")[-2000:]
    [raw] = delivered(tmp_path)
    header, body = split_received(raw)
    assert b"ESMTPSA" in header and b"Subject: from swaks" in body and b"swaks body" in body
