"""WebSocket frames (RFC 6455 section 5) as a stream, sans-I/O: for byte bridges and small clients.

wsproto reassembles messages and unmasks a byte lane at a time; a bridge (websockify's job: a WebSocket
carrying a TCP connection's bytes) wants neither. Here a data frame's payload is handed on piece by piece
as reads bring it, so nothing is held beyond the read in hand, whatever the frame's length, and the
client's mask is removed eight bytes at a time (numpy, when it is installed, as websockify uses it) or
with one translate per byte lane otherwise.

    parser = FrameParser(masked=True)          # a server: every client frame must be masked
    for item in parser.feed(data):             # data pieces (bytes-like), Ping/Pong/Close, MessageEnd
        ...
    out = header(len(payload)) + payload       # a server's binary frame; header(n, mask=key) for a client

Only what a plain RFC 6455 endpoint without extensions does: RSV bits must be zero, control frames are
whole and at most 125 bytes, fragments follow the rules. A text frame is refused (1003) unless `text=True`.
The client side of the opening handshake is here too (`client_request`, `check_response`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass

try:  # numpy XORs eight bytes at a time in C; without it one translate per byte lane does the work
    import numpy as _np
except ImportError:  # pragma: no cover - depends on the environment
    _np = None

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = (CONTINUATION, TEXT, BINARY)
_CONTROL = (CLOSE, PING, PONG)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_SMALL = 64  # below this, unmask through one int: no table, no numpy call


class FrameError(Exception):
    """The peer broke RFC 6455: close with `code` (1002 protocol, 1003 unsupported, 1007 bad data...)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(slots=True)
class Ping:
    payload: bytes


@dataclass(slots=True)
class Pong:
    payload: bytes


@dataclass(slots=True)
class Close:
    code: int       # 1005 when the frame had no code
    reason: str


@dataclass(slots=True)
class MessageEnd:
    """The last frame of a message ended (for clients that keep message boundaries)."""

    text: bool


@dataclass(slots=True)
class MessageStart:
    """A message begins (only from a parser made with text=True, for clients that decode text)."""

    text: bool


_MESSAGE_END = (MessageEnd(False), MessageEnd(True))
_MESSAGE_START = (MessageStart(False), MessageStart(True))


# -- masking -----------------------------------------------------------------------------------------
_TABLES: list[bytes] = []


def _lane_tables() -> list[bytes]:
    if not _TABLES:
        _TABLES.extend(bytes(b ^ k for b in range(256)) for k in range(256))
    return _TABLES


