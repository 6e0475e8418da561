"""A malicious wormhole sender built from our own pieces, for tests/peer/test_hostile.py.

Everything it does is valid protocol except the attack it is told to make: it claims the code on the mailbox
(MailboxSession: PAKE, versions, encrypted phases), sends transit hints and an offer (any JSON, or any bytes),
reads the receiver's answer, connects with a sender-side Transit (the real handshake, `go`), and then runs a
`Data` coroutine that writes whatever it likes on the Pipe: well-formed records, forged ones, raw bytes.

`duel()` runs it against `socketkit.peer.receive.receive` in the same event loop and returns the receiver's
outcome (its Result, or the exception it raised) and what the hostile side saw (the receiver's mailbox
messages, its transit records)."""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import struct
import warnings
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from socketkit.peer.mailbox import MailboxSession
from socketkit.peer.options import PeerOptions, Result
from socketkit.peer.receive import receive
from socketkit.peer.transit import Pipe, Transit
from socketkit.proto import wormhole_transfer as xfer
from socketkit.proto.wormhole import TRANSIT_KEY_PURPOSE

STEP = 5.0      # every wait on either side; a test that hits one has found a hang
GRACE = 1.0     # after the receiver is done: how long the hostile side may still read its last words

Data = Callable[[Pipe, set[str]], Awaitable[None]]
Message = dict[str, Any] | bytes | Callable[[Transit], dict[str, Any] | bytes]

_codes = itertools.count(100 + os.getpid() % 500)


def new_code() -> str:
    return f"{next(_codes)}-hostile-sender"


@dataclass
class Seen:
    """What the hostile sender got back."""
    messages: list[dict[str, Any]] = field(default_factory=list)   # the receiver's mailbox messages
    records: list[bytes] = field(default_factory=list)             # the receiver's transit records (its ack)
    connected: bool = False
    error: BaseException | None = None                             # how the hostile side itself ended

    @property
    def errors(self) -> list[str]:
        return [str(m["error"]) for m in self.messages if "error" in m]

    @property
    def answered(self) -> bool:
        return any("answer" in m for m in self.messages)


async def _post(session: MailboxSession, message: dict[str, Any] | bytes) -> None:
    if isinstance(message, bytes):
        session.machine.send(message)   # any bytes, encrypted as a proper phase message
        await session._flush()
    else:
        await session.send_json(message)


async def hostile_sender(mailbox: str, code: str, seen: Seen, *, offer: Message,
                         transit: list[Message] | None = None, data: Data | None = None,
                         features: tuple[str, ...] = xfer.FEATURES, step: float = STEP) -> None:
    """`step` bounds each of its waits (longer for a receiver that is a process still starting up)."""
    session = MailboxSession(mailbox, app_versions=xfer.app_versions(features), timeout=step)
    ours: Transit | None = None
    try:
        await session.open(code)
        theirs = await session.verified(step)
        common = set(features) & xfer.their_features(theirs)
        ours = Transit(session.derive_key(TRANSIT_KEY_PURPOSE), is_sender=True, relays=[],
                       advertise=["127.0.0.1"], timeout=step)
        await ours.listen()
        for m in (transit if transit is not None else [Transit.message]):
            await _post(session, m(ours) if callable(m) else m)
        await _post(session, offer(ours) if callable(offer) else offer)
        while True:
            msg = await session.receive_json(step)
            seen.messages.append(msg)
            if "transit" in msg:
                ours.add_hints(*xfer.parse_transit(msg["transit"]))
            if "error" in msg or "answer" in msg:
                break
        if "error" in msg or data is None:
            return
        pipe = await ours.connect()
        seen.connected = True
        try:
            await data(pipe, common)
            while True:  # the receiver's last words: its ack (ok or error), then EOF
                seen.records.append(await pipe.receive_record(timeout=step))
        finally:
            await pipe.aclose()
    except Exception as e:  # noqa: BLE001 - the receiver hanging up on us is the expected end of most attacks
        seen.error = e
    finally:
        if ours is not None:
            await ours.aclose()
        await session.close("errory")


def receiver_options(servers: tuple[str, str], **kw: Any) -> PeerOptions:
    mailbox, relay = servers
    base: dict[str, Any] = dict(mailbox=mailbox, relay=relay, advertise=["127.0.0.1"], timeout=STEP, wait=STEP,
                                quiet=True)
    base.update(kw)
    return PeerOptions(**base)


