"""The SMTP receiver: `SMTPServerConnection` (socketkit.proto.smtp) wired to a Stream and a Maildir.

    config = MailConfig(maildir="mail", domains=("example.org",))
    mail = await start(config, ["tcp://127.0.0.1:2525"])    # mail.server is the socket-layer Server
    ...
    await mail.aclose()

    run(config, ["tcp://0.0.0.0:25"], workers=2, user="mail")  # what `socketkit mail` does

Guarantees:
- a message is answered 250 only after `MailStore.deliver` has put every copy durably in new/; a failure
  to store answers 451 and leaves nothing behind (see maildir.py for the crash-safety argument);
- no open relay: recipients are accepted only for `domains` (default: localhost and this host's name)
  unless `accept_all` (a development sink); others get 550 5.7.1 relay denied;
- AUTH (PLAIN, LOGIN) is offered only over TLS (after STARTTLS) unless `insecure_auth`; STARTTLS is
  offered by default with the development certificate (socketkit.net.certs), so it works with no flags;
- every wait is bounded: `command_timeout` for each command (RFC 5321 4.5.3.2.7: 5 minutes),
  `data_timeout` for a whole DATA block; past it the client gets 421 and the connection closes.

Port 25 needs root: the default listener is tcp://127.0.0.1:25 when started as root (then pass `user`,
`--user` on the command line, to drop privileges right after binding), tcp://127.0.0.1:2525 otherwise.
With `user`, the Maildirs are opened after the drop so they belong to that user; give an explicit
`maildir` then (the default lives under the starting user's home).
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import itertools
import logging
import os
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from socketkit.dashboard.events import emit
from socketkit.dashboard.metrics import observe
from socketkit.errors import DeadlineError, SocketkitError, TLSError
from socketkit.mail.maildir import MailStore
from socketkit.net.endpoint import Endpoint
from socketkit.net.limits import Limits
from socketkit.net.server import Server, start_server
from socketkit.net.stream import Stream
from socketkit.proto.smtp import AuthRequest, Event, Hello, Message, StartTLS
from socketkit.proto.smtp_server import SMTPServerConnection

log = logging.getLogger("socketkit.mail")

Authenticator = Callable[[str, str], Awaitable[bool]]
REFUSE_MESSAGE = b"421 4.3.2 too busy\r\n"
# Our own timeouts answer 421 before closing; the socket layer's silent idle sweeper is not needed.
MAIL_LIMITS = Limits(max_connections=200, idle_timeout=None)


def default_listen() -> list[str]:
    """tcp://127.0.0.1:25 as root (drop privileges with --user), else the unprivileged 2525."""
    port = 25 if hasattr(os, "geteuid") and os.geteuid() == 0 else 2525
    return [f"tcp://127.0.0.1:{port}"]


def default_maildir() -> Path:
    from socketkit.net.certs import data_dir

    return data_dir() / "mail"


