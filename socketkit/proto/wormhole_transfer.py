"""The file-transfer application on top of a wormhole, sans-I/O: offers, answers, transit hints, and
socketkit's own extensions, each checked field by field (the other side may be hostile).

Messages, as wormhole's `send`/`receive` exchange them (JSON objects in the encrypted phases):
  {"transit": {"abilities-v1": [...], "hints-v1": [...]}}          both sides, before the offer/answer
  {"offer": {"message": TEXT}}                                      a text message
  {"offer": {"file": {"filename": NAME, "filesize": N}}}
  {"offer": {"directory": {"mode": "zipfile/deflated", "dirname": NAME, "zipsize": N, "numbytes": N,
                           "numfiles": N}}}
  {"answer": {"message_ack": "ok"}} / {"answer": {"file_ack": "ok"}} / {"error": WHY}
and, on transit, after the data, the receiver's record {"ack": "ok", "sha256": HEX}.

socketkit's extensions travel only between socketkit peers, as wormhole's design intends: each side lists
its features in its version message (`app_versions["socketkit"]`), and an extension is used only when
both sides listed it. A plain wormhole peer never sees one.
  resume-v1      the receiver's answer carries {"socketkit": {"offset": N, "sha256": HEX}}: the length and
                 hash of the partial file it kept; the sender checks them against its own first N bytes.
  aes256gcm-v1   after `go`, the data records use AES-256-GCM (proto/transit.py) instead of secretbox.
When either extension is in use, the sender's first transit record (secretbox) says how the data follows:
{"socketkit": {"offset": N, "records": NAME, "record_size": N}}.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

from socketkit.errors import PeerProtocolError

FEATURES = ("resume-v1", "aes256gcm-v1")
MAX_HINTS = 32
MAX_NAME_BYTES = 255
MAX_TEXT = 1 << 20


def app_versions(features: tuple[str, ...] = FEATURES) -> dict[str, Any]:
    return {"socketkit": {"version": 1, "features": list(features)}}


def their_features(versions: dict[str, Any]) -> set[str]:
    ours = versions.get("socketkit")
    if not isinstance(ours, dict) or not isinstance(ours.get("features"), list):
        return set()
    return {f for f in ours["features"] if isinstance(f, str) and f in FEATURES}


def decode(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # deep nesting raises RecursionError
        raise PeerProtocolError("the other side sent a message that is not JSON") from None
    if not isinstance(obj, dict):
        raise PeerProtocolError("the other side sent a message that is not a JSON object")
    return obj


def safe_name(name: object, what: str = "file") -> str:
    """A name the other side offered, usable as one path component inside the output directory: no
    separators, no `.`/`..`, no control characters, no NUL, at most 255 bytes. Anything else is refused
    (not repaired: a name that needs repairing came from a confused or hostile sender)."""
    if not isinstance(name, str):
        raise PeerProtocolError(f"the offered {what} name is not a string")
    name = unicodedata.normalize("NFC", name)
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise PeerProtocolError(f"refusing the offered {what} name {name!r}: not a plain name")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in name):  # Cs: lone surrogates
        raise PeerProtocolError(f"refusing the offered {what} name {name!r}: control characters")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise PeerProtocolError(f"refusing the offered {what} name: longer than {MAX_NAME_BYTES} bytes")
    return name


def _count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 1 << 62:
        raise PeerProtocolError(f"the offer's {what} is not a sane size: {value!r}")
    return value


@dataclass(frozen=True)
class Offer:
    kind: str                 # "text", "file" or "directory"
    name: str = ""
    size: int = 0             # bytes on the wire: the file, or the zip
    numbytes: int = 0         # a directory's unpacked size
    numfiles: int = 0
    text: str = ""

    def to_message(self) -> dict[str, Any]:
        if self.kind == "text":
            return {"offer": {"message": self.text}}
        if self.kind == "file":
            return {"offer": {"file": {"filename": self.name, "filesize": self.size}}}
        return {"offer": {"directory": {"mode": "zipfile/deflated", "dirname": self.name, "zipsize": self.size,
                                        "numbytes": self.numbytes, "numfiles": self.numfiles}}}


def parse_offer(offer: object) -> Offer:
    if not isinstance(offer, dict):
        raise PeerProtocolError("the offer is not a JSON object")
    if "message" in offer:
        text = offer["message"]
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise PeerProtocolError("the offered text is not a string of at most 1 MiB")
        return Offer("text", text=text)
    if "file" in offer:
        f = offer["file"]
        if not isinstance(f, dict):
            raise PeerProtocolError("the file offer is not a JSON object")
        return Offer("file", safe_name(f.get("filename")), _count(f.get("filesize"), "filesize"))
    if "directory" in offer:
        d = offer["directory"]
        if not isinstance(d, dict):
            raise PeerProtocolError("the directory offer is not a JSON object")
        mode = d.get("mode")
        if not isinstance(mode, str) or not mode.startswith("zipfile"):
            raise PeerProtocolError(f"unknown directory transfer mode {mode!r}")
        return Offer("directory", safe_name(d.get("dirname"), "directory"), _count(d.get("zipsize"), "zipsize"),
                     _count(d.get("numbytes"), "numbytes"), _count(d.get("numfiles"), "numfiles"))
    raise PeerProtocolError(f"unknown offer type {sorted(offer)[:3]}")


# -- transit hints --------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class Hint:
    host: str
    port: int
    priority: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"type": "direct-tcp-v1", "priority": self.priority, "hostname": self.host, "port": self.port}


ABILITIES = [{"type": "direct-tcp-v1"}, {"type": "relay-v1"}]


def transit_message(direct: list[Hint], relays: list[Hint]) -> dict[str, Any]:
    hints: list[dict[str, Any]] = [h.to_json() for h in direct]
    if relays:
        hints.append({"type": "relay-v1", "hints": [h.to_json() for h in relays]})
    return {"transit": {"abilities-v1": ABILITIES, "hints-v1": hints}}


def _hint(obj: object) -> Hint | None:
    if not isinstance(obj, dict) or obj.get("type") != "direct-tcp-v1":
        return None  # tor-tcp-v1 and future kinds: not for us
    host, port, priority = obj.get("hostname"), obj.get("port"), obj.get("priority", 0.0)
    if not isinstance(host, str) or not 0 < len(host) <= 255 or any(c.isspace() for c in host):
        return None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return None
    if not isinstance(priority, (int, float)) or isinstance(priority, bool) or priority != priority:
        priority = 0.0
    try:
        priority = float(priority)
    except OverflowError:  # a JSON integer past a float's range
        priority = 0.0
    return Hint(host, port, priority)


def parse_transit(transit: object) -> tuple[list[Hint], list[Hint]]:
    """(direct hints, relay hints) from the other side's transit message; unknown kinds are skipped,
    and at most MAX_HINTS of each are kept."""
    if not isinstance(transit, dict):
        raise PeerProtocolError("the transit message is not a JSON object")
    hints = transit.get("hints-v1", [])
    if not isinstance(hints, list):
        raise PeerProtocolError("the transit hints are not a list")
    direct: list[Hint] = []
    relays: list[Hint] = []
    for h in hints[:MAX_HINTS * 2]:
        if isinstance(h, dict) and h.get("type") == "relay-v1" and isinstance(h.get("hints"), list):
            relays += [r for r in map(_hint, h["hints"][:MAX_HINTS]) if r is not None]
        else:
            one = _hint(h)
            if one is not None:
                direct.append(one)
    return direct[:MAX_HINTS], relays[:MAX_HINTS]


# -- answers --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    ok: bool
    error: str = ""
    offset: int = 0           # resume-v1: what the receiver already has
    prefix_sha256: str = ""


def parse_answer(msg: dict[str, Any], kind: str) -> Answer | None:
    """The receiver's answer to our offer of `kind`; None when `msg` is no answer (a transit message)."""
    if "error" in msg:
        return Answer(False, error=str(msg["error"])[:500])
    answer = msg.get("answer")
    if answer is None:
        return None
    if not isinstance(answer, dict):
        raise PeerProtocolError("the answer is not a JSON object")
    key = "message_ack" if kind == "text" else "file_ack"
    if answer.get(key) != "ok":
        return Answer(False, error=f"the receiver did not accept: {json.dumps(answer)[:200]}")
    ext = answer.get("socketkit")
    if isinstance(ext, dict):
        offset, digest = ext.get("offset", 0), ext.get("sha256", "")
        if (isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0
                and isinstance(digest, str) and len(digest) == 64):
            return Answer(True, offset=offset, prefix_sha256=digest.lower())
    return Answer(True)


