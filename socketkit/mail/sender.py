"""Send one message over SMTP: `SMTPClientConnection` (sans-I/O) driven over `socketkit.connect`.

    msg = build_message("a@example.org", ["b@example.org"], "Hello", "Hi Bob", attachments=["report.pdf"])
    result = await send_message(msg, server="tcp://127.0.0.1:2525", starttls=True, auth=("alice", "pw"))

Failures raise `SendError` with one line naming what failed and the server's own reply, e.g.
"RCPT TO:<x@elsewhere.test> refused: 550 5.7.1 relay denied".
"""

from __future__ import annotations

import dataclasses
import email.policy
import email.utils
import mimetypes
import os
import socket
import ssl
from collections.abc import Iterable, Sequence
from email.message import EmailMessage
from pathlib import Path

from socketkit.errors import SocketkitError
from socketkit.net.connect import connect
from socketkit.net.endpoint import Endpoint, parse
from socketkit.net.stream import Stream
from socketkit.proto.smtp import Reply, SMTPReplyError
from socketkit.proto.smtp_client import SMTPClientConnection

DEFAULT_SERVER = "tcp://127.0.0.1:2525"


class SendError(SocketkitError):
    """Sending failed; `reply` is the server's refusal when there was one."""

    def __init__(self, message: str, *, reply: Reply | None = None, endpoint: object | None = None) -> None:
        super().__init__(message, endpoint=endpoint)
        self.reply = reply


def describe(reply: Reply) -> str:
    """'550 5.7.1 relay denied': the reply as the server said it, on one line."""
    text = " ".join(line.strip() for line in reply.lines if line.strip())
    return " ".join(str(part) for part in (reply.code, reply.enhanced, text) if part)


def build_message(sender: str, to: Sequence[str], subject: str, body: str = "", *,
                  attachments: Iterable[str | os.PathLike[str]] = (), cc: Sequence[str] = ()) -> EmailMessage:
    """A plain-text message with attachments (MIME types guessed from the file names)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    domain = sender.rpartition("@")[2] or None
    msg["Message-ID"] = email.utils.make_msgid(domain=domain if domain and domain.isascii() else None)
    msg.set_content(body)
    for item in attachments:
        path = Path(item)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SendError(f"cannot attach {str(path)!r}: {e.strerror or e}") from None
        kind, encoding = mimetypes.guess_type(path.name)
        if kind is None or encoding is not None:  # .tar.gz is a gzip file, not a tar
            kind = "application/octet-stream"
        maintype, subtype = kind.split("/", 1)
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=path.name)
    return msg


def message_bytes(msg: EmailMessage | bytes, utf8: bool = False) -> bytes:
    if isinstance(msg, (bytes, bytearray)):
        return bytes(msg)
    return msg.as_bytes(policy=email.policy.SMTPUTF8 if utf8 else email.policy.SMTP)


def _addresses(msg: EmailMessage, *fields: str) -> list[str]:
    values = [str(v) for f in fields for v in msg.get_all(f, [])]
    return [addr for _name, addr in email.utils.getaddresses(values) if addr]


def client_tls_context(server: str | Endpoint, *, insecure: bool = False,
                       ca: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """The context for STARTTLS or tls://: verified against `ca`, the system store and the dev CA."""
    from socketkit.net import tls

    ep = parse(server)
    tls_ep = Endpoint("tls", host=ep.host or "localhost", port=ep.port or 25,
                      options=ep.options if ep.is_tls else ())
    changes: dict[str, str | None] = {}
    if insecure:
        changes["verify"] = "false"
    if ca is not None:
        changes["ca"] = os.fspath(ca)
    if changes:
        tls_ep = tls_ep.with_options(**changes)
    return tls.client_context(tls_ep)


class _Client:
    """One SMTP session over a Stream: send a command, wait for its reply."""

    def __init__(self, stream: Stream, timeout: float, endpoint: Endpoint) -> None:
        self.stream, self.timeout, self.endpoint = stream, timeout, endpoint
        self.smtp = SMTPClientConnection()
        self.replies: list[Reply] = []

    async def reply(self) -> Reply:
        while not self.replies:
            data = await self.stream.receive(65536, timeout=self.timeout)
            if not data:
                raise SendError("the server closed the connection", endpoint=self.endpoint)
            try:
                self.replies.extend(self.smtp.receive(data))
            except SMTPReplyError as e:
                raise SendError(f"the server does not speak SMTP: {e}", endpoint=self.endpoint) from None
        return self.replies.pop(0)

    async def command(self, data: bytes, what: str, ok: Sequence[int] = (250,)) -> Reply:
        await self.stream.send(data, timeout=self.timeout)
        reply = await self.reply()
        if reply.code not in ok:
            raise SendError(f"{what} refused: {describe(reply)}", reply=reply, endpoint=self.endpoint)
        return reply


