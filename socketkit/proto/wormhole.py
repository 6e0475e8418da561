"""magic-wormhole's client protocol, sans-I/O: the mailbox messages, the SPAKE2 key, the versions phase and
the encrypted phases that carry the application's messages.

`Wormhole` takes the mailbox server's JSON texts (`receive`) and returns events; what it wants sent is
collected as JSON texts in `outgoing` for the I/O layer to write on its WebSocket. No sockets, no asyncio,
no clocks: the I/O layer owns time-outs and the connection.

The order that decides compatibility, as the reference client does it: `bind` first, then `allocate` or
`claim`; the PAKE message is added as soon as the mailbox is open; our encrypted `version` message goes out
the moment the key exists, before the other side's is checked (a wrong code then ends as "key confirmation
failed" on both sides instead of a hang); the nameplate is released once the other side has spoken; at the
end, `release` and `close` with a mood, and the connection is done when `released` and `closed` came back.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from spake2 import SPAKE2_Symmetric

from socketkit.errors import PeerError, PeerProtocolError, WrongCodeError
from socketkit.proto.wormhole_words import EVEN, ODD

APPID = "lothar.com/wormhole/text-or-file-xfer"
# wormhole's CLI derives the transit key under this name whatever app id it runs with (its "BUG339").
TRANSIT_KEY_PURPOSE = (APPID + "/transit-key").encode()
CLIENT_VERSION = ["socketkit", "0.1.0"]
MAX_MESSAGE_BYTES = 1 << 20  # one mailbox message (JSON); the reference server's frames are far smaller
MAX_PHASES = 64             # messages buffered out of order from the other side

_NAMEPLATE = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9a-fA-F]*")


def hkdf(key: bytes, length: int, info: bytes) -> bytes:
    """RFC 5869 HKDF-SHA256 with no salt, as wormhole derives every key from the PAKE's."""
    return HKDF(hashes.SHA256(), length, None, info).derive(key)


def derive_phase_key(key: bytes, side: str, phase: str) -> bytes:
    purpose = b"wormhole:phase:" + sha256(side.encode("ascii")).digest() + sha256(phase.encode("ascii")).digest()
    return hkdf(key, SecretBox.KEY_SIZE, purpose)


def seal(key: bytes, plaintext: bytes, nonce: bytes | None = None) -> bytes:
    """NaCl secretbox with a random nonce in front, as every wormhole phase message is."""
    return bytes(SecretBox(key).encrypt(plaintext, nonce or os.urandom(SecretBox.NONCE_SIZE)))


def unseal(key: bytes, data: bytes) -> bytes | None:
    try:
        return SecretBox(key).decrypt(data)
    except CryptoError:
        return None


def normalize_code(code: str) -> str:
    return unicodedata.normalize("NFC", code.strip())


def validate_code(code: str) -> str:
    """The code as given, checked: a numeric nameplate, a dash, then words; no spaces."""
    code = normalize_code(code)
    if not code or any(c.isspace() for c in code):
        raise PeerError(f"bad code {code!r}: it may not contain spaces")
    nameplate, dash, rest = code.partition("-")
    if not _NAMEPLATE.fullmatch(nameplate) or not dash or not rest:
        raise PeerError(f"bad code {code!r}: it starts with a number and a dash, as in 7-guitarist-revenge")
    if len(code) > 256:
        raise PeerError("bad code: longer than 256 characters")
    return code


def choose_words(count: int = 2, rand: Any = os.urandom) -> str:
    """`count` words from the PGP word list, alternating odd and even lists, starting with odd."""
    return "-".join((ODD if i % 2 == 0 else EVEN)[rand(1)[0]] for i in range(count))


# -- events ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Welcome:
    info: dict[str, Any]


@dataclass(frozen=True)
class CodeAllocated:
    code: str


@dataclass(frozen=True)
class KeyEstablished:
    """The PAKE finished; nothing proves yet that the other side used the same code."""


@dataclass(frozen=True)
class Verified:
    """The other side's version message decrypted: same code. `app_versions` is what its app offers."""
    verifier: bytes
    app_versions: dict[str, Any]


@dataclass(frozen=True)
class Message:
    """One application message, in the order the other side sent them (phases 0, 1, 2...)."""
    index: int
    body: bytes


@dataclass(frozen=True)
class Closed:
    mood: str


