"""RESP2/RESP3 (the Redis protocol) as a sans-I/O encoder and decoder.

    data = encode_command("SET", "k", b"v", "EX", 10)     # bytes to write
    parser = Parser()
    for reply in parser.feed(chunk):                     # every complete reply in the chunk, in order
        ...

Replies decode to plain Python values: simple/bulk/verbatim strings -> bytes, integers and big numbers
-> int, doubles -> float, null -> None, booleans -> bool, arrays and sets -> list, maps and attributes
-> dict. An error reply is an `Error` value (not raised: a pipeline's error belongs to one command).
A RESP3 out-of-band message (pub/sub delivery, subscribe confirmation) is a `Push`, which a client
must route aside instead of matching it with a pending command. Attributes (`|`) are dropped.

Bounded: a bulk string or aggregate past `max_bulk`/`max_items` raises ProtocolError instead of
buffering an absurd length announced by a broken or hostile peer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["encode_command", "Parser", "Error", "Push", "ProtocolError"]

_CRLF = b"\r\n"


class ProtocolError(Exception):
    """The byte stream is not RESP (or exceeds the parser's bounds); the connection is unusable."""


class Error(str):
    """An error reply, e.g. Error("WRONGTYPE Operation against a key ..."); `.code` is its first word."""

    @property
    def code(self) -> str:
        return self.split(" ", 1)[0]


class Push(list):
    """A RESP3 push message: [kind, ...], e.g. [b"message", b"channel", b"payload"]."""


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        raise TypeError("RESP has no boolean arguments; pass 0/1 or a string")
    if isinstance(value, int | float):
        return repr(value).encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"cannot send {type(value).__name__} to Redis")


def encode_command(*args: Any) -> bytes:
    """A command as a RESP array of bulk strings (what every Redis version accepts)."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        data = _arg(a)
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(_CRLF)
    return b"".join(parts)


class _Incomplete(Exception):
    pass


_INCOMPLETE = _Incomplete()


class Parser:
    """Bytes in, replies out. Keeps the unparsed tail between feeds."""

    def __init__(self, max_bulk: int = 64 << 20, max_items: int = 1 << 20) -> None:
        self._buf = bytearray()
        self.max_bulk = max_bulk
        self.max_items = max_items

    def feed(self, data: bytes) -> Iterator[Any]:
        buf = self._buf
        buf += data
        pos = 0
        try:
            while pos < len(buf):
                try:
                    value, pos = self._parse(buf, pos)
                except _Incomplete:
                    break
                yield value
        finally:
            del buf[:pos]

    def _line(self, buf: bytearray, pos: int) -> tuple[bytes, int]:
        end = buf.find(_CRLF, pos)
        if end < 0:
            if len(buf) - pos > 64 * 1024:  # no length line is this long
                raise ProtocolError("RESP line without CRLF")
            raise _INCOMPLETE
        return bytes(buf[pos:end]), end + 2

    def _length(self, raw: bytes, bound: int) -> int:
        try:
            n = int(raw)
        except ValueError:
            raise ProtocolError(f"bad RESP length {raw[:20]!r}") from None
        if n > bound:
            raise ProtocolError(f"RESP length {n} exceeds the bound {bound}")
        return n

    def _parse(self, buf: bytearray, pos: int) -> tuple[Any, int]:
        if pos >= len(buf):
            raise _INCOMPLETE
        kind = buf[pos]
        line, pos = self._line(buf, pos + 1)
        if kind == 0x2B:  # + simple string
            return line, pos
        if kind == 0x2D:  # - error
            return Error(line.decode("utf-8", "replace")), pos
        if kind == 0x3A or kind == 0x28:  # : integer, ( big number
            try:
                return int(line), pos
            except ValueError:
                raise ProtocolError(f"bad RESP integer {line[:20]!r}") from None
        if kind == 0x24 or kind == 0x3D or kind == 0x21:  # $ bulk, = verbatim, ! bulk error
            n = self._length(line, self.max_bulk)
            if n < 0:
                return None, pos
            if len(buf) < pos + n + 2:
                raise _INCOMPLETE
            data = bytes(buf[pos:pos + n])
            if buf[pos + n:pos + n + 2] != _CRLF:
                raise ProtocolError("RESP bulk string not followed by CRLF")
            pos += n + 2
            if kind == 0x3D:
                data = data[4:]  # "txt:" / "mkd:" format prefix
            elif kind == 0x21:
                return Error(data.decode("utf-8", "replace")), pos
            return data, pos
        if kind in (0x2A, 0x7E, 0x3E):  # * array, ~ set, > push
            n = self._length(line, self.max_items)
            if n < 0:
                return None, pos
            items: list[Any] = Push() if kind == 0x3E else []
            for _ in range(n):
                value, pos = self._parse(buf, pos)
                items.append(value)
            return items, pos
        if kind == 0x25 or kind == 0x7C:  # % map, | attribute
            n = self._length(line, self.max_items)
            out: dict[Any, Any] = {}
            for _ in range(n):
                key, pos = self._parse(buf, pos)
                value, pos = self._parse(buf, pos)
                out[key if not isinstance(key, list) else tuple(key)] = value
            if kind == 0x7C:  # metadata about the reply that follows: skip it
                return self._parse(buf, pos)
            return out, pos
        if kind == 0x5F:  # _ null
            return None, pos
        if kind == 0x23:  # # boolean
            return line == b"t", pos
        if kind == 0x2C:  # , double
            try:
                return float(line), pos
            except ValueError:
                raise ProtocolError(f"bad RESP double {line[:20]!r}") from None
        raise ProtocolError(f"unknown RESP type byte {bytes([kind])!r}")
