"""The server side of SMTP (RFC 5321) as a sans-I/O state machine.

    conn = SMTPServerConnection("mx.example.org", tls_available=True)
    send(conn.greeting())
    for event in conn.receive(chunk):        # Hello, MailFrom, RcptTo, StartTLS, AuthRequest, Message, ...
        ...                                 # decisions: accept_rcpt / reject_rcpt / auth_result /
                                            # message_stored / message_failed / tls_started
    send(conn.data_to_send())

Pipelining (RFC 2920) is kept correct by one rule: while a decision is pending the machine reads no
further commands; the bytes wait in a bounded buffer and are processed, in order, by the decision call,
which therefore returns the events they produce.

Safety rules, each tested by name in tests/proto/test_smtp_smuggling.py:
- line-too-long: a line over `max_line` octets (CRLF included) gets 500 5.5.6; the rest of it is
  discarded without buffering. Inside DATA the message is refused at its end instead.
- bare-lf-command / bare-cr-command: command lines must end in CRLF and hold no other CR -> 500 5.5.2.
- bare-lf-data / bare-cr-data (SMTP smuggling): any bare LF or CR in DATA refuses the whole message
  with 550 5.5.2 after its end; only <CR><LF>.<CR><LF> ends DATA, so <LF>.<LF>, <CR>.<CR>,
  <LF>.<CR><LF> and <CR><LF>.<LF> never split one message into two.
- message-too-big: data past `max_size` is counted, not kept; 552 5.3.4 at the end.
- too-many-errors: the `max_errors`-th error is answered 421 4.7.0 and the session closes.
- pending-overflow: more than `max_pending` bytes pipelined while a decision waits -> 421, close.
- starttls-injection: bytes that arrive with or after STARTTLS, before the upgrade, are discarded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from socketkit.proto.smtp import (
    AddressError,
    Close,
    Event,
    Hello,
    LineReader,
    MailFrom,
    Quit,
    RcptTo,
    SMTPUsageError,
    StartTLS,
    check_mail_params,
    parse_params,
    parse_path,
    split_path,
)
from socketkit.proto.smtp_phases import _AUTH, _CMD, _DATA, _LONG_START, AuthExchange, DataPhase

__all__ = ["SMTPServerConnection", "RecipientPolicy"]

# accept_recipient(address, params) -> None/True (accept), False (550 5.1.1) or (code, enhanced, text).
RecipientPolicy = Callable[[str, dict], "bool | None | tuple[int, str, str]"]



class SMTPServerConnection(DataPhase, AuthExchange):
    """One SMTP session, server side. Limits: `max_line` octets per line (CRLF included, RFC 5321
    4.5.3.1), `max_size` message octets, `max_recipients` per transaction, `max_errors` per session,
    `max_pending` bytes pipelined behind a pending decision. `accept_recipient`, when given, decides
    RCPT synchronously instead of the RcptTo event. Replies accumulate until `data_to_send()`."""

    bulk = True  # DATA lines in bulk (`_data_bulk`); tests turn it off to compare with the line path

    def __init__(
        self,
        hostname: str,
        *,
        max_size: int = 10 * 2**20,
        max_recipients: int = 100,
        max_line: int = 1000,
        max_errors: int = 10,
        max_pending: int = 64 * 1024,
        auth_mechanisms: Sequence[str] = ("PLAIN", "LOGIN"),
        auth_allowed: bool = False,
        require_auth: bool = False,
        tls_available: bool = False,
        accept_recipient: RecipientPolicy | None = None,
        smtputf8: bool = True,
    ) -> None:
        if max_line < 8:
            raise ValueError("max_line must allow at least a short command")
        self.hostname = hostname
        self.max_size = max_size
        self.max_recipients = max_recipients
        self.max_line = max_line
        self.max_errors = max_errors
        self.max_pending = max_pending
        self.auth_mechanisms = tuple(m.upper() for m in auth_mechanisms)
        self.auth_allowed = auth_allowed  # the caller flips it, typically after STARTTLS
        self.require_auth = require_auth
        self.tls_available = tls_available
        self.accept_recipient = accept_recipient
        self.smtputf8 = smtputf8

        self.tls = False
        self.auth_user: str | None = None
        self.helo: str | None = None
        self.closed = False
        self.errors = 0
        self._out = bytearray()
        self._buf = LineReader(max_line)
        self._mode = _CMD
        self._pending: str | None = None  # "rcpt" | "auth" | "message" | "tls"
        self._pending_rcpt: str | None = None
        self._pending_user: str | None = None
        self._events: list[Event] = []
        self._auth_step: tuple[str, str | None] | None = None  # (step, username)
        self._reset_transaction()

    # --- public API -----------------------------------------------------------------------------------

    def greeting(self) -> bytes:
        return f"220 {self.hostname} ESMTP socketkit\r\n".encode()

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes from the client; return the events they complete. Never raises on bad input."""
        if self.closed or self._pending == "tls":
            return []  # after STARTTLS, plaintext must not survive into the TLS session
        self._events = []
        self._buf.feed(data)
        return self._run()

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def pending(self) -> str | None:
        """The decision the machine waits for: 'rcpt', 'auth', 'message', 'tls' or None."""
        return self._pending

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for this client: unprocessed input plus the message being received."""
        return len(self._buf) + len(self._msg)

    def accept_rcpt(self) -> list[Event]:
        if not self._expect("rcpt"):
            return []
        self._rcpts.append(self._pending_rcpt)
        self._reply(250, "2.1.5", "Ok")
        return self._run()

    def reject_rcpt(self, code: int = 550, enhanced: str = "5.1.1",
                    text: str = "Recipient address rejected: User unknown") -> list[Event]:
        if not 400 <= code < 600:
            raise SMTPUsageError(f"reject_rcpt needs a 4xx or 5xx code, got {code}")
        if not self._expect("rcpt"):
            return []
        self._error(code, enhanced, text)
        return self._run()

    def auth_result(self, ok: bool) -> list[Event]:
        if not self._expect("auth"):
            return []
        if ok:
            self.auth_user = self._pending_user
            self._reply(235, "2.7.0", "Authentication successful")
        else:
            self._error(535, "5.7.8", "Authentication credentials invalid")
        self._pending_user = None
        return self._run()

    def message_stored(self, queue_id: str) -> list[Event]:
        if not self._expect("message"):
            return []
        self._reply(250, "2.0.0", f"Ok: queued as {queue_id}")
        return self._run()

    def message_failed(self, code: int = 451, enhanced: str = "4.3.0",
                       text: str = "Error: queue file write error") -> list[Event]:
        if not self._expect("message"):
            return []
        self._reply(code, enhanced, text)
        return self._run()

    def tls_started(self, *, auth_allowed: bool | None = None) -> list[Event]:
        """The stream is now TLS: forget everything learnt in plaintext (RFC 3207 4.2)."""
        if not self._expect("tls"):
            return []
        self.tls = True
        if auth_allowed is not None:
            self.auth_allowed = auth_allowed
        self.helo = None
        self.auth_user = None
        self._buf.clear()
        self._reset_transaction()
        return self._run()

    def abort(self, text: str = "Error: timeout exceeded") -> bytes:
        """The caller ends the session (idle timeout, shutdown): the 421 to send before closing."""
        if not self.closed:
            self.closed = True
            self._reply(421, "4.4.2", f"{self.hostname} {text}")
        return self.data_to_send()

    # --- machinery ------------------------------------------------------------------------------------

    def _expect(self, what: str) -> bool:
        """Clear the pending decision; False when the session already closed (the decision is moot)."""
        self._events = []
        if self.closed:
            return False
        if self._pending != what:
            raise SMTPUsageError(f"no {what} decision is pending (pending: {self._pending})")
        self._pending = None
        return True

    def _reply(self, code: int, enhanced: str | None, text: str) -> None:
        if "\r" in text or "\n" in text:  # caller-supplied text must not forge extra reply lines
            text = text.replace("\r", " ").replace("\n", " ")
        self._out += (f"{code} {enhanced} {text}\r\n" if enhanced else f"{code} {text}\r\n").encode()

    def _error(self, code: int, enhanced: str, text: str) -> None:
        self.errors += 1
        if self.errors >= self.max_errors:
            self._close("Error: too many errors")
        else:
            self._reply(code, enhanced, text)

    def _close(self, why: str) -> None:
        self._reply(421, "4.7.0", f"{self.hostname} {why}")
        self.closed = True
        self._events.append(Close(why))
        self._buf.clear()

    def _reset_transaction(self) -> None:
        self._mail_from: str | None = None
        self._mail_params: dict[str, str | None] = {}
        self._rcpts: list[str] = []
        self._msg = bytearray()

    def _run(self) -> list[Event]:
        while not self.closed and self._pending is None:
            if self._mode == _DATA and self.bulk and not self._buf.skipping and self._data_bulk():
                continue
            item = self._buf.next()
            if item is None:
                break
            if self._mode == _DATA:
                self._data_line(item)
            elif isinstance(item, bytes):
                self._command_line(item)
            elif item == _LONG_START:
                self._mode = _CMD  # also ends an AUTH exchange (RFC 4954: 500 5.5.6)
                self._error(500, "5.5.6", "Error: line too long")
        if not self.closed and self._pending is not None and len(self._buf) > self.max_pending:
            self._close("Error: too much pipelined input")
        return self._events

    # --- commands -------------------------------------------------------------------------------------

    def _command_line(self, line: bytes) -> None:
        in_auth, self._mode = self._mode == _AUTH, _CMD  # any bad line also ends an AUTH exchange
        if not line.endswith(b"\r\n"):
            return self._error(500, "5.5.2", "Error: bare <LF> received")
        raw = line[:-2]
        if b"\r" in raw:
            return self._error(500, "5.5.2", "Error: bare <CR> received")
        if b"\0" in raw:
            return self._error(500, "5.5.2", "Error: NUL character received")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(500, "5.5.2", "Error: invalid UTF-8 in command")
        if in_auth:
            return self._auth_line(text)
        verb, _, arg = text.partition(" ")
        handler = self._COMMANDS.get(verb.upper())
        if handler is None:
            return self._error(500, "5.5.2", "Error: command not recognized")
        handler(self, arg.strip())

    def _need_helo(self) -> bool:
        if self.helo is None:
            self._error(503, "5.5.1", "Error: send HELO/EHLO first")
            return False
        return True

    def _helo(self, arg: str, kind: str = "HELO") -> None:
        if not arg:
            return self._error(501, "5.5.4", f"Syntax: {kind} hostname")
        name = arg.split()[0]
        self.helo = name
        self._reset_transaction()
        self._events.append(Hello(kind, name))
        if kind == "HELO":
            return self._reply(250, None, self.hostname)
        keywords = ["PIPELINING", f"SIZE {self.max_size}", "8BITMIME"]
        if self.smtputf8:
            keywords.append("SMTPUTF8")
        keywords.append("ENHANCEDSTATUSCODES")
        if self.tls_available and not self.tls:
            keywords.append("STARTTLS")
        if self.auth_allowed and self.auth_user is None and self.auth_mechanisms:
            keywords.append("AUTH " + " ".join(self.auth_mechanisms))
        keywords.append("HELP")
        lines = [self.hostname, *keywords]
        self._out += "".join(
            f"250{' ' if i == len(lines) - 1 else '-'}{t}\r\n" for i, t in enumerate(lines)).encode()

    def _ehlo(self, arg: str) -> None:
        self._helo(arg, "EHLO")

    def _mail(self, arg: str) -> None:
        if not self._need_helo():
            return
        if self._mail_from is not None:
            return self._error(503, "5.5.1", "Error: nested MAIL command")
        if self.require_auth and self.auth_user is None:
            return self._error(530, "5.7.0", "Authentication required")
        if arg[:5].upper() != "FROM:":
            return self._error(501, "5.5.4", "Syntax: MAIL FROM:<address>")
        try:
            path, rest = split_path(arg[5:].lstrip(" "))
            if rest and not rest.startswith(" "):
                raise AddressError("no space after path")
            params = parse_params(rest, utf8=self.smtputf8)
        except AddressError:
            return self._error(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
        refusal = check_mail_params(params, max_size=self.max_size, smtputf8=self.smtputf8)
        if refusal is not None:  # a too-big SIZE is an honest question, not a client error
            return (self._reply if refusal[0] == 552 else self._error)(*refusal)
        utf8 = "SMTPUTF8" in params
        try:
            address = parse_path(path, utf8=utf8, allow_null=True)
        except AddressError as e:
            if e.utf8:
                return self._error(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
            return self._error(501, "5.1.7", "Bad sender address syntax")
        self._mail_from, self._mail_params, self._rcpts = address, params, []
        self._events.append(MailFrom(address, params))
        self._reply(250, "2.1.0", "Ok")

    def _rcpt(self, arg: str) -> None:
        if not self._need_helo():
            return
        if self._mail_from is None:
            return self._error(503, "5.5.1", "Error: need MAIL command")
        if arg[:3].upper() != "TO:":
            return self._error(501, "5.5.4", "Syntax: RCPT TO:<address>")
        utf8 = "SMTPUTF8" in self._mail_params
        try:
            path, rest = split_path(arg[3:].lstrip(" "))
            if rest and not rest.startswith(" "):
                raise AddressError("no space after path")
            params = parse_params(rest, utf8=utf8)
        except AddressError:
            return self._error(501, "5.5.4", "Syntax: RCPT TO:<address>")
        try:
            address = parse_path(path, utf8=utf8, allow_postmaster=True)
        except AddressError as e:
            if e.utf8:
                return self._error(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
            return self._error(501, "5.1.3", "Bad recipient address syntax")
        if params:
            return self._error(555, "5.5.4", f"Unsupported option: {next(iter(params))}")
        if len(self._rcpts) >= self.max_recipients:
            return self._reply(452, "4.5.3", "Error: too many recipients")
        if self.accept_recipient is None:
            self._pending, self._pending_rcpt = "rcpt", address
            self._events.append(RcptTo(address, params))
            return
        verdict = self.accept_recipient(address, params)
        if verdict is None or verdict is True:
            self._rcpts.append(address)
            self._reply(250, "2.1.5", "Ok")
        elif verdict is False:
            self._error(550, "5.1.1", "Recipient address rejected: User unknown")
        else:
            self._error(*verdict)

    def _data(self, arg: str) -> None:
        if not self._need_helo():
            return
        if arg:
            return self._error(501, "5.5.4", "Syntax: DATA")
        if self._mail_from is None:
            return self._error(503, "5.5.1", "Error: need MAIL command")
        if not self._rcpts:
            return self._error(503, "5.5.1", "Error: need RCPT command")
        self._start_data()

    def _rset(self, arg: str) -> None:
        if arg:
            return self._error(501, "5.5.4", "Syntax: RSET")
        self._reset_transaction()
        self._reply(250, "2.0.0", "Ok")

    def _noop(self, arg: str) -> None:
        self._reply(250, "2.0.0", "Ok")

    def _quit(self, arg: str) -> None:
        self._reply(221, "2.0.0", "Bye")
        self.closed = True
        self._buf.clear()
        self._events.append(Quit())

    def _vrfy(self, arg: str) -> None:
        if not arg:
            return self._error(501, "5.5.4", "Syntax: VRFY address")
        self._reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")

    def _expn(self, arg: str) -> None:
        self._error(502, "5.5.1", "Error: EXPN not implemented")

    def _help(self, arg: str) -> None:
        self._reply(214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH")

    def _starttls(self, arg: str) -> None:
        if arg:
            return self._error(501, "5.5.4", "Syntax: STARTTLS")
        if self.tls:
            return self._error(503, "5.5.1", "Error: TLS already active")
        if not self.tls_available:
            return self._error(454, "4.7.0", "TLS not available")
        if not self._need_helo():
            return
        if self._mail_from is not None:
            return self._error(503, "5.5.1", "Error: MAIL transaction in progress")
        self._reply(220, "2.0.0", "Ready to start TLS")
        self._pending = "tls"
        self._buf.clear()  # a command pipelined after STARTTLS would be read as if sent over TLS
        self._events.append(StartTLS())

    _COMMANDS = {
        "HELO": _helo, "EHLO": _ehlo, "MAIL": _mail, "RCPT": _rcpt, "DATA": _data, "RSET": _rset,
        "NOOP": _noop, "QUIT": _quit, "VRFY": _vrfy, "EXPN": _expn, "HELP": _help,
        "STARTTLS": _starttls, "AUTH": AuthExchange._auth,
    }