def answer_message(kind: str, offset: int = 0, prefix_sha256: str = "") -> dict[str, Any]:
    answer: dict[str, Any] = {"message_ack" if kind == "text" else "file_ack": "ok"}
    if offset:
        answer["socketkit"] = {"offset": offset, "sha256": prefix_sha256}
    return {"answer": answer}


def parse_start(record: bytes) -> tuple[int, str, int]:
    """The sender's first record under an extension: (offset, record layer name, record size)."""
    msg = decode(record).get("socketkit")
    if not isinstance(msg, dict):
        raise PeerProtocolError("the sender's start record is missing")
    offset, records, size = msg.get("offset", 0), msg.get("records", "secretbox"), msg.get("record_size", 0)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise PeerProtocolError("the sender's start record has a bad offset")
    if records not in ("secretbox", "aes256gcm-v1"):
        raise PeerProtocolError(f"the sender's start record names an unknown record layer {records!r}")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= 4 << 20:
        raise PeerProtocolError("the sender's start record has a bad record size")
    return offset, records, size


def start_record(offset: int, records: str, record_size: int) -> bytes:
    return json.dumps({"socketkit": {"offset": offset, "records": records, "record_size": record_size}}).encode()


def ack_record(sha256_hex: str) -> bytes:
    return json.dumps({"ack": "ok", "sha256": sha256_hex}).encode()


def parse_ack(record: bytes) -> str:
    """The sha256 hex the receiver acknowledged ("" when it sent none); raises when it did not say ok."""
    msg = decode(record)
    if msg.get("ack") != "ok":
        raise PeerProtocolError(f"the receiver did not acknowledge the transfer: {json.dumps(msg)[:200]}")
    digest = msg.get("sha256", "")
    return digest.lower() if isinstance(digest, str) else ""


__all__ = [
    "ABILITIES", "Answer", "FEATURES", "Hint", "Offer", "ack_record", "answer_message", "app_versions", "decode",
    "parse_ack", "parse_answer", "parse_offer", "parse_start", "parse_transit", "safe_name", "start_record",
    "their_features", "transit_message",
]
