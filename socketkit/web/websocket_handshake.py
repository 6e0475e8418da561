"""The HTTP side of a WebSocket opening handshake (RFC 6455 4.2, RFC 7692 5): checks, accept key, deflate.

Pure functions over a parsed `Request`; the session (`socketkit.web.websocket`) does the I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason

from socketkit.proto.http1 import Request

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_VERSION_HEADERS = [(b"sec-websocket-version", b"13")]
_DEFLATE_PARAMS = frozenset(("server_no_context_takeover", "client_no_context_takeover",
                             "server_max_window_bits", "client_max_window_bits"))


class HandshakeError(Exception):
    """The upgrade request is not a valid WebSocket handshake: answer `status` and close."""

    def __init__(self, status: int, reason: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


def _values(request: Request, name: bytes) -> list[bytes]:
    return [v for n, v in request.headers if n == name]


def _tokens(values: list[bytes]) -> list[str]:
    """Comma-separated list elements of every field line with that name (RFC 9110 5.6.1)."""
    out = []
    for value in values:
        for item in value.decode("latin-1").split(","):
            item = item.strip()
            if item:
                out.append(item)
    return out


def check(request: Request) -> bytes:
    """Validate the opening handshake; returns the Sec-WebSocket-Key or raises HandshakeError."""
    if request.method != b"GET":
        raise HandshakeError(400, "a WebSocket handshake must be a GET request")
    if request.http_version != "1.1":
        raise HandshakeError(400, "a WebSocket handshake needs HTTP/1.1")
    if request.upgrade != b"websocket":
        raise HandshakeError(400, "Upgrade must be websocket")
    if "upgrade" not in (t.lower() for t in _tokens(_values(request, b"connection"))):
        raise HandshakeError(400, "Connection must contain upgrade")
    if _values(request, b"transfer-encoding") or any(v != b"0" for v in _values(request, b"content-length")):
        raise HandshakeError(400, "a WebSocket handshake must not carry a body")
    versions = _values(request, b"sec-websocket-version")
    if versions != [b"13"]:
        # RFC 6455 4.2.2: name the versions we speak so the client can retry with one of them.
        raise HandshakeError(426, "unsupported Sec-WebSocket-Version (only 13 is supported)",
                             _VERSION_HEADERS)
    keys = _values(request, b"sec-websocket-key")
    if len(keys) != 1:
        raise HandshakeError(400, "missing or repeated Sec-WebSocket-Key")
    key = keys[0].strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    return key


def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2 step 5.4)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def subprotocols(request: Request) -> list[str]:
    return _tokens(_values(request, b"sec-websocket-protocol"))


def _deflate_offer(offer: str) -> str | None:
    """A permessage-deflate offer in the form wsproto's parser expects, or None if it must be declined.

    RFC 7692 5.1: decline an offer with unknown or repeated parameters or invalid values; quoted values
    are allowed on the wire (wsproto's int() would choke on them), so they are unquoted here.
    """
    parts = [p.strip() for p in offer.split(";")]
    if parts[0].lower() != "permessage-deflate":
        return None
    seen = set()
    out = ["permessage-deflate"]
    for part in parts[1:]:
        name, eq, value = part.partition("=")
        name, value = name.strip().lower(), value.strip().strip('"')
        if name not in _DEFLATE_PARAMS or name in seen:
            return None
        seen.add(name)
        if name.endswith("context_takeover"):
            if eq:
                return None
            out.append(name)
        elif eq:
            if not value.isdigit() or not 8 <= int(value) <= 15:
                return None
            out.append(f"{name}={int(value)}")
        elif name == "client_max_window_bits":
            out.append(name)  # the client merely says it could honour a value from us
        else:
            return None  # server_max_window_bits needs a value
    return "; ".join(out)


def negotiate_deflate(request: Request, max_size: int) -> tuple[BoundedDeflate, bytes] | None:
    """The first acceptable permessage-deflate offer: (extension, Sec-WebSocket-Extensions value)."""
    for offer in _tokens(_values(request, b"sec-websocket-extensions")):
        canonical = _deflate_offer(offer)
        if canonical is None:
            continue
        ext = BoundedDeflate(max_size)
        try:
            params = ext.accept(canonical)
        except ValueError:
            continue
        if params is None or params is False:
            continue
        value = "permessage-deflate" + (f"; {params}" if isinstance(params, str) and params else "")
        return ext, value.encode("latin-1")
    return None


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate that never inflates a message past `max_size` bytes.

    wsproto inflates each frame chunk with no output bound, so a few KiB of zeros sent by a client could
    become gigabytes before any size check sees them (a "deflate bomb"). Here the output is capped at
    what is left of the message's budget; going over it fails the connection with 1009.
    (Uses PerMessageDeflate's per-message attributes, as of wsproto 1.2-1.3.)
    """

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self.max_size = max_size
        self._inflated = 0

    def frame_inbound_payload_data(self, proto, data):  # type: ignore[override]
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        room = self.max_size - self._inflated
        try:
            out = self._decompressor.decompress(bytes(data), room + 1)  # type: ignore[union-attr]
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self.max_size or self._decompressor.unconsumed_tail:  # type: ignore[union-attr]
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_complete(self, proto, fin):  # type: ignore[override]
        data_frame = self._inbound_is_compressible  # a control frame may sit between fragments
        result = super().frame_inbound_complete(proto, fin)
        if isinstance(result, (bytes, bytearray)):
            self._inflated += len(result)
            if self._inflated > self.max_size:
                return CloseReason.MESSAGE_TOO_BIG
        if fin and data_frame:
            self._inflated = 0
        return result