@dataclasses.dataclass
class MailConfig:
    maildir: str | os.PathLike[str] | None = None   # default: <data dir>/mail
    catch_all: bool = False          # one Maildir at `maildir` instead of one per recipient
    domains: Sequence[str] = ()      # accepted recipient domains; empty: localhost + hostname
    accept_all: bool = False         # accept every recipient (a development sink, not for the internet)
    hostname: str = dataclasses.field(default_factory=socket.gethostname)
    max_size: int = 25 * 2**20       # SIZE (RFC 1870): bigger messages get 552
    max_recipients: int = 100
    max_errors: int = 10
    max_line: int = 1000             # octets with CRLF (RFC 5321 4.5.3.1.6: at least 1000)
    max_connections: int = 200
    command_timeout: float = 300.0   # per command, RFC 5321 4.5.3.2.7
    data_timeout: float = 600.0      # a whole DATA block
    starttls: bool = True
    tls_cert: str | None = None      # PEM certificate and key; default: the development certificate
    tls_key: str | None = None
    ssl_context: ssl.SSLContext | None = None   # overrides tls_cert/tls_key
    insecure_auth: bool = False      # allow AUTH over plaintext
    authenticator: Authenticator | None = None  # default: socketkit.accounts when available
    auth_failure_delay: float = 1.0  # seconds before answering a failed AUTH (slows guessing)
    login_limiter: Any = None        # accounts.LoginLimiter-like, keyed by peer and by user; default: one
    limits: Limits | None = None     # socket-layer limits; default MAIL_LIMITS with max_connections

    def __post_init__(self) -> None:
        for name in ("max_size", "max_recipients", "max_errors", "max_connections"):
            if getattr(self, name) < 1:
                raise SocketkitError(f"mail: {name} must be at least 1, got {getattr(self, name)}")
        if self.max_line < 512:  # RFC 5321 4.5.3.1.4: a command line may be 512 octets
            raise SocketkitError(f"mail: max_line must be at least 512, got {self.max_line}")
        self.domains = tuple(d.strip().lower().rstrip(".") for d in self.domains if d.strip())

    def accepted_domains(self) -> frozenset[str]:
        return frozenset(self.domains or ("localhost", self.hostname.lower()))

    def socket_limits(self) -> Limits:
        return (self.limits or MAIL_LIMITS).replace(max_connections=self.max_connections)

    def make_ssl_context(self) -> ssl.SSLContext | None:
        if not self.starttls:
            return None
        if self.ssl_context is not None:
            return self.ssl_context
        from socketkit.net import tls

        if (self.tls_cert is None) != (self.tls_key is None):
            raise SocketkitError("mail: give both a TLS certificate and its key, or neither")
        default = (self.tls_cert, self.tls_key) if self.tls_cert else None
        return tls.server_context(Endpoint("tls", host="127.0.0.1", port=0), default_cert=default)


def accounts_authenticator() -> Authenticator | None:
    """AUTH against socketkit's account store (`socketkit user add`), or None when it is unavailable.

    The store is opened at the first AUTH, not before: after a privilege drop, and never for a server
    nobody logs in to."""
    try:
        from socketkit import accounts
    except ImportError:
        return None
    store = None
    lock = asyncio.Lock()

    async def check(user: str, password: str) -> bool:
        nonlocal store
        async with lock:
            if store is None:
                store = await asyncio.to_thread(accounts.AccountStore)
        return await accounts.verify_async(store, user, password) is not None

    return check


def _login_limiter():
    try:
        from socketkit.accounts import LoginLimiter
    except ImportError:
        return None
    return LoginLimiter()


def _header_text(text: str, limit: int = 200) -> str:
    """Client-supplied text made safe inside a header: printable ASCII, no parentheses games."""
    cleaned = "".join(c if 33 <= ord(c) < 127 and c not in "()\\" else "?" for c in text)
    return cleaned[:limit] or "unknown"


def _protocol(msg: Message, ehlo: bool) -> str:
    """The WITH clause: RFC 3848 (ESMTP, S for TLS, A for AUTH) and RFC 6531 (UTF8SMTP...)."""
    if not ehlo:
        return "SMTP"
    base = "UTF8SMTP" if msg.utf8 else "ESMTP"
    return base + ("S" if msg.tls else "") + ("A" if msg.auth_user else "")