@dataclass
class Wormhole:
    """One side of a wormhole: `start()`, then `receive(text)` for every server message, `send()` for
    every application message, `close(mood)` at the end; write out `take_outgoing()` after each call."""

    appid: str = APPID
    app_versions: dict[str, Any] = field(default_factory=dict)
    side: str = field(default_factory=lambda: os.urandom(5).hex())
    outgoing: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.code: str | None = None
        self.nameplate: str | None = None
        self.mailbox: str | None = None
        self.key: bytes | None = None
        self.verified = False
        self.their_side: str | None = None
        self.mood: str | None = None
        self._spake: SPAKE2_Symmetric | None = None
        self._pending: list[tuple[str, bytes]] = []  # phase messages waiting for the mailbox to open
        self._next_tx = 0
        self._next_rx = 0
        self._early: dict[int, bytes] = {}
        self._seen_phases: set[str] = set()
        self._released = False
        self._release_sent = False
        self._closed = False
        self._close_sent = False
        self._allocating = False
        self._closed_told = False

    # -- what the application does ----------------------------------------------------------------
    def start(self, code: str | None = None, allocate: bool = False, words: int = 2) -> None:
        self._tx("bind", appid=self.appid, side=self.side, client_version=CLIENT_VERSION)
        if code is not None:
            self.set_code(code)
        elif allocate:
            self._allocating = True
            self._words = words
            self._tx("allocate")

    def set_code(self, code: str) -> None:
        if self.code is not None:
            raise PeerError("this wormhole already has a code")
        self.code = validate_code(code)
        self.nameplate = self.code.split("-", 1)[0]
        self._tx("claim", nameplate=self.nameplate)
        self._spake = SPAKE2_Symmetric(self.code.encode("utf-8"), idSymmetric=self.appid.encode("utf-8"))
        body = json.dumps({"pake_v1": self._spake.start().hex()}).encode()
        self._add("pake", body)

    def send(self, body: bytes) -> None:
        """Queue one application message (encrypted for phase 0, 1, 2...); needs the key."""
        if self.key is None:
            raise PeerError("cannot send before the key exists")
        phase = str(self._next_tx)
        self._next_tx += 1
        self._add(phase, seal(derive_phase_key(self.key, self.side, phase), body))

    def send_json(self, obj: dict[str, Any]) -> None:
        self.send(json.dumps(obj).encode())

    def derive_key(self, purpose: bytes, length: int = 32) -> bytes:
        if self.key is None:
            raise PeerError("no key yet")
        return hkdf(self.key, length, purpose)

    def close(self, mood: str) -> None:
        """Release the nameplate (if still ours) and close the mailbox with `mood`: happy, lonely, scared,
        errory. The Closed event comes when the server confirmed both."""
        if self.mood is None:
            self.mood = mood
        if self.nameplate is not None and not self._release_sent:
            self._release_sent = True
            self._tx("release", nameplate=self.nameplate)
        if self.mailbox is not None and not self._close_sent:
            self._close_sent = True
            self._tx("close", mailbox=self.mailbox, mood=self.mood)

    @property
    def done(self) -> bool:
        """Closed as far as the server is concerned: nothing more will come that matters."""
        return (self.mood is not None and (self._released or not self._release_sent)
                and (self._closed or not self._close_sent))

    def take_outgoing(self) -> list[str]:
        out, self.outgoing = self.outgoing, []
        return out

    # -- what the server says -----------------------------------------------------------------------
    def receive(self, text: str | bytes) -> list[object]:
        if len(text) > MAX_MESSAGE_BYTES:
            raise PeerProtocolError(f"mailbox message of {len(text)} bytes (at most {MAX_MESSAGE_BYTES})")
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError) as exc:  # deep nesting raises RecursionError
            raise PeerProtocolError(f"mailbox server sent something that is not JSON: {exc}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise PeerProtocolError("mailbox server sent a message without a type")
        handler = getattr(self, "_rx_" + msg["type"], None)
        if handler is None:
            return []  # ack, pong and whatever a newer server adds
        return handler(msg)

    def _rx_welcome(self, msg: dict[str, Any]) -> list[object]:
        info = msg.get("welcome")
        if not isinstance(info, dict):
            raise PeerProtocolError("the mailbox server's welcome has no body")
        if "error" in info:
            raise PeerError(f"the mailbox server refuses us: {info['error']}")
        return [Welcome(info)]

    def _rx_error(self, msg: dict[str, Any]) -> list[object]:
        orig = msg.get("orig")
        what = orig.get("type") if isinstance(orig, dict) else None
        raise PeerError(f"mailbox server error: {msg.get('error')}" + (f" (in reply to {what})" if what else ""))

    def _rx_allocated(self, msg: dict[str, Any]) -> list[object]:
        nameplate = msg.get("nameplate")
        if not self._allocating or self.code is not None:
            return []
        if not isinstance(nameplate, str) or not _NAMEPLATE.fullmatch(nameplate):
            raise PeerProtocolError(f"mailbox server allocated a bad nameplate {nameplate!r}")
        code = f"{nameplate}-{choose_words(self._words)}"
        self.set_code(code)
        return [CodeAllocated(code)]

    def _rx_claimed(self, msg: dict[str, Any]) -> list[object]:
        mailbox = msg.get("mailbox")
        if not isinstance(mailbox, str) or not mailbox:
            raise PeerProtocolError("mailbox server claimed without a mailbox id")
        if self.mood is not None:
            return []  # closed before the server answered: nothing to open (as wormhole's client does)
        if self.mailbox is None:
            self.mailbox = mailbox
            self._tx("open", mailbox=mailbox)
            for phase, body in self._pending:
                self._tx("add", phase=phase, body=body.hex())
            self._pending.clear()
        return []

    def _rx_released(self, msg: dict[str, Any]) -> list[object]:
        self._released = True
        return self._maybe_closed()

    def _rx_closed(self, msg: dict[str, Any]) -> list[object]:
        self._closed = True
        return self._maybe_closed()

    def _maybe_closed(self) -> list[object]:
        if not self.done or self._closed_told:
            return []
        self._closed_told = True
        return [Closed(self.mood or "happy")]

    def _rx_message(self, msg: dict[str, Any]) -> list[object]:
        side, phase, body_hex = msg.get("side"), msg.get("phase"), msg.get("body")
        if not (isinstance(side, str) and isinstance(phase, str) and isinstance(body_hex, str)
                and side.isascii() and phase.isascii()  # the phase key hashes both as ASCII
                and _HEX.fullmatch(body_hex) and len(body_hex) % 2 == 0):
            raise PeerProtocolError("mailbox server sent a malformed message")
        if side == self.side:
            return []  # our own, echoed: the server has stored it
        if self.their_side is None:
            self.their_side = side
        elif side != self.their_side:
            # a third side in our mailbox: someone else guessed the nameplate, or a confused server
            raise WrongCodeError("a third party joined this wormhole; start again with a new code")
        if phase in self._seen_phases:
            return []  # a resend after a reconnection of theirs
        self._seen_phases.add(phase)
        if not self._release_sent and self.nameplate is not None:
            self._release_sent = True  # the other side is here: the nameplate has done its job
            self._tx("release", nameplate=self.nameplate)
        body = bytes.fromhex(body_hex)
        if phase == "pake":
            return self._got_pake(body)
        if self.key is None:
            raise PeerProtocolError(f"the other side sent phase {phase!r} before the key exchange")
        plaintext = unseal(derive_phase_key(self.key, side, phase), body)
        if plaintext is None:
            self.mood = "scared"
            raise WrongCodeError("key confirmation failed: the other side used a different code "
                                 "(or someone tried to guess it); nothing was sent")
        if phase == "version":
            return self._got_version(plaintext)
        if not phase.isdigit() or len(phase) > 9:
            return []  # dilation phases and others we do not speak
        if not self.verified:
            raise PeerProtocolError("the other side sent a message before its version")
        self._early[int(phase)] = plaintext
        if len(self._early) > MAX_PHASES:
            raise PeerProtocolError(f"more than {MAX_PHASES} messages out of order from the other side")
        out: list[object] = []
        while self._next_rx in self._early:
            out.append(Message(self._next_rx, self._early.pop(self._next_rx)))
            self._next_rx += 1
        return out

    def _got_pake(self, body: bytes) -> list[object]:
        if self._spake is None or self.key is not None:
            raise PeerProtocolError("unexpected PAKE message")
        try:
            their = bytes.fromhex(json.loads(body)["pake_v1"])
        except (ValueError, KeyError, TypeError, RecursionError):
            self.mood = "scared"
            raise PeerProtocolError("the other side's PAKE message is malformed") from None
        try:
            self.key = self._spake.finish(their)
        except Exception:  # noqa: BLE001 - spake2 raises plain exceptions for bad group elements
            self.mood = "scared"
            raise WrongCodeError("key exchange failed: the other side's PAKE message is invalid") from None
        # Our version goes out now, before theirs is checked: see the module's docstring.
        versions = {"app_versions": self.app_versions}
        self._add("version", seal(derive_phase_key(self.key, self.side, "version"), json.dumps(versions).encode()))
        return [KeyEstablished()]

    def _got_version(self, plaintext: bytes) -> list[object]:
        try:
            versions = json.loads(plaintext)
        except (ValueError, RecursionError):
            versions = None
        if not isinstance(versions, dict):
            raise PeerProtocolError("the other side's version message is not a JSON object")
        app = versions.get("app_versions")
        self.verified = True
        return [Verified(hkdf(self.key or b"", 32, b"wormhole:verifier"), app if isinstance(app, dict) else {})]

    # -- sending ------------------------------------------------------------------------------------
    def _add(self, phase: str, body: bytes) -> None:
        if self.mailbox is None:
            self._pending.append((phase, body))
        else:
            self._tx("add", phase=phase, body=body.hex())

    def _tx(self, mtype: str, **fields: Any) -> None:
        fields["type"] = mtype
        fields["id"] = os.urandom(2).hex()
        self.outgoing.append(json.dumps(fields))


__all__ = [
    "APPID", "CodeAllocated", "Closed", "KeyEstablished", "Message", "TRANSIT_KEY_PURPOSE", "Verified",
    "Welcome", "Wormhole", "choose_words", "derive_phase_key", "hkdf", "seal", "unseal", "validate_code",
]
