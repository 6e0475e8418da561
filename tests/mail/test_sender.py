"""The sender (socketkit.mail.sender and `socketkit mail send`) against our own SMTP server."""

from __future__ import annotations

import asyncio
import email
import email.policy
from pathlib import Path

import pytest
from helpers import cli_env, run_cli
from mail_support import RECEIVED, check_password, mail_server

from socketkit.mail.sender import SendError, build_message, send, send_message
from socketkit.mail.server import MailConfig, MailServer, start


def url(mail: MailServer) -> str:
    return f"tcp://127.0.0.1:{mail.endpoints[0].port}"


def stored(tmp_path: Path, mailbox: str = "bob@example.org") -> list[email.message.EmailMessage]:
    new = tmp_path / "mail" / mailbox / "new"
    out = []
    for path in sorted(new.iterdir()) if new.is_dir() else []:
        raw = path.read_bytes()
        assert RECEIVED.match(raw)
        out.append(email.message_from_bytes(raw, policy=email.policy.default))
    return out


def test_build_message_with_attachments(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("some notes\n")
    (tmp_path / "pic.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (tmp_path / "blob").write_bytes(b"\0\1\2")
    msg = build_message("a@example.org", ["b@example.org", "c@example.org"], "Files", "see attached",
                        attachments=[tmp_path / "notes.txt", tmp_path / "pic.png", tmp_path / "blob"])
    assert msg["To"] == "b@example.org, c@example.org" and msg["Message-ID"].endswith("@example.org>")
    parts = {p.get_filename(): p for p in msg.iter_attachments()}
    assert parts["notes.txt"].get_content_type() == "text/plain"
    assert parts["pic.png"].get_content_type() == "image/png"
    assert parts["blob"].get_content_type() == "application/octet-stream"
    assert parts["pic.png"].get_content() == (tmp_path / "pic.png").read_bytes()
    with pytest.raises(SendError, match="cannot attach"):
        build_message("a@example.org", ["b@example.org"], "x", attachments=[tmp_path / "missing"])


async def test_send_with_attachment(tmp_path: Path):
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 40)
    msg = build_message("alice@sender.test", ["bob@example.org"], "Report", "Hello Bob\n.\nno smuggling here\n",
                        attachments=[tmp_path / "report.pdf"])
    async with mail_server(tmp_path) as mail:
        result = await send_message(msg, server=url(mail), helo="client.test")
    assert result.reply.code == 250 and str(result).startswith("250 2.0.0 Ok: queued as ")
    [got] = stored(tmp_path)
    assert got["Subject"] == "Report"
    assert got.get_body(("plain",)).get_content().replace("\r\n", "\n") == "Hello Bob\n.\nno smuggling here\n"
    [attachment] = list(got.iter_attachments())
    assert attachment.get_filename() == "report.pdf" and attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == (tmp_path / "report.pdf").read_bytes()


async def test_send_starttls_and_auth(tmp_path: Path):
    msg = build_message("alice@example.org", ["bob@example.org"], "secure", "over TLS")
    async with mail_server(tmp_path) as mail:
        result = await send_message(msg, server=url(mail), starttls=True, auth=("alice", "secret"))
        assert result.reply.code == 250
        with pytest.raises(SendError, match=r"AUTH PLAIN refused: 535 5\.7\.8"):
            await send_message(msg, server=url(mail), starttls=True, auth=("alice", "nope"))
        with pytest.raises(SendError, match="does not offer AUTH.*--starttls"):
            await send_message(msg, server=url(mail), auth=("alice", "secret"))
    [got] = stored(tmp_path)
    assert got["Subject"] == "secure"
    assert " with ESMTPSA id " in got["Received"]


async def test_auth_login_when_plain_is_not_offered(tmp_path: Path, monkeypatch):
    from socketkit.mail import server as server_module

    real = server_module.SMTPServerConnection

    def login_only(*args, **kwargs):
        kwargs["auth_mechanisms"] = ("LOGIN",)
        return real(*args, **kwargs)

    monkeypatch.setattr(server_module, "SMTPServerConnection", login_only)
    msg = build_message("alice@example.org", ["bob@example.org"], "login", "body")
    async with mail_server(tmp_path, insecure_auth=True) as mail:
        assert (await send_message(msg, server=url(mail), auth=("alice", "secret"))).reply.code == 250


async def test_starttls_verification(tmp_path: Path):
    msg = build_message("a@sender.test", ["bob@example.org"], "x", "y")
    async with mail_server(tmp_path) as mail:
        # The dev certificate names localhost/127.0.0.1 and is signed by the dev CA the client trusts.
        await send_message(msg, server=url(mail), starttls=True)
        # A CA that did not sign it: verification fails, unless told not to verify.
        from socketkit.net import certs

        other = certs.ensure_ca(tmp_path / "other-ca")[0]
        with pytest.raises(Exception, match="(?i)certificate|verif"):
            await send_message(msg, server=url(mail), starttls=True, ca=other)
        await send_message(msg, server=url(mail), starttls=True, ca=other, insecure=True)
    assert len(stored(tmp_path)) == 2


async def test_refusals_are_one_clear_line(tmp_path: Path):
    async with mail_server(tmp_path, max_size=2000) as mail:
        with pytest.raises(SendError) as info:
            await send_message(build_message("a@sender.test", ["x@elsewhere.test"], "s", "b"), server=url(mail))
        assert str(info.value) == f"{url(mail)}: RCPT TO:<x@elsewhere.test> refused: 550 5.7.1 relay denied"
        assert info.value.reply.code == 550
        with pytest.raises(SendError, match=r"MAIL FROM:<a@sender.test> refused: 552 5\.3\.4"):
            await send_message(build_message("a@sender.test", ["bob@example.org"], "s", "b" * 5000),
                               server=url(mail))
        # Some recipients refused: the message goes to the others, the refusals are reported.
        result = await send_message(build_message("a@sender.test", ["x@elsewhere.test", "bob@example.org"],
                                                  "partly", "b"), server=url(mail))
        assert [(r, reply.code) for r, reply in result.refused] == [("x@elsewhere.test", 550)]
    assert len(stored(tmp_path)) == 1


async def test_bcc_is_in_the_envelope_not_the_message(tmp_path: Path):
    msg = build_message("a@sender.test", ["bob@example.org"], "bcc", "b")
    msg["Bcc"] = "carol@example.org"
    async with mail_server(tmp_path) as mail:
        await send_message(msg, server=url(mail))
    for box in ("bob@example.org", "carol@example.org"):
        [got] = stored(tmp_path, box)
        assert got["Bcc"] is None


async def test_utf8_addresses(tmp_path: Path):
    msg = build_message("jörg@sender.test", ["zoë@example.org"], "grüße", "schön")
    async with mail_server(tmp_path) as mail:
        await send_message(msg, server=url(mail))
    [got] = stored(tmp_path, "zoë@example.org")
    assert got["Subject"] == "grüße" and "UTF8SMTP" in got["Received"]


async def test_no_server_is_a_clear_error(tmp_path: Path):
    from helpers import refused_port

    with refused_port() as port:
        with pytest.raises(Exception, match="could not connect|refused"):
            await send_message(build_message("a@b.test", ["c@d.test"], "s", "b"), server=f"tcp://127.0.0.1:{port}",
                               timeout=5)


async def test_blocking_send_from_a_thread(tmp_path: Path):
    async with mail_server(tmp_path) as mail:
        result = await asyncio.to_thread(send, build_message("a@sender.test", ["bob@example.org"], "s", "b"),
                                         server=url(mail))
    assert result.reply.code == 250 and len(stored(tmp_path)) == 1


async def test_cli_mail_send(tmp_path: Path, private_data: Path):
    (tmp_path / "a.txt").write_text("attached text\n")
    env = cli_env(SOCKETKIT_DATA=str(private_data))
    async with mail_server(tmp_path) as mail:
        ok = await asyncio.to_thread(
            run_cli, "mail", "send", "--from", "alice@example.org", "--to", "bob@example.org",
            "--to", "carol@example.org", "--subject", "from the CLI", "--attach", str(tmp_path / "a.txt"),
            "--server", url(mail), "--starttls", "--auth", "alice:secret", "--helo", "cli.test",
            input=b"body from stdin\n", env=env)
        denied = await asyncio.to_thread(
            run_cli, "mail", "send", "--from", "a@sender.test", "--to", "x@elsewhere.test", "--body", "b",
            "--server", url(mail), env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.decode().startswith("sent: 250 2.0.0 Ok: queued as ")
    [got] = stored(tmp_path)
    assert got["Subject"] == "from the CLI" and "from cli.test" in got["Received"]
    assert got.get_body(("plain",)).get_content().replace("\r\n", "\n") == "body from stdin\n"
    assert [a.get_filename() for a in got.iter_attachments()] == ["a.txt"]
    assert len(stored(tmp_path, "carol@example.org")) == 1
    assert denied.returncode == 1
    assert denied.stderr.decode().strip() == (f"socketkit mail: {url(mail)}: RCPT TO:<x@elsewhere.test> "
                                              "refused: 550 5.7.1 relay denied")


async def test_implicit_tls_listener(tmp_path: Path):
    msg = build_message("alice@example.org", ["bob@example.org"], "smtps", "b")
    config = MailConfig(maildir=tmp_path / "mail", domains=("example.org",), authenticator=check_password,
                        auth_failure_delay=0)
    mail = await start(config, ["tls://127.0.0.1:0"])
    try:
        port = mail.endpoints[0].port
        result = await send_message(msg, server=f"tls://127.0.0.1:{port}", auth=("alice", "secret"))
        assert result.reply.code == 250
    finally:
        await mail.aclose(drain=0)
    [got] = stored(tmp_path)
    assert " with ESMTPSA id " in got["Received"]
