"""Two phases of an SMTP server session, as mixins of `SMTPServerConnection` (proto/smtp_server.py):
the DATA phase (dot-stuffing undone, the smuggling and size rules, a bulk path over whole buffers) and
the AUTH exchange (RFC 4954; PLAIN, RFC 4616, and LOGIN). Sans-I/O like the rest: they read the
connection's buffer and append its events and replies.
"""

from __future__ import annotations

from socketkit.proto.smtp import AuthRequest, LineReader, Message, decode_sasl, split_plain

_CMD, _DATA, _AUTH = "command", "data", "auth"  # what the next line is: a command, message data, SASL
_LONG_START, _LONG_END_CRLF = LineReader.LONG_START, LineReader.LONG_END_CRLF


class DataPhase:
    """From 354 to the end of data: the message's lines, checked and kept (or only counted)."""

    __slots__ = ()

    def _start_data(self) -> None:
        self._mode = _DATA
        self._msg = bytearray()
        self._at_line_start = True  # the previous line ended in a real CRLF
        self._bad_lf = self._bad_cr = self._too_long = self._too_big = False
        self._reply(354, None, "End data with <CR><LF>.<CR><LF>")

    def _data_line(self, line: bytes | str) -> None:
        if isinstance(line, str):  # an overlong line starts or ends
            if line == _LONG_START:
                self._too_long = True
            else:
                self._at_line_start = line == _LONG_END_CRLF
                self._bad_lf |= line != _LONG_END_CRLF
            return
        crlf = line.endswith(b"\r\n")
        if not crlf:
            self._bad_lf = True
        elif b"\r" in line[:-2]:
            self._bad_cr = True
        if crlf and line == b".\r\n" and self._at_line_start:
            self._end_data()
            return
        self._at_line_start = crlf
        if self._too_big or self._too_long or self._bad_lf or self._bad_cr:
            return  # refused at the end anyway: keep nothing more
        payload = line[1:] if line.startswith(b".") else line
        if len(self._msg) + len(payload) > self.max_size:
            self._too_big = True
            self._msg = bytearray()  # counted, never kept
        else:
            self._msg += payload

    def _data_bulk(self) -> bool:
        """`_data_line` for every complete line buffered before the end of data (or before an overlong
        line), in a few C-level passes over the buffer instead of one Python call per line. Same flags,
        same bytes kept; False when there is nothing for it to do, and the line path takes over: for
        the <CR><LF>.<CR><LF> itself, an overlong line, or a buffer without a complete line."""
        buf = self._buf.buf
        if self._at_line_start and buf.startswith(b".\r\n"):
            return False  # the end of data: the line path ends it
        end = buf.find(b"\r\n.\r\n")  # the buffer starts at a line start: this is the next end
        stop = end + 2 if end >= 0 else buf.rfind(b"\n") + 1  # complete lines only
        max_line = self.max_line
        if stop > max_line:  # look for a line of max_line octets or more before its LF
            pos = 0
            while stop - pos > max_line:
                lf = buf.rfind(b"\n", pos, pos + max_line)
                if lf < 0:  # the line at pos is overlong: stop before it
                    stop = pos
                    break
                pos = lf + 1
        if stop <= 0:
            return False
        if not self._bad_lf:
            lfs = buf.count(b"\n", 0, stop)
            crlfs = buf.count(b"\r\n", 0, stop)
            if lfs != crlfs:
                self._bad_lf = True
            elif not self._bad_cr and buf.count(b"\r", 0, stop) != crlfs:
                self._bad_cr = True
        self._at_line_start = buf[stop - 2] == 13 if stop >= 2 else False
        if self._too_big or self._too_long or self._bad_lf or self._bad_cr:
            del buf[:stop]  # refused at the end anyway: keep nothing more
            return True
        # No bare LF: every line ends in CRLF, so "\r\n." is exactly a dot-stuffed line start.
        chunk = buf[:stop].replace(b"\r\n.", b"\r\n")
        del buf[:stop]
        if chunk[0] == 46:  # the first line's own dot (we are at a line start: no flag is set)
            del chunk[0]
        if len(self._msg) + len(chunk) > self.max_size:
            self._too_big = True
            self._msg = bytearray()  # counted, never kept
        else:
            self._msg += chunk
        return True

    def _end_data(self) -> None:
        self._mode = _CMD
        data = bytes(self._msg)
        self._msg = bytearray()
        if self._bad_lf or self._bad_cr:
            which = "<LF>" if self._bad_lf else "<CR>"
            self._error(550, "5.5.2", f"Error: bare {which} received")
        elif self._too_long:
            self._error(500, "5.5.6", "Error: line too long")
        elif self._too_big:
            self._reply(552, "5.3.4", "Error: message file too big")
        else:
            self._pending = "message"
            params = self._mail_params
            self._events.append(Message(
                mail_from=self._mail_from or "", rcpt_tos=tuple(self._rcpts), data=data,
                utf8="SMTPUTF8" in params, body8bit=(params.get("BODY") or "").upper() == "8BITMIME",
                helo=self.helo, auth_user=self.auth_user, tls=self.tls, mail_params=dict(params)))
        self._reset_transaction()

class AuthExchange:
    """AUTH and its 334 challenges; the credentials go out as an AuthRequest for the service to check."""

    __slots__ = ()

    def _auth(self, arg: str) -> None:
        if not self._need_helo():
            return
        if not self.auth_allowed:
            if self.tls_available and not self.tls:
                return self._error(530, "5.7.0", "Must issue a STARTTLS command first")
            return self._error(502, "5.5.1", "Error: authentication not enabled")
        if self.auth_user is not None:
            return self._error(503, "5.5.1", "Error: already authenticated")
        if self._mail_from is not None:
            return self._error(503, "5.5.1", "Error: MAIL transaction in progress")
        words = arg.split()
        if not words or len(words) > 2:
            return self._error(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
        mechanism = words[0].upper()
        if mechanism not in self.auth_mechanisms or mechanism not in ("PLAIN", "LOGIN"):
            return self._error(504, "5.5.4", "Unrecognized authentication type")
        initial = words[1] if len(words) == 2 else None
        self._auth_step = (mechanism, None)
        if initial is None:
            self._mode = _AUTH
            self._reply(334, None, "" if mechanism == "PLAIN" else "VXNlcm5hbWU6")
        else:
            self._auth_response(initial)

    def _auth_line(self, text: str) -> None:
        if text == "*":
            self._auth_step = None
            return self._error(501, "5.7.0", "Authentication aborted")
        self._auth_response(text)

    def _auth_response(self, text: str) -> None:
        step, user = self._auth_step
        self._auth_step = None
        try:
            value = decode_sasl(text)
        except ValueError:
            return self._error(501, "5.5.2", "Cannot decode response")
        if step == "PLAIN":
            try:
                authzid, user, password = split_plain(value)
            except ValueError:
                return self._error(501, "5.5.2", "Invalid PLAIN response")
            if authzid and authzid != user:  # acting as someone else is not offered
                return self._error(535, "5.7.8", "Authentication credentials invalid")
            return self._ask_auth("PLAIN", user, password)
        if step == "LOGIN":
            self._auth_step, self._mode = ("LOGIN-PASSWORD", value), _AUTH
            return self._reply(334, None, "UGFzc3dvcmQ6")
        self._ask_auth("LOGIN", user or "", value)

    def _ask_auth(self, mechanism: str, user: str, password: str) -> None:
        self._pending, self._pending_user = "auth", user
        self._events.append(AuthRequest(mechanism, user, password))
