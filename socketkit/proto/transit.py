"""magic-wormhole's transit protocol, sans-I/O: the handshakes on each candidate connection and the
encrypted records on the one that wins.

A connection (direct, or through a relay) starts with the relay's line when it goes through one
(`please relay TOKEN for side SIDE`, answered `ok`), then each side sends its line (`transit sender HEX
ready` / `transit receiver HEX ready`, both derived from the transit key, so only the two holders of the
code can complete it). The sender picks the first connection that completed and says `go` on it and
`nevermind` on the others. Records are then a 4-byte big-endian length and a sealed box.

Two record layers:
- `SecretBoxRecords`: wormhole's own, NaCl secretbox with the record number as a 24-byte big-endian nonce;
  every wormhole peer speaks it.
- `AesGcmRecords`: socketkit's, negotiated between two socketkit peers only (see peer/session.py):
  AES-256-GCM under keys derived from the same transit key, the record number as the 96-bit nonce and the
  length prefix as associated data. Same guarantees (confidentiality, integrity, order), several times the
  speed where the CPU has AES instructions.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from socketkit.errors import PeerProtocolError
from socketkit.proto.wormhole import hkdf

KEY_BYTES = 32
_ENCRYPT_INTO = hasattr(AESGCM, "encrypt_into")  # cryptography >= 45
MAX_RECORD = (4 << 20) + 64   # the largest record we accept (our own are at most 4 MiB of plaintext)


def sender_line(key: bytes) -> bytes:
    return b"transit sender " + hkdf(key, 32, b"transit_sender").hex().encode() + b" ready\n\n"


def receiver_line(key: bytes) -> bytes:
    return b"transit receiver " + hkdf(key, 32, b"transit_receiver").hex().encode() + b" ready\n\n"


def relay_line(key: bytes, side: str) -> bytes:
    token = hkdf(key, 32, b"transit_relay_token").hex()
    return f"please relay {token} for side {side}\n".encode()


class HandshakeFailed(PeerProtocolError):
    """This candidate connection did not complete the transit handshake (another may)."""


class Handshake:
    """One candidate connection's handshake. Feed it what arrives; write out `take()` after every call.

    States: relay (waiting for the relay's ok) -> mine (expecting the other side's line) -> then the
    sender reaches `ready` and waits for the I/O layer's `decide()`, the receiver reaches `wait_go`;
    `done` means records follow (any bytes after the handshake are returned by `feed`)."""

    def __init__(self, key: bytes, is_sender: bool, relay_side: str | None = None) -> None:
        self.is_sender = is_sender
        self._mine = sender_line(key) if is_sender else receiver_line(key)
        self._theirs = receiver_line(key) if is_sender else sender_line(key)
        self._buf = b""
        self._out = bytearray()
        if relay_side is not None:
            self._out += relay_line(key, relay_side)
            self.state = "relay"
        else:
            self._out += self._mine
            self.state = "mine"

    def take(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def _expect(self, want: bytes) -> bool:
        have = self._buf[:len(want)]
        if not want.startswith(have):
            raise HandshakeFailed(f"bad transit handshake: got {self._buf[:80]!r}")
        if len(self._buf) < len(want):
            return False
        self._buf = self._buf[len(want):]
        return True

    def feed(self, data: bytes) -> bytes:
        """Take bytes; returns what followed the end of the handshake (records), else b""."""
        self._buf += data
        if self.state == "relay":
            if not self._expect(b"ok\n"):
                return b""
            self._out += self._mine
            self.state = "mine"
        if self.state == "mine":
            if not self._expect(self._theirs):
                return b""
            self.state = "ready" if self.is_sender else "wait_go"
        if self.state == "wait_go":
            if self._buf[:1] == b"n":
                if self._expect(b"nevermind\n"):
                    raise HandshakeFailed("the sender chose another connection")
                return b""
            if not self._expect(b"go\n"):
                return b""
            self.state = "done"
        if self.state in ("ready", "done"):
            rest, self._buf = self._buf, b""
            return rest
        # Bound only what is still buffered: records may follow the handshake in the same read.
        if len(self._buf) > 4096:
            raise HandshakeFailed("transit handshake longer than 4096 bytes")
        return b""

    def decide(self, go: bool) -> None:
        """The sender's choice once `ready`: `go` on the winner, `nevermind` on the others."""
        if self.state != "ready":
            raise HandshakeFailed(f"decide() in state {self.state}")
        self._out += b"go\n" if go else b"nevermind\n"
        self.state = "done" if go else "abandoned"


