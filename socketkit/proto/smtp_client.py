"""The client side of SMTP (RFC 5321) as a sans-I/O state machine: command bytes out, replies in.

    client = SMTPClientConnection()
    replies = client.receive(chunk)      # [Reply(code=220, ..., command="GREETING")]
    send(client.ehlo("me.example.org"))  # then client.extensions == {"SIZE": "10485760", ...}

Each helper records the verb it sent, so a reply carries the `command` it answers even when commands
are pipelined (RFC 2920). The caller decides what to send next; the machine only keeps the books.
"""

from __future__ import annotations

import base64
import re
from collections import deque

from socketkit.proto.smtp import Reply, SMTPReplyError

__all__ = ["SMTPClientConnection", "normalize_message", "dot_stuff"]

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")
_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")


def normalize_message(data: bytes) -> bytes:
    """Every line ending made CRLF and the last line terminated: the form SMTP carries."""
    data = _LINE_ENDINGS.sub(b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def dot_stuff(data: bytes) -> bytes:
    """Normalise `data`, double each leading dot (RFC 5321 4.5.2) and append the end-of-data line."""
    data = normalize_message(data)
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class SMTPClientConnection:
    def __init__(self, *, max_line: int = 4096, max_reply_lines: int = 100) -> None:
        self.max_line = max_line
        self.max_reply_lines = max_reply_lines
        self.extensions: dict[str, str] = {}  # from the last 250 reply to EHLO, keywords upper-cased
        self._buf = bytearray()
        self._lines: list[str] = []
        self._code: int | None = None
        self._awaiting: deque[str] = deque(["GREETING"])

    # --- replies --------------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Reply]:
        """Feed bytes from the server; return the replies they complete. SMTPReplyError on garbage."""
        self._buf += data
        replies = []
        while (i := self._buf.find(b"\n")) >= 0:
            raw = bytes(self._buf[:i]).rstrip(b"\r")
            del self._buf[:i + 1]
            reply = self._line(raw)
            if reply is not None:
                replies.append(reply)
        if len(self._buf) > self.max_line:
            raise SMTPReplyError(f"reply line longer than {self.max_line} bytes")
        return replies

    def _line(self, raw: bytes) -> Reply | None:
        if len(raw) > self.max_line:
            raise SMTPReplyError(f"reply line longer than {self.max_line} bytes")
        text = raw.decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit() or text[0] not in "2345" or text[3:4] not in ("", " ", "-"):
            raise SMTPReplyError(f"not an SMTP reply line: {text[:80]!r}")
        code = int(text[:3])
        if self._code is not None and code != self._code:
            raise SMTPReplyError(f"reply code changed inside a multi-line reply: {text[:80]!r}")
        self._code = code
        self._lines.append(text[4:])
        if text[3:4] == "-":
            if len(self._lines) > self.max_reply_lines:
                raise SMTPReplyError(f"reply longer than {self.max_reply_lines} lines")
            return None
        lines, self._lines, self._code = self._lines, [], None
        enhanced = None
        m = _ENHANCED.match(lines[0])
        if m and m.group(1) == text[0]:
            enhanced = ".".join(m.groups())
            lines = [_ENHANCED.sub("", line, count=1) if _ENHANCED.match(line) else line for line in lines]
        command = self._awaiting.popleft() if self._awaiting else None
        if command == "EHLO" and code == 250:
            self.extensions = {}
            for line in lines[1:]:
                keyword, _, params = line.partition(" ")
                if keyword:
                    self.extensions[keyword.upper()] = params
        return Reply(code, tuple(lines), enhanced, command)

    # --- commands -------------------------------------------------------------------------------------

    def _command(self, verb: str, text: str) -> bytes:
        if "\r" in text or "\n" in text:
            raise ValueError(f"{verb}: CR or LF in a command would inject another command")
        self._awaiting.append(verb)
        return text.encode("utf-8") + b"\r\n"

    @staticmethod
    def _path(address: str) -> str:
        if any(c in address for c in "<>\r\n") or " " in address and not address.startswith('"'):
            raise ValueError(f"not a mailbox: {address!r}")
        return f"<{address}>"

    def helo(self, name: str) -> bytes:
        return self._command("HELO", f"HELO {name}")

    def ehlo(self, name: str) -> bytes:
        return self._command("EHLO", f"EHLO {name}")

    def mail(self, address: str, size: int | None = None, utf8: bool = False, body8: bool = False) -> bytes:
        text = f"MAIL FROM:{self._path(address)}"
        if size is not None:
            text += f" SIZE={int(size)}"
        if body8:
            text += " BODY=8BITMIME"
        if utf8:
            text += " SMTPUTF8"
        return self._command("MAIL", text)

    def rcpt(self, address: str) -> bytes:
        return self._command("RCPT", f"RCPT TO:{self._path(address)}")

    def data(self) -> bytes:
        return self._command("DATA", "DATA")

    def message(self, data: bytes) -> bytes:
        """The message after a 354: line endings made CRLF, dot-stuffed, ended by <CR><LF>.<CR><LF>."""
        self._awaiting.append("MESSAGE")
        return dot_stuff(data)

    def rset(self) -> bytes:
        return self._command("RSET", "RSET")

    def noop(self) -> bytes:
        return self._command("NOOP", "NOOP")

    def quit(self) -> bytes:
        return self._command("QUIT", "QUIT")

    def starttls(self) -> bytes:
        return self._command("STARTTLS", "STARTTLS")

    def tls_started(self) -> None:
        """After the handshake: the server forgets the EHLO, so do we (RFC 3207 4.2)."""
        self.extensions = {}
        self._buf.clear()

    def auth_plain(self, username: str, password: str) -> bytes:
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        return self._command("AUTH", f"AUTH PLAIN {token}")

    def auth_login(self) -> bytes:
        """Start AUTH LOGIN; answer each 334 with `auth_response(username)` then `auth_response(password)`."""
        return self._command("AUTH", "AUTH LOGIN")

    def auth_response(self, value: str) -> bytes:
        return self._command("AUTH", base64.b64encode(value.encode()).decode())

    def auth_cancel(self) -> bytes:
        return self._command("AUTH", "*")