async def duel(servers: tuple[str, str], out: Path, *, overwrite: bool = False, grace: float = GRACE,
               receiver: dict[str, Any] | None = None, **hostile: Any) -> tuple[Result | Exception, Seen]:
    """The receiver against one hostile sender: (the receiver's Result or exception, what the sender saw)."""
    code = new_code()
    seen = Seen()
    task = asyncio.create_task(hostile_sender(servers[0], code, seen, **hostile))
    outcome: Result | Exception
    try:
        outcome = await receive(code, out_dir=out, confirm=None, overwrite=overwrite,
                                options=receiver_options(servers, **(receiver or {})))
    except Exception as e:  # noqa: BLE001 - the tests look at which one
        outcome = e
    await asyncio.wait([task], timeout=grace)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    if isinstance(seen.error, AssertionError):
        raise seen.error  # the test's own hostile side went wrong, not the receiver
    return outcome, seen


# -- what the hostile side writes on transit ----------------------------------------------------------------
async def start(pipe: Pipe, common: set[str], offset: int = 0, layer: str | None = None) -> None:
    """socketkit's start record when the receiver speaks an extension (as our sender does), then its layer."""
    if not common:
        return
    layer = layer or ("aes256gcm-v1" if "aes256gcm-v1" in common else "secretbox")
    await pipe.send_record(xfer.start_record(offset, layer, 1 << 20))
    pipe.use(layer)


def sends(*chunks: bytes, close: bool = True) -> Data:
    """Well-formed records carrying `chunks`, then (close=True) hang up."""
    async def run(pipe: Pipe, common: set[str]) -> None:
        await start(pipe, common)
        for chunk in chunks:
            await pipe.send_record(chunk)
        if close:
            await pipe.stream.send_eof()
    return run


def payload(data: bytes, record: int = 256 << 10) -> Data:
    return sends(*[data[i:i + record] for i in range(0, len(data), record)], close=False)


# -- offers -------------------------------------------------------------------------------------------------
def file_offer(name: Any, size: int) -> dict[str, Any]:
    return {"offer": {"file": {"filename": name, "filesize": size}}}


def dir_offer(name: Any, zipsize: int, numbytes: int, numfiles: int) -> dict[str, Any]:
    return {"offer": {"directory": {"mode": "zipfile/deflated", "dirname": name, "zipsize": zipsize,
                                    "numbytes": numbytes, "numfiles": numfiles}}}


# -- zips, made by hand ---------------------------------------------------------------------------------------
def entry(name: str, mode: int | None = None, *, deflate: bool = False) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.create_system = 3  # unix: external_attr's high half is st_mode
    if mode is not None:
        info.external_attr = mode << 16
    if deflate:
        info.compress_type = zipfile.ZIP_DEFLATED
    return info


def make_zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        warnings.simplefilter("ignore")  # duplicate names are the point of some tests
        for info, data in entries:
            z.writestr(info, data)
    return buf.getvalue()


def patch_entries(zip_bytes: bytes, *, file_size: int | None = None, method: int | None = None,
                  flags: int | None = None, crc: int | None = None) -> bytes:
    """Rewrite fields of every local header and central directory entry (a zip that lies about itself)."""
    b = bytearray(zip_bytes)
    for sig, base in ((b"PK\x03\x04", 4), (b"PK\x01\x02", 6)):
        i = b.find(sig)
        while i >= 0:
            # local: sig, version, FLAGS, METHOD, time, date, CRC, csize, USIZE (base 4); central has made-by first
            if flags is not None:
                struct.pack_into("<H", b, i + base + 2, flags)
            if method is not None:
                struct.pack_into("<H", b, i + base + 4, method)
            if crc is not None:
                struct.pack_into("<I", b, i + base + 10, crc)
            if file_size is not None:
                struct.pack_into("<I", b, i + base + 18, file_size)
            i = b.find(sig, i + 4)
    return bytes(b)


def snapshot(root: Path) -> dict[str, tuple[str, int, int, bytes]]:
    """Everything under `root`: kind, size, mode, content (files) or link target."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            out[str(p.relative_to(root))] = ("link", 0, st.st_mode, os.readlink(p).encode())
        elif p.is_file():
            out[str(p.relative_to(root))] = ("file", st.st_size, st.st_mode, p.read_bytes())
        else:
            out[str(p.relative_to(root))] = ("dir", 0, st.st_mode, b"")
    return out