def received_header(msg: Message, *, hostname: str, peer: str, queue_id: str, ehlo: bool = True,
                    recipient: str | None = None, when: float | None = None) -> bytes:
    """The trace line of RFC 5321 4.4, folded, ending in CRLF."""
    helo = _header_text(msg.helo or "unknown")
    lines = [f"Received: from {helo} ({peer})",
             f"\tby {_header_text(hostname)} (socketkit) with {_protocol(msg, ehlo)} id {queue_id}"]
    date = email.utils.formatdate(when, localtime=True)
    if recipient is not None:
        address = recipient if (msg.utf8 or recipient.isascii()) else _header_text(recipient)
        lines.append(f"\tfor <{address}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


_queue_ids = itertools.count(secrets.randbits(32))


def _subject(data: bytes) -> str:
    """The Subject of a message, for the event stream (decoded as the inbox shows it; best effort)."""
    head = data[:data.find(b"\r\n\r\n") if b"\r\n\r\n" in data[:65536] else 65536]
    for line in head.split(b"\r\n"):
        if line[:8].lower() == b"subject:":
            from email.header import decode_header, make_header

            raw = line[8:].strip().decode("utf-8", "replace")
            try:
                return str(make_header(decode_header(raw)))[:200]
            except Exception:  # noqa: BLE001 - a malformed encoded-word: show it as it came
                return raw[:200]
    return ""


def _queue_id() -> str:
    """A 12-hex-digit id for Received: and the logs: the process id and a counter that starts at random,
    so ids from workers and restarts do not repeat in practice (no system call per message)."""
    return f"{os.getpid() & 0xFFFF:04X}{next(_queue_ids) & 0xFFFFFFFF:08X}"


def _peer_text(stream: Stream) -> str:
    peer = stream.peer
    if isinstance(peer, tuple) and peer:
        host = str(peer[0])
        return f"[IPv6:{host}]" if ":" in host else f"[{host}]"
    return "local"


class MailServer:
    """A running (or ready to run) SMTP receiver: the handler, its store and its socket-layer Server."""

    def __init__(self, config: MailConfig, *, open_store: bool = True) -> None:
        self.config = config
        self._store: MailStore | None = None
        if open_store:
            self._store = self._open_store()
        self.ssl_context = config.make_ssl_context()
        self.authenticator = config.authenticator or accounts_authenticator()
        self.domains = config.accepted_domains()
        self.login_limiter = config.login_limiter if config.login_limiter is not None else _login_limiter()
        self.server: Server | None = None
        self.accepted = 0     # messages stored and acknowledged
        self.failed = 0       # messages answered 451

    def _open_store(self) -> MailStore:
        return MailStore(self.config.maildir or default_maildir(), catch_all=self.config.catch_all)

    @property
    def store(self) -> MailStore:
        """Opened on first use when the server was made with open_store=False: after a privilege drop,
        so the Maildirs belong to the user that will write them."""
        if self._store is None:
            self._store = self._open_store()
        return self._store

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, listen: Sequence[str | Endpoint] | None = None, **options: object) -> Server:
        self.server = await start_server(list(listen or default_listen()), self.handle,
                                         limits=self.config.socket_limits(), name="mail",
                                         refuse_message=REFUSE_MESSAGE, **options)
        return self.server

    @property
    def endpoints(self) -> list[Endpoint]:
        return self.server.endpoints if self.server is not None else []

    async def aclose(self, drain: float | None = None) -> None:
        if self.server is not None:
            await self.server.aclose(drain)

    async def __aenter__(self) -> MailServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- policy ------------------------------------------------------------------------------------
    def accept_recipient(self, address: str, params: dict) -> bool | tuple[int, str, str]:
        if self.config.accept_all:
            return True
        _local, at, domain = address.rpartition("@")
        if not at:  # the bare <postmaster> (RFC 5321 4.5.1) is always accepted
            return address.lower() == "postmaster" or (550, "5.1.3", "Bad recipient address syntax")
        if domain.lower().rstrip(".") in self.domains:
            return True
        return 550, "5.7.1", "relay denied"

    # -- one connection ----------------------------------------------------------------------------
    async def handle(self, stream: Stream) -> None:
        cfg = self.config
        auth_possible = self.authenticator is not None
        conn = SMTPServerConnection(
            cfg.hostname, max_size=cfg.max_size, max_recipients=cfg.max_recipients, max_line=cfg.max_line,
            max_errors=cfg.max_errors, tls_available=self.ssl_context is not None,
            auth_allowed=auth_possible and cfg.insecure_auth, accept_recipient=self.accept_recipient,
            auth_mechanisms=("PLAIN", "LOGIN") if auth_possible else ())
        if stream.tls is not None:  # a tls:// listener (SMTPS, RFC 8314): TLS from the first byte
            conn.tls = True
            conn.auth_allowed = auth_possible
        session = _Session(self, stream, conn)
        try:
            await session.run()
        except DeadlineError:  # our replies sat unread for command_timeout: the client is gone
            stream.abort()
        finally:
            stream.close()

    def _postmaster(self, address: str) -> str:
        if "@" in address:
            return address
        return f"postmaster@{sorted(self.domains)[0] if self.domains else self.config.hostname}"

    async def store_message(self, msg: Message, peer: str, ehlo: bool) -> str:
        """Prepend Received: and deliver every copy durably; returns the queue id. OSError on failure."""
        queue_id = _queue_id()
        rcpts = [self._postmaster(r) for r in msg.rcpt_tos]
        host = self.config.hostname
        if self.store.catch_all:
            single = rcpts[0] if len(rcpts) == 1 else None  # a FOR clause must not list Bcc recipients
            header = received_header(msg, hostname=host, peer=peer, queue_id=queue_id, ehlo=ehlo,
                                     recipient=single)
            copies = [(single or "", header + msg.data)]
        else:
            seen: dict[str, bytes] = {}
            for rcpt in rcpts:
                if rcpt.lower() not in seen:
                    header = received_header(msg, hostname=host, peer=peer, queue_id=queue_id, ehlo=ehlo,
                                             recipient=rcpt)
                    seen[rcpt.lower()] = header + msg.data
            copies = list(seen.items())
        await self.store.deliver(copies)
        return queue_id