def mask(data: bytes | bytearray | memoryview, key: bytes, phase: int = 0) -> bytes | bytearray:
    """`data` XOR the 4-byte `key` repeated, starting at byte `phase` of the key (masking is its own inverse)."""
    n = len(data)
    if n < _SMALL:
        if not n:
            return b""
        if phase:
            key = key[phase:] + key[:phase]
        reps = key * (n // 4 + 1)
        return (int.from_bytes(data, "little") ^ int.from_bytes(reps[:n], "little")).to_bytes(n, "little")
    out = bytearray(n)
    mask_into(out, 0, data, key, phase)
    return out


def mask_into(out: bytearray, at: int, data: bytes | bytearray | memoryview, key: bytes, phase: int = 0) -> None:
    """Write `data` masked with `key` (from byte `phase` of it) into out[at:at + len(data)]."""
    n = len(data)
    if phase:
        key = key[phase:] + key[:phase]
    if n < _SMALL:
        if n:
            reps = key * (n // 4 + 1)
            out[at:at + n] = (int.from_bytes(data, "little") ^ int.from_bytes(reps[:n], "little")).to_bytes(n, "little")
        return
    if _np is not None:
        whole = n >> 3
        _np.bitwise_xor(_np.frombuffer(data, dtype=_np.uint64, count=whole),
                        _np.frombuffer(key * 2, dtype=_np.uint64)[0],
                        out=_np.frombuffer(out, dtype=_np.uint64, count=whole, offset=at))
        tail = whole << 3
        if tail != n:  # at most 7 bytes; the key's phase is unchanged at a multiple of 8
            out[at + tail:at + n] = mask(memoryview(data)[tail:], key)
        return
    tables = _lane_tables()
    out[at:at + n] = data
    for lane in range(4):
        out[at + lane:at + n:4] = out[at + lane:at + n:4].translate(tables[key[lane]])


# -- writing frames ----------------------------------------------------------------------------------
_H2 = struct.Struct("!BB").pack
_H4 = struct.Struct("!BBH").pack
_H10 = struct.Struct("!BBQ").pack


def header(length: int, opcode: int = BINARY, *, fin: bool = True, mask_key: bytes | None = None) -> bytes:
    """A frame header for `length` payload bytes; with `mask_key` (a client) the payload must be masked with it."""
    b0 = (0x80 if fin else 0) | opcode
    m = 0x80 if mask_key is not None else 0
    if length < 126:
        head = _H2(b0, m | length)
    elif length < 65536:
        head = _H4(b0, m | 126, length)
    else:
        head = _H10(b0, m | 127, length)
    return head + mask_key if mask_key is not None else head


def frame(opcode: int, payload: bytes = b"", *, client: bool = False) -> bytes:
    """A whole frame (control frames, small messages); a client's is masked with a fresh random key."""
    if client:
        key = os.urandom(4)
        return header(len(payload), opcode, mask_key=key) + mask(payload, key)
    return header(len(payload), opcode) + payload


def close_payload(code: int | None = 1000, reason: str = "") -> bytes:
    if code is None or code == 1005:
        return b""
    return struct.pack("!H", code) + reason.encode("utf-8")[:123]


def _valid_close_code(code: int) -> bool:
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


# -- reading frames ----------------------------------------------------------------------------------
class FrameParser:
    """Frames from one peer. `feed(data)` returns data pieces in order and control events; raises FrameError.

    `masked=True` is a server's view (RFC 6455 5.1: every client frame is masked), False a client's.
    """

    __slots__ = ("masked", "text", "closed", "_left", "_key", "_phase", "_control", "_opcode", "_fin",
                 "_in_message", "_message_text", "_head", "_starts", "filled")

    def __init__(self, *, masked: bool, text: bool = False) -> None:
        self.masked = masked
        self.text = text          # accept text frames (their bytes are handed on like binary ones)
        self.closed = False       # a Close frame came: everything after it is ignored
        self._left = 0            # payload bytes of the current frame still to come
        self._key = b""
        self._phase = 0
        self._control: bytearray | None = None  # a control frame's payload being collected
        self._opcode = 0
        self._fin = True
        self._in_message = False
        self._message_text = False
        self._head = b""          # a header split between two reads
        self._starts = False      # a MessageStart is due (text=True parsers only)
        self.filled = 0           # feed_into: payload bytes written so far

    def feed(self, data: bytes | bytearray | memoryview) -> list[object]:
        return self._feed(data, None)

    def feed_into(self, data: bytes | bytearray | memoryview, into: bytearray) -> tuple[int, list[object]]:
        """The payload of every data frame in `data`, unmasked into `into` (at least len(data) long), one
        after the other: (bytes written, the other events). For bridges: one write per read."""
        self.filled = 0
        events = self._feed(data, into)
        return self.filled, events

    def _feed(self, data: bytes | bytearray | memoryview, into: bytearray | None) -> list[object]:
        out: list[object] = []
        if self.closed:
            return out
        n = len(data)
        pos = 0
        view = None
        while pos < n:
            left = self._left
            if left:
                take = n - pos if n - pos < left else left
                if pos == 0 and take == n:
                    piece = data
                else:
                    if view is None:
                        view = memoryview(data)
                    piece = view[pos:pos + take]
                pos += take
                self._left = left - take
                if into is not None and self._control is None:
                    if self.masked:
                        mask_into(into, self.filled, piece, self._key, self._phase)
                        self._phase = (self._phase + take) & 3
                    else:
                        into[self.filled:self.filled + take] = piece
                    self.filled += take
                else:
                    if self.masked:
                        piece = mask(piece, self._key, self._phase)
                        self._phase = (self._phase + take) & 3
                    if self._control is not None:
                        self._control += piece
                    else:
                        out.append(piece)
                if not self._left:
                    self._frame_done(out)
                    if self.closed:
                        return out
                continue
            used = self._header(data, pos)
            if used == 0:  # incomplete: keep the start of the header for the next read
                self._head += bytes(data[pos:])
                return out
            pos += used
            if self._starts:
                self._starts = False
                out.append(_MESSAGE_START[self._message_text])
            if not self._left:
                self._frame_done(out)
                if self.closed:
                    return out
        return out

    def _header(self, data, pos: int) -> int:
        """Parse one header at data[pos:] (after any stashed bytes); bytes of `data` used, 0 if incomplete."""
        stash = self._head
        buf = stash + bytes(data[pos:pos + 14]) if stash else data[pos:pos + 14]
        if len(buf) < 2:
            return 0
        b0, b1 = buf[0], buf[1]
        length = b1 & 0x7F
        size = 2
        if length == 126:
            size = 4
        elif length == 127:
            size = 10
        masked = b1 & 0x80
        if masked:
            size += 4
        if len(buf) < size:
            return 0
        if length == 126:
            length = (buf[2] << 8) | buf[3]
            if length < 126:
                raise FrameError(1002, "frame length not in its shortest form")
        elif length == 127:
            length = int.from_bytes(buf[2:10], "big")
            if length >> 63:
                raise FrameError(1002, "frame length has its top bit set")
            if length < 65536:
                raise FrameError(1002, "frame length not in its shortest form")
        if b0 & 0x70:
            raise FrameError(1002, "reserved bits set without an extension")
        if bool(masked) != self.masked:
            raise FrameError(1002, "client frames must be masked" if self.masked else "server frames must not be masked")
        opcode = b0 & 0x0F
        fin = bool(b0 & 0x80)
        if opcode in _CONTROL:
            if not fin:
                raise FrameError(1002, "fragmented control frame")
            if length > 125:
                raise FrameError(1002, "control frame longer than 125 bytes")
            self._control = bytearray()
        elif opcode in _DATA:
            if opcode == CONTINUATION:
                if not self._in_message:
                    raise FrameError(1002, "continuation frame without a message")
            else:
                if self._in_message:
                    raise FrameError(1002, "new message inside a fragmented one")
                if opcode == TEXT and not self.text:
                    raise FrameError(1003, "only binary frames are accepted")
                self._in_message = True
                self._message_text = opcode == TEXT
                if self.text:
                    self._starts = True
            self._control = None
        else:
            raise FrameError(1002, f"unknown opcode {opcode:#x}")
        self._opcode = opcode
        self._fin = fin
        self._key = bytes(buf[size - 4:size]) if masked else b""
        self._phase = 0
        self._left = length
        self._head = b""
        return size - len(stash)

    def _frame_done(self, out: list[object]) -> None:
        control = self._control
        if control is None:
            if self._fin:
                self._in_message = False
                out.append(_MESSAGE_END[self._message_text])
            return
        self._control = None
        payload = bytes(control)
        opcode = self._opcode
        if opcode == PING:
            out.append(Ping(payload))
        elif opcode == PONG:
            out.append(Pong(payload))
        else:
            out.append(_close_event(payload))
            self.closed = True


def _close_event(payload: bytes) -> Close:
    if not payload:
        return Close(1005, "")
    if len(payload) == 1:
        raise FrameError(1002, "close frame with a one-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not _valid_close_code(code):
        raise FrameError(1002, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(1007, "close reason is not UTF-8") from None
    return Close(code, reason)


# -- the client's opening handshake (RFC 6455 4.1) -----------------------------------------------------
def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def client_request(host: str, resource: str, key: bytes, *, subprotocols: tuple[str, ...] = (),
                   headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [f"GET {resource} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key.decode('ascii')}", "Sec-WebSocket-Version: 13"]
    if subprotocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
    for name, value in headers:
        if any(c in name + value for c in "\r\n\0"):
            raise ValueError(f"header {name!r} has a line break in it")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HandshakeRefused(Exception):
    """The server answered the upgrade with something else than 101 (`status`), or a wrong 101."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def check_response(head: bytes, key: bytes, subprotocols: tuple[str, ...] = ()) -> str | None:
    """Check the server's response head (up to the blank line); returns the chosen subprotocol."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HandshakeRefused(0, f"not an HTTP response: {lines[0][:80]!r}")
    status = int(parts[1])
    if status != 101:
        raise HandshakeRefused(status, f"HTTP {status} {parts[2] if len(parts) > 2 else ''}".rstrip())
    fields: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HandshakeRefused(status, f"bad header line {line[:80]!r}")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    if [v.lower() for v in fields.get("upgrade", [])] != ["websocket"]:
        raise HandshakeRefused(status, "101 without Upgrade: websocket")
    if "upgrade" not in ",".join(fields.get("connection", [])).lower():
        raise HandshakeRefused(status, "101 without Connection: upgrade")
    if fields.get("sec-websocket-accept") != [accept_for(key).decode("ascii")]:
        raise HandshakeRefused(status, "wrong Sec-WebSocket-Accept")
    if fields.get("sec-websocket-extensions"):
        raise HandshakeRefused(status, "the server chose an extension none was offered")
    chosen = fields.get("sec-websocket-protocol")
    if chosen is None:
        return None
    if len(chosen) != 1 or chosen[0] not in subprotocols:
        raise HandshakeRefused(status, f"the server chose a subprotocol that was not offered: {chosen}")
    return chosen[0]


def new_key() -> bytes:
    return base64.b64encode(os.urandom(16))
