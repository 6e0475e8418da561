"""`socketkit peer receive`: take a text, a file or a directory through a wormhole, safely.

The receiver decides what reaches the disk: a name that is one plain path component, inside the output
directory, never over an existing file unless asked, only when the disk has room, never more bytes than
were offered; a directory (a zip) is checked entry by entry before anything is extracted (peer/files.py).
Bytes land in NAME.part first; an interrupted transfer keeps it, and the next run resumes from it when the
sender is a socketkit peer (resume-v1), or starts over with a plain wormhole.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from socketkit.errors import IncompleteReadError, PeerError, PeerProtocolError, TransferError
from socketkit.peer import files
from socketkit.peer.mailbox import MailboxSession, mood_for
from socketkit.peer.options import PeerOptions, Result
from socketkit.peer.pipeline import Sink
from socketkit.peer.progress import Progress, human
from socketkit.peer.transit import Pipe, Transit, relay_hint
from socketkit.proto import wormhole_transfer as xfer
from socketkit.proto.wormhole import TRANSIT_KEY_PURPOSE
from socketkit.proto.wormhole_transfer import Offer


class Overshoot(PeerProtocolError):
    """The sender sent past the size it offered (nothing past it is kept)."""


# Asked before accepting an offer: (offer, destination) -> accept? (None: accept everything, as --yes)
Confirm = Callable[[Offer, Path], Awaitable[bool]]


async def receive(code: str, *, out_dir: str | os.PathLike[str] = ".", confirm: Confirm | None = None,
                  overwrite: bool = False, options: PeerOptions | None = None) -> Result:
    opts = options or PeerOptions()
    out = Path(out_dir)
    if not out.is_dir():
        raise PeerError(f"output directory {out} does not exist")
    session = MailboxSession(opts.mailbox, app_versions=xfer.app_versions(opts.features), timeout=opts.timeout)
    error: BaseException | None = None
    try:
        await session.open(code)
        return await _exchange(session, out, confirm, overwrite, opts)
    except BaseException as e:
        error = e
        raise
    finally:
        await session.close(mood_for(error))


def _shown(text: str, limit: int = 300) -> str:
    """Something the other side wrote, fit for one line of a terminal: short, control characters escaped."""
    text = text if len(text) <= limit else text[:limit] + "..."
    return text if text.isprintable() else repr(text)


async def _refuse(session: MailboxSession, why: str) -> TransferError:
    why = _shown(why, 500)
    try:
        await session.send_json({"error": why})
    except Exception:  # noqa: BLE001 - we are failing anyway; the error below says why
        pass
    return TransferError(why)


async def _exchange(session: MailboxSession, out: Path, confirm: Confirm | None, overwrite: bool,
                    opts: PeerOptions) -> Result:
    theirs = await session.verified(opts.wait)
    common = set(opts.features) & xfer.their_features(theirs)
    code = session.code or ""
    transit: Transit | None = None
    try:
        while True:
            msg = await session.receive_json(opts.wait)
            if "error" in msg:
                raise TransferError(f"the sender abandoned the transfer: {_shown(str(msg['error']))}")
            if "transit" in msg:
                if transit is None:
                    transit = Transit(session.derive_key(TRANSIT_KEY_PURPOSE), is_sender=False,
                                      relays=[relay_hint(opts.relay)] if opts.relay else [], listen=opts.listen,
                                      advertise=opts.advertise, timeout=max(opts.timeout, 60.0))
                    transit.add_hints(*xfer.parse_transit(msg["transit"]))
                    await transit.listen()
                    await session.send_json(transit.message())
                else:
                    transit.add_hints(*xfer.parse_transit(msg["transit"]))
            if "offer" in msg:
                break
        try:
            offer = xfer.parse_offer(msg["offer"])
        except PeerProtocolError as e:
            raise await _refuse(session, str(e)) from None
        if offer.kind == "text":
            await session.send_json(xfer.answer_message("text"))
            return Result(code, "text", text=offer.text)
        if transit is None:
            raise await _refuse(session, "the sender offered a file without transit hints")
        return await _receive_file(session, transit, offer, out, confirm, overwrite, common, code, opts)
    finally:
        if transit is not None:
            await transit.aclose()


async def _receive_file(session: MailboxSession, transit: Transit, offer: Offer, out: Path,
                        confirm: Confirm | None, overwrite: bool, common: set[str], code: str,
                        opts: PeerOptions) -> Result:
    target = files.destination(out, offer)
    part = files.part_path(out, offer)
    what = f"{offer.name}/ ({offer.numfiles} files, {human(offer.numbytes)})" if offer.kind == "directory" \
        else f"{offer.name} ({human(offer.size)})"
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise await _refuse(session, f"refusing to overwrite the existing {offer.name!r}")
        if target.is_dir() and not target.is_symlink():
            raise await _refuse(session, f"{target} exists and is a directory; not deleting it, "
                                         "move it away first")
    if part.is_symlink() or (part.exists() and not part.is_file()):
        raise await _refuse(session, f"{part} is in the way (not a regular file)")
    try:
        files.check_space(out, offer)
    except TransferError as e:
        raise await _refuse(session, str(e)) from None
    if confirm is not None:
        try:
            accepted = await confirm(offer, target)
        except BaseException:
            await _refuse(session, "transfer rejected")
            raise
        if not accepted:
            raise await _refuse(session, "transfer rejected")
    have = part.stat().st_size if part.is_file() else 0
    if have > offer.size:
        have = 0
    offset, prefix = 0, ""
    if "resume-v1" in common and have:
        offset, prefix = have, files.prefix_hash(part, have)
    await session.send_json(xfer.answer_message(offer.kind, offset, prefix))
    opts.say(f"Receiving {what} into {out}")
    pipe = await transit.connect()
    try:
        return await _receive_data(pipe, offer, part, target, have, common, code, opts, overwrite)
    finally:
        await pipe.aclose()


async def _receive_data(pipe: Pipe, offer: Offer, part: Path, target: Path, have: int, common: set[str],
                        code: str, opts: PeerOptions, overwrite: bool = False) -> Result:
    offset = 0
    layer = "secretbox"
    if common:
        offset, layer, _ = xfer.parse_start(await pipe.receive_record(timeout=opts.timeout))
        if offset not in (0, have):
            raise PeerProtocolError(f"the sender wants to resume at byte {offset}, we have {have}")
        pipe.use(layer)
    hasher = hashlib.sha256()
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(part, flags, 0o666)  # the umask decides, as for any file a program writes
    with os.fdopen(fd, "r+b") as f:
        if offset:
            left = offset
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise TransferError(f"{part} shrank while we resumed it")
                hasher.update(chunk)
                left -= len(chunk)
        f.seek(offset)
        f.truncate(offset)
        opts.say(f"Connected over {pipe.description}" + (f", resuming at byte {offset:,}" if offset else ""))
        progress = Progress(offer.name, offer.size, initial=offset, out=opts.out, quiet=opts.quiet)
        started = time.monotonic()
        got = offset
        size = offer.size
        sink = Sink(f, hasher)
        receive = pipe.receive_record
        try:
            try:
                while got < size:
                    record = await receive(timeout=opts.timeout)
                    if got + len(record) > size:
                        raise Overshoot(f"the sender sent more than the {size:,} bytes it offered; "
                                        "nothing past the offered size was kept")
                    await sink.put(record)
                    got += len(record)
                    progress.update(len(record))
            finally:
                await sink.finish()  # what arrived is on disk, whole, before anything else happens
        except Overshoot:
            raise
        except (IncompleteReadError, PeerError, OSError, TimeoutError) as e:
            f.flush()
            raise TransferError(f"transfer interrupted after {got:,} of {size:,} bytes ({e}); what arrived is "
                                f"kept in {part.name}: run the same command again to resume") from None
        f.flush()  # no fsync: like cp, scp and wormhole; the sha256 in the ack covers what was written
    digest = hasher.hexdigest()
    if offer.kind == "directory":
        try:
            count = files.extract(part, offer, target, replace=overwrite)
        except TransferError as e:
            # tell the sender why (wormhole prints the ack it got), then fail here too
            await pipe.send_record(json.dumps({"ack": "error", "error": str(e)}).encode())
            raise
        finally:
            part.unlink(missing_ok=True)
        opts.say(f"unpacked {count} files into {target}")
    else:
        os.rename(part, target)  # with --overwrite, the old file goes only now that the new one is whole
    await pipe.send_record(xfer.ack_record(digest))
    progress.close("received", digest)
    return Result(code, offer.kind, offer.name, offer.size, digest, offset, time.monotonic() - started,
                  pipe.description, layer, path=str(target), wire_bytes=pipe.stream.bytes_in)


__all__ = ["Confirm", "receive"]