class _Session:
    """The read-decide-reply loop for one client."""

    def __init__(self, server: MailServer, stream: Stream, conn: SMTPServerConnection) -> None:
        self.server, self.stream, self.conn = server, stream, conn
        self.config = server.config
        self.loop = asyncio.get_running_loop()
        self.peer = _peer_text(stream)
        self.ehlo = True
        self.data_deadline: float | None = None  # set while the client sends a DATA block
        stream.info = self._describe  # what the dashboard's connections view shows (asked for, never pushed)

    def _describe(self) -> dict[str, str]:
        conn = self.conn
        info = {"protocol": "smtp", "helo": conn.helo or ""}
        if conn._mail_from is not None:
            rcpts = conn._rcpts
            info["envelope"] = f"<{conn._mail_from}> to " + ", ".join(f"<{r}>" for r in rcpts[:3]) + (
                f" and {len(rcpts) - 3} more" if len(rcpts) > 3 else "")
        return info

    async def run(self) -> None:
        conn, stream = self.conn, self.stream
        await stream.send(conn.greeting())
        while not conn.closed:
            between = self.data_deadline is None  # between commands, not inside a DATA block
            if between:
                if stream.stopping:  # the server stops: a 421 at the next command boundary
                    await self._send(conn.abort("Service shutting down"))
                    return
                stream.when_stopping = self._stop_idle
            try:
                data = await stream.receive(65536, timeout=self._timeout())
            except DeadlineError:
                await self._send(conn.abort("Error: timeout exceeded"))
                log.info("mail: %s timed out", self.peer)
                return
            finally:
                if between:
                    stream.when_stopping = None
            if not data:
                return
            await self._handle(conn.receive(data))

    def _stop_idle(self) -> None:
        """The server stops while the client is between commands: 421 and close now (RFC 5321 3.8), unless
        part of a command has come in (it is answered first; the loop then ends with the 421)."""
        stream, conn = self.stream, self.conn
        if conn._buf or stream.unread:
            return
        stream.send_nowait(conn.abort("Service shutting down"))
        stream.close()

    def _timeout(self) -> float:
        timeout = self.config.command_timeout
        if self.data_deadline is not None:
            timeout = min(timeout, max(0.0, self.data_deadline - self.loop.time()))
        return timeout

    async def _send(self, out: bytes) -> None:
        if not out:
            return
        # While the last reply is the 354, the client is sending a message: bound the whole block.
        tail = out[out.rfind(b"\n", 0, len(out) - 1) + 1:]
        if tail.startswith(b"354"):
            if self.data_deadline is None:
                self.data_deadline = self.loop.time() + self.config.data_timeout
        else:
            self.data_deadline = None
        await self.stream.send(out, timeout=self.config.command_timeout)

    async def _handle(self, events: list[Event]) -> None:
        conn = self.conn
        queue = list(events)
        while queue:
            event = queue.pop(0)
            if isinstance(event, Hello):
                self.ehlo = event.kind == "EHLO"
            elif isinstance(event, AuthRequest):
                queue.extend(await self._auth(event))
            elif isinstance(event, Message):
                queue.extend(await self._message(event))
            elif isinstance(event, StartTLS):
                if not await self._starttls():
                    return
                queue.extend(conn.tls_started(auth_allowed=self.server.authenticator is not None))
        await self._send(conn.data_to_send())

    async def _auth(self, event: AuthRequest) -> list[Event]:
        authenticate, limiter = self.server.authenticator, self.server.login_limiter
        keys = [("peer", self.peer), ("user", event.username.casefold())]
        ok = False
        if limiter is not None and not all(limiter.allowed(k) for k in keys):
            log.warning("mail: AUTH for %r from %s refused: too many failures", event.username, self.peer)
        elif authenticate is not None:
            try:
                ok = bool(await authenticate(event.username, event.password))
            except Exception:
                log.exception("mail: authenticator failed")
            if limiter is not None:
                if ok:  # forgive the account, not the address: one valid login must not reset guessing
                    limiter.succeeded(keys[1])
                else:
                    for key in keys:
                        limiter.failed(key)
        if not ok:
            log.info("mail: failed AUTH %s for %r from %s", event.mechanism, event.username, self.peer)
            if self.config.auth_failure_delay > 0:
                await self._send(self.conn.data_to_send())  # replies already due go out first
                await asyncio.sleep(self.config.auth_failure_delay)
        return self.conn.auth_result(ok)

    async def _message(self, msg: Message) -> list[Event]:
        started = self.loop.time()
        try:
            queue_id = await self.server.store_message(msg, self.peer, self.ehlo)
        except (OSError, SocketkitError):
            self.server.failed += 1
            log.exception("mail: could not store a message from %s", self.peer)
            emit("mail not stored", service="mail", sender=msg.mail_from, peer=self.peer)
            return self.conn.message_failed()
        observe("smtp_delivery", self.loop.time() - started)
        self.server.accepted += 1
        log.info("mail: stored %s from <%s> for %d recipient(s)", queue_id, msg.mail_from, len(msg.rcpt_tos))
        emit("mail received", service="mail", sender=msg.mail_from, to=", ".join(msg.rcpt_tos[:5]),
             subject=_subject(msg.data), size=len(msg.data))
        return self.conn.message_stored(queue_id)

    async def _starttls(self) -> bool:
        await self._send(self.conn.data_to_send())  # the 220 must precede the handshake
        try:
            await self.stream.start_tls(self.server.ssl_context, server_side=True)
        except (TLSError, DeadlineError, SocketkitError) as e:
            log.info("mail: STARTTLS with %s failed: %s", self.peer, e)
            self.stream.abort()
            self.conn.closed = True
            return False
        return True


async def start(config: MailConfig, listen: Sequence[str | Endpoint] | None = None,
                **options: object) -> MailServer:
    """Start receiving mail in the running event loop; `await mail.aclose()` to stop."""
    mail = MailServer(config)
    await mail.start(listen, **options)
    return mail


def run(config: MailConfig, listen: Sequence[str | Endpoint] | None = None, *, workers: int = 1,
        user: str | None = None, loop: str = "auto") -> int:
    """Serve until SIGINT/SIGTERM, as `socketkit mail` does (workers share the port and the Maildirs)."""
    from socketkit.net.runner import run_server

    async def setup():
        # As root with --user, the Maildirs are opened after the privilege drop (first message).
        return MailServer(config, open_store=user is None).handle, None

    return run_server(list(listen or default_listen()), setup, workers=workers, user=user,
                      limits=config.socket_limits(), loop=loop, name="mail", refuse_message=REFUSE_MESSAGE)