async def send_message(
    msg: EmailMessage | bytes,
    *,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
    server: str | Endpoint = DEFAULT_SERVER,
    starttls: bool = False,
    auth: tuple[str, str] | None = None,
    helo: str | None = None,
    insecure: bool = False,
    ca: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
) -> SendResult:
    """Send `msg`; returns the server's final 250 reply with the refused recipients. The envelope
    defaults to the headers (From; To, Cc, Bcc, Bcc being removed from what is sent). A refused recipient
    is an error (SendError) only when every recipient is refused."""
    ep = parse(server)
    if isinstance(msg, EmailMessage):
        sender = sender if sender is not None else (_addresses(msg, "From") or [""])[0]
        if recipients is None:
            recipients = _addresses(msg, "To", "Cc", "Bcc")
        if "Bcc" in msg:
            msg = _without_bcc(msg)
    if sender is None or not recipients:
        raise SendError("nothing to send: give a sender and at least one recipient")
    utf8 = not all(a.isascii() for a in (sender, *recipients))
    data = message_bytes(msg, utf8=utf8)
    context = client_tls_context(ep, insecure=insecure, ca=ca) if (starttls or ep.is_tls) else None
    stream = await connect(ep, timeout=timeout, ssl_context=context)
    try:
        client = _Client(stream, timeout, ep)
        greeting = await client.reply()
        if greeting.code != 220:
            raise SendError(f"the server refused the session: {describe(greeting)}", reply=greeting,
                            endpoint=ep)
        name = helo or socket.gethostname() or "localhost"
        await _hello(client, name)
        if starttls and not ep.is_tls:
            if "STARTTLS" not in client.smtp.extensions:
                raise SendError("the server does not offer STARTTLS", endpoint=ep)
            await client.command(client.smtp.starttls(), "STARTTLS", ok=(220,))
            from socketkit.net import tls

            await stream.start_tls(context, server_side=False, server_hostname=tls.server_hostname(ep))
            client.smtp.tls_started()
            await _hello(client, name)
        if auth is not None:
            await _auth(client, *auth)
        ext = client.smtp.extensions
        if utf8 and "SMTPUTF8" not in ext:
            raise SendError("a UTF-8 address needs SMTPUTF8, which the server does not offer", endpoint=ep)
        size = len(data) if "SIZE" in ext else None
        body8 = "8BITMIME" in ext and any(b > 127 for b in data)
        await client.command(client.smtp.mail(sender, size=size, utf8=utf8, body8=body8),
                             f"MAIL FROM:<{sender}>")
        refused: list[tuple[str, Reply]] = []
        for rcpt in recipients:
            await stream.send(client.smtp.rcpt(rcpt), timeout=timeout)
            reply = await client.reply()
            if reply.code not in (250, 251):
                refused.append((rcpt, reply))
        if len(refused) == len(recipients):
            rcpt, reply = refused[0]
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            raise SendError(f"RCPT TO:<{rcpt}> refused: {describe(reply)}{more}", reply=reply, endpoint=ep)
        await client.command(client.smtp.data(), "DATA", ok=(354,))
        final = await client.command(client.smtp.message(data), "message")
        try:
            await stream.send(client.smtp.quit(), timeout=timeout)
            await client.reply()
        except (SendError, SocketkitError, OSError):
            pass  # the message is accepted; a rude goodbye does not change that
        return SendResult(final, tuple(refused))
    finally:
        await stream.aclose()


@dataclasses.dataclass(frozen=True)
class SendResult:
    """The server's final 250 and the recipients it refused along the way (if not all were)."""

    reply: Reply
    refused: tuple[tuple[str, Reply], ...] = ()

    def __str__(self) -> str:
        return describe(self.reply)


def _without_bcc(msg: EmailMessage) -> EmailMessage:
    import copy

    clone = copy.deepcopy(msg)
    del clone["Bcc"]
    return clone


async def _hello(client: _Client, name: str) -> None:
    await client.stream.send(client.smtp.ehlo(name), timeout=client.timeout)
    reply = await client.reply()
    if reply.code == 250:
        return
    if 500 <= reply.code < 600:  # an old server: plain HELO
        await client.command(client.smtp.helo(name), f"HELO {name}")
        return
    raise SendError(f"EHLO refused: {describe(reply)}", reply=reply, endpoint=client.endpoint)


async def _auth(client: _Client, user: str, password: str) -> None:
    offered = client.smtp.extensions.get("AUTH")
    if offered is None:
        hint = "" if client.stream.tls else " (it may want --starttls first)"
        raise SendError(f"the server does not offer AUTH{hint}", endpoint=client.endpoint)
    mechanisms = offered.upper().split()
    if "PLAIN" in mechanisms:
        await client.command(client.smtp.auth_plain(user, password), "AUTH PLAIN", ok=(235,))
    elif "LOGIN" in mechanisms:
        await client.command(client.smtp.auth_login(), "AUTH LOGIN", ok=(334,))
        await client.command(client.smtp.auth_response(user), "AUTH LOGIN", ok=(334,))
        await client.command(client.smtp.auth_response(password), "AUTH LOGIN", ok=(235,))
    else:
        raise SendError(f"no AUTH mechanism in common (the server offers {offered})", endpoint=client.endpoint)


def send(msg: EmailMessage | bytes, *, loop: str = "auto", **options: object) -> SendResult:
    """Blocking `send_message`, for scripts and the CLI."""
    from socketkit.net.loop import run

    return run(send_message(msg, **options), loop=loop)  # type: ignore[arg-type]