# -- records ------------------------------------------------------------------------------------------
class SecretBoxRecords:
    """wormhole's record layer. `seal` gives the frame to write; `open` takes one frame's body (after the
    4-byte length) and returns the plaintext, refusing a record out of order or tampered with."""

    name = "secretbox"
    overhead = SecretBox.NONCE_SIZE + SecretBox.MACBYTES

    def __init__(self, transit_key: bytes, is_sender: bool) -> None:
        ours, theirs = b"transit_record_sender_key", b"transit_record_receiver_key"
        if not is_sender:
            ours, theirs = theirs, ours
        self._send = SecretBox(hkdf(transit_key, KEY_BYTES, ours))
        self._receive = SecretBox(hkdf(transit_key, KEY_BYTES, theirs))
        self.sent = 0
        self.received = 0

    def seal(self, plaintext: bytes) -> list[bytes]:
        nonce = self.sent.to_bytes(SecretBox.NONCE_SIZE, "big")
        self.sent += 1
        box = bytes(self._send.encrypt(plaintext, nonce))
        return [len(box).to_bytes(4, "big"), box]

    def open(self, body: bytes | memoryview) -> bytes:
        if len(body) < self.overhead:
            raise PeerProtocolError("transit record shorter than its nonce and tag")
        body = bytes(body)  # PyNaCl takes bytes only
        if int.from_bytes(body[:SecretBox.NONCE_SIZE], "big") != self.received:
            raise PeerProtocolError(f"transit record out of order (expected number {self.received})")
        try:
            plaintext = self._receive.decrypt(body)
        except CryptoError:
            raise PeerProtocolError("transit record failed to decrypt: corrupted or forged") from None
        self.received += 1
        return plaintext


class AesGcmRecords:
    """socketkit's faster record layer (between socketkit peers only): AES-256-GCM, implicit nonces."""

    name = "aes256gcm-v1"
    overhead = 16

    def __init__(self, transit_key: bytes, is_sender: bool) -> None:
        ours, theirs = b"socketkit/transit/aes256gcm/sender", b"socketkit/transit/aes256gcm/receiver"
        if not is_sender:
            ours, theirs = theirs, ours
        self._send = AESGCM(hkdf(transit_key, KEY_BYTES, ours))
        self._receive = AESGCM(hkdf(transit_key, KEY_BYTES, theirs))
        self.sent = 0
        self.received = 0

    def seal(self, plaintext: bytes) -> list[bytes | bytearray]:
        length = (len(plaintext) + 16).to_bytes(4, "big")
        nonce = self.sent.to_bytes(12, "big")
        self.sent += 1
        if _ENCRYPT_INTO:
            # length and box in one buffer, the cipher writing in place: one write, no concatenation
            frame = bytearray(4 + len(plaintext) + 16)
            frame[:4] = length
            with memoryview(frame) as view, view[4:] as out:
                self._send.encrypt_into(nonce, plaintext, length, out)
            return [frame]
        return [length, self._send.encrypt(nonce, plaintext, length)]

    def open(self, body: bytes | memoryview) -> bytes:
        if len(body) < self.overhead:
            raise PeerProtocolError("transit record shorter than its tag")
        try:
            plaintext = self._receive.decrypt(self.received.to_bytes(12, "big"), body, len(body).to_bytes(4, "big"))
        except InvalidTag:
            raise PeerProtocolError("transit record failed to decrypt: corrupted, forged or out of order") from None
        self.received += 1
        return plaintext


RECORD_LAYERS = {SecretBoxRecords.name: SecretBoxRecords, AesGcmRecords.name: AesGcmRecords}


class RecordReader:
    """Cuts length-prefixed records out of a byte stream (for callers that get arbitrary chunks)."""

    def __init__(self, max_record: int = MAX_RECORD) -> None:
        self.max_record = max_record
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            n = int.from_bytes(self._buf[:4], "big")
            if n > self.max_record:
                raise PeerProtocolError(f"transit record of {n} bytes (at most {self.max_record})")
            if len(self._buf) < 4 + n:
                break
            out.append(bytes(self._buf[4:4 + n]))
            del self._buf[:4 + n]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


__all__ = [
    "AesGcmRecords", "Handshake", "HandshakeFailed", "MAX_RECORD", "RECORD_LAYERS", "RecordReader",
    "SecretBoxRecords", "receiver_line", "relay_line", "sender_line",
]
